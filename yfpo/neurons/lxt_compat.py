"""A scoped, undoable AttnLRP patch for Qwen2 and Llama models, on lxt 2.1 as published.

lxt 2.1 needs three work-arounds on this stack; delete this module when lxt ships them:

1. ``import lxt.efficient`` runs its model registry, which imports torchvision and BERT helpers
   that transformers 5 removed. We register stub packages for ``lxt.efficient`` and
   ``lxt.efficient.models`` (with the real ``__path__``), so only the ``patches``, ``rules``,
   ``qwen2`` and ``llama`` submodules are executed.
2. lxt replaces a modeling module's ``ALL_ATTENTION_FUNCTIONS`` (an ``AttentionInterface``) with a
   plain dict, on which transformers >= 5.1 calls ``.get_interface``. We give the module a fresh
   ``AttentionInterface`` whose *instance-local* entries wrap the originals, so the type stays and
   the process-wide registry is never written to.
3. lxt patches classes for the whole process (``torch.nn.Dropout`` included) and has no undo. Every
   attribute we change is saved and restored when the ``with`` block exits, also on error.

Inside the block, forward values are unchanged; gradients follow the AttnLRP (or CP-LRP) rules,
so ``activation * gradient`` at any latent is its relevance.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from pathlib import Path

from torch import nn

from yfpo.core.errors import UserError

VARIANTS = {"attnlrp": "attnLRP", "cp_lrp": "cp_LRP"}  # neurons.lrp_variant (yfpo/core/schema.py LrpVariant) -> lxt's name


def _lxt_modules() -> tuple[types.ModuleType, dict[str, types.ModuleType]]:
    """lxt's ``patches`` module and its qwen2/llama patch-map modules, keyed by modeling module name."""
    import lxt  # its __init__ is empty

    base = Path(lxt.__file__).parent / "efficient"
    for name, path in (("lxt.efficient", base), ("lxt.efficient.models", base / "models")):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__, stub.__package__ = [str(path)], name
            sys.modules[name] = stub
    patches = importlib.import_module("lxt.efficient.patches")
    maps = {}
    for family in ("qwen2", "llama"):
        module = importlib.import_module(f"lxt.efficient.models.{family}")
        maps[getattr(module, f"modeling_{family}").__name__] = module
    return patches, maps


@contextlib.contextmanager
def lrp_patched(model: nn.Module, variant: str = "attnlrp"):
    """Within the block, ``model``'s family (Qwen2 or Llama) computes LRP gradients; restored on exit."""
    patches, maps = _lxt_modules()
    modeling = type(model).__module__
    if modeling not in maps:
        families = ", ".join(sorted(m.rsplit(".", 1)[-1] for m in maps))
        raise UserError(f"AttnLRP selection supports {families}; {type(model).__name__} ({modeling}) is not one of them")
    wrap = patches.wrap_attention_forward if variant == "attnlrp" else patches.cp_wrap_attention_forward
    saved: list[tuple[object, str, bool, object]] = []

    def save(obj, attr):
        own = vars(obj)
        saved.append((obj, attr, attr in own, own.get(attr)))

    try:
        for target, patch in getattr(maps[modeling], VARIANTS[variant]).items():
            if isinstance(target, types.ModuleType):  # the attention entry: see work-around 2
                save(target, "eager_attention_forward")
                save(target, "ALL_ATTENTION_FUNCTIONS")
                old = target.ALL_ATTENTION_FUNCTIONS
                new = type(old)()
                for key in list(old.keys()):
                    new[key] = wrap(old[key])
                target.ALL_ATTENTION_FUNCTIONS = new
                target.eager_attention_forward = wrap(target.eager_attention_forward)
            else:  # a class whose forward lxt replaces (MLP, RMSNorm, Dropout)
                save(target, "forward")
                if not patch(target):
                    raise RuntimeError(f"lxt could not patch {target.__name__}.forward")
        yield
    finally:
        for obj, attr, had, value in reversed(saved):
            if had:
                setattr(obj, attr, value)
            else:
                delattr(obj, attr)
