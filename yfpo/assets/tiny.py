"""The embedded offline model: a small Qwen2-architecture LM and a BPE tokenizer built here.

Nothing is downloaded. The tokenizer is trained with ``tokenizers`` on the synthetic corpus
(digits are split one per token, so arithmetic is learnable by a model this small) and carries
a Qwen-style chat template. Both are saved with ``save_pretrained`` and load with the
``Auto*`` classes like any hub model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

EOS, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with single-digit tokens, trained on ``corpus``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, additional_special_tokens=[IM_START, IM_END]
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int, **arch) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 model sized by ``arch`` (hidden_size, num_hidden_layers, ...).

    The LM head is tied to the input embedding, as in Qwen2-0.5B, so the tied-head path of FDT is
    what the default exercises.
    """
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        **arch,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def save_base(out_dir: str | Path, corpus: Iterable[str], vocab_size: int, seed: int, arch: dict) -> Path:
    """Build and save tokenizer + random model into ``out_dir`` (HF format)."""
    out = Path(out_dir)
    tokenizer = build_tokenizer(corpus, vocab_size)
    model = build_model(tokenizer, seed=seed, **arch)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
