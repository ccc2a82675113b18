"""Forward pre-hooks that read the selected neurons ``a[l, i, t]`` at the input of ``mlp.down_proj``."""

from __future__ import annotations

import torch
from torch import nn


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """``model.model.layers`` of a Qwen2/Llama-style causal LM, with a clear error otherwise."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} has no .model.layers; neuron hooks support Qwen2/Llama-style models")
    return layers


class NeuronRecorder:
    """Keeps the selected ``down_proj`` input channels of each forward, with gradients.

    After a forward, :meth:`activations` returns ``[batch, T, N]`` with the neurons in the order
    of ``layers`` ascending, channels ascending within a layer (the order of
    :meth:`yfpo.neurons.io.NeuronSet.by_layer`). Use as a context manager, or call :meth:`remove`.
    """

    def __init__(self, model: nn.Module, by_layer: dict[int, torch.Tensor]):
        layers = decoder_layers(model)
        self._order = sorted(by_layer)
        self._captured: dict[int, torch.Tensor] = {}
        self._handles = []
        for l in self._order:
            index = by_layer[l].to(torch.long)
            self._handles.append(layers[l].mlp.down_proj.register_forward_pre_hook(self._hook(l, index)))

    def _hook(self, layer: int, index: torch.Tensor):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            # index_select keeps only K of the intermediate channels: no full activation copy is held
            self._captured[layer] = x.index_select(-1, index.to(x.device))

        return hook

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
