"""The neuron file: one safetensors file holding the selected set ``N``.

Tensors: ``layers`` (int64 ``[K]``), ``indices`` (int64 ``[K]``, channel of the ``down_proj``
input), ``scores`` (float32 ``[K]``, descending), ``mean`` and ``std`` (float32 ``[K]``, the
activation statistics of the normalised score; absent in files written before them). Metadata
(strings): the file's key (:func:`neuron_key`: model tag and weights, shape, selection settings,
fingerprint of the samples' source), ``samples_used``, ``date``, ``format``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from yfpo.core import artefacts
from yfpo.core.errors import ConfigError, UserError

FORMAT = "yfpo-neurons/1"


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
            raise NeuronFileError("this neuron set has no activation statistics, which method.neuron_score=normalised "
                                  "needs; recompute it with: python -m yfpo.neurons <overrides> neurons.overwrite=true")
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
    metadata = {**neurons.meta, **artefacts.stringify(meta)}
    metadata.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    metadata["format"] = FORMAT
    tensors = {
        "layers": neurons.layers.long().contiguous(),
        "indices": neurons.indices.long().contiguous(),
        "scores": neurons.scores.float().contiguous(),
    }
    if neurons.mean is not None:
        tensors.update(mean=neurons.mean.float().contiguous(), std=neurons.std.float().contiguous())
    with artefacts.staged(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
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
        raise NeuronFileError(f"neuron file {path} cannot be read ({e}): it is not a safetensors file, or a damaged "
                              f"one. If neurons.path should name another file, set it; if this is a damaged neuron file, "
                              f"move it aside (mv {shlex.quote(str(path))} {shlex.quote(str(path) + '.damaged')})") from None


def neuron_key(settings, model_tag: str, weights: str, model_config, template: str, mirror: str | None) -> dict:
    """What the neuron file of ``settings`` (the ``neurons`` group) is made from (:mod:`yfpo.core.artefacts`):
    the model (its tag, weights and MLP shape), the selection settings, the prompt ``template`` and the
    content of the samples' source (read through the hub ``mirror``)."""
    return {"model": model_tag, "weights": weights, "num_layers": model_config.num_hidden_layers,
            "intermediate_size": model_config.intermediate_size,
            "selector": settings.selector, "top_k": settings.top_k, "seed": settings.seed, "num_samples": settings.num_samples,
            "lrp_variant": settings.lrp_variant or "", "template": template,
            "data": artefacts.source_fingerprint(settings.data, mirror)}


def command(overrides: list[str] | None, *extra: str) -> str:
    """The pasteable ``python -m yfpo.neurons`` command of a run given its command-line ``overrides``
    (the neuron CLI takes the overrides of training; Hydra's own ``hydra.*`` settings are left out).
    ``None``: a run started from Python, whose overrides are not known."""
    if overrides is None:
        return shlex.join(["python", "-m", "yfpo.neurons", *extra]).replace("yfpo.neurons", "yfpo.neurons <the overrides of this run>", 1)
    return shlex.join(["python", "-m", "yfpo.neurons", *(o for o in overrides if not o.startswith("hydra.")), *extra])


def load_for(settings, key: dict, user: str, overrides: list[str] | None) -> NeuronSet:
    """The neuron set of ``settings.path`` (``settings``: the ``neurons`` group), refused unless it was made by
    ``python -m yfpo.neurons`` with these ``overrides`` and this :func:`neuron_key`: a missing file,
    one for another model or one made with other settings raises :class:`NeuronFileError` saying that
    ``user`` needs it and the command that makes it."""
    try:
        neurons = load(settings.path)
    except NeuronFileError as e:
        raise NeuronFileError(f"{e}. {user} needs it; create it with: {command(overrides)}") from None
    try:
        artefacts.refuse_metadata_changes(f"neuron file {settings.path}", neurons.meta, key, f"{user} needs one made for this "
                                          f"model; make it with: {command(overrides, 'neurons.overwrite=true')}")
    except artefacts.StaleArtefactError as e:
        raise NeuronFileError(str(e)) from None
    for name, values, size in (("layer", neurons.layers, key["num_layers"]), ("index", neurons.indices, key["intermediate_size"])):
        bad = values[(values < 0) | (values >= size)]
        if bad.numel():  # a file edited by hand or by another tool: caught here, not as an IndexError mid-step
            raise NeuronFileError(f"neuron file {settings.path} holds {name} {int(bad[0])}, outside this model's 0..{size - 1}; "
                                  f"make it again with: {command(overrides, 'neurons.overwrite=true')}")
    return neurons
