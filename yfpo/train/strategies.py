"""Lightning strategies from config: ``trainer.strategy`` is a Lightning name (``auto``, ``ddp``, ...)
or a mapping ``{name: fsdp | deepspeed, ...}`` built here, where model classes are known.

- ``fsdp``: every decoder layer of the policy *and* of the frozen reference is its own FSDP unit,
  so both are sharded alike; ``use_orig_params`` lets frozen and trained parameters share the
  root unit. HF checkpoints gather full weights to rank 0 (``state_dict_type: full``).
- ``deepspeed``: ZeRO stage 1 or 2 (optimizer state and gradients sharded, weights replicated,
  so rank 0 holds full weights for the HF checkpoints). Stage 3 is refused: use ``fsdp``.
  Needs the ``deepspeed`` extra (``pip install -c constraints.txt -e '.[deepspeed]'``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from yfpo.core.errors import ConfigError, UserError
from yfpo.neurons.hooks import decoder_layers

BUILT = ("fsdp", "deepspeed")


def build_strategy(spec: Any, policy: nn.Module) -> Any:
    """A Lightning strategy (name or object) for ``trainer.strategy``."""
    if not isinstance(spec, (dict, DictConfig)):
        return spec
    opts = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    name = opts.pop("name", None)
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        layer = type(decoder_layers(policy)[0])
        return FSDPStrategy(auto_wrap_policy={layer}, use_orig_params=True, state_dict_type="full", **opts)
    if name == "deepspeed":
        if opts.get("stage", 2) not in (1, 2):
            raise ConfigError(f"trainer.strategy.stage={opts['stage']}: HF checkpoints need full weights on rank 0; "
                             "use ZeRO stage 1 or 2, or trainer=fsdp to shard the weights")
        if importlib.util.find_spec("deepspeed") is None:
            raise UserError("trainer=deepspeed needs DeepSpeed: pip install -c constraints.txt -e '.[deepspeed]'")
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(**opts)
    raise ConfigError(f"trainer.strategy.name={name!r}: choose one of {BUILT}, or give a Lightning strategy name")
