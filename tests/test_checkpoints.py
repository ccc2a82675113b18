"""The resume point on disk: streamed into a temporary file beside it, fsynced and renamed, so a full
disk or a crash mid-write keeps the previous ``last.ckpt``, and a damaged one is one clear error."""

import errno
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST, compose_cfg
from yfpo.core.errors import UserError
from yfpo.train import checkpoints as ck
from yfpo.train.fit import fit


def _state(value: float, n: int = 1000) -> dict:
    return {"global_step": int(value), "state_dict": {"w": torch.full((n,), value)}, "optimizer_states": [{"m": torch.zeros(n)}]}


def test_the_writer_streams_beside_the_destination_and_round_trips(tmp_path, monkeypatch):
    io, path = ck.StreamedCheckpointIO(), tmp_path / "ckpts" / "last.ckpt"
    seen, real_save = [], torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: seen.append(f) or real_save(obj, f, *a, **k))
    io.save_checkpoint(_state(3.0), path)
    assert seen == [path.with_name("last.ckpt.tmp")]  # a file path: torch streams it, no in-memory copy
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.full((1000,), 3.0))
    assert ck.resume_point(path) == (3, None)


def test_a_full_disk_keeps_the_previous_resume_point_and_says_how_much_room_is_needed(tmp_path, monkeypatch):
    """Fault injected at the write: torch writes part of the file, then the disk is full."""
    io, path = ck.StreamedCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(_state(1.0), path)
    before = path.read_bytes()

    def full(obj, f, *a, **k):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ck.DiskFullError) as err:
        io.save_checkpoint(_state(2.0, n=10_000), path)
    message = str(err.value)
    assert f"no space left for the resume point in {tmp_path}" in message and "needs about 0.00 GiB" in message
    assert "the previous last.ckpt is kept" in message and "run the same command again to resume" in message
    assert "\n" not in message and isinstance(err.value, UserError)
    assert path.read_bytes() == before and not path.with_name("last.ckpt.tmp").exists()
    assert ck.resume_point(path) == (1, None)


def test_a_write_error_that_is_not_a_full_disk_is_not_disguised_as_one(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug in the writer")))
    with pytest.raises(RuntimeError, match="a bug in the writer"):
        ck.StreamedCheckpointIO().save_checkpoint(_state(1.0), tmp_path / "last.ckpt")


def test_a_damaged_resume_point_is_one_error_naming_the_file_and_the_way_out(tmp_path, cache):
    cfg = compose_cfg(*FAST, "method=dpo", "trainer.max_steps=2", "checkpoints.count=1")
    fit(cfg, tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # what a disk fault or a copy cut short leaves
    (tmp_path / "run" / "DONE").unlink()
    with pytest.raises(UserError) as err:
        fit(cfg, tmp_path / "run")
    message = str(err.value)
    assert str(last) in message and f"mv {last} {last}.damaged" in message and "\n" not in message
    os.replace(last, f"{last}.damaged")  # the advice, followed
    fit(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "DONE").is_file()


def test_a_full_disk_while_writing_an_hf_checkpoint_is_one_line_and_leaves_no_torn_directory(tmp_path, tokenizer, monkeypatch):
    """Fault injected at the write: safetensors writes part of the weights, then the disk is full
    (safetensors reports it in its own error type)."""
    from safetensors import SafetensorError

    from tests.conftest import make_model

    policy, path = make_model(tokenizer), tmp_path / "checkpoints" / "ckpt-1"

    def full(directory, **kwargs):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "model.safetensors").write_bytes(b"partial")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })")

    monkeypatch.setattr(policy, "save_pretrained", full)
    with pytest.raises(ck.DiskFullError) as err:
        ck.save_hf(policy, tokenizer, path, {"checkpoint": 1})
    message = str(err.value)
    assert f"no space left for checkpoint ckpt-1 in {path.parent}" in message and "no ckpt-1 was written" in message, message
    assert sorted(p.name for p in path.parent.iterdir()) == []  # neither the checkpoint nor its temporary
    monkeypatch.undo()
    ck.save_hf(policy, tokenizer, path, {"checkpoint": 1})  # with room again
    assert ck.is_complete(path)
