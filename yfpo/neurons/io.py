"""The neuron file: one safetensors file holding the selected set ``N``.

Tensors: ``layers`` (int64 ``[K]``), ``indices`` (int64 ``[K]``, channel of the ``down_proj``
input), ``scores`` (float32 ``[K]``, descending), ``mean`` and ``std`` (float32 ``[K]``, the
activation statistics of the normalised score; absent in files written before them). Metadata (strings): ``model`` (identity of the
model it was computed on), ``num_layers``, ``intermediate_size``, ``selector``, ``top_k``,
``data``, ``num_samples``, ``seed``, ``date``, ``format``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from yfpo.errors import ConfigError, UserError

FORMAT = "yfpo-neurons/1"
# The neuron CLI takes the same overrides as training, so "the same overrides" is always the fix.
NEURONS_COMMAND = (
    "python -m yfpo.neurons <the overrides of this training run> "
    "(here model={model} neurons={selector} neurons.top_k={top_k})"
)


class NeuronFileError(UserError, ValueError):
    """A neuron file that is missing or does not fit the model; the message says how to make one."""


@dataclass
class NeuronSet:
    layers: torch.Tensor  # [K] int64
    indices: torch.Tensor  # [K] int64
    scores: torch.Tensor  # [K] float32
    meta: dict[str, str] = field(default_factory=dict)
    mean: torch.Tensor | None = None  # [K] float32: mu_i over the selection samples' response tokens
    std: torch.Tensor | None = None  # [K] float32: sigma_i (1 where the channel never varies)

    def __len__(self) -> int:
        return int(self.layers.numel())

    def _order(self) -> torch.Tensor:
        # layer ascending, channel ascending: the order of by_layer() and of NeuronRecorder's columns
        return torch.argsort(self.layers * (int(self.indices.max()) + 1 if len(self) else 1) + self.indices)

    def by_layer(self) -> dict[int, torch.Tensor]:
        """``{layer: sorted channel indices}`` for the layers that hold selected neurons."""
        return {int(l): self.indices[self.layers == l].sort().values for l in self.layers.unique()}

    def stats_by_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, std)`` ``[K]`` in the order of :meth:`by_layer` (the recorder's columns)."""
        if self.mean is None or self.std is None:
            raise NeuronFileError("this neuron file has no activation statistics (it predates them); "
                                  "recompute it with: python -m yfpo.neurons <overrides> neurons.overwrite=true")
        order = self._order()
        return self.mean[order], self.std[order]


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global Top-K over a ``[num_layers, intermediate_size]`` score matrix -> (layers, indices, scores).

    Ties are broken by the lower flat index, so selection is deterministic.
    """
    num_layers, width = scores.shape
    if not 0 < k <= scores.numel():
        raise ConfigError(f"neurons.top_k={k} must be in 1..{scores.numel()} (= {num_layers} layers x {width})")
    flat = scores.flatten().double()
    # stable sort on -score keeps the lower index first among equal scores
    order = torch.sort(-flat, stable=True).indices[:k]
    return order // width, order % width, flat[order].float()


def save(path: str | Path, neurons: NeuronSet, **meta) -> Path:
    """Write ``neurons`` with ``meta`` (values stringified) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {**neurons.meta, **{k: str(v) for k, v in meta.items()}}
    metadata.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    metadata["format"] = FORMAT
    tensors = {
        "layers": neurons.layers.long().contiguous(),
        "indices": neurons.indices.long().contiguous(),
        "scores": neurons.scores.float().contiguous(),
    }
    if neurons.mean is not None:
        tensors.update(mean=neurons.mean.float().contiguous(), std=neurons.std.float().contiguous())
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def load(path: str | Path) -> NeuronSet:
    """Read a neuron file (safetensors only: nothing is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise NeuronFileError(f"neuron file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise NeuronFileError(f"{path} is not a yfpo neuron file (format {meta.get('format')!r}, expected {FORMAT!r})")
            stats = {k: f.get_tensor(k) for k in ("mean", "std") if k in f.keys()}
            return NeuronSet(f.get_tensor("layers"), f.get_tensor("indices"), f.get_tensor("scores"), dict(meta), **stats)
    except NeuronFileError:
        raise
    except Exception as e:  # safetensors' own errors ("header too large") name neither the file nor the fix
        raise NeuronFileError(f"neuron file {path} cannot be read ({e}): it is damaged or not a safetensors "
                              f"file; delete it") from None


def check_fits(neurons: NeuronSet, model_id: str, num_layers: int, intermediate_size: int, path: str, remedy: str) -> None:
    """Refuse a neuron set computed for another model; ``remedy`` is the command that makes the right one."""
    meta = neurons.meta
    problems = []
    if meta.get("model") != model_id:
        problems.append(f"it was computed on model {meta.get('model')!r}, this run trains {model_id!r}")
    if meta.get("num_layers") != str(num_layers) or meta.get("intermediate_size") != str(intermediate_size):
        problems.append(
            f"its shape is {meta.get('num_layers')} layers x {meta.get('intermediate_size')} channels, "
            f"the model has {num_layers} x {intermediate_size}"
        )
    if len(neurons) and (int(neurons.layers.max()) >= num_layers or int(neurons.indices.max()) >= intermediate_size):
        problems.append("it indexes layers or channels outside the model")
    if problems:
        raise NeuronFileError(f"neuron file {path} does not fit this model: " + "; ".join(problems) + f". Create one with: {remedy}")


def load_for(cfg, model_config, user: str) -> NeuronSet:
    """The neuron set of ``cfg.neurons.path``, checked against ``model_config``.

    A missing file or one for another model raises :class:`NeuronFileError` saying that ``user``
    needs it and which command creates it.
    """
    n = cfg.neurons
    remedy = NEURONS_COMMAND.format(model=cfg.model.name, selector=n.selector, top_k=n.top_k)
    try:
        neurons = load(n.path)
    except NeuronFileError as e:
        raise NeuronFileError(f"{e}. {user} needs it; create it with: {remedy}") from None
    check_fits(neurons, cfg.model.name, model_config.num_hidden_layers, model_config.intermediate_size, n.path, remedy)
    return neurons
