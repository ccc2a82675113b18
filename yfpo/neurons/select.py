"""Neuron selectors. Each returns a :class:`NeuronSet` of the global Top-K neurons.

Only the seeded ``random`` baseline lives here for now; AttnLRP and activation selectors plug in
beside it with the same signature (model, config) -> NeuronSet.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from yfpo.neurons.io import NeuronSet, top_k


def random_neurons(num_layers: int, intermediate_size: int, cfg: DictConfig) -> NeuronSet:
    """K neurons drawn uniformly without replacement, reproducible from ``cfg.seed``."""
    g = torch.Generator().manual_seed(int(cfg.seed))
    scores = torch.rand(num_layers, intermediate_size, generator=g)
    return NeuronSet(*top_k(scores, int(cfg.top_k)))


SELECTORS = {"random": random_neurons}
