"""The neuron-selection stage, ``python -m yfpo.neurons neurons=attnlrp|activation|random [overrides]``: write the neuron file.

Takes the same overrides as ``python -m yfpo.train``; it composes the config without a Hydra run
directory of its own. Besides ``neurons.path`` it writes ``<path>.png`` (selected neurons per
layer) and ``<path>.txt`` (a summary with throughput).
"""

from __future__ import annotations

import time
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


def select(cfg: DictConfig, overrides: list[str] = ()) -> Path:
    """Select neurons for ``cfg.model`` with ``cfg.neurons.selector`` and save them; a file already made
    with the same key (:func:`io.neuron_key`) is kept, one made with another is refused."""
    n = cfg.neurons
    out = Path(n.path)
    ensure_synthetic(cfg.synthetic, n.data)
    path = ensure_model(cfg.model, cache_dir=cfg.cache_dir, hub_cfg=cfg.hub, syn=cfg.synthetic, overrides=list(overrides))
    model = load_model(cfg.model, path)
    num_layers, width = model.config.num_hidden_layers, model.config.intermediate_size
    key = io.neuron_key(n, cfg.model_tag, weights_fingerprint(model), model.config, cfg.data.template, cfg.hub.mirror)
    fix = f"Recompute it with: {io.command(list(overrides), 'neurons.overwrite=true')}"
    if out.is_file() and not n.overwrite and artefacts.kept(out, key, f"neuron file {out}", fix,
                                                            "neurons.overwrite=true recomputes it", io.load(out).meta):
        return out
    start = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model, path)
    model = model.to(device_for(n.device)).eval()
    samples = math_samples(cfg.data, cfg.hub, tokenizer, n.data, n.num_samples, n.seed)
    # Every selector also measures the activation statistics of the normalised score
    # (docs/methods.md, "YFPO: the neuron margin").
    stats = ActivationStats(num_layers, width)
    scores = scores_for(model, samples, n, tokenizer.pad_token_id, stats)
    neurons = io.NeuronSet(*io.top_k(scores, n.top_k))
    mean, std = stats.mean_std()
    neurons.mean, neurons.std = mean[neurons.layers, neurons.indices].float(), std[neurons.layers, neurons.indices].float()
    rate = f"{len(samples) / (time.perf_counter() - start):.2f} samples/s on {model.device}"
    meta = {**key, "samples_used": len(samples)}
    io.save(out, neurons, **meta)
    counts = {l: len(i) for l, i in neurons.by_layer().items()}
    top = ", ".join(f"({l},{i}) {s:.3g}" for l, i, s in zip(neurons.layers[:10].tolist(), neurons.indices[:10].tolist(), neurons.scores[:10].tolist()))
    summary = "\n".join([*(f"{k}: {v}" for k, v in meta.items()), f"throughput: {rate}",
                         f"per layer: {counts}", f"top 10 (layer,channel) score: {top}"])
    out.with_suffix(".txt").write_text(summary + "\n")
    plot_counts(neurons, num_layers, f"{cfg.model.name}: top-{n.top_k} {n.selector}", out.with_suffix(".png"))
    log.info(f"wrote {len(neurons)} {n.selector} neurons to {out}\n{summary}")
    return out


def main(argv: list[str]) -> None:
    run_cli(lambda: select(compose_config(argv), argv))

