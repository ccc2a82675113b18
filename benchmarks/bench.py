"""yfpo against TRL's ``DPOTrainer``: step time and peak memory on the same model and token ids.

    python -m benchmarks.bench                     # the full run (part of `make bench`), ~10 min on 2 CPU cores
    python -m benchmarks.bench --chunk-tokens 128,512,2048   # also yfpo DPO with other LM-head chunks
    python -m benchmarks.bench --quick             # the harness on a tiny vocabulary, one variant pair

The model is a randomly initialised Qwen2-architecture LM built in-process (4 layers, hidden 256,
intermediate 1024, 4 heads / 2 KV heads, Qwen2's 151,936-token vocabulary, tied embeddings as in
Qwen2-0.5B, fp32), trained on 2 preference pairs of random token ids (prompt ~64 tokens,
chosen/rejected responses of unequal lengths, the longest sequence 256 tokens).

Every measurement runs in a fresh subprocess (``--worker``), so the peak memory of one variant
never includes another's. A step is forward + backward + an AdamW step, each side with the
optimizer its trainer builds by default (TRL: ``trainer.create_optimizer()``, transformers'
``adamw_torch_fused``; yfpo: ``yfpo.train.module.build_optimizer``, fused AdamW): TRL's
``trainer.compute_loss(model, batch)`` on ``trainer.data_collator``'s batch, and
yfpo's ``PolicyModule.compute_loss`` on ``yfpo.data.encode.collate``'s batch, both built from the
same ids (TRL tokenizes the rows with a word-level tokenizer whose token ``t<i>`` is id ``i``;
the worker asserts that the ids TRL trains on are exactly yfpo's). Before anything is timed, a
parity worker checks that both sides give the same loss (live and precomputed reference).

Peak memory growth = ``ru_maxrss`` - RSS before the first step, where the kernel's high-water
mark (which ``ru_maxrss`` reports) is reset to the current RSS through ``/proc/self/clear_refs``
right before the first step, and again after each backward and each optimizer step: so the
peak of forward + backward and the peak of the AdamW step are known apart, and their maximum is
the peak growth during the steps. It includes what the first step allocates for good: gradients
and AdamW state (3 x the parameters' size, the same on both sides). The sequence-length sweep
reports the peak of the first forward + backward (no AdamW state yet), so what grows with the
length stands out. Step time is wall-clock; each worker also records its CPU time per step and
the share of wall time in which the machine's CPUs were contended (Linux PSI).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RESULT_TAG = "BENCH_RESULT "
EOS = "<|endoftext|>"
GB = 1e9

# Qwen2-0.5B's vocabulary and tied head on a 4-layer, 256-wide body.
FULL_ARCH = dict(vocab_size=151_936, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2)
QUICK_ARCH = dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
BETA, LAMBDA, NEURONS, LR = 0.1, 0.1, 1024, 1e-6  # YFPO: lambda 0.1, the paper's Top-1024 (random here)

# (label, worker spec) of the main table; "ref" is the reference: live model or precomputed log-probs.
VARIANTS = {
    "trl_live": ("TRL DPO (live ref)", dict(kind="trl", pre=False)),
    "trl_pre": ("TRL DPO (precomputed ref)", dict(kind="trl", pre=True)),
    "yfpo_dpo": ("yfpo DPO (live ref)", dict(kind="yfpo", method="dpo", pre=False)),
    "yfpo_dpo_pre": ("yfpo DPO (precomputed ref)", dict(kind="yfpo", method="dpo", pre=True)),
    "yfpo_yfpo": (f"yfpo YFPO (lambda {LAMBDA}, {NEURONS} neurons)", dict(kind="yfpo", method="yfpo", pre=False)),
    "yfpo_fdt": ("yfpo FDT (live ref)", dict(kind="yfpo", method="fdt", pre=False)),
}
QUICK_VARIANTS = ("trl_live", "yfpo_dpo")


# --- data: the same token ids for both sides -------------------------------------------------------
def eos_id(vocab: int) -> int:
    return min(151_643, vocab - 1)  # Qwen2's <|endoftext|> id on the full vocabulary


def pair_shapes(seq_len: int) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts of the 2 pairs; the longest sequence has ``seq_len`` tokens.

    At 256: (64, 192, 163) and (56, 180, 200): unequal responses both ways and unequal prompts.
    """
    p0 = seq_len // 4
    p1 = p0 - seq_len // 32
    r0, r1 = seq_len - p0, seq_len - p1
    return [(p0, r0, round(0.85 * r0)), (p1, round(0.9 * r1), r1)]


def make_pairs(seq_len: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) random token ids; responses end with EOS (TRL would append one)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    eos = eos_id(vocab)
    ids = lambda n: torch.randint(0, eos, (n,), generator=g).tolist()  # noqa: E731 (never the EOS id)
    return [(ids(p), ids(c - 1) + [eos], ids(r - 1) + [eos]) for p, c, r in pair_shapes(seq_len)]


def yfpo_rows(pairs) -> list:
    """The pairs as yfpo's encoded training rows (row ``i`` = pair ``i``)."""
    from yfpo.data.encode import Encoded  # imports torch: only where yfpo runs

    return [Encoded(prompt=p, chosen=c, rejected=r, index=i) for i, (p, c, r) in enumerate(pairs)]


def yfpo_batch(pairs, vocab: int) -> dict:
    """yfpo's batch: :func:`yfpo.data.encode.collate` of :func:`yfpo_rows`."""
    from yfpo.data.encode import collate

    return collate(yfpo_rows(pairs), eos_id(vocab))


def word_tokenizer(vocab: int):
    """A word-level tokenizer whose word ``t<i>`` is token ``i`` (EOS at :func:`eos_id`): text made by
    :func:`to_text` tokenizes back to exactly those ids, so TRL's own pipeline sees yfpo's ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    eos = eos_id(vocab)
    words = {f"t{i}": i for i in range(vocab) if i != eos}
    words[EOS] = eos
    tok = Tokenizer(models.WordLevel(words, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def to_text(ids: list[int], vocab: int) -> str:
    eos = eos_id(vocab)
    return " ".join(EOS if i == eos else f"t{i}" for i in ids)


def build_policy(tokenizer, arch: dict, seed: int):
    from yfpo.assets import tiny

    if len(tokenizer) != arch["vocab_size"]:
        raise AssertionError(f"tokenizer has {len(tokenizer)} tokens, the model {arch['vocab_size']}")
    body = {k: v for k, v in arch.items() if k != "vocab_size"}  # the vocabulary comes from the tokenizer
    return tiny.build_model(tokenizer, seed=seed, attn_implementation="sdpa", **body)


# --- worker side ----------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (``ru_maxrss``) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_pressure_us() -> int | None:
    """Total microseconds some task waited for a CPU (Linux PSI), or None where PSI is unavailable."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().split("total=")[1])
    except (OSError, IndexError, ValueError):
        return None


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def make_trl(policy, ref, rows: list[dict], tokenizer, pre: bool, out_dir: str):
    import datasets
    import trl

    args = trl.DPOConfig(output_dir=out_dir, beta=BETA, learning_rate=LR, report_to=[], per_device_train_batch_size=len(rows),
                         max_length=None, use_cpu=True, bf16=False, gradient_checkpointing=False,
                         precompute_ref_log_probs=pre, disable_tqdm=True)
    return trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=datasets.Dataset.from_list(rows),
                          processing_class=tokenizer)


def trl_batch(trainer, pairs) -> dict:
    """TRL's collated batch of its own tokenized rows, after checking they hold exactly ``pairs``' ids."""
    examples = [trainer.train_dataset[i] for i in range(len(pairs))]
    for i, (ex, pair) in enumerate(zip(examples, pairs)):
        if (ex["prompt_ids"], ex["chosen_ids"], ex["rejected_ids"]) != tuple(pair):
            raise AssertionError(f"TRL tokenized pair {i} differently from yfpo's ids")
    return trainer.data_collator(examples)


def trl_rows(pairs, vocab: int) -> list[dict]:
    return [{"prompt": to_text(p, vocab), "chosen": " " + to_text(c, vocab), "rejected": " " + to_text(r, vocab)}
            for p, c, r in pairs]


def make_yfpo(policy, method: str, pre: bool, chunk_tokens: int, arch: dict, pairs: list, reference=None):
    """yfpo's module as training sets it up: with ``pre``, the reference table of ``pairs`` comes from
    ``PolicyModule.reference_table``, the production path (from ``reference``'s weights when given,
    for the parity check, else from the policy before its first step), before ``setup("fit")``, which
    then only registers the neuron hooks (YFPO)."""
    import torch

    from yfpo.core.config import compose_config
    from yfpo.train.module import PolicyModule
    from yfpo.neurons.io import NeuronSet

    cfg = compose_config([f"method={method}", f"optim.lr={LR}"])
    neurons = None
    if method == "yfpo":
        width, layers = arch["intermediate_size"], arch["num_hidden_layers"]
        k = min(NEURONS, width * layers // 4)
        flat = torch.randperm(width * layers, generator=torch.Generator().manual_seed(0))[:k]
        neurons = NeuronSet(flat // width, flat % width, torch.ones(k))
    module = PolicyModule(policy, cfg.method, cfg.optim, beta=BETA, lam=LAMBDA if method == "yfpo" else 0.0,
                          neurons=neurons, reference="precompute" if pre else "live", chunk_tokens=chunk_tokens)
    if pre:
        from yfpo.data.encode import collate

        scorer = module if reference is None else PolicyModule(reference, cfg.method, cfg.optim, beta=BETA, lam=0.0,
                                                               reference="precompute", chunk_tokens=chunk_tokens)
        rows = yfpo_rows(pairs)
        module.ref_table = scorer.reference_table(rows, lambda b: collate(b, eos_id(arch["vocab_size"])), len(rows),
                                                  next(policy.parameters()).device)  # what setup("fit") assigns
    module.setup("fit")
    return module


def worker_parity(spec: dict) -> dict:
    """Loss of yfpo and of TRL on the same ids, with a reference that differs from the policy."""
    import torch

    arch, vocab = spec["arch"], spec["arch"]["vocab_size"]
    tokenizer = word_tokenizer(vocab)
    pairs = make_pairs(spec["seq_len"], vocab)
    policy, ref = build_policy(tokenizer, arch, 0), build_policy(tokenizer, arch, 1)
    batch = yfpo_batch(pairs, vocab)
    live = make_yfpo(policy, "dpo", False, spec["chunk_tokens"], arch, pairs)
    live.reference.load_state_dict(ref.state_dict())
    pre = make_yfpo(policy, "dpo", True, spec["chunk_tokens"], arch, pairs, reference=ref)
    with torch.no_grad():
        y_live = live.compute_loss(batch)[0].item()
        y_pre = pre.compute_loss(batch)[0].item()
    table = pre.ref_table
    out = {"yfpo_live": y_live, "yfpo_pre": y_pre}
    with tempfile.TemporaryDirectory() as tmp:
        for pre in (False, True):
            trainer = make_trl(policy, ref, trl_rows(pairs, vocab), tokenizer, pre, tmp)
            b = trl_batch(trainer, pairs)
            policy.train()
            with torch.no_grad():
                out["trl_pre" if pre else "trl_live"] = trainer.compute_loss(policy, b).item()
            if pre:  # TRL's cached reference log-probs against yfpo's table
                theirs = torch.stack([b["ref_chosen_logps"], b["ref_rejected_logps"]], dim=1).float()
                out["ref_logps_max_abs_diff"] = (theirs - table[: len(pairs)]).abs().max().item()
    out["live_abs_diff"] = abs(out["yfpo_live"] - out["trl_live"])
    out["pre_abs_diff"] = abs(out["yfpo_pre"] - out["trl_pre"])
    return out


def worker_measure(spec: dict) -> dict:
    """Set up one variant, then time ``warmup + steps`` steps and take the peak RSS growth over them."""
    import torch

    arch, vocab, kind = spec["arch"], spec["arch"]["vocab_size"], spec["kind"]
    tokenizer = word_tokenizer(vocab)
    pairs = make_pairs(spec["seq_len"], vocab)
    policy = build_policy(tokenizer, arch, 0)
    tmp = tempfile.TemporaryDirectory()
    if kind == "trl":
        # Live: a frozen copy as the reference (TRL 1.16 needs it passed for an in-memory model).
        # Precomputed: no ref_model, so TRL scores the reference with the initial policy and holds one model.
        ref = None if spec["pre"] else copy.deepcopy(policy).requires_grad_(False).eval()
        trainer = make_trl(policy, ref, trl_rows(pairs, vocab), tokenizer, spec["pre"], tmp.name)
        batch = trl_batch(trainer, pairs)
        policy.train()
        loss_fn = lambda: trainer.compute_loss(policy, batch)  # noqa: E731
        tokens = int(batch["attention_mask"].sum())
    elif kind == "yfpo":
        batch = yfpo_batch(pairs, vocab)
        module = make_yfpo(policy, spec["method"], spec["pre"], spec["chunk_tokens"], arch, pairs)
        loss_fn = lambda: module.compute_loss(batch)[0]  # noqa: E731
        tokens = batch["num_tokens"]
    elif kind == "backbone":  # the decoder alone, no LM head: what memory growth cannot go below
        batch = yfpo_batch(pairs, vocab)
        loss_fn = lambda: policy.model(input_ids=batch["input_ids"],  # noqa: E731
                                       attention_mask=batch["attention_mask"]).last_hidden_state.float().square().mean()
        tokens = batch["num_tokens"]
    else:
        raise ValueError(f"unknown kind {kind!r}")
    if kind == "trl":
        opt = trainer.create_optimizer()
    else:
        from yfpo.core.config import compose_config
        from yfpo.train.module import build_optimizer

        optim = compose_config([f"optim.lr={LR}"]).optim
        opt = build_optimizer(policy, optim, fused=optim.fused)
    optimizer = f"{type(opt).__name__}(fused={opt.defaults.get('fused')}, foreach={opt.defaults.get('foreach')})"
    torch.set_num_threads(spec["threads"])  # again: nothing above may have changed it
    gc.collect()
    base = rss_bytes()
    exact = reset_peak()
    base_max = max_rss_bytes()
    times, cpu, losses, load = [], [], [], os.getloadavg()[0]
    peak_fb = peak_opt = 0
    for i in range(spec["warmup"] + spec["steps"]):
        if i == spec["warmup"]:
            wait0, wall0 = cpu_pressure_us(), time.perf_counter()
        t0, c0 = time.perf_counter(), time.process_time()
        loss = loss_fn()
        loss.backward()
        if exact:  # the peak of forward + backward, then the high-water mark starts again for the optimizer step
            peak_fb = max(peak_fb, max_rss_bytes() - base)
            reset_peak()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if exact:
            peak_opt = max(peak_opt, max_rss_bytes() - base)
            reset_peak()
        losses.append(loss.item())
    peak = max(peak_fb, peak_opt) if exact else max_rss_bytes() - base
    wait1 = cpu_pressure_us()
    # Share of the timed steps' wall time during which some task on the machine waited for a CPU:
    # ~0 when nothing else ran, near 1 when the cores were contended (the times are then inflated).
    contention = None if wait0 is None or wait1 is None else (wait1 - wait0) / 1e6 / (time.perf_counter() - wall0)
    timed = times[spec["warmup"]:]
    tmp.cleanup()
    return {"step_s": statistics.median(timed), "step_times_s": times, "step_cpu_s": cpu, "cpu_wait_share": contention,
            "peak_growth_bytes": peak, "peak_forward_backward_bytes": peak_fb if exact else None,
            "peak_optimizer_bytes": peak_opt if exact else None,
            "peak_exact": exact and base_max <= base + 4 * 2**20, "rss_before_bytes": base, "tokens": tokens,
            "loss_first": losses[0], "optimizer": optimizer, "threads": torch.get_num_threads(), "load_start": load,
            "params": sum(p.numel() for p in policy.parameters())}


def worker_main(spec: dict) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    result = worker_parity(spec) if spec["kind"] == "parity" else worker_measure(spec)
    print(RESULT_TAG + json.dumps(result), flush=True)


# --- driver side ----------------------------------------------------------------------------------
def run_worker(spec: dict, timeout: float | None = None) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as cache:
        env["HF_DATASETS_CACHE"] = cache  # TRL's precomputed reference log-probs are cached here
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench", "--worker", json.dumps(spec)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=timeout)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_TAG)]
    if proc.returncode or not lines:
        raise RuntimeError(f"worker {spec['kind']} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_TAG):])


def run_workers(specs: list[dict], jobs: int) -> list[dict]:
    """:func:`run_worker` of each spec, ``jobs`` at a time (only ``--quick`` runs more than one at a time)."""
    if jobs <= 1:
        return [run_worker(s) for s in specs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(run_worker, specs))


def machine_info(threads: int) -> dict:
    from importlib.metadata import version  # not imported here: the driver stays light

    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), platform.processor())
    mem = next((int(l.split()[1]) * 1024 for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), 0)
    return {"cpu": model, "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "ram_bytes": mem, "torch": version("torch"), "transformers": version("transformers"),
            "trl": version("trl"), "python": platform.python_version(), "threads": threads,
            "load_before": list(os.getloadavg())}


def fmt_gb(b: float | None) -> str:
    return "-" if b is None else f"{b / GB:.2f} GB"


def fmt_peak(r: dict) -> str:
    """Peak growth of a worker result; '>=' where the high-water mark could not be reset (a lower bound)."""
    return ("" if r["peak_exact"] else ">=") + fmt_gb(r["peak_growth_bytes"])


def fmt_share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def fmt_x(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def ratio(a, b):
    return None if a is None or b is None or not b else a / b


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def fwd_bwd_bytes(r: dict) -> int:
    """Peak growth of a worker result's forward + backward; its whole peak where that was not measured apart."""
    fb = r.get("peak_forward_backward_bytes")
    return r["peak_growth_bytes"] if fb is None else fb


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares bytes per 1k tokens of sequence length."""
    if len(points) < 2:
        return None
    xs, ys = [p[0] / 1000 for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def plot_memory_vs_length(result: dict, out: Path) -> Path:
    """Draw the memory-vs-length sweep of a saved result (``benchmarks/results/<date>.json``): peak
    growth of the first forward + backward against the longest sequence, yfpo DPO, TRL DPO and the
    decoder alone, with fp32 ``[2B, L, V]`` logits for scale. Returns ``out`` (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = result["sweep"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, label, style in (("trl", "TRL 1.16 DPOTrainer", "s--"), ("yfpo_dpo", "yfpo DPO", "o-"),
                              ("backbone", "decoder alone (no LM head)", "^:")):
        points = sorted((int(L), fwd_bwd_bytes(r) / 1e9) for L, r in sweep[key].items())
        if points:
            ax.plot(*zip(*points), style, label=label)
    lengths = sorted(int(L) for L in sweep["lengths"])
    ax.plot(lengths, [sweep["fp32_logits_bytes_per_1k"] * L / 1000 / 1e9 for L in lengths], color="grey", lw=0.8,
            label="fp32 [2B, L, V] logits alone")
    ax.set(xlabel="longest sequence L (tokens)", ylabel="peak memory growth, forward + backward (GB)",
           title=f"Memory vs length, DPO step (V = {result['model']['vocab_size']:,}); {result['date'][:10]}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(L) for L in lengths])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, result["command"], fontsize=6, color="grey")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


@dataclass
class Plan:
    """What a run measures, from its command line: the model, the main table's batch and timing, the sweep."""

    arch: dict
    seq_len: int  # the longest sequence of the main table's batch
    steps: int  # timed steps per variant, after ``warmup`` untimed ones
    warmup: int
    chunks: list[int]  # yfpo logprobs.chunk_tokens: the first for every yfpo worker, the others add rows
    lengths: list[int]  # the memory sweep's longest sequences (none: no sweep)
    threads: int  # torch.set_num_threads in every worker

    @property
    def base(self) -> dict:
        """The part of every worker's spec that all workers share."""
        return dict(arch=self.arch, threads=self.threads, chunk_tokens=self.chunks[0])

    @property
    def params(self) -> int:
        """The model's weights, about: embeddings (the tied head), attention and MLP; norms and biases left out."""
        a, h = self.arch, self.arch["hidden_size"]
        attention = h ** 2 * 2 + 2 * h ** 2 * a["num_key_value_heads"] // a["num_attention_heads"]  # q, o; k, v
        return a["vocab_size"] * h + a["num_hidden_layers"] * (attention + 3 * h * a["intermediate_size"])

    @property
    def logits_bytes_per_1k(self) -> int:
        """Bytes of fp32 ``[2B = 4, 1k, V]`` logits: what a full-logits LM head adds per 1k tokens of length."""
        return 4 * 1000 * self.arch["vocab_size"] * 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; exits with a usage error on an impossible timing (unless only plotting or a worker)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny vocabulary, TRL DPO vs yfpo DPO only, 1 step, no sweep")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant after the warm-up (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch.set_num_threads in every worker")
    ap.add_argument("--seq-len", type=int, default=256, help="longest sequence of the main table's batch")
    ap.add_argument("--chunk-tokens", default=None,
                    help="yfpo logprobs.chunk_tokens (default: conf/config.yaml's); a comma list adds 'yfpo DPO (chunk N)' rows for the others")
    ap.add_argument("--lengths", default="256,512,1024,2048", help="sequence lengths of the memory sweep ('' skips it)")
    ap.add_argument("--max-step-s", type=float, default=120.0,
                    help="skip a TRL sweep point whose step would take longer (extrapolated from the last point)")
    ap.add_argument("--out", default=None, help="JSON results (default: benchmarks/results/<date>.json; --quick: none)")
    ap.add_argument("--plot", type=Path, default=None, metavar="RESULT_JSON",
                    help="only draw the memory-vs-length sweep of a saved result, beside it as .png")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not (args.plot or args.worker) and (args.steps < 1 or args.warmup < 0):
        ap.error("--steps must be >= 1 and --warmup >= 0")
    return args


def plan_of(args: argparse.Namespace) -> Plan:
    """The run the arguments ask for; ``--quick``: a tiny model, one step without warm-up, no sweep."""
    chunk_tokens = args.chunk_tokens
    if chunk_tokens is None:
        from yfpo.core.config import compose_config

        chunk_tokens = str(compose_config([]).logprobs.chunk_tokens)
    steps, warmup = (1, 0) if args.quick else (args.steps, args.warmup)
    return Plan(arch=QUICK_ARCH if args.quick else FULL_ARCH, seq_len=64 if args.quick else args.seq_len,
                steps=steps, warmup=warmup, chunks=[int(c) for c in chunk_tokens.split(",") if c.strip()],
                lengths=[] if args.quick else [int(x) for x in args.lengths.split(",") if x.strip()],
                threads=args.threads)


def print_setup(plan: Plan, info: dict) -> None:
    """The header: the machine, the model, the batch and how a step is measured."""
    arch, steps, warmup = plan.arch, plan.steps, plan.warmup
    print("yfpo vs TRL DPOTrainer: step time and peak memory, one fresh process per variant")
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
          f"{info['ram_bytes'] / 2**30:.0f} GiB RAM; python {info['python']}, torch {info['torch']}, "
          f"transformers {info['transformers']}, trl {info['trl']}; torch.set_num_threads({plan.threads}); "
          f"load average before: {' '.join(f'{x:.2f}' for x in info['load_before'])}")
    print(f"model: random Qwen2 architecture, {arch['num_hidden_layers']} layers, hidden {arch['hidden_size']}, "
          f"intermediate {arch['intermediate_size']}, {arch['num_attention_heads']} heads / "
          f"{arch['num_key_value_heads']} KV heads, vocab {arch['vocab_size']:,}, tied embeddings, fp32, sdpa "
          f"(~{plan.params / 1e6:.1f}M parameters)")
    print(f"batch: 2 pairs of random token ids, (prompt, chosen, rejected) tokens {pair_shapes(plan.seq_len)}, padded to "
          f"{plan.seq_len}; beta {BETA}; AdamW lr {LR} as each trainer builds it by default; yfpo logprobs.chunk_tokens "
          f"{plan.chunks[0]}")
    print(f"step: forward + backward + AdamW step; time = median of {steps} step(s) after {warmup} warm-up; "
          "memory = peak RSS growth over all steps: ru_maxrss after the steps - RSS before the first step, the "
          "high-water mark reset to the current RSS (/proc/self/clear_refs) just before it; it includes the "
          "gradients and AdamW state the first step allocates (the same on both sides)")


def variants_of(plan: Plan, quick: bool) -> list[tuple[str, str, dict]]:
    """(name, label, worker spec) of the main table's rows, in the order they are measured: :data:`VARIANTS`
    (``--quick``: :data:`QUICK_VARIANTS`), then yfpo DPO with each further LM-head chunk."""
    names = QUICK_VARIANTS if quick else tuple(VARIANTS)
    rows = [(n, VARIANTS[n][0], VARIANTS[n][1]) for n in names]
    rows += [(f"yfpo_dpo_chunk{c}", f"yfpo DPO (live ref, chunk {c})", dict(kind="yfpo", method="dpo", pre=False,
                                                                           chunk_tokens=c)) for c in plan.chunks[1:]]
    return [(name, label, {**plan.base, **spec, "seq_len": plan.seq_len, "steps": plan.steps, "warmup": plan.warmup})
            for name, label, spec in rows]


def run_parity(plan: Plan, variants: list[tuple[str, str, dict]], quick: bool) -> tuple[dict, list[dict] | None]:
    """The parity worker's result, and (``--quick`` only) every variant's, all run at once with it;
    a full run measures the variants one at a time later (None)."""
    parity_spec = {**plan.base, "kind": "parity", "seq_len": plan.seq_len}
    if not quick:
        return run_worker(parity_spec), None
    # The harness only: all workers at once, so nothing below is a measurement.
    parity, *measured = run_workers([parity_spec] + [spec for _, _, spec in variants], jobs=len(variants) + 1)
    print("\n--quick: the workers ran concurrently on a tiny model; the numbers below only show the harness works")
    return parity, measured


def check_parity(parity: dict) -> bool:
    """Print whether both sides compute the same loss on the same ids (live and precomputed reference)."""
    ok = parity["live_abs_diff"] <= 1e-4 and parity["pre_abs_diff"] <= 1e-4
    print(f"\nparity (policy seed 0, reference seed 1, same ids): live ref: yfpo {parity['yfpo_live']:.6f}, "
          f"TRL {parity['trl_live']:.6f}, |diff| {parity['live_abs_diff']:.1e}; precomputed ref: yfpo "
          f"{parity['yfpo_pre']:.6f}, TRL {parity['trl_pre']:.6f}, |diff| {parity['pre_abs_diff']:.1e} "
          f"(reference log-probs max |diff| {parity['ref_logps_max_abs_diff']:.1e}) -> "
          f"{'OK (<= 1e-4)' if ok else 'MISMATCH'}")
    if not ok:
        print("the two sides do not compute the same loss: nothing timed")
    return ok


def measure_variants(variants: list[tuple[str, str, dict]], measured: list[dict] | None) -> dict:
    """Each variant's worker result with its label, by name: measured now, one fresh process at a time
    in the order given, unless ``measured`` already holds them (``--quick``)."""
    results = {}
    for i, (name, label, spec) in enumerate(variants):
        r = measured[i] if measured else run_worker(spec)
        results[name] = {"label": label, **r}
        print(f"  measured {label}: {r['step_s']:.2f} s, {fmt_peak(r)}; {r['optimizer']}", flush=True)
    return results


def print_variants(results: dict, warmup: int) -> None:
    """The main table: each variant's step time, throughput and peak memory, and both against TRL's live DPO."""
    trl_live = results["trl_live"]
    rows = []
    for r in results.values():
        timed = r["step_times_s"][warmup:]
        rows.append([r["label"], f"{r['step_s']:.2f} s", f"{min(timed):.2f}-{max(timed):.2f} s",
                     f"{r['tokens'] / r['step_s']:.0f}", fmt_peak(r),
                     fmt_gb(r["peak_forward_backward_bytes"]), fmt_gb(r["peak_optimizer_bytes"]),
                     fmt_x(ratio(r["step_s"], trl_live["step_s"])),
                     fmt_x(ratio(r["peak_growth_bytes"], trl_live["peak_growth_bytes"])), f"{r['load_start']:.2f}",
                     fmt_share(r["cpu_wait_share"])])
    print()
    print(table(["variant", "step time", "range", "tokens/s", "peak mem growth", "in fwd+bwd", "in AdamW step",
                 "time vs TRL live", "mem vs TRL live", "load", "cpu wait"], rows))
    state = 3 * trl_live["params"] * 4
    print(f"step time: median of the timed steps (range: their min-max). "
          f"peak mem growth = max(in fwd+bwd, in AdamW step), each over all steps. Common to both sides: gradients + "
          f"AdamW state = 3 x {trl_live['params'] / 1e6:.1f}M x 4 B = {fmt_gb(state)}, held from the first AdamW step "
          "on, plus the AdamW step's own temporaries.\nload: 1-min load average when the variant's steps started; "
          "cpu wait: share of its timed steps' wall time in which some task waited for a CPU (Linux PSI; ~0: the "
          "cores were not contended, the times are clean)")


def ratios_of(results: dict) -> dict:
    """The headline ratios between variants; None where a variant was not measured (``--quick``)."""
    get = lambda n, k: results[n][k] if n in results else None  # noqa: E731
    return {
        "yfpo_dpo_vs_trl_time": ratio(get("yfpo_dpo", "step_s"), get("trl_live", "step_s")),
        "yfpo_dpo_vs_trl_memory": ratio(get("yfpo_dpo", "peak_growth_bytes"), get("trl_live", "peak_growth_bytes")),
        "yfpo_pre_vs_trl_pre_time": ratio(get("yfpo_dpo_pre", "step_s"), get("trl_pre", "step_s")),
        "yfpo_pre_vs_trl_pre_memory": ratio(get("yfpo_dpo_pre", "peak_growth_bytes"),
                                            get("trl_pre", "peak_growth_bytes")),
        "yfpo_pre_throughput_vs_live": ratio(get("yfpo_dpo", "step_s"), get("yfpo_dpo_pre", "step_s")),
        "trl_pre_throughput_vs_live": ratio(get("trl_live", "step_s"), get("trl_pre", "step_s")),
        "yfpo_vs_dpo_time": ratio(get("yfpo_yfpo", "step_s"), get("yfpo_dpo", "step_s")),
        "fdt_vs_dpo_time": ratio(get("yfpo_fdt", "step_s"), get("yfpo_dpo", "step_s")),
    }


def print_ratios(ratios: dict) -> None:
    """The ratios, '-' where not measured."""
    print("\nratios:")
    print(f"  yfpo DPO / TRL DPO (live ref):        time {fmt_x(ratios['yfpo_dpo_vs_trl_time'])}, "
          f"peak memory {fmt_x(ratios['yfpo_dpo_vs_trl_memory'])}")
    print(f"  yfpo DPO / TRL DPO (precomputed ref): time {fmt_x(ratios['yfpo_pre_vs_trl_pre_time'])}, "
          f"peak memory {fmt_x(ratios['yfpo_pre_vs_trl_pre_memory'])}")
    print(f"  throughput, precomputed / live ref:   yfpo {fmt_x(ratios['yfpo_pre_throughput_vs_live'])}, "
          f"TRL {fmt_x(ratios['trl_pre_throughput_vs_live'])}")
    print(f"  step time vs yfpo DPO:                YFPO {fmt_x(ratios['yfpo_vs_dpo_time'])}, "
          f"FDT {fmt_x(ratios['fdt_vs_dpo_time'])}")


def memory_vs_length(plan: Plan, max_step_s: float, quick: bool) -> dict:
    """The sweep over :attr:`Plan.lengths` (DPO, live reference, one step per point), printed: each
    point's worker results by side, the TRL points skipped as too slow, and each side's slope."""
    sweep = {"lengths": plan.lengths, "yfpo_dpo": {}, "trl": {}, "backbone": {}, "trl_skipped": {}}
    if not plan.lengths:
        print("\nmemory vs sequence length: skipped" + (" (--quick)" if quick else ""))
        return sweep
    print("\nmemory vs sequence length (DPO, live ref, 2 pairs, the longest row L tokens; one step per point, no "
          "warm-up). Peak growth during the first forward + backward: activations, the LM head's buffers and "
          "the gradients; AdamW state is not allocated yet, so what grows with L stands out.", flush=True)
    measure_lengths(plan, max_step_s, sweep)
    for key in ("yfpo_dpo", "trl", "backbone"):
        sweep[f"{key}_slope_bytes_per_1k"] = slope([(L, fwd_bwd_bytes(r)) for L, r in sweep[key].items()])
    print_sweep(sweep, plan.logits_bytes_per_1k)
    return sweep


def measure_lengths(plan: Plan, max_step_s: float, sweep: dict) -> None:
    """Fill ``sweep`` with yfpo DPO, the decoder alone and TRL DPO at each length, in that order; a TRL
    point whose step would take over ``max_step_s`` (extrapolated from the last TRL point) is skipped."""
    last_trl = None
    for L in plan.lengths:
        for key, spec in (("yfpo_dpo", dict(kind="yfpo", method="dpo", pre=False)),
                          ("backbone", dict(kind="backbone"))):
            sweep[key][L] = run_worker({**plan.base, **spec, "seq_len": L, "steps": 1, "warmup": 0})
        guess = None if last_trl is None else last_trl[1]["step_s"] * L / last_trl[0] * 1.2
        if guess is not None and guess > max_step_s:
            sweep["trl_skipped"][L] = (f"skipped: ~{guess:.0f} s/step expected ({last_trl[1]['step_s']:.0f} s at "
                                       f"{last_trl[0]}) > --max-step-s {max_step_s:.0f}")
        else:
            sweep["trl"][L] = run_worker({**plan.base, "kind": "trl", "pre": False, "seq_len": L, "steps": 1,
                                          "warmup": 0}, timeout=max(300.0, 4 * max_step_s))
            last_trl = (L, sweep["trl"][L])
        print(f"  measured L={L}", flush=True)


def print_sweep(sweep: dict, logits_per_1k: int) -> None:
    """The sweep's table and slopes, against fp32 ``[2B, L, V]`` logits (``logits_per_1k`` bytes per 1k tokens)."""
    rows = []
    for L in sweep["lengths"]:
        y, t, bb = sweep["yfpo_dpo"][L], sweep["trl"].get(L), sweep["backbone"][L]
        rows.append([str(L), fmt_gb(fwd_bwd_bytes(y)), fmt_gb(fwd_bwd_bytes(t)) if t else sweep["trl_skipped"][L],
                     fmt_gb(fwd_bwd_bytes(bb)), fmt_gb(logits_per_1k * L / 1000), f"{y['step_s']:.1f} s",
                     f"{t['step_s']:.1f} s" if t else "-"])
    print(table(["tokens L", "yfpo DPO", "TRL DPO", "backbone only (no LM head)", "fp32 [2B,L,V] logits",
                 "yfpo 1st step", "TRL 1st step"], rows))
    ys, ts, bs = (sweep[f"{k}_slope_bytes_per_1k"] for k in ("yfpo_dpo", "trl", "backbone"))
    print(f"slope per 1k tokens of L (least squares): yfpo DPO {fmt_gb(ys)}, TRL DPO {fmt_gb(ts)}, backbone only "
          f"{fmt_gb(bs)}; fp32 [2B,L,V] logits alone would add {fmt_gb(logits_per_1k)}. yfpo/TRL "
          f"{fmt_x(ratio(ys, ts))}, yfpo/backbone {fmt_x(ratio(ys, bs))}, yfpo/logits {fmt_x(ratio(ys, logits_per_1k))}")


def target(results: dict, name: str, value, limit: float, higher: bool = False, share: bool = False,
           timed=()) -> dict:
    """One target: PASS if ``value`` is at most ``limit`` (``higher``: at least), n/a if not measured; its
    shown value warns when the steps of the ``timed`` variants it compares were contended."""
    status = "n/a" if value is None else ("PASS" if (value >= limit if higher else value <= limit) else "MISS")
    shown = "-" if value is None else (f"{value:.2f}" if share else fmt_x(value))
    waits = [results[n]["cpu_wait_share"] for n in timed if n in results and results[n]["cpu_wait_share"] is not None]
    if value is not None and waits and max(waits) > 0.1:  # another process took CPU time during these steps
        shown += f" (times contended: cpu wait up to {fmt_share(max(waits))}; re-run on an idle machine)"
    return {"target": name, "value": value, "limit": limit, "status": status, "shown": shown}


def targets_of(results: dict, ratios: dict, sweep: dict) -> list[dict]:
    """The targets yfpo is held to, each with its status, from the ratios and the sweep's slopes."""
    targets = [
        target(results, "DPO peak memory <= 0.5x TRL's", ratios["yfpo_dpo_vs_trl_memory"], 0.5),
        target(results, "DPO step time <= 1.0x TRL's", ratios["yfpo_dpo_vs_trl_time"], 1.0,
               timed=("yfpo_dpo", "trl_live")),
        target(results, "precomputed-reference DPO >= 1.4x the throughput of live DPO",
               ratios["yfpo_pre_throughput_vs_live"], 1.4, higher=True, timed=("yfpo_dpo", "yfpo_dpo_pre")),
        target(results, "YFPO <= 1.05x DPO step time", ratios["yfpo_vs_dpo_time"], 1.05, timed=("yfpo_dpo", "yfpo_yfpo")),
        target(results, "FDT <= 1.10x DPO step time", ratios["fdt_vs_dpo_time"], 1.10, timed=("yfpo_dpo", "yfpo_fdt")),
    ]
    ys, bs = sweep.get("yfpo_dpo_slope_bytes_per_1k"), sweep.get("backbone_slope_bytes_per_1k")
    # "Dominated by the backbone": the decoder alone accounts for at least half of yfpo's growth per token.
    head_share = None if ys is None or bs is None else max(0.0, (ys - bs) / ys) if ys > 0 else 0.0
    targets.append(target(results, "memory growth with length dominated by the backbone: share of yfpo's slope not "
                                   "explained by the backbone alone <= 0.5", head_share, 0.5, share=True))
    return targets


def print_targets(targets: list[dict]) -> None:
    """One line a target: its status, what it asks and the measured value."""
    print("\ntargets:")
    for t in targets:
        print(f"  [{t['status']}] {t['target']}: {t['shown']}")


def closing_load(t_start: float) -> tuple[list[float], float]:
    """The load averages after the run and its wall time in seconds since ``t_start``, printed."""
    load_after = list(os.getloadavg())
    wall = time.perf_counter() - t_start
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in load_after)}; wall time {wall / 60:.1f} min")
    return load_after, wall


def result_of(plan: Plan, command: str, machine: dict, parity: dict, results: dict, ratios: dict, sweep: dict,
              targets: list[dict], wall: float) -> dict:
    """The run as saved: its settings, every worker result, the ratios and targets."""
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "command": command, "machine": machine,
            "model": {**plan.arch, "tie_word_embeddings": True, "dtype": "float32", "params": plan.params},
            "batch": {"pairs": pair_shapes(plan.seq_len), "seq_len": plan.seq_len, "beta": BETA, "lambda": LAMBDA,
                      "neurons": NEURONS, "chunk_tokens": plan.chunks},
            "timing": {"steps": plan.steps, "warmup": plan.warmup, "statistic": "median"},
            "memory_method": "ru_maxrss after the steps - RSS before the first step, high-water mark reset "
                             "via /proc/self/clear_refs before the first step",
            "parity": parity, "variants": results, "ratios": ratios,
            "sweep": {**sweep, "fp32_logits_bytes_per_1k": plan.logits_bytes_per_1k}, "targets": targets,
            "wall_s": wall}


def save_result(out: str, result: dict) -> None:
    """Write ``result`` as JSON to ``out``, with its memory-vs-length plot beside it when it has a sweep."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    if result["sweep"]["lengths"]:
        print(f"saved {plot_result(Path(out))}")
    print(f"saved {Path(out).resolve().relative_to(ROOT) if Path(out).resolve().is_relative_to(ROOT) else out}")


def plot_result(path: Path) -> Path:
    """:func:`plot_memory_vs_length` of the result saved at ``path``, beside it as ``.png``."""
    return plot_memory_vs_length(json.loads(path.read_text()), path.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    """The benchmark, step by step (or only ``--plot``, or one ``--worker``); 1 if the two sides disagree."""
    args = parse_args(argv)
    if args.plot:
        print(f"saved {plot_result(args.plot)}")
        return 0
    if args.worker:
        worker_main(json.loads(args.worker))
        return 0
    t_start = time.perf_counter()
    plan = plan_of(args)
    machine = machine_info(args.threads)
    print_setup(plan, machine)
    variants = variants_of(plan, args.quick)
    parity, measured = run_parity(plan, variants, args.quick)  # before anything is timed
    if not check_parity(parity):
        return 1
    results = measure_variants(variants, measured)
    print_variants(results, plan.warmup)
    ratios = ratios_of(results)
    print_ratios(ratios)
    sweep = memory_vs_length(plan, args.max_step_s, args.quick)
    targets = targets_of(results, ratios, sweep)
    print_targets(targets)
    load_after, wall = closing_load(t_start)
    out = args.out or (None if args.quick else str(RESULTS / f"{dt.date.today().isoformat()}.json"))
    if out:
        command = "python -m benchmarks.bench " + " ".join(sys.argv[1:] if argv is None else argv)
        save_result(out, result_of(plan, command, {**machine, "load_after": load_after}, parity, results, ratios,
                                   sweep, targets, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
