"""The pure loss functions, checked against hand computations (no model)."""


import pytest
import torch
import torch.nn.functional as F

from yfpo import losses


def test_sequence_logps_sums_only_response_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    got = losses.sequence_logps(logits, labels, mask)
    lp = logits.log_softmax(-1)
    want = torch.stack([
        lp[0, 1, labels[0, 2]] + lp[0, 2, labels[0, 3]],
        sum(lp[1, t - 1, labels[1, t]] for t in range(1, 5)),
    ])
    torch.testing.assert_close(got, want)


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


@pytest.mark.parametrize("form", losses.YFPO_FORMS)
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
    with pytest.raises(ValueError, match="method.form"):
        losses.yfpo_loss(*_inputs(False), 0.1, 0.1, "inside")


def test_sft_loss_is_masked_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(1, 4, 5), torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[False, False, True, True]])
    want = F.cross_entropy(logits[0, 1:3], labels[0, 2:4])
    torch.testing.assert_close(losses.sft_loss(logits, labels, mask), want)


def _plain_and_fdt_grads(hidden, weight, upstream):
    """Gradients of sum(upstream * logits) w.r.t. (hidden, weight) for plain and FDT logits."""
    out = []
    for fn in (lambda h, w: h @ w.T, losses.fdt_logits):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        z = fn(h, w)
        (z * upstream).sum().backward()
        out.append((z.detach(), h.grad, w.grad))
    return out


def test_fdt_logits_value_gradient_and_theorem1():
    torch.manual_seed(0)
    B, T, H, V = 2, 4, 6, 9
    hidden, weight, c = torch.randn(2 * B, T, H), torch.randn(V, H), torch.randn(2 * B, T, V)
    (z, gh, gw), (z_f, gh_f, gw_f) = _plain_and_fdt_grads(hidden, weight, c)
    torch.testing.assert_close(z_f, z)  # same forward value
    torch.testing.assert_close(gh_f, gh)  # same gradient to the hidden states (so to everything upstream)
    h_w, h_l = hidden.chunk(2)
    c_w, c_l = c.chunk(2)
    theorem1 = torch.einsum("btv,bth->vh", c_w, h_w - h_l) + torch.einsum("btv,bth->vh", c_l, h_l - h_w)
    torch.testing.assert_close(gw_f, theorem1)
    assert not torch.allclose(gw_f, gw)


def test_fdt_needs_stacked_pairs():
    with pytest.raises(ValueError, match="chosen and rejected"):
        losses.fdt_logits(torch.randn(3, 2, 4), torch.randn(5, 4))
