"""``python -m yfpo.neurons.ablate [overrides]``: does zeroing the selected neurons hurt math more
than zeroing as many random ones?

On held-out worked solutions (``ablate.data``) it reports the mean response log-likelihood per
token with no ablation, with the ``neurons.path`` set zeroed, and with ``ablate.random_draws``
random sets of the same size per layer zeroed; optionally greedy accuracy as well. The table
is printed and saved as ``<neurons.path stem>.ablation.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from yfpo.core.config import compose_config
from yfpo.core.errors import run_cli
from yfpo.data.rows import load_rows
from yfpo.data.prompts import format_prompt
from yfpo.evaluate.generation import greedy_generate
from yfpo.evaluate.grading import gold_answer, grade
from yfpo.neurons.hooks import zeroed
from yfpo.train.logprobs import model_logps
from yfpo.core.models import load_model, load_tokenizer, weights_fingerprint
from yfpo.assets.prepare import ensure_model, ensure_synthetic
from yfpo.neurons import io
from yfpo.core.models import device_for
from yfpo.neurons.selectors import batches, math_samples


def random_like(neurons: io.NeuronSet, width: int, seed: int) -> dict[int, torch.Tensor]:
    """As many random channels per layer as ``neurons`` has (so layers are matched), seeded."""
    g = torch.Generator().manual_seed(seed)
    return {l: torch.randperm(width, generator=g)[: len(i)] for l, i in neurons.by_layer().items()}


@torch.no_grad()
def loglik_per_token(model: nn.Module, data: list[dict], chunk_tokens: int) -> float:
    total, tokens = 0.0, 0.0
    for b in data:
        out = model_logps(model, b, chunk_tokens)
        total += out.logps.sum().item()
        tokens += out.tokens.sum().item()
    return total / tokens


def accuracy(model, tokenizer, a: DictConfig, template: str, rows: list[dict]) -> float:
    """Greedy accuracy on ``rows`` with the ``ablate`` group's budget and grader, prompts in ``template``."""
    prompts = [format_prompt(template, r["question"], None, tokenizer) for r in rows]
    outs = greedy_generate(model, tokenizer, prompts, a.max_new_tokens, a.batch_size)
    return sum(grade(a.task, o, gold_answer(a.task, r["answer"])) for o, r in zip(outs, rows)) / len(rows)


def ablate(cfg: DictConfig, overrides: list[str] = ()) -> dict:
    a, n = cfg.ablate, cfg.neurons
    ensure_synthetic(cfg.synthetic, a.data)
    path = ensure_model(cfg.model, cache_dir=cfg.cache_dir, hub_cfg=cfg.hub, syn=cfg.synthetic, overrides=list(overrides))
    tokenizer = load_tokenizer(cfg.model, path)
    model = load_model(cfg.model, path).to(device_for(n.device)).eval()
    c = model.config
    key = io.neuron_key(n, cfg.model_tag, weights_fingerprint(model), c, cfg.data.template, cfg.hub.mirror)
    neurons = io.load_for(n, key, "the ablation", list(overrides))

    samples = math_samples(cfg.data, cfg.hub, tokenizer, a.data, a.num_samples, n.seed, key="ablate.data")
    data = list(batches(samples, a.batch_size, tokenizer.pad_token_id, model.device))
    rows = load_rows(a.data, hub=cfg.hub, key="ablate.data")[: a.accuracy_problems] if a.accuracy_problems else []
    conditions = {"none": {}, f"selected ({neurons.meta.get('selector', '?')})": neurons.by_layer()}
    conditions.update({f"random #{k}": random_like(neurons, c.intermediate_size, a.seed + k) for k in range(a.random_draws)})
    results = {}
    for name, by_layer in conditions.items():
        with zeroed(model, by_layer):
            results[name] = {"loglik_per_token": loglik_per_token(model, data, cfg.logprobs.chunk_tokens)}
            if rows:
                results[name]["accuracy"] = accuracy(model, tokenizer, a, cfg.data.template, rows)
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
    run_cli(lambda: ablate(compose_config(argv), argv))

