"""Pre-emption: a training process killed with SIGKILL mid-epoch and started again with the same
command ends bit-identical to a run that was never interrupted (same batches, optimizer, schedule, RNG)."""

import csv
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FAST, interrupt
from tests.test_scale import _run

# 32 pairs, 4 per optimizer step (2 x accumulation 2): 8 steps an epoch, 18 steps = 2.25 epochs;
# lengths grouped, the reference precomputed (the first run caches it, the others reuse it), and a
# learning rate at which every step moves the weights.
ARGS = [*FAST, "method=dpo", "reference=precompute", "optim.lr=3e-3", "data.batch_size=2", "data.global_batch_size=4", "data.group_by_length=8",
        "trainer.max_steps=18", "checkpoints.count=2", "checkpoints.resume_every_n_steps=3"]
STEPS_PER_EPOCH = 8

pytestmark = pytest.mark.slow  # real processes killed with SIGKILL, and locks held by other processes


def _metrics(run):
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _weights(run):
    return load_file(run / "checkpoints" / "ckpt-2" / "model.safetensors")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run, and the directory and environment the interrupted runs share with it."""
    root = tmp_path_factory.mktemp("resume")
    env = {**os.environ, "YFPO_CACHE": str(root / "cache")}
    _run(root, "yfpo.train", *ARGS, f"hydra.run.dir={root / 'straight'}", env=env)
    return root, env


def _resumes_bit_identical(root, env, run):
    """The same command again finishes the run as if it had never been interrupted."""
    _run(root, "yfpo.train", *ARGS, f"hydra.run.dir={run}", env=env)
    assert (run / "DONE").is_file()
    # the curves survive: every step logged exactly once, with the uninterrupted run's values
    logged = {r: _metrics(r) for r in (root / "straight", run)}
    assert [r["step"] for r in logged[run]] == [str(s) for s in range(18)]
    assert [r["train/loss"] for r in logged[run]] == [r["train/loss"] for r in logged[root / "straight"]]
    a, b = _weights(root / "straight"), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sigkill_mid_epoch_then_same_command_is_bit_identical(straight):
    root, env = straight
    run = root / "killed"
    status, _ = interrupt(root, env, run, signal.SIGKILL, ARGS)
    assert status == -signal.SIGKILL
    step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert 0 < step < 18 and step % STEPS_PER_EPOCH, f"last.ckpt at step {step}: not a mid-epoch resume"
    _resumes_bit_identical(root, env, run)


def test_sigterm_saves_a_resume_point_exits_143_with_one_line_and_the_same_command_resumes(straight):
    """What a cluster's pre-emption sends: the run finishes the optimizer step it is in (2 batches
    accumulated), saves its resume point there, says so in one line, and exits with 143, the status
    requeue setups expect; no DONE, and the same command resumes it exactly."""
    from yfpo.train.checkpoints import resume_point

    root, env = straight
    run = root / "terminated"
    status, stderr = interrupt(root, env, run, signal.SIGTERM, ARGS)
    assert status == 143, stderr[-3000:]
    lines = [l for l in stderr.splitlines() if l.startswith("yfpo:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    stopped = re.fullmatch(rf"yfpo: stopped: {re.escape(str(run))} stopped by SIGTERM at step (\d+) of 18; it resumes from "
                           rf"step (\d+) \({re.escape(str(run / 'checkpoints' / 'last.ckpt'))}\) when the same command runs again", lines[0])
    assert stopped, lines[0]
    at, saved = int(stopped[1]), int(stopped[2])
    assert saved == at and resume_point(run / "checkpoints" / "last.ckpt")[0] == at and 9 <= at < 18, lines[0]
    _resumes_bit_identical(root, env, run)


def test_a_second_training_into_the_same_run_directory_is_refused_and_a_dead_holder_is_taken_over(tmp_path, cache):
    from yfpo.core.errors import UserError
    from yfpo.core.locks import exclusive

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "yfpo.train", *FAST, "trainer.max_steps=100000", "checkpoints.count=1", f"hydra.run.dir={run}"]
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = run / ".lock"
    deadline = time.time() + 300
    while not (lock.is_file() and lock.read_text()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    message = [l for l in second.stderr.splitlines() if l.startswith("yfpo: error:")]
    assert len(message) == 1 and f"run directory {run} is in use by pid {first.pid} on " in message[0], second.stderr[-2000:]
    with exclusive(lock, "the run"):  # its holder is dead: the lock is free again
        with pytest.raises(UserError, match=f"the run is in use by pid {os.getpid()}"):
            with exclusive(lock, "the run"):
                pass


def test_a_kill_between_a_checkpoint_and_its_metrics_row_loses_no_row(tmp_path, cache):
    """Lightning writes a step's row after that step's checkpoint; last.ckpt carries the row, and a
    resume from it restores the row when the kill came in between (the window the test above can hit)."""
    from yfpo.train.checkpoints import resume_point
    from yfpo.train.loggers import keep_rows_before
    from lightning.pytorch.loggers import CSVLogger

    run = tmp_path / "run"
    _run(tmp_path, "yfpo.train", *ARGS[:-2], "checkpoints.count=1", "checkpoints.resume_every_n_steps=3",
         "trainer.max_steps=6", f"hydra.run.dir={run}")
    step, row = resume_point(run / "checkpoints" / "last.ckpt")
    rows = _metrics(run)
    assert step == 6 and row["step"] == 5 and row["epoch"] == 0
    assert {k: str(v) for k, v in row.items()} == {k: v for k, v in rows[5].items() if v != ""}  # the row as written
    path = run / "logs" / "metrics.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:6]) + "\n")  # killed after last.ckpt (step 6), before row 5 was written
    kept = keep_rows_before(CSVLogger(save_dir=str(run), name="", version="logs"), step, row)
    assert kept == 6 and [r["step"] for r in _metrics(run)] == [str(s) for s in range(6)]
    assert _metrics(run)[5]["train/loss"] == rows[5]["train/loss"]


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3])
def test_sigterm_saves_the_resume_point_where_it_stops_whenever_it_comes(tmp_path, cache, delay):
    """With no periodic resume point (every 1000 steps) the only last.ckpt is the one SIGTERM saves,
    at the step it stopped at, wherever in a batch the signal falls (``delay`` after a checkpoint;
    between a batch's checkpoint hooks and Lightning's own check it would otherwise be lost)."""
    from yfpo.train.checkpoints import resume_point

    run = tmp_path / "run"
    args = [*FAST, "trainer.max_steps=40", "checkpoints.count=2", "checkpoints.resume_every_n_steps=1000"]
    status, stderr = interrupt(tmp_path, dict(os.environ), run, signal.SIGTERM, args, delay)  # ckpt-1 at step 20
    assert status == 143, stderr[-3000:]
    at = int(re.search(r"stopped by SIGTERM at step (\d+) of 40", stderr)[1])
    assert 20 <= at < 40 and resume_point(run / "checkpoints" / "last.ckpt")[0] == at, stderr[-3000:]
