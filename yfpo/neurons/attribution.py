"""Per-neuron scores at the input of every ``mlp.down_proj``, summed over response tokens and samples.

``S[l, i] = sum_samples sum_{t in T(y)} |R[l, i, t]|`` with ``R = a * grad`` under the AttnLRP rules
(:func:`lrp_scores`), or ``|a|`` for the activation baseline (:func:`activation_scores`). Only the
running ``[num_layers, intermediate_size]`` sums are kept, never full relevance tensors.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from yfpo.neurons.hooks import down_proj_hooks
from yfpo.neurons.lxt_compat import lrp_patched

Batch = dict[str, torch.Tensor]


class _DownProjInputs:
    """Keeps the input of each layer's ``down_proj`` (``[B, T, I]``), optionally retaining its gradient."""

    def __init__(self, retain_grad: bool):
        self.retain_grad = retain_grad
        self.inputs: dict[int, torch.Tensor] = {}

    def __call__(self, layer: int, x: torch.Tensor) -> None:
        if self.retain_grad:
            x.retain_grad()
        self.inputs[layer] = x


class ActivationStats:
    """Running mean and standard deviation of every ``down_proj`` input channel over response tokens
    (``[num_layers, intermediate_size]``, float64): the ``mu_i``, ``sigma_i`` of the normalised score
    (docs/methods.md, "YFPO: the neuron margin")."""

    def __init__(self, num_layers: int, width: int):
        self.sum = torch.zeros(num_layers, width, dtype=torch.float64)
        self.sumsq = torch.zeros(num_layers, width, dtype=torch.float64)
        self.tokens = 0

    def add(self, inputs: dict[int, torch.Tensor], response_mask: torch.Tensor) -> None:
        """One batch: ``inputs[layer]`` ``[B, T, I]``, ``response_mask`` ``[B, T]`` (True at response tokens)."""
        mask = response_mask.unsqueeze(-1).to(torch.float64)
        for layer, a in inputs.items():
            a = a.detach().double() * mask
            self.sum[layer] += a.sum(dim=(0, 1)).cpu()
            self.sumsq[layer] += a.square().sum(dim=(0, 1)).cpu()
        self.tokens += int(response_mask.sum())

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)``; a channel that never varies gets ``sigma = 1`` (its standardised value is constant)."""
        n = max(self.tokens, 1)
        mean = self.sum / n
        std = (self.sumsq / n - mean.square()).clamp(min=0).sqrt()
        return mean, torch.where(std > 0, std, torch.ones_like(std))


def _shape(model: nn.Module) -> tuple[int, int]:
    c = model.config
    return c.num_hidden_layers, c.intermediate_size


def target_logits(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the logits of the true next tokens at the response positions (the output relevance)."""
    picked = logits[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (picked * response_mask[:, 1:]).sum()


def lrp_scores(model: nn.Module, batches: Iterable[Batch], variant: str = "attnlrp", total: int | None = None,
               stats: ActivationStats | None = None) -> torch.Tensor:
    """``[num_layers, intermediate_size]`` summed ``|activation x gradient|`` under LRP rules.

    One forward and one backward per batch. Parameters get no gradients (frozen for the duration).
    ``stats`` also collects the activations' mean and std (LRP rules leave forward values as they are).
    """
    scores = torch.zeros(_shape(model), dtype=torch.float64)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        rec = _DownProjInputs(retain_grad=True)
        with lrp_patched(model, variant), down_proj_hooks(model, rec):
            for batch in tqdm(batches, total=total, desc=f"{variant} relevance", unit="batch"):
                ids, attn, resp = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
                embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
                logits = model(inputs_embeds=embeds, attention_mask=attn, use_cache=False).logits
                target_logits(logits, ids, resp).backward()
                mask = resp.unsqueeze(-1).to(torch.float64)
                for layer, a in rec.inputs.items():
                    scores[layer] += ((a * a.grad).abs().double() * mask).sum(dim=(0, 1))
                if stats is not None:
                    stats.add(rec.inputs, resp)
                rec.inputs.clear()
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return scores


@torch.no_grad()
def activation_scores(model: nn.Module, batches: Iterable[Batch], total: int | None = None,
                      stats: ActivationStats | None = None) -> torch.Tensor:
    """``[num_layers, intermediate_size]`` summed ``|activation|`` over response tokens (no LRP);
    ``stats`` also collects their mean and std."""
    scores = torch.zeros(_shape(model), dtype=torch.float64)
    rec = _DownProjInputs(retain_grad=False)
    with down_proj_hooks(model, rec):
        for batch in tqdm(batches, total=total, desc="activations", unit="batch"):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            mask = batch["response_mask"].unsqueeze(-1).to(torch.float64)
            for layer, a in rec.inputs.items():
                scores[layer] += (a.abs().double() * mask).sum(dim=(0, 1))
            if stats is not None:
                stats.add(rec.inputs, batch["response_mask"])
            rec.inputs.clear()
    return scores
