"""The one home of the forward pre-hooks on ``mlp.down_proj``, whose input holds the neurons ``a[l, i, t]``.

:func:`down_proj_hooks` is the mechanism; :class:`NeuronRecorder` (training), :func:`zeroed`
(ablation) and the attribution scores of :mod:`yfpo.neurons.attribution` use it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable

import torch
from torch import nn

from yfpo.core.errors import ConfigError

# hook(layer, x) may return a replacement for the down_proj input x ([B, T, intermediate_size]).
Hook = Callable[[int, torch.Tensor], "torch.Tensor | None"]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """``model.model.layers`` of a Qwen2/Llama-style causal LM, each with ``mlp.down_proj``; one clear
    error otherwise (an unsupported model is the config's choice, not a bug)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not all(hasattr(getattr(block, "mlp", None), "down_proj") for block in layers):
        if layers is None:  # every loss reads the decoder too (yfpo.train.logprobs.model_logps): no way around it
            where, other = ".model.layers", "choose such a model"
        else:
            where, other = (".model.layers[*].mlp.down_proj", "choose such a model, or a method without neurons "
                            "(method=dpo method.track_neurons=false) and, for several GPUs, trainer=ddp instead of fsdp")
        raise ConfigError(f"{type(model).__name__} has no {where}: neuron selection, the neuron reward and FSDP's "
                          "per-layer wrapping need a Qwen2/Llama-style decoder (docs/extending.md#supported-models-and-data); "
                          + other)
    return layers


def add_down_proj_hooks(model: nn.Module, hook: Hook, layers: Iterable[int] | None = None) -> list:
    """Register ``hook`` on the ``down_proj`` input of ``layers`` (all by default); returns the handles."""
    blocks = decoder_layers(model)
    chosen = range(len(blocks)) if layers is None else layers

    def bind(l: int):
        def pre_hook(module: nn.Module, args: tuple):
            out = hook(l, args[0])
            return None if out is None else (out, *args[1:])

        return pre_hook

    return [blocks[l].mlp.down_proj.register_forward_pre_hook(bind(l)) for l in chosen]


@contextmanager
def down_proj_hooks(model: nn.Module, hook: Hook, layers: Iterable[int] | None = None):
    """Within the block, ``hook`` sees (and may replace) every ``down_proj`` input of ``layers``."""
    handles = add_down_proj_hooks(model, hook, layers)
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def zeroed(model: nn.Module, by_layer: dict[int, torch.Tensor]):
    """Within the block, the listed ``down_proj`` input channels (``{layer: indices}``) are zero."""

    def zero(layer: int, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., by_layer[layer].to(x.device)] = 0
        return x

    with down_proj_hooks(model, zero, by_layer):
        yield


class NeuronRecorder:
    """Keeps the selected ``down_proj`` input channels of each forward, with gradients.

    After a forward, :meth:`activations` returns ``[batch, T, N]`` with the neurons in the order
    of ``layers`` ascending, channels ascending within a layer (the order of
    :meth:`yfpo.neurons.io.NeuronSet.by_layer`). The index tensors move to the activations'
    device once, on the first forward. Use as a context manager, or call :meth:`remove`.
    """

    def __init__(self, model: nn.Module, by_layer: dict[int, torch.Tensor]):
        self._order = sorted(by_layer)
        self._index = {l: by_layer[l].to(torch.long) for l in self._order}
        self._captured: dict[int, torch.Tensor] = {}
        self._handles = add_down_proj_hooks(model, self._capture, self._order)

    def _capture(self, layer: int, x: torch.Tensor) -> None:
        index = self._index[layer]
        if index.device != x.device:
            index = self._index[layer] = index.to(x.device)
        # index_select keeps only the selected channels: no full activation copy is held
        self._captured[layer] = x.index_select(-1, index)

    def activations(self) -> torch.Tensor:
        missing = [l for l in self._order if l not in self._captured]
        if missing:
            raise RuntimeError(f"no activations captured for layers {missing}: run a forward pass first")
        out = torch.cat([self._captured[l] for l in self._order], dim=-1)
        self._captured.clear()
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._captured.clear()

    def __enter__(self) -> "NeuronRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
