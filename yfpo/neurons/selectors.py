"""Neuron selectors: each returns the global Top-K as a :class:`NeuronSet`.

- ``attnlrp``: summed ``|a x grad|`` under lxt's AttnLRP (or CP-LRP) rules (the paper's choice);
- ``activation``: summed ``|a|`` on the same samples, no LRP (a baseline);
- ``random``: uniform without replacement, seeded (the control).
"""

from __future__ import annotations

from typing import Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from yfpo.data.encode import Encoded, Encoder, collate, to_device
from yfpo.data.rows import load_rows, subset
from yfpo.neurons.attribution import ActivationStats, activation_scores, lrp_scores
from yfpo.neurons.io import NeuronSet, top_k



def random_scores(num_layers: int, intermediate_size: int, seed: int) -> torch.Tensor:
    """Seeded uniform noise as scores: their Top-K is K neurons drawn uniformly without replacement."""
    return torch.rand(num_layers, intermediate_size, generator=torch.Generator().manual_seed(int(seed)))


def random_neurons(num_layers: int, intermediate_size: int, neurons: DictConfig) -> NeuronSet:
    """K neurons drawn uniformly without replacement, reproducible from ``neurons.seed`` (``neurons``: the ``neurons`` group)."""
    return NeuronSet(*top_k(random_scores(num_layers, intermediate_size, neurons.seed), int(neurons.top_k)))


def math_samples(data: DictConfig, hub: DictConfig, tokenizer, source: str, count: int, seed: int,
                 key: str = "neurons.data") -> list[Encoded]:
    """``count`` samples (question + correct worked solution) from ``source``, drawn with ``seed``.

    GSM8K-layout rows give (question, answer); Math-Step-DPO-layout rows give (prompt with
    ``initial_reason_steps``, ``full_chosen``). Prompts use the ``data`` group's template.
    """
    rows = load_rows(source, hub=hub, key=key)
    rows = subset(rows, min(count, len(rows)), int(seed))
    encoder = Encoder(OmegaConf.merge(data, {"pair_mode": "full", "append_eos": True}), tokenizer)
    if "question" in rows[0]:
        return encoder.encode_all(rows, "sft", source)
    return [Encoded(e.prompt, e.chosen) for e in encoder.encode_all(rows, "pairs", source)]


def batches(samples: list[Encoded], batch_size: int, pad_id: int, device: torch.device) -> Iterator[dict]:
    """Length-sorted batches (little padding), in a fixed order."""
    ordered = sorted(samples, key=lambda e: len(e.prompt) + len(e.chosen))
    for i in range(0, len(ordered), batch_size):
        yield to_device(collate(ordered[i : i + batch_size], pad_id), device)


def scores_for(model, samples: list[Encoded], neurons: DictConfig, pad_id: int,
               stats: ActivationStats | None = None) -> torch.Tensor:
    """``[num_layers, intermediate_size]`` scores of ``neurons.selector`` (``neurons``: the ``neurons`` group;
    ``attnlrp``, ``activation``, or ``random``, whose scores are seeded noise); ``stats`` collects
    the activations' mean and std."""
    selector = neurons.selector
    device = next(model.parameters()).device
    total = -(-len(samples) // neurons.batch_size)
    data = batches(samples, neurons.batch_size, pad_id, device)
    if selector == "attnlrp":
        return lrp_scores(model, data, neurons.lrp_variant, total, stats)
    scores = activation_scores(model, data, total, stats)  # activation, or random (checked by selection.select)
    return random_scores(*scores.shape, neurons.seed) if selector == "random" else scores
