"""``python -m yfpo.neurons.ablate [overrides]``: does zeroing the selected neurons hurt math more
than zeroing as many random ones?

On held-out worked solutions (``ablate.data``) it reports the mean response log-likelihood per
token with no ablation, with the ``neurons.path`` set zeroed, and with ``ablate.random_draws``
random sets of the same size per layer zeroed; optionally greedy accuracy as well. The table
is printed and saved as ``<neurons.path stem>.ablation.json``.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from yfpo.config import compose_config
from yfpo.data import format_prompt, load_rows
from yfpo.generation import greedy_generate
from yfpo.grading import gold_answer, grade
from yfpo.hooks import decoder_layers
from yfpo.losses import sequence_logps
from yfpo.models import ensure_model, ensure_synthetic, load_model, load_tokenizer
from yfpo.neurons import io
from yfpo.neurons.__main__ import device_for
from yfpo.neurons.select import batches, math_samples


@contextmanager
def zeroed(model: nn.Module, by_layer: dict[int, torch.Tensor]):
    """Within the block, the listed ``down_proj`` input channels are set to zero."""
    layers = decoder_layers(model)

    def hook_for(index):
        def hook(module, args):
            x = args[0].clone()
            x[..., index.to(x.device)] = 0
            return (x,)

        return hook

    handles = [layers[l].mlp.down_proj.register_forward_pre_hook(hook_for(i)) for l, i in by_layer.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def random_like(neurons: io.NeuronSet, width: int, seed: int) -> dict[int, torch.Tensor]:
    """As many random channels per layer as ``neurons`` has (so layers are matched), seeded."""
    g = torch.Generator().manual_seed(seed)
    return {l: torch.randperm(width, generator=g)[: len(i)] for l, i in neurons.by_layer().items()}


@torch.no_grad()
def loglik_per_token(model: nn.Module, data: list[dict]) -> float:
    total, tokens = 0.0, 0
    for b in data:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        total += sequence_logps(logits, b["input_ids"], b["response_mask"]).sum().item()
        tokens += b["response_mask"][:, 1:].sum().item()
    return total / tokens


def accuracy(model, tokenizer, cfg: DictConfig, rows: list[dict]) -> float:
    prompts = [format_prompt(cfg.data.template, r["question"], None, tokenizer) for r in rows]
    outs = greedy_generate(model, tokenizer, prompts, cfg.ablate.max_new_tokens, cfg.ablate.batch_size)
    return sum(grade(cfg.ablate.task, o, gold_answer(cfg.ablate.task, r["answer"])) for o, r in zip(outs, rows)) / len(rows)


def ablate(cfg: DictConfig) -> dict:
    a, n = cfg.ablate, cfg.neurons
    ensure_synthetic(cfg)
    path = ensure_model(cfg)
    tokenizer = load_tokenizer(cfg.model, path)
    model = load_model(cfg.model, path).to(device_for(n.device)).eval()
    c = model.config
    neurons = io.load_for(cfg, c, "the ablation")

    samples = math_samples(cfg, tokenizer, a.data, a.num_samples, key="ablate.data")
    data = list(batches(samples, a.batch_size, tokenizer.pad_token_id, model.device))
    rows = load_rows(a.data, hub=cfg.hub, key="ablate.data")[: a.accuracy_problems] if a.accuracy_problems else []
    conditions = {"none": {}, f"selected ({neurons.meta.get('selector', '?')})": neurons.by_layer()}
    conditions.update({f"random #{k}": random_like(neurons, c.intermediate_size, a.seed + k) for k in range(a.random_draws)})
    results = {}
    for name, by_layer in conditions.items():
        with zeroed(model, by_layer):
            results[name] = {"loglik_per_token": loglik_per_token(model, data)}
            if rows:
                results[name]["accuracy"] = accuracy(model, tokenizer, cfg, rows)
    base = results["none"]
    for r in results.values():
        r["delta_loglik"] = r["loglik_per_token"] - base["loglik_per_token"]
        if "accuracy" in r:
            r["delta_accuracy"] = r["accuracy"] - base["accuracy"]
    report = {"neurons": str(n.path), "k": len(neurons), "model": cfg.model.name, "data": a.data,
              "num_samples": len(samples), "accuracy_problems": len(rows), "results": results}
    out = Path(n.path).with_suffix(".ablation.json")
    out.write_text(json.dumps(report, indent=2))
    cols = ["loglik_per_token", "delta_loglik"] + (["accuracy", "delta_accuracy"] if rows else [])
    print(f"\nzeroing {len(neurons)} neurons of {cfg.model.name} on {len(samples)} held-out samples\n")
    print("condition".ljust(24) + "".join(col.rjust(18) for col in cols))
    for name, r in results.items():
        print(name.ljust(24) + "".join(f"{r[col]:18.4f}" for col in cols))
    print(f"\nsaved to {out}")
    return report


def main(argv: list[str]) -> None:
    ablate(compose_config(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
