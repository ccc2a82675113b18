"""Greedy generation with transformers (the CPU/GPU ``hf`` backend), with stop strings and stop tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from yfpo.core.schema import Backend

# transformers' generate here, or the vLLM engine (yfpo/evaluate/vllm_worker.py): eval.backend and pairs.backend
BACKENDS = tuple(b.value for b in Backend)


@dataclass(frozen=True)
class Completion:
    """One generated text, cut before its first stop string; ``truncated``: it ended because it
    reached ``max_new_tokens``, with no stop token and no stop string (vLLM's finish_reason "length")."""

    text: str
    truncated: bool


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (as vLLM's ``stop`` does)."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


class StopOnText(StoppingCriteria):
    """Ends each row once its *generated* text contains a stop string, as vLLM's ``stop`` does.

    (transformers' own ``stop_strings`` also match text that starts in the prompt: a prompt ending
    in a newline plus two generated ones would hit "\\n\\n\\n".) Only the last ``window`` generated
    tokens are decoded each step: a token holds at least one byte, so a stop string of B bytes
    spans at most B + 1 tokens; the margin covers skipped special tokens.
    """

    WINDOW_MARGIN = 8  # tokens beyond the longest stop string's byte count

    def __init__(self, tokenizer, stop: Sequence[str], prompt_len: int):
        self.tok, self.stop, self.prompt_len = tokenizer, list(stop), prompt_len
        self.window = max(len(s.encode()) for s in stop) + self.WINDOW_MARGIN

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        tail = input_ids[:, self.prompt_len :][:, -self.window :]
        texts = self.tok.batch_decode(tail, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
             stop: Sequence[str] = (), stop_token_ids: Sequence[int] = (), progress: bool = True,
             temperature: float = 0.0, top_p: float = 1.0) -> list[Completion]:
    """One completion per prompt, in left-padded batches of ``batch_size``: greedy, or sampled
    with ``temperature > 0`` (and ``top_p``) from the global torch RNG, which the caller seeds.

    A row stops at the tokenizer's EOS, at any of ``stop_token_ids``, or once its generated text
    contains a stop string (:class:`StopOnText`, per row: the batch runs until its last row stops).
    The text is cut before the first stop string; special tokens are dropped.
    """
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    eos = sorted({tokenizer.eos_token_id, *stop_token_ids} - {None})
    stop = list(stop)
    outputs: list[Completion] = []
    try:
        for i in tqdm(range(0, len(prompts), batch_size), desc="generating", unit="batch", disable=not progress):
            batch = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(model.device)
            prompt_len = batch["input_ids"].shape[1]
            criteria = StoppingCriteriaList([StopOnText(tokenizer, stop, prompt_len)] if stop else [])
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
            out = model.generate(**batch, max_new_tokens=max_new_tokens, stopping_criteria=criteria, **sampling,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=eos or None)
            new = out[:, prompt_len:]
            ended = torch.isin(new, torch.tensor(eos, device=new.device)).any(dim=1).tolist() if eos else [False] * len(new)
            for text, hit_eos in zip(tokenizer.batch_decode(new, skip_special_tokens=True), ended):
                cut = cut_at_stop(text, stop)
                outputs.append(Completion(cut, truncated=not hit_eos and cut == text))
    finally:
        tokenizer.padding_side = side
    return outputs


def greedy_generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
                    stop: Sequence[str] = (), progress: bool = True) -> list[str]:
    """The texts of :func:`generate` (for callers that need no truncation flags)."""
    return [c.text for c in generate(model, tokenizer, prompts, max_new_tokens, batch_size, stop, progress=progress)]
