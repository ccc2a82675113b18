"""Unfused reference implementations (full ``[rows, T, V]`` logits) that the fused path is checked against."""

from __future__ import annotations

import torch


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[rows]`` summed log-probs of the response tokens: ``log_softmax`` then gather, in fp32."""
    logits, labels, mask = logits[:, :-1], labels[:, 1:], mask[:, 1:]
    logps = torch.gather(logits.float().log_softmax(-1), 2, labels.unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(-1)


def fdt_logits(hidden: torch.Tensor, weight: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """FDT as docs/methods.md writes it (section "FDT: focused differentiation of the LM head"):
    ``z_d + sg(z - z_d)`` with ``z_d = W hc``, ``hc = h - sg(h_partner)``, the
    partner's hidden state taken as zero where its response has ended (``[rows, T, V]``)."""
    half = hidden.shape[0] // 2
    partner = torch.cat([hidden[half:], hidden[:half]])
    alive = torch.cat([response_mask[half:], response_mask[:half]])[:, 1:]
    alive = torch.cat([alive, torch.zeros_like(alive[:, :1])], 1).unsqueeze(-1).to(hidden.dtype)
    hc = hidden - alive * partner.detach()
    z_d = hc @ weight.T
    z = hidden.detach() @ weight.detach().T
    return z_d + (z - z_d).detach()
