"""Loading models and tokenizers from a local directory as ``cfg.model`` describes (no side effects:
making the offline models and data is :mod:`yfpo.assets.prepare`'s job)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from yfpo.core.schema import Dtype

DTYPES = {d.value: getattr(torch, d.value) for d in Dtype}  # model.dtype, reference.dtype -> the torch dtype


def load_tokenizer(m: DictConfig, path: Path | str):
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=m.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def attention(name: str, half_precision: bool) -> str:
    """``model.attn_implementation``; ``auto`` is flash_attention_2 when the flash-attn package is
    installed, a GPU is present and the attention runs in half precision (bf16/fp16 weights, or
    mixed-precision training), else PyTorch's sdpa. flash-attn refuses fp32 inputs, and neuron
    selection, ablation and evaluation run fp32 master weights without autocast."""
    if name != "auto":
        return name
    flash = half_precision and torch.cuda.is_available() and importlib.util.find_spec("flash_attn")
    return "flash_attention_2" if flash else "sdpa"


def load_model(m: DictConfig, path: Path | str, autocast: bool = False, training: bool = False):
    """The causal LM at ``path`` in ``model.dtype``, safetensors weights only (nothing is unpickled).

    ``autocast``: it will run under bf16/fp16 autocast (mixed-precision training). ``training``: set
    up for training, with ``model.gradient_checkpointing`` and no KV cache; an inference load
    (evaluation, pair sampling, neuron selection) keeps the model's own settings.
    """
    half = autocast or DTYPES[m.dtype] != torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=DTYPES[m.dtype], attn_implementation=attention(m.attn_implementation, half),
        trust_remote_code=m.trust_remote_code, use_safetensors=True,
    )
    if training:
        if m.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # no cache to build in a training forward
    return model


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter's name, shape, dtype and float64 sums; cheap next to one forward pass."""
    h = hashlib.sha1()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            x = p.detach().double()
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|{x.sum().item():.12e}|{x.abs().sum().item():.12e}".encode())
    return h.hexdigest()


def device_for(name: str) -> torch.device:
    """``auto``: cuda when available, else cpu; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
