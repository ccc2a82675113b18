"""Typed schemas of the config groups: each group's keys, types and defaults, written once.

Each schema is stored in Hydra's ConfigStore as ``<group>/schema`` and every YAML of the group
starts from it (``defaults: [schema, _self_]``). A key a YAML leaves out takes the default here;
a misspelt key or a value of the wrong type (``method.nll_weight=abc``) is refused when the config
is composed, naming the key; :func:`check_method` refuses the values no type can (an unknown loss),
in the ``yfpo: error:`` form, before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from yfpo.core.errors import ConfigError
from yfpo.train.losses import YFPO_FORMS

LOSSES = ("sft", "dpo", "yfpo")
NEURON_SCORES = ("raw", "normalised")


@dataclass
class MethodConfig:
    """``method``: the training objective (conf/method/*.yaml)."""

    name: str                    # the method's name in run directories and tables
    loss: str                    # sft | dpo | yfpo
    fdt: bool = False            # Focused Differentiation Training of the LM head (pairwise losses only)
    track_neurons: bool = False  # log the neuron margin of neurons.path when the file exists (dpo, fdt)
    form: str = "margin"         # yfpo: margin (L_DPO - lambda*Delta_N) | sigmoid (-log sigmoid(h + lambda*Delta_N))
    neuron_score: str = "raw"    # raw: the paper's mean activation | normalised: standardised by the file's (mu, sigma)
    nll_weight: float = 0.0      # alpha of the NLL (RPO) term on the chosen response: L + alpha * NLL(y_w)


def check_method(method: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the ``method`` value that cannot work."""
    if method.loss not in LOSSES:
        raise ConfigError(f"method.loss={method.loss!r}: choose one of {LOSSES}")
    if method.fdt and method.loss == "sft":
        raise ConfigError("method.fdt needs a pairwise loss (dpo or yfpo), not sft")
    if method.form not in YFPO_FORMS:
        raise ConfigError(f"method.form={method.form!r}: choose one of {YFPO_FORMS}")
    if method.neuron_score not in NEURON_SCORES:
        raise ConfigError(f"method.neuron_score={method.neuron_score!r}: choose one of {NEURON_SCORES}")
    if method.nll_weight < 0:
        raise ConfigError(f"method.nll_weight={method.nll_weight}: give a weight >= 0 (0: no NLL term)")


ConfigStore.instance().store(group="method", name="schema", node=MethodConfig)
