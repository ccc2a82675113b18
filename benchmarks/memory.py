"""Host memory of training at the paper model's true size, against the floor it cannot go below.

    python -m benchmarks.memory            # Qwen2-0.5B shape, DPO and YFPO (~5 min and ~11 GB of RAM on 2 CPU cores)
    python -m benchmarks.memory --quick    # the harness on a tiny model (seconds)

Each method runs ``python -m yfpo.train`` as users do (fp32 master weights, a live fp32 reference,
fused AdamW), for 2 optimizer steps of one pair and one resume point (``last.ckpt``) at the end.
The precision is ``bf16-mixed`` where the CPU multiplies bf16 natively (AVX512-BF16 or AMX), else
``32-true``: without them a bf16 matmul is emulated, about 75x slower than fp32 (0.54 against 41
GFLOP/s measured on an AVX2 machine), and a 0.5B step would take an hour. The floor is the same
in both: autocast keeps fp32 master weights. A sampler reads the process's resident memory (VmRSS) every 50 ms and files each sample under
the phase the run is in, told by the temporary files it writes: ``last.ckpt.tmp`` (the resume
point being written), ``ckpt-1.tmp`` (the HF checkpoint), otherwise training.

The floor is what must be resident at once: the policy's fp32 weights, their gradients and AdamW's
two moments (4 + 4 + 8 bytes a parameter) and the frozen reference in its dtype (4 bytes in fp32).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def floor_bytes(params: int, master: str = "float32", reference: str | None = "float32") -> dict:
    """The resident floor of a training step, by part (bytes): weights and gradients in the master
    dtype, AdamW's two fp32 moments, and a live reference (``None``: precomputed, not resident)."""
    parts = {"weights": params * BYTES[master], "gradients": params * BYTES[master], "adamw": params * 8,
             "reference": params * BYTES[reference] if reference else 0}
    return {**parts, "total": sum(parts.values())}


def checkpoint_bytes(params: int) -> int:
    """``last.ckpt``: fp32 weights and AdamW's two moments (the reference is not saved)."""
    return params * (4 + 8)


def rss(pid: int, children: bool = True) -> int:
    """Resident bytes (VmRSS) of a process and, with ``children``, of every process it started
    (a vLLM engine, a DDP rank); 0 once it is gone."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total = int(line.split()[1]) * 1024
        if children:
            for task in Path(f"/proc/{pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    total += rss(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def phase(ckpts: Path) -> str:
    if (ckpts / "last.ckpt.tmp").exists():
        return "save"
    if any(ckpts.glob("ckpt-*.tmp")):
        return "export"
    return "train"


def run_measured(cmd: list[str], run_dir: Path, env: dict, cwd: Path = ROOT) -> dict:
    """Run ``cmd`` and return the peak RSS of its process tree per phase (bytes) and its wall time."""
    peaks: dict[str, int] = {}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    start = time.perf_counter()
    while proc.poll() is None:
        r, p = rss(proc.pid), phase(run_dir / "checkpoints")
        peaks[p] = max(peaks.get(p, 0), r)
        time.sleep(0.05)
    reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(out)[-3000:]}")
    return {"peak": peaks, "wall_s": round(time.perf_counter() - start, 1)}


def native_bf16() -> bool:
    """Does this CPU multiply bf16 in hardware (AVX512-BF16 or AMX)?"""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pairs_file(path: Path, n: int, words: int) -> Path:
    """``n`` preference rows whose responses run to about ``words`` words (to fill ``data.max_length``)."""
    body = " ".join(f"{i} + {i + 1} = {2 * i + 1}." for i in range(words // 4))
    rows = []
    for k in range(n):  # Math-Step-DPO-10K's fields
        chosen, rejected = f"{body} The answer is: {2 * k + 1}", f"{body} The answer is: {2 * k + 2}"
        rows.append({"dataset": "toy", "prompt": f"What is {k} + {k + 1}?", "initial_reason_steps": "", "chosen": chosen,
                     "rejected": rejected, "full_chosen": chosen, "full_rejected": rejected, "answer": str(2 * k + 1)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny model: checks the harness, not the figures")
    ap.add_argument("--methods", default="dpo,yfpo")
    ap.add_argument("--max-length", type=int, default=64, help="tokens per sequence (the floor does not depend on it)")
    ap.add_argument("--precision", default=None, help="trainer.precision (default: bf16-mixed where the CPU has bf16 matmuls, else 32-true)")
    ap.add_argument("--out", default=None, help="JSON results (default: benchmarks/results/memory-<date>.json; --quick: none)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="yfpo-memory-") as tmp:  # ~16 GB of weights and checkpoints
        return measure(args, Path(tmp))


def measure(args, work: Path) -> int:
    from benchmarks import paper_models

    arch = paper_models.QUICK if args.quick else paper_models.QWEN2_0_5B
    params = paper_models.count_parameters(arch)
    floor = floor_bytes(params)
    model = paper_models.write_model(work / "model", arch)
    data = pairs_file(work / "pairs.jsonl", 8, args.max_length)
    env = {**os.environ, "YFPO_CACHE": str(work / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    precision = args.precision or ("bf16-mixed" if native_bf16() else "32-true")
    common = ["model=qwen2-0.5b", f"model.path={model}", "model.prepare=null", f"data.path={data}",
              f"data.max_length={args.max_length}", "data.max_prompt_length=16", "data.batch_size=1", "data.global_batch_size=1",
              "trainer.max_steps=2", f"trainer.precision={precision}", "checkpoints.count=1", "checkpoints.resume_every_n_steps=2",
              "trainer.enable_progress_bar=false", "neurons.num_samples=2", "neurons.selector=random"]
    top_k = f"model.neuron_top_k={min(1024, arch['num_hidden_layers'] * arch['intermediate_size'])}"  # the paper's Top-1024
    # torch, transformers, Lightning, yfpo: resident before any model (VmRSS: ru_maxrss would carry
    # this process's own peak across the fork)
    imports = subprocess.run([sys.executable, "-c", "import yfpo.train.fit; from benchmarks.memory import rss; import os; "
                              "print(rss(os.getpid(), children=False))"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    libraries = int(imports.stdout.split()[-1])
    results = []
    for method in args.methods.split(","):
        if method == "yfpo":  # its neuron file first (random: the margin's cost does not depend on which neurons)
            done = subprocess.run([sys.executable, "-m", "yfpo.neurons", *common, top_k], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"python -m yfpo.neurons failed:\n{done.stderr[-3000:]}")
        run_dir = work / f"run-{method}"
        cmd = [sys.executable, "-m", "yfpo.train", *common, f"method={method}", top_k,
               f"hydra.run.dir={run_dir}"]
        r = run_measured(cmd, run_dir, env)
        ckpt = (run_dir / "checkpoints" / "last.ckpt").stat().st_size
        results.append({"method": method, **r, "last_ckpt_bytes": ckpt})
        print(f"{method}: peak RSS train {r['peak'].get('train', 0) / 1e9:.2f} GB, save {r['peak'].get('save', 0) / 1e9:.2f} GB, "
              f"export {r['peak'].get('export', 0) / 1e9:.2f} GB; floor {floor['total'] / 1e9:.2f} GB; "
              f"last.ckpt {ckpt / 1e9:.2f} GB; {r['wall_s']} s", flush=True)
    report = {"date": dt.date.today().isoformat(), "command": "python -m benchmarks.memory" + (" --quick" * args.quick),
              "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
              "precision": precision, "parameters": params, "floor": floor, "libraries_bytes": libraries, "checkpoint_bytes_expected": checkpoint_bytes(params), "runs": results}
    print(table(report))
    if not args.quick or args.out:
        out = Path(args.out or ROOT / "benchmarks" / "results" / f"memory-{report['date']}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"results: {out}")
    return 0


def table(report: dict) -> str:
    f = report["floor"]["total"]
    rows = [f"{report['precision']}; floor {f / 1e9:.2f} GB for {report['parameters']:,} parameters; the libraries alone hold "
            f"{report['libraries_bytes'] / 1e9:.2f} GB", "","| method | phase | peak RSS (GB) | floor (GB) | peak / floor |", "| --- | --- | ---: | ---: | ---: |"]
    for r in report["runs"]:
        for ph in ("train", "save", "export"):
            if ph in r["peak"]:
                rows.append(f"| {r['method']} | {ph} | {r['peak'][ph] / 1e9:.2f} | {f / 1e9:.2f} | {r['peak'][ph] / f:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
