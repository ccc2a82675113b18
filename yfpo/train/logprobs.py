"""Response-token log-probabilities straight from the final hidden states, without ``[rows, T, V]`` logits.

Every method (SFT, DPO, YFPO, FDT, the reference) reads its log-probs here. Only the hidden states
that predict a response token are gathered (``N`` of them, prompt and padding excluded); the LM
head is applied to them in chunks of ``chunk_tokens`` rows, and ``z_y - logsumexp(z)`` is taken in
fp32. The backward pass recomputes each chunk's logits, so neither pass ever holds more than one
``[chunk_tokens, V]`` block: memory no longer grows with ``V x T`` (152k x 2k tokens would be 1.2 GB
of fp32 logits per row).

FDT (docs/methods.md, "FDT: focused differentiation of the LM head") is an input of the same
autograd function: the forward value is the plain ``W h`` in every case, so FDT is exact under
autocast by construction, and only the gradient that reaches ``W`` is built from the differenced
hidden states ``hc`` instead of ``h``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from yfpo.core.errors import ConfigError


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype autocast would give the head matmul of ``t``'s device, or ``t.dtype`` outside autocast."""
    device = t.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return t.dtype


def _accumulation(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half-precision matmuls (bf16 log-probs summed over hundreds of tokens lose whole nats)."""
    return torch.promote_types(dtype, torch.float32)


class HeadLogProbs(torch.autograd.Function):
    """``log softmax(W h)[y]`` for ``N`` hidden states, chunked over tokens.

    forward(hidden ``[N, H]``, weight ``[V, H]``, targets ``[N]`` int64, contrast ``[N, H]`` or None,
    chunk_tokens, dtype) -> ``[N]`` log-probs. The matmul runs in ``dtype`` (the autocast dtype
    under mixed precision); ``logsumexp`` and the result are fp32 (fp64 for fp64 inputs). Backward: ``grad_h = c W`` with
    ``c = g (onehot(y) - softmax(z))``, and ``grad_W = c^T contrast`` when ``contrast`` is given
    (FDT), else ``c^T h``. ``contrast`` itself never receives a gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, contrast, chunk_tokens: int, dtype: torch.dtype):
        n, acc = hidden.shape[0], _accumulation(dtype)
        logps = hidden.new_empty(n, dtype=acc)
        lse = hidden.new_empty(n, dtype=acc)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            for s in range(0, n, chunk_tokens):
                z = (hidden[s : s + chunk_tokens].to(dtype) @ w.T).to(acc)
                lse[s : s + chunk_tokens] = torch.logsumexp(z, dim=-1)
                logps[s : s + chunk_tokens] = z.gather(1, targets[s : s + chunk_tokens, None]).squeeze(1) - lse[s : s + chunk_tokens]
        ctx.save_for_backward(hidden, weight, targets, lse, contrast)
        ctx.chunk_tokens, ctx.dtype = chunk_tokens, dtype
        return logps

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets, lse, contrast = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dtype, step = ctx.dtype, ctx.chunk_tokens
        source = hidden if contrast is None else contrast
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = _accumulation(dtype)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            for s in range(0, hidden.shape[0], step):
                g = grad[s : s + step].to(acc)
                z = (hidden[s : s + step].to(dtype) @ w.T).to(acc)
                # c = g * (onehot(y) - softmax(z)), built in place in z's buffer
                c = z.sub_(lse[s : s + step, None]).exp_().mul_(-g[:, None])
                c.scatter_add_(1, targets[s : s + step, None], g[:, None])
                c = c.to(dtype)
                if need_h:
                    grad_h[s : s + step] = c @ w
                if need_w:
                    if dtype == acc:  # in place: no second [V, H] buffer
                        grad_w.addmm_(c.T, source[s : s + step].to(dtype))
                    else:  # half-precision matmul (as autocast would run it), summed in fp32
                        grad_w += (c.T @ source[s : s + step].to(dtype)).to(acc)
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None, None


@dataclass
class ResponseLogps:
    """Per-row results of :func:`response_logps`, each ``[rows]`` fp32.

    ``logps``: summed log-probs of the response tokens; ``tokens``: their count;
    ``mean_logit``: mean logit over response positions and the vocabulary (detached; TRL's
    ``logits/*``), from ``h . mean(W)`` so no logits are needed.
    """

    logps: torch.Tensor
    tokens: torch.Tensor
    mean_logit: torch.Tensor


def fdt_contrast(hidden: torch.Tensor, response_mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """FDT's ``hc = h - sg(h_partner)`` at the gathered positions, ``[N, H]`` (detached).

    Rows ``0..B-1`` are chosen and ``B..2B-1`` their rejected partners, aligned by position (same
    prompt). Where the partner's response has already ended, its hidden state counts as zero, so
    ``hc = h`` there (docs/methods.md, FDT: "Unequal lengths").
    """
    if hidden.shape[0] % 2:
        raise ValueError(f"FDT needs chosen and rejected rows stacked, got {hidden.shape[0]} rows")
    half = hidden.shape[0] // 2
    partner = (rows + half) % hidden.shape[0]
    h = hidden.detach()
    alive = response_mask[partner, cols + 1].to(h.dtype).unsqueeze(-1)
    return h[rows, cols] - alive * h[partner, cols]


def response_logps(hidden: torch.Tensor, weight: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor,
                   chunk_tokens: int, fdt: bool = False,
                   positions: tuple[torch.Tensor, torch.Tensor] | None = None) -> ResponseLogps:
    """Log-probs of the response tokens under the head ``weight`` applied to ``hidden``.

    Args:
        hidden: ``[rows, T, H]`` final hidden states (the LM head's input).
        weight: ``[V, H]`` LM-head weight (tied or not; no bias).
        input_ids: ``[rows, T]``; ``hidden[:, t]`` predicts ``input_ids[:, t + 1]``.
        response_mask: ``[rows, T]`` bool, True at response tokens of ``input_ids``.
        chunk_tokens: response tokens per head matmul; bounds the ``[chunk, V]`` fp32 block.
        fdt: FDT's gradient for ``weight`` (pairs only, see :func:`fdt_contrast`).
        positions: ``(rows, cols)`` ``[N]`` of the positions whose next token is a response token,
            row-major (``response_mask[:, 1:].nonzero()``); pass them from the host to spare the
            GPU a sync.
    """
    if chunk_tokens < 1:
        raise ValueError(f"logprobs.chunk_tokens={chunk_tokens} must be >= 1")
    rows, cols = positions if positions is not None else response_mask[:, 1:].nonzero(as_tuple=True)
    h = hidden[rows, cols]
    targets = input_ids[rows, cols + 1]
    contrast = fdt_contrast(hidden, response_mask, rows, cols) if fdt else None
    token_logps = HeadLogProbs.apply(h, weight, targets, contrast, chunk_tokens, compute_dtype(hidden))
    # Scattered into [rows, T] and summed along T: deterministic (index_add on CUDA is not).
    grid = token_logps.new_zeros(hidden.shape[0], hidden.shape[1])
    grid = grid.index_put((rows, cols), token_logps)
    tokens = response_mask[:, 1:].sum(-1).float()
    with torch.no_grad():
        mean_logit = h.detach().float() @ weight.detach().float().mean(0)
        logit_sums = mean_logit.new_zeros(hidden.shape[0]).index_put((rows,), mean_logit, accumulate=True)
    return ResponseLogps(grid.sum(-1), tokens, logit_sums / tokens.clamp(min=1))


def model_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], chunk_tokens: int, fdt: bool = False) -> ResponseLogps:
    """:func:`response_logps` of a Qwen2/Llama-style causal LM (``model.model`` is the decoder, the
    output embedding a plain linear head) on a :func:`yfpo.data.encode.collate` batch."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ConfigError(f"{type(model).__name__}: LM heads with a bias are not supported (the fused log-probs and "
                          "FDT read the head as one weight matrix); choose a model whose head has none (docs/extending.md)")
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    positions = (batch["target_rows"], batch["target_cols"]) if "target_rows" in batch else None
    return response_logps(hidden, head.weight, batch["input_ids"], batch["response_mask"], chunk_tokens, fdt, positions)
