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

from yfpo.hooks import decoder_layers
from yfpo.neurons.lxt_compat import lrp_patched

Batch = dict[str, torch.Tensor]


class _DownProjInputs:
    """Forward pre-hooks that keep the input of each layer's ``down_proj`` (``[B, T, I]``)."""

    def __init__(self, model: nn.Module, retain_grad: bool):
        self.inputs: dict[int, torch.Tensor] = {}
        self.handles = [
            layer.mlp.down_proj.register_forward_pre_hook(self._hook(i, retain_grad))
            for i, layer in enumerate(decoder_layers(model))
        ]

    def _hook(self, layer: int, retain_grad: bool):
        def hook(module, args):
            if retain_grad:
                args[0].retain_grad()
            self.inputs[layer] = args[0]

        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _shape(model: nn.Module) -> tuple[int, int]:
    c = model.config
    return c.num_hidden_layers, c.intermediate_size


def target_logits(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the logits of the true next tokens at the response positions (the output relevance)."""
    picked = logits[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (picked * response_mask[:, 1:]).sum()


def lrp_scores(model: nn.Module, batches: Iterable[Batch], variant: str = "attnlrp", total: int | None = None) -> torch.Tensor:
    """``[num_layers, intermediate_size]`` summed ``|activation x gradient|`` under LRP rules.

    One forward and one backward per batch. Parameters get no gradients (frozen for the duration).
    """
    scores = torch.zeros(_shape(model), dtype=torch.float64)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with lrp_patched(model, variant), _DownProjInputs(model, retain_grad=True) as rec:
            for batch in tqdm(batches, total=total, desc=f"{variant} relevance", unit="batch"):
                ids, attn, resp = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
                embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
                logits = model(inputs_embeds=embeds, attention_mask=attn, use_cache=False).logits
                target_logits(logits, ids, resp).backward()
                mask = resp.unsqueeze(-1).to(torch.float64)
                for layer, a in rec.inputs.items():
                    scores[layer] += ((a * a.grad).abs().double() * mask).sum(dim=(0, 1))
                rec.inputs.clear()
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    return scores


@torch.no_grad()
def activation_scores(model: nn.Module, batches: Iterable[Batch], total: int | None = None) -> torch.Tensor:
    """``[num_layers, intermediate_size]`` summed ``|activation|`` over response tokens (no LRP)."""
    scores = torch.zeros(_shape(model), dtype=torch.float64)
    with _DownProjInputs(model, retain_grad=False) as rec:
        for batch in tqdm(batches, total=total, desc="activations", unit="batch"):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            mask = batch["response_mask"].unsqueeze(-1).to(torch.float64)
            for layer, a in rec.inputs.items():
                scores[layer] += (a.abs().double() * mask).sum(dim=(0, 1))
            rec.inputs.clear()
    return scores
