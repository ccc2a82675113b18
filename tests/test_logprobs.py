"""The fused response log-probs (yfpo/train/logprobs.py) against full logits: values, gradients, FDT, memory."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.unfused import fdt_logits, sequence_logps
from yfpo.train.logprobs import response_logps


def _pairs(B=3, T=11, H=8, V=37, seed=0):
    """Stacked chosen/rejected rows with shared prompts and responses of unequal lengths."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2 * B, T, H, generator=g)
    weight = torch.randn(V, H, generator=g)
    ids = torch.randint(0, V, (2 * B, T), generator=g)
    mask = torch.zeros(2 * B, T, dtype=torch.bool)
    for b, (prompt, lw, ll) in enumerate([(3, 6, 2), (2, 4, 8), (4, 5, 5)][:B]):
        mask[b, prompt : prompt + lw] = True
        mask[B + b, prompt : prompt + ll] = True
    return hidden, weight, ids, mask


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_fused_logps_equal_log_softmax_gather(chunk):
    hidden, weight, ids, mask = _pairs()
    got = response_logps(hidden, weight, ids, mask, chunk).logps
    want = sequence_logps(hidden @ weight.T, ids, mask)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # sums of ~10 log-probs of ~-3.6


@pytest.mark.parametrize("fdt", [False, True])
def test_fused_gradients_equal_the_unfused_implementation(fdt):
    hidden, weight, ids, mask = _pairs()
    upstream = torch.randn(hidden.shape[0])  # any loss of the per-row log-probs

    def grads(fused):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        if fused:
            lp = response_logps(h, w, ids, mask, 5, fdt=fdt).logps
        else:
            lp = sequence_logps(fdt_logits(h, w, mask) if fdt else h @ w.T, ids, mask)
        (lp * upstream).sum().backward()
        return h.grad, w.grad

    for got, want in zip(grads(True), grads(False)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_fdt_head_gradient_is_theorem1_with_zero_partner_past_the_shorter_response():
    hidden, weight, ids, mask = _pairs()
    B = hidden.shape[0] // 2
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp = response_logps(h, w, ids, mask, 3, fdt=True).logps
    upstream = torch.randn(2 * B)
    (lp * upstream).sum().backward()
    # c: the plain loss's gradient with respect to the logits
    z = (hidden @ weight.T).requires_grad_()
    c, = torch.autograd.grad((sequence_logps(z, ids, mask) * upstream).sum(), z)
    alive = mask[:, 1:].roll(B, 0)  # the partner still has a response token to predict at t
    partner = hidden.roll(B, 0) * torch.cat([alive, torch.zeros_like(alive[:, :1])], 1).unsqueeze(-1)
    theorem1 = torch.einsum("rtv,rth->vh", c, hidden - partner)
    torch.testing.assert_close(w.grad, theorem1, rtol=1e-5, atol=1e-5)
    # and where the lengths differ, the head's gradient is really not the pairwise-difference one
    naive = torch.einsum("rtv,rth->vh", c, hidden - hidden.roll(B, 0))
    assert not torch.allclose(w.grad, naive, atol=1e-3)


def test_fdt_and_plain_forward_values_are_bit_identical_under_bf16_autocast():
    hidden, weight, ids, mask = _pairs(T=40, H=64, V=300)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = response_logps(hidden, weight, ids, mask, 7).logps
        fdt = response_logps(hidden, weight, ids, mask, 7, fdt=True).logps
    assert plain.dtype == torch.float32 and torch.equal(plain, fdt)
    # the matmul ran in bf16 (what autocast gives the head), the log-softmax in fp32
    want = sequence_logps((hidden.bfloat16() @ weight.bfloat16().T), ids, mask)
    torch.testing.assert_close(plain, want, rtol=0, atol=1e-4)


def test_mean_logit_metric_equals_the_mean_of_full_logits():
    hidden, weight, ids, mask = _pairs()
    got = response_logps(hidden, weight, ids, mask, 4).mean_logit
    logits = (hidden @ weight.T)[:, :-1]
    m = mask[:, 1:]
    want = (logits.mean(-1) * m).sum(-1) / m.sum(-1)
    torch.testing.assert_close(got, want)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("fdt", [False, True])
def test_no_rows_by_T_by_V_tensor_exists_in_forward_or_backward(fdt):
    rows, T, H, V, chunk = 4, 64, 16, 5000, 8
    hidden = torch.randn(rows, T, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    ids = torch.randint(0, V, (rows, T))
    mask = torch.zeros(rows, T, dtype=torch.bool)
    mask[:, 20:] = True
    with _LargestTensor() as probe:
        response_logps(hidden, weight, ids, mask, chunk, fdt=fdt).logps.sum().backward()
    assert probe.largest <= max(chunk * V, V * H), probe.largest  # one [chunk, V] block (or W's gradient)
    assert probe.largest < rows * T * V // 8
