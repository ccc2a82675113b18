"""``python -m yfpo.neurons.ablate [overrides]``: does zeroing the selected neurons hurt math more
than zeroing as many random ones?

On held-out worked solutions (``ablate.data``) it reports the mean response log-likelihood per
token with no ablation, with the ``neurons.path`` set zeroed, and with ``ablate.random_draws``
random sets of the same size per layer zeroed; optionally greedy accuracy as well. The table
is printed and saved as ``<neurons.path stem>.ablation.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


def accuracy(model, tokenizer, ablate: DictConfig, template: str, rows: list[dict]) -> float:
    """Greedy accuracy on ``rows`` with the ``ablate`` group's budget and grader, prompts in ``template``."""
    prompts = [format_prompt(template, r["question"], None, tokenizer) for r in rows]
    outs = greedy_generate(model, tokenizer, prompts, ablate.max_new_tokens, ablate.batch_size)
    return sum(grade(ablate.task, o, gold_answer(ablate.task, r["answer"])) for o, r in zip(outs, rows)) / len(rows)


@dataclass(frozen=True)
class AblationJob:
    """What the ablation check reads: its config groups, and where the model is found and what it is called."""

    ablate: DictConfig     # the ablate group: held-out data, random draws, accuracy budget
    neurons: DictConfig    # the neurons group: the file to check and the key it must match
    model: DictConfig      # the model group: the model whose neurons are zeroed
    data: DictConfig       # the data group: the samples' prompt template and encoding
    logprobs: DictConfig   # the logprobs group: the chunk size of the log-likelihood
    synthetic: DictConfig  # the synthetic group: made first when the data or the model come from it
    hub: DictConfig        # the hub group: where models and data are read
    cache_dir: str
    model_tag: str


def ablate(job: AblationJob, overrides: list[str] = ()) -> dict:
    """The ablation table of the neuron file ``job.neurons.path``: printed, saved beside it, and returned."""
    ensure_synthetic(job.synthetic, job.ablate.data)
    path = ensure_model(job.model, cache_dir=job.cache_dir, hub_cfg=job.hub, syn=job.synthetic, overrides=list(overrides))
    tokenizer = load_tokenizer(job.model, path)
    model = load_model(job.model, path).to(device_for(job.neurons.device)).eval()
    c = model.config
    key = io.neuron_key(job.neurons, job.model_tag, weights_fingerprint(model), c, job.data.template, job.hub.mirror)
    selected = io.load_for(job.neurons, key, "the ablation", list(overrides))

    samples = math_samples(job.data, job.hub, tokenizer, job.ablate.data, job.ablate.num_samples, job.neurons.seed,
                           key="ablate.data")
    data = list(batches(samples, job.ablate.batch_size, tokenizer.pad_token_id, model.device))
    rows = (load_rows(job.ablate.data, hub=job.hub, key="ablate.data")[: job.ablate.accuracy_problems]
            if job.ablate.accuracy_problems else [])
    conditions = {"none": {}, f"selected ({selected.meta.get('selector', '?')})": selected.by_layer()}
    conditions.update({f"random #{k}": random_like(selected, c.intermediate_size, job.ablate.seed + k)
                       for k in range(job.ablate.random_draws)})
    results = {}
    for name, by_layer in conditions.items():
        with zeroed(model, by_layer):
            results[name] = {"loglik_per_token": loglik_per_token(model, data, job.logprobs.chunk_tokens)}
            if rows:
                results[name]["accuracy"] = accuracy(model, tokenizer, job.ablate, job.data.template, rows)
    base = results["none"]
    for r in results.values():
        r["delta_loglik"] = r["loglik_per_token"] - base["loglik_per_token"]
        if "accuracy" in r:
            r["delta_accuracy"] = r["accuracy"] - base["accuracy"]
    report = {"neurons": str(job.neurons.path), "k": len(selected), "model": job.model.name, "data": job.ablate.data,
              "num_samples": len(samples), "accuracy_problems": len(rows), "results": results}
    out = Path(job.neurons.path).with_suffix(".ablation.json")
    out.write_text(json.dumps(report, indent=2))
    cols = ["loglik_per_token", "delta_loglik"] + (["accuracy", "delta_accuracy"] if rows else [])
    print(f"\nzeroing {len(selected)} neurons of {job.model.name} on {len(samples)} held-out samples\n")
    print("condition".ljust(24) + "".join(col.rjust(18) for col in cols))
    for name, r in results.items():
        print(name.ljust(24) + "".join(f"{r[col]:18.4f}" for col in cols))
    print(f"\nsaved to {out}")
    return report


def main(argv: list[str]) -> None:
    def run() -> dict:
        cfg = compose_config(argv)  # the one place that sees the whole config: the job gets the groups it reads
        job = AblationJob(ablate=cfg.ablate, neurons=cfg.neurons, model=cfg.model, data=cfg.data, logprobs=cfg.logprobs,
                          synthetic=cfg.synthetic, hub=cfg.hub, cache_dir=cfg.cache_dir, model_tag=cfg.model_tag)
        return ablate(job, argv)

    run_cli(run)
