"""One GPU, the paper model's true shape (Qwen2-0.5B, random weights): what only a GPU shows.

    python -m benchmarks.gpu              # `make bench-gpu`: at most ~10 min on one GPU
    python -m benchmarks.gpu --dry-run    # the same plumbing at tiny size on a CPU (seconds; no vLLM engine)

1. bf16 training steps (fp32 master weights under bf16 autocast, as ``trainer.precision=bf16-mixed``)
   of yfpo's DPO, YFPO (λ 0.1, Top-1024 random neurons) and FDT, and of TRL's ``DPOTrainer``
   (``bf16=True``) on the same token ids: tokens/s, MFU and peak GPU memory
   (``torch.cuda.max_memory_allocated``). MFU counts 8 N FLOPs a token (policy forward and
   backward, 6 N; live reference forward, 2 N), N the matmul parameters, the tied head included;
   attention's own FLOPs are left out (small at these lengths), so it is a lower bound.
2. vLLM greedy decoding on GSM8K-length prompts: output tokens/s.
3. hf and vLLM on the same prompts in bf16: the share of identical greedy outputs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import bench, paper_models

ROOT = Path(__file__).resolve().parent.parent
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense bf16, SXM figures
VARIANTS = (("TRL DPO", "trl", "dpo"), ("yfpo DPO", "yfpo", "dpo"), ("yfpo YFPO", "yfpo", "yfpo"), ("yfpo FDT", "yfpo", "fdt"))


def matmul_params(arch: dict) -> int:
    """Parameters that take part in a matmul per token: all but the norms, the embedding counted once
    as the tied head (its lookup is not a matmul)."""
    return paper_models.count_parameters(arch) - arch["hidden_size"] * (2 * arch["num_hidden_layers"] + 1)


def mfu(tokens_per_s: float, arch: dict, peak_tflops: float | None) -> float | None:
    return None if not peak_tflops else 8 * matmul_params(arch) * tokens_per_s / (peak_tflops * 1e12)


def peak_tflops_of(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def train_step_fn(kind: str, method: str, arch: dict, pairs, device, out_dir: str):
    """(step, tokens): one forward + backward + AdamW step of one variant on ``pairs`` (TRL's
    trainer wants an ``out_dir``; nothing is saved there)."""
    import torch

    vocab = arch["vocab_size"]
    tokenizer = bench.word_tokenizer(vocab)
    policy = bench.build_policy(tokenizer, arch, 0)
    if kind == "trl":
        import copy

        import datasets
        import trl

        ref = copy.deepcopy(policy).requires_grad_(False).eval()
        args = trl.DPOConfig(output_dir=out_dir, beta=bench.BETA, learning_rate=bench.LR, report_to=[],
                             per_device_train_batch_size=len(pairs), max_length=None, use_cpu=device.type == "cpu",
                             bf16=device.type == "cuda", gradient_checkpointing=False, disable_tqdm=True)
        trainer = trl.DPOTrainer(model=policy.to(device), ref_model=ref.to(device), args=args, processing_class=tokenizer,
                                 train_dataset=datasets.Dataset.from_list(bench.trl_rows(pairs, vocab)))
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in bench.trl_batch(trainer, pairs).items()}
        opt, loss_fn, tokens = trainer.create_optimizer(), (lambda: trainer.compute_loss(policy, batch)), int(batch["attention_mask"].sum())
    else:
        from yfpo.core.config import compose_config
        from yfpo.train.module import build_optimizer

        batch = bench.yfpo_batch(pairs, vocab)
        module = bench.make_yfpo(policy, method, False, 2048, arch, pairs).to(device)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        optim = compose_config([f"optim.lr={bench.LR}"]).optim
        opt, tokens = build_optimizer(policy, optim, fused=optim.fused and device.type == "cuda"), batch["num_tokens"]
        loss_fn = lambda: module.compute_loss(batch)[0]  # noqa: E731
    policy.train()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):  # TRL's bf16=True autocasts too
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, tokens


def measure_training(arch: dict, seq_len: int, pairs_n: int, steps: int, device) -> list[dict]:
    import torch

    pairs = [p for seed in range(pairs_n // 2) for p in bench.make_pairs(seq_len, arch["vocab_size"], seed)]
    peak = peak_tflops_of(torch.cuda.get_device_name() if device.type == "cuda" else "")
    rows = []
    for label, kind, method in VARIANTS:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as out_dir:
            step, tokens = train_step_fn(kind, method, arch, pairs, device, out_dir)
            step()  # warm-up: kernels chosen, AdamW state allocated
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = step()
            sync()
        per_step = (time.perf_counter() - t0) / steps
        rows.append({"variant": label, "tokens_per_step": tokens, "step_s": per_step, "tokens_per_s": tokens / per_step,
                     "mfu": mfu(tokens / per_step, arch, peak), "loss": float(loss.detach()),
                     "peak_gpu_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None})
        del step
        print(f"{label}: {tokens / per_step:,.0f} tokens/s" + (f", MFU {rows[-1]['mfu']:.1%}" if rows[-1]["mfu"] else ""), flush=True)
    return rows


def gsm8k_length_prompts(n: int) -> list[str]:
    """Prompts of GSM8K's length (~60 words after Step-DPO's alpaca template)."""
    from yfpo.data.prompts import format_prompt

    q = ("Natalia sold clips to {i} of her friends in April, and then she sold half as many clips in May. "
         "How many clips did Natalia sell altogether in April and May if each friend bought {j} clips and "
         "she kept {k} for herself at the end of the month?")
    return [format_prompt("alpaca", q.format(i=40 + i, j=2 + i % 5, k=i % 7), None) for i in range(n)]


def measure_vllm(model_dir: Path, prompts: list[str], max_tokens: int) -> dict:
    """vLLM greedy throughput and its agreement with hf's greedy outputs, both in bf16."""
    import torch
    import vllm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = vllm.LLM(model=str(model_dir), dtype="bfloat16", seed=0, enforce_eager=False)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate(prompts[:4], params)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    wall = time.perf_counter() - t0
    generated = sum(len(o.outputs[0].token_ids) for o in outs)
    del llm
    torch.cuda.empty_cache()
    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
    same, k = 0, min(32, len(prompts))
    for p, o in zip(prompts[:k], outs[:k]):
        ids = tok(p, return_tensors="pt").input_ids.cuda()
        g = hf.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
        same += g == list(o.outputs[0].token_ids[:32])
    return {"prompts": len(prompts), "output_tokens_per_s": generated / wall, "wall_s": wall,
            "hf_vllm_identical_first_32_tokens": same / k, "compared": k, "vllm": vllm.__version__}


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny model on the CPU: the plumbing, no figures, no vLLM engine")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--pairs", type=int, default=8, help="pairs per step")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu: no CUDA GPU here; run it where one is, or pass --dry-run for the plumbing on a CPU")
    device = torch.device("cpu" if args.dry_run else "cuda")
    arch = {**bench.QUICK_ARCH} if args.dry_run else {**paper_models.QWEN2_0_5B}
    seq_len, steps = (64, 1) if args.dry_run else (args.seq_len, args.steps)
    report = {"date": dt.date.today().isoformat(), "command": "python -m benchmarks.gpu" + " --dry-run" * args.dry_run,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "arch": arch,
              "training": measure_training(arch, seq_len, args.pairs, steps, device)}
    prompts = gsm8k_length_prompts(8 if args.dry_run else args.prompts)
    if args.dry_run:
        report["vllm"] = f"not started in --dry-run ({len(prompts)} prompts built); the complete test tier runs the engine"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            report["vllm"] = measure_vllm(paper_models.write_model(Path(tmp) / "model", arch), prompts, 256)
    print(json.dumps(report, indent=2))
    if not args.dry_run or args.out:
        out = Path(args.out or ROOT / "benchmarks" / "results" / f"gpu-{report['date']}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
