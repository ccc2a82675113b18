"""The neuron-selection stage, ``python -m yfpo.neurons neurons=attnlrp|activation|random [overrides]``: write the neuron file.

Takes the same overrides as ``python -m yfpo.train``; it composes the config without a Hydra run
directory of its own. Besides ``neurons.path`` it writes ``<path>.png`` (selected neurons per
layer) and ``<path>.txt`` (a summary with throughput).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from yfpo.core import artefacts
from yfpo.core.config import compose_config
from yfpo.core.errors import run_cli
from yfpo.core.models import device_for, load_model, load_tokenizer, weights_fingerprint
from yfpo.assets.prepare import ensure_model, ensure_synthetic
from yfpo.neurons import io
from yfpo.neurons.attribution import ActivationStats
from yfpo.neurons.selectors import math_samples, scores_for
from yfpo.core.log import log


def plot_counts(neurons: io.NeuronSet, num_layers: int, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = torch.bincount(neurons.layers, minlength=num_layers).tolist()
    fig, ax = plt.subplots(figsize=(max(4, num_layers * 0.3), 3))
    ax.bar(range(num_layers), counts)
    ax.set(xlabel="layer", ylabel="selected neurons", title=title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


@dataclass(frozen=True)
class SelectionJob:
    """What the selection reads: its config groups, and where the model is found and what it is called."""

    neurons: DictConfig    # the neurons group: selector, samples, output path
    model: DictConfig      # the model group: the model to select in
    data: DictConfig       # the data group: the samples' prompt template and encoding
    synthetic: DictConfig  # the synthetic group: made first when the samples or the model come from it
    hub: DictConfig        # the hub group: where models and data are read
    cache_dir: str
    model_tag: str


def select(job: SelectionJob, overrides: list[str] = ()) -> Path:
    """Select neurons for ``job.model`` with ``job.neurons.selector`` and save them; a file already made
    with the same key (:func:`io.neuron_key`) is kept, one made with another is refused."""
    neurons = job.neurons
    out = Path(neurons.path)
    ensure_synthetic(job.synthetic, neurons.data)
    path = ensure_model(job.model, cache_dir=job.cache_dir, hub_cfg=job.hub, syn=job.synthetic, overrides=list(overrides))
    model = load_model(job.model, path)
    num_layers, width = model.config.num_hidden_layers, model.config.intermediate_size
    key = io.neuron_key(neurons, job.model_tag, weights_fingerprint(model), model.config, job.data.template, job.hub.mirror)
    fix = f"Recompute it with: {io.command(list(overrides), 'neurons.overwrite=true')}"
    if out.is_file() and not neurons.overwrite and artefacts.kept(out, key, f"neuron file {out}", fix,
                                                                  "neurons.overwrite=true recomputes it", io.load(out).meta):
        return out
    start = time.perf_counter()
    tokenizer = load_tokenizer(job.model, path)
    model = model.to(device_for(neurons.device)).eval()
    samples = math_samples(job.data, job.hub, tokenizer, neurons.data, neurons.num_samples, neurons.seed)
    # Every selector also measures the activation statistics of the normalised score
    # (docs/methods.md, "YFPO: the neuron margin").
    stats = ActivationStats(num_layers, width)
    scores = scores_for(model, samples, neurons, tokenizer.pad_token_id, stats)
    selected = io.NeuronSet(*io.top_k(scores, neurons.top_k))
    mean, std = stats.mean_std()
    selected.mean, selected.std = mean[selected.layers, selected.indices].float(), std[selected.layers, selected.indices].float()
    rate = f"{len(samples) / (time.perf_counter() - start):.2f} samples/s on {model.device}"
    meta = {**key, "samples_used": len(samples)}
    io.save(out, selected, **meta)
    counts = {l: len(i) for l, i in selected.by_layer().items()}
    top = ", ".join(f"({l},{i}) {s:.3g}" for l, i, s in zip(selected.layers[:10].tolist(), selected.indices[:10].tolist(),
                                                            selected.scores[:10].tolist()))
    summary = "\n".join([*(f"{k}: {v}" for k, v in meta.items()), f"throughput: {rate}",
                         f"per layer: {counts}", f"top 10 (layer,channel) score: {top}"])
    out.with_suffix(".txt").write_text(summary + "\n")
    plot_counts(selected, num_layers, f"{job.model.name}: top-{neurons.top_k} {neurons.selector}", out.with_suffix(".png"))
    log.info(f"wrote {len(selected)} {neurons.selector} neurons to {out}\n{summary}")
    return out


def main(argv: list[str]) -> None:
    def run() -> Path:
        cfg = compose_config(argv)  # the one place that sees the whole config: the job gets the groups it reads
        job = SelectionJob(neurons=cfg.neurons, model=cfg.model, data=cfg.data, synthetic=cfg.synthetic, hub=cfg.hub,
                           cache_dir=cfg.cache_dir, model_tag=cfg.model_tag)
        return select(job, argv)

    run_cli(run)
