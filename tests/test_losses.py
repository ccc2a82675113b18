"""The pure loss functions, checked against hand computations (no model)."""


import pytest
import torch

from yfpo.core.schema import YfpoForm
from yfpo.train import losses


def test_dpo_loss_and_metrics_by_hand():
    pc, pr, rc, rr = (torch.tensor(v) for v in ([-1.0, -2.0], [-3.0, -1.0], [-1.5, -2.0], [-2.0, -2.0]))
    loss, m = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)
    r_w = 0.5 * torch.tensor([0.5, 0.0])
    r_l = 0.5 * torch.tensor([-1.0, 1.0])
    want = -torch.log(torch.sigmoid(r_w - r_l)).mean()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(m["rewards/chosen"], r_w.mean())
    torch.testing.assert_close(m["rewards/rejected"], r_l.mean())
    torch.testing.assert_close(m["rewards/margins"], (r_w - r_l).mean())
    assert m["rewards/accuracies"].item() == 0.5


def test_neuron_scores_mean_over_response_tokens_and_neurons():
    acts = torch.arange(2 * 3 * 2, dtype=torch.float).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    got = losses.neuron_scores(acts, mask)
    want = torch.tensor([(0 + 1 + 2 + 3) / 4, (10 + 11) / 2])
    torch.testing.assert_close(got, want)


def _inputs(requires_grad=True):
    torch.manual_seed(1)
    return [torch.randn(3, requires_grad=requires_grad) for _ in range(6)]


@pytest.mark.parametrize("form", [f.value for f in YfpoForm])
def test_yfpo_lambda_zero_is_exactly_dpo(form):
    pc, pr, rc, rr, sc, sr = _inputs()
    dpo, _ = losses.dpo_loss(pc, pr, rc, rr, 0.3)
    yfpo, m = losses.yfpo_loss(pc, pr, rc, rr, sc, sr, 0.3, 0.0, form)
    assert torch.equal(dpo, yfpo)
    g_dpo = torch.autograd.grad(dpo, [pc, pr])
    g_yfpo = torch.autograd.grad(yfpo, [pc, pr, sc, sr], allow_unused=True)
    assert all(torch.equal(a, b) for a, b in zip(g_dpo, g_yfpo[:2]))
    assert all(g is None or torch.count_nonzero(g) == 0 for g in g_yfpo[2:])
    torch.testing.assert_close(m["neuron/margin"], (sc - sr).mean().detach())


def test_yfpo_margin_form_gradient():
    pc, pr, rc, rr, sc, sr = _inputs()
    lam = 0.7
    loss, _ = losses.yfpo_loss(pc, pr, rc, rr, sc, sr, 0.3, lam, "margin")
    gc, gr = torch.autograd.grad(loss, [sc, sr])
    torch.testing.assert_close(gc, torch.full((3,), -lam / 3))
    torch.testing.assert_close(gr, torch.full((3,), lam / 3))


def test_yfpo_sigmoid_form_gradient():
    pc, pr, rc, rr, sc, sr = _inputs()
    beta, lam = 0.3, 0.7
    loss, _ = losses.yfpo_loss(pc, pr, rc, rr, sc, sr, beta, lam, "sigmoid")
    gc, = torch.autograd.grad(loss, [sc])
    z = beta * ((pc - rc) - (pr - rr)) + lam * (sc - sr)
    torch.testing.assert_close(gc, (-lam * torch.sigmoid(-z) / 3).detach())


def test_yfpo_rejects_unknown_form():
    """The config refuses it when composed, naming the key; a direct call gets the enum's ValueError."""
    from yfpo.core.config import compose_config
    from yfpo.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"Invalid value 'inside', expected one of \[margin, sigmoid\] \(key method.form\)"):
        compose_config(["method=yfpo", "method.form=inside"])
    with pytest.raises(ValueError, match="'inside' is not a valid YfpoForm"):
        losses.yfpo_loss(*_inputs(False), 0.1, 0.1, "inside")


def test_nll_is_mean_per_token_negative_loglik_and_its_gradient():
    logps = torch.tensor([-6.0, -2.0], requires_grad=True)
    tokens = torch.tensor([3.0, 4.0])
    nll = losses.nll(logps, tokens)
    torch.testing.assert_close(nll, torch.tensor((2.0 + 0.5) / 2))
    grad, = torch.autograd.grad(nll, logps)
    torch.testing.assert_close(grad, -1 / (2 * tokens))  # d/dlogp of -logp/|T| averaged over 2 rows


def test_sft_loss_weighs_every_token_alike():
    logps, tokens = torch.tensor([-6.0, -2.0]), torch.tensor([3.0, 1.0])
    torch.testing.assert_close(losses.sft_loss(logps, tokens), torch.tensor(8.0 / 4))


def test_neuron_scores_sum_in_fp32_even_for_bf16_activations():
    acts = torch.full((1, 512, 64), 1.001, dtype=torch.bfloat16)  # 1.0 in bf16 (8 bits of mantissa)
    acts[0, ::2] = 1.0078125  # the next bf16 value up: the mean must be their exact average
    got = losses.neuron_scores(acts, torch.ones(1, 512, dtype=torch.bool))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([(1.0 + 1.0078125) / 2]), rtol=0, atol=1e-6)


def test_normalised_score_standardises_each_neuron_and_ignores_its_scale():
    torch.manual_seed(0)
    acts, mask = torch.randn(2, 5, 3) * 4 + 1, torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    mean, std = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([2.0, 0.5, 3.0])
    got = losses.neuron_scores(acts, mask, mean, std)
    torch.testing.assert_close(got, losses.neuron_scores((acts - mean) / std, mask))
    scale = torch.tensor([10.0, 0.01, 3.0])  # a neuron's activations (and so its mu, sigma) rescaled
    torch.testing.assert_close(losses.neuron_scores(acts * scale, mask, mean * scale, std * scale), got)
    assert not torch.allclose(losses.neuron_scores(acts * scale, mask), losses.neuron_scores(acts, mask))
