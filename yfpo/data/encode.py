"""Tokenisation, truncation and collation of rows (:mod:`yfpo.data.rows`) into training batches.

Prompt and responses are tokenised separately and concatenated, so the response boundary is
exact, and a batch of ``B`` pairs is one ``[2B, T]`` tensor, chosen rows first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from yfpo.data.prompts import format_prompt
from yfpo.data.rows import PAIR_FIELDS, SFT_FIELDS, DataError, check_pairs, validate_rows


@dataclass
class Encoded:
    """Token ids of one example; ``rejected`` is None for SFT; ``index`` is its row in the training set."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int] | None = None
    index: int = 0

    def longest(self) -> int:
        """Tokens of the longest sequence it contributes (prompt + the longer response)."""
        return len(self.prompt) + max(len(self.chosen), len(self.rejected or ()))


def truncate(prompt: list[int], responses: list[list[int]], max_length: int, max_prompt_length: int):
    """Fit prompt + the longest response into ``max_length`` tokens.

    The prompt is cut from the left (keeping the text next to the response) down to
    ``max_prompt_length``; then responses are cut from the right. So the prompt can never take
    more than ``max_prompt_length`` and every response keeps at least
    ``max_length - max_prompt_length`` tokens.
    """
    longest = max(len(r) for r in responses)
    if len(prompt) + longest > max_length and len(prompt) > max_prompt_length:
        prompt = prompt[-max_prompt_length:]
    room = max_length - len(prompt)
    return prompt, [r[:room] for r in responses]


class Encoder:
    """Turns rows into :class:`Encoded` token ids according to ``cfg.data``."""

    def __init__(self, cfg: DictConfig, tokenizer):
        if cfg.max_prompt_length >= cfg.max_length:
            raise DataError(
                f"data.max_prompt_length={cfg.max_prompt_length} must be below data.max_length={cfg.max_length}"
            )
        if cfg.pair_mode not in ("step", "full"):
            raise DataError(f"data.pair_mode={cfg.pair_mode!r}: choose 'step' or 'full'")
        self.cfg, self.tok = cfg, tokenizer
        self.bos = [tokenizer.bos_token_id] if cfg.add_bos and tokenizer.bos_token_id is not None else []
        append_eos = cfg.append_eos if cfg.append_eos is not None else cfg.pair_mode == "full"
        self.pair_eos = [tokenizer.eos_token_id] if append_eos else []

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, add_special_tokens=False)["input_ids"] if texts else []

    def encode_all(self, rows: list[dict], kind: str, source: str) -> list[Encoded]:
        """Token ids of every row; raises :class:`DataError` naming the first bad row."""
        c = self.cfg
        validate_rows(rows, PAIR_FIELDS if kind == "pairs" else SFT_FIELDS, source)
        if kind == "pairs":
            prompts = [format_prompt(c.template, r["prompt"], r["initial_reason_steps"], self.tok) for r in rows]
            keys = ("chosen", "rejected") if c.pair_mode == "step" else ("full_chosen", "full_rejected")
            eos = self.pair_eos
        else:
            prompts = [format_prompt(c.template, r["question"], None, self.tok) for r in rows]
            keys, eos = ("answer",), [self.tok.eos_token_id]  # SFT must learn to stop
        if kind == "pairs":
            check_pairs(rows, keys, source)
        # One batched call per field: the Rust tokenizer is far faster on lists than row by row.
        prompt_ids = self._ids(prompts)
        response_ids = [self._ids([r[k] for r in rows]) for k in keys]
        out = []
        for i in tqdm(range(len(rows)), desc=f"encoding {Path(source).name}", unit="row", mininterval=2):
            prompt, responses = truncate(
                self.bos + prompt_ids[i], [ids[i] + eos for ids in response_ids], c.max_length, c.max_prompt_length
            )
            if any(not r for r in responses):
                raise DataError(f"{source}: row {i} has an empty response after tokenisation/truncation")
            out.append(Encoded(prompt, *responses, index=i))
        return out


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch.

    Pairs: ``input_ids``, ``attention_mask``, ``response_mask`` of shape ``[2B, T]``, rows
    ``0..B-1`` chosen and ``B..2B-1`` rejected; both halves share each prompt, so position ``t``
    is the same response position in a chosen row and its rejected partner (FDT relies on it).
    SFT: the same keys with ``[B, T]``. ``response_mask`` is True at response tokens;
    ``target_rows``/``target_cols`` (``[N]``) are the positions whose next token is one. ``index``
    (``[B]``) holds the examples' rows, and ``num_tokens`` (an int, counted here so that the
    training step needs no device-to-host sync) the non-padding tokens.
    """
    seqs = [(e.prompt, e.chosen) for e in examples]
    if examples[0].rejected is not None:
        seqs += [(e.prompt, e.rejected) for e in examples]
    length = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), length), dtype=torch.long)
    resp = torch.zeros((len(seqs), length), dtype=torch.bool)
    for i, (p, r) in enumerate(seqs):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attn[i, : len(p) + len(r)] = 1
        resp[i, len(p) : len(p) + len(r)] = True
    rows, cols = resp[:, 1:].nonzero(as_tuple=True)  # here on the host, so the GPU never waits for it
    return {"input_ids": ids, "attention_mask": attn, "response_mask": resp, "target_rows": rows, "target_cols": cols,
            "index": torch.tensor([e.index for e in examples]), "num_tokens": sum(len(p) + len(r) for p, r in seqs)}


def to_device(batch: dict, device: torch.device | str) -> dict:
    """A :func:`collate` batch with its tensors on ``device`` (``num_tokens`` stays a host int)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

