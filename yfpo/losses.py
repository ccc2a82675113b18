"""Loss functions: pure tensor code, no model, no config. See SPEC.md for the maths.

Shapes: ``B`` pairs in a batch, ``T`` sequence length, ``V`` vocabulary, ``H`` hidden size,
``N`` selected neurons. Log-probabilities are natural logs summed over response tokens.
Metrics are detached scalar tensors named as in TRL's ``DPOTrainer``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Metrics = dict[str, torch.Tensor]

YFPO_FORMS = ("margin", "sigmoid")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities of the response tokens.

    Args:
        logits: ``[B, T, V]``; ``logits[:, t]`` predicts ``labels[:, t + 1]``.
        labels: ``[B, T]`` token ids (the input ids).
        mask: ``[B, T]`` bool, True at response tokens of ``labels``.
    Returns:
        ``[B]`` ``sum_t log pi(labels_t | labels_<t)`` over response positions ``t``.
    """
    logits, labels, mask = logits[:, :-1], labels[:, 1:], mask[:, 1:]
    # log_softmax in fp32: bf16 log-probs summed over hundreds of tokens lose whole nats.
    logps = torch.gather(logits.float().log_softmax(-1), 2, labels.unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(-1)


def mean_response_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean logit over response positions and vocabulary, ``[B, T, V]`` -> scalar (TRL's ``logits/*``)."""
    m = mask[:, 1:].unsqueeze(-1)
    return (logits[:, :-1].detach().float() * m).sum() / (m.sum() * logits.shape[-1]).clamp(min=1)


def dpo_rewards(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Implicit rewards ``beta * (logp_theta - logp_ref)`` of chosen and rejected, each ``[B]``."""
    return beta * (policy_chosen_logps - ref_chosen_logps), beta * (policy_rejected_logps - ref_rejected_logps)


def _reward_metrics(r_w: torch.Tensor, r_l: torch.Tensor) -> Metrics:
    r_w, r_l = r_w.detach(), r_l.detach()
    return {
        "rewards/chosen": r_w.mean(),
        "rewards/rejected": r_l.mean(),
        "rewards/margins": (r_w - r_l).mean(),
        "rewards/accuracies": (r_w > r_l).float().mean(),
    }


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, Metrics]:
    """DPO: ``-log sigmoid(r_w - r_l)``, mean over the batch. All inputs ``[B]``."""
    r_w, r_l = dpo_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    loss = -F.logsigmoid(r_w - r_l).mean()
    return loss, _reward_metrics(r_w, r_l)


def neuron_scores(activations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """YFPO's ``s(y)``: mean activation over response tokens and selected neurons.

    Args:
        activations: ``[B, T, N]`` ``a[l,i,t]`` of the selected neurons (inputs of ``down_proj``).
        mask: ``[B, T]`` bool, True where the *input* token at ``t`` is a response token.
    Returns:
        ``[B]`` ``1 / (|T(y)| * N) * sum_t sum_n a[n, t]``.
    """
    m = mask.unsqueeze(-1).to(activations.dtype)
    tokens = mask.sum(-1).clamp(min=1)
    return (activations * m).sum(dim=(1, 2)).float() / (tokens * activations.shape[-1])


def yfpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    score_chosen: torch.Tensor,
    score_rejected: torch.Tensor,
    beta: float,
    lam: float,
    form: str = "margin",
) -> tuple[torch.Tensor, Metrics]:
    """DPO plus the neuron reward ``Delta_N = s(y_w) - s(y_l)``. All inputs ``[B]``.

    ``form="margin"`` (SPEC default): ``L_DPO - lam * Delta_N``.
    ``form="sigmoid"``: ``-log sigmoid(h + lam * Delta_N)``, the margin inside the sigmoid.
    ``lam = 0`` returns exactly the DPO loss in both forms.
    """
    if form not in YFPO_FORMS:
        raise ValueError(f"method.form={form!r}: choose one of {YFPO_FORMS}")
    r_w, r_l = dpo_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    delta = score_chosen - score_rejected
    h = r_w - r_l
    if form == "margin":
        loss = -F.logsigmoid(h).mean() - lam * delta.mean()
    else:
        loss = -F.logsigmoid(h + lam * delta).mean()
    metrics = _reward_metrics(r_w, r_l)
    metrics.update(
        {
            "neuron/score_chosen": score_chosen.detach().mean(),
            "neuron/score_rejected": score_rejected.detach().mean(),
            "neuron/margin": delta.detach().mean(),
        }
    )
    return loss, metrics


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over response tokens. Shapes as in :func:`sequence_logps`."""
    logits, labels, mask = logits[:, :-1], labels[:, 1:], mask[:, 1:]
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
    return (nll * mask.flatten()).sum() / mask.sum().clamp(min=1)


def fdt_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Logits whose value is ``h W^T`` but whose gradient to ``W`` uses differenced hidden states.

    Args:
        hidden: ``[2B, T, H]`` final hidden states, the ``B`` chosen rows first, then the ``B``
            rejected rows, aligned by position (same prompt, shorter response padded).
        weight: ``[V, H]`` LM-head weight (tied or not; only this use of it is changed).
    Returns:
        ``[2B, T, V]`` logits ``z_c = z_d + sg(z - z_d)`` with ``z = W h`` and ``z_d = W hc``,
        ``hc_w = h_w - sg(h_l)``, ``hc_l = h_l - sg(h_w)``. Hence the value equals ``z``, the
        gradient to ``h`` equals the plain one, and the gradient to ``W`` is
        ``sum_k c_w(k) (h_w(k) - h_l(k))^T + c_l(k) (h_l(k) - h_w(k))^T`` (FDT Theorem 1).
    """
    if hidden.shape[0] % 2:
        raise ValueError(f"fdt_logits needs chosen and rejected rows stacked, got batch {hidden.shape[0]}")
    h_w, h_l = hidden.chunk(2)
    hc = torch.cat([h_w - h_l.detach(), h_l - h_w.detach()])
    z_d = hc @ weight.T
    z = hidden.detach() @ weight.detach().T
    return z_d + (z - z_d).detach()
