"""Loss functions: pure tensor code, no model, no config. The maths: docs/methods.md.

Shapes: ``B`` pairs in a batch, ``T`` sequence length, ``N`` selected neurons. Log-probabilities
are natural logs summed over response tokens (:mod:`yfpo.train.logprobs` computes them; FDT lives
there too, since it changes only a gradient). Metrics are detached scalar tensors named as in
TRL's ``DPOTrainer``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from yfpo.core.schema import YfpoForm

Metrics = dict[str, torch.Tensor]



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


def neuron_scores(activations: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor | None = None,
                  std: torch.Tensor | None = None) -> torch.Tensor:
    """YFPO's ``s(y)``: mean activation over response tokens and selected neurons.

    Args:
        activations: ``[B, T, N]`` ``a[l,i,t]`` of the selected neurons (inputs of ``down_proj``).
        mask: ``[B, T]`` bool, True where the *input* token at ``t`` is a response token.
        mean, std: ``[N]`` ``mu_i``, ``sigma_i``: with them each neuron is standardised first,
            ``(a - mu_i) / sigma_i`` (the normalised score of docs/methods.md, "YFPO: the neuron margin";
            the same scale on every model).
    Returns:
        ``[B]`` ``1 / (|T(y)| * N) * sum_t sum_n a[n, t]``.
    """
    # summed in fp32: a bf16 sum over hundreds of tokens x 1024 neurons keeps ~3 significant digits
    a = activations.float()
    if mean is not None:
        a = (a - mean.float()) / std.float()
    m = mask.unsqueeze(-1).float()
    tokens = mask.sum(-1).clamp(min=1)
    return (a * m).sum(dim=(1, 2)) / (tokens * activations.shape[-1])


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

    ``form="margin"`` (the default, docs/methods.md "YFPO: the neuron margin"): ``L_DPO - lam * Delta_N``.
    ``form="sigmoid"``: ``-log sigmoid(h + lam * Delta_N)``, the margin inside the sigmoid.
    ``lam = 0`` returns exactly the DPO loss in both forms.
    """
    form = YfpoForm(form)  # composition refuses another value; a direct call gets ValueError
    delta = score_chosen - score_rejected
    if form == "margin":
        dpo, metrics = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
        return dpo - lam * delta.mean(), {**metrics, **neuron_metrics(score_chosen, score_rejected)}
    r_w, r_l = dpo_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    loss = -F.logsigmoid(r_w - r_l + lam * delta).mean()
    return loss, {**_reward_metrics(r_w, r_l), **neuron_metrics(score_chosen, score_rejected)}


def neuron_metrics(score_chosen: torch.Tensor, score_rejected: torch.Tensor) -> Metrics:
    """``neuron/*`` curves (the paper's Figure 2) of ``[B]`` scores ``s(y_w)``, ``s(y_l)``."""
    return {
        "neuron/score_chosen": score_chosen.detach().mean(),
        "neuron/score_rejected": score_rejected.detach().mean(),
        "neuron/margin": (score_chosen - score_rejected).detach().mean(),
    }


def nll(logps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The NLL/RPO term (docs/methods.md, "The NLL (RPO) term"): ``-logp(y_w) / |T(y_w)|`` per chosen
    response, averaged over the ``[B]`` rows."""
    return (-logps / tokens.clamp(min=1)).mean()


def sft_loss(logps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over all response tokens of the batch (``[B]`` summed
    log-probs and token counts): every token weighs the same, whatever its row's length."""
    return -logps.sum() / tokens.sum().clamp(min=1)
