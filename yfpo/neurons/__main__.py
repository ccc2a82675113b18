"""``python -m yfpo.neurons neurons=random neurons.top_k=K``: write the neuron file ``neurons.path``.

Takes the same overrides as ``python -m yfpo.train``; it composes the config without a Hydra run
directory of its own, since its only output is the neuron file.
"""

from __future__ import annotations

from pathlib import Path

import sys

from omegaconf import DictConfig
from transformers import AutoConfig

from yfpo.config import compose_config
from yfpo.models import ensure_model
from yfpo.neurons import io
from yfpo.neurons.select import SELECTORS


def select(cfg: DictConfig) -> Path:
    """Select neurons for ``cfg.model`` with ``cfg.neurons.selector`` and save them; skip if present."""
    n = cfg.neurons
    out = Path(n.path)
    if out.is_file() and not n.overwrite:
        print(f"[yfpo] neuron file {out} exists; keeping it (neurons.overwrite=true recomputes it)")
        return out
    if n.selector not in SELECTORS:
        raise ValueError(f"neurons.selector={n.selector!r} is not available here; choose one of {sorted(SELECTORS)}")
    config = AutoConfig.from_pretrained(str(ensure_model(cfg)), trust_remote_code=cfg.model.trust_remote_code)
    neurons = SELECTORS[n.selector](config.num_hidden_layers, config.intermediate_size, n)
    io.save(
        out, neurons, model=cfg.model.name, num_layers=config.num_hidden_layers,
        intermediate_size=config.intermediate_size, selector=n.selector, top_k=n.top_k,
        data=n.get("data", ""), num_samples=n.get("num_samples", 0), seed=n.seed,
    )
    counts = {l: len(i) for l, i in neurons.by_layer().items()}
    print(f"[yfpo] wrote {len(neurons)} {n.selector} neurons to {out}; per layer: {counts}")
    return out


def main(argv: list[str]) -> None:
    select(compose_config(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
