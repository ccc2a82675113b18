"""Models of the papers' true architectures with random weights, saved as hub models are.

Qwen2-0.5B (the YFPO paper): 24 layers, hidden 896, MLP 4,864, 14 query / 2 KV heads, a 151,936-token
vocabulary and a head tied to the input embedding; 494,032,768 parameters. The FDT paper's 3B
instruct models cannot train in 24 GB of host memory, so an instruct model of the same 0.5B shape
with a chat template stands in for them. The tokenizer is a byte-level BPE trained here (the
vocabulary of the model stays 151,936, as Qwen2's embedding is larger than its tokenizer).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from yfpo.assets import tiny

QWEN2_0_5B = dict(vocab_size=151_936, hidden_size=896, intermediate_size=4_864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768, rope_theta=1_000_000.0)
QUICK = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=1024)

CORPUS = [f"Step {i}: {i} + {i + 1} = {2 * i + 1}. The answer is: {2 * i + 1}. Compute ${i} \\times 3$." for i in range(400)]


def count_parameters(arch: dict) -> int:
    """Parameters of a tied-head Qwen2 model of shape ``arch``, by hand (checked against the model in the tests)."""
    h, f, v, n = arch["hidden_size"], arch["intermediate_size"], arch["vocab_size"], arch["num_hidden_layers"]
    kv = h // arch["num_attention_heads"] * arch["num_key_value_heads"]
    attention = h * h + h + 2 * (h * kv + kv) + h * h  # q (bias), k and v (bias), o (no bias)
    layer = attention + 3 * h * f + 2 * h  # gate, up, down; two RMSNorms
    return v * h + n * layer + h  # embedding (the head is tied to it), layers, final norm


def write_model(out: Path, arch: dict, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A random model of shape ``arch`` and a byte-level BPE tokenizer with a chat template, saved
    with ``save_pretrained`` in ``dtype`` (bf16, as the hub's Qwen2 weights)."""
    out = Path(out)
    tokenizer = tiny.build_tokenizer(CORPUS, 400)
    config = Qwen2Config(**arch, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
