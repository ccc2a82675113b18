"""Greedy generation with transformers (the CPU/GPU ``hf`` backend)."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (as vLLM's ``stop`` does)."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
                    stop: Sequence[str] = (), progress: bool = True) -> list[str]:
    """One greedy completion per prompt (left-padded batches, stops at EOS, then at ``stop``)."""
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        for i in tqdm(range(0, len(prompts), batch_size), desc="generating", unit="batch", disable=not progress):
            batch = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(model.device)
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = out[:, batch["input_ids"].shape[1] :]
            outputs += [cut_at_stop(t, stop) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return outputs
