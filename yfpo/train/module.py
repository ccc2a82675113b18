"""The LightningModule: the policy, trained with ``method.loss`` (SFT, DPO, YFPO, with or without FDT), and the
frozen reference (live or precomputed) of the pairwise losses."""

from __future__ import annotations

import copy
import math
import random
import time

import lightning as L
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from yfpo.train import losses
from yfpo.core.errors import ConfigError
from yfpo.core.models import DTYPES
from yfpo.core.schema import check_method
from yfpo.neurons.hooks import NeuronRecorder
from yfpo.train.loggers import logs_this_step
from yfpo.train.logprobs import model_logps
from yfpo.neurons.io import NeuronSet
from yfpo.train.reference import ReferenceCache, compute_table


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int, min_ratio: float):
    """Linear warmup over ``warmup_steps``, then ``schedule`` decay (``optim.schedule``:
    :class:`yfpo.core.schema.Schedule`) to ``min_ratio`` at ``total_steps``."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * decay

    return f


def build_optimizer(model: torch.nn.Module, o, fused: bool) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters from the ``optim`` config. Fused AdamW (``optim.fused``
    where the strategy allows it) updates each tensor in one kernel, so the step makes no full-size
    temporaries (transformers' default, adamw_torch_fused)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps,
                             fused=True if fused else None)


def frozen_copy(model: nn.Module, dtype: str | None) -> nn.Module:
    """A copy of ``model`` without gradients, in eval mode, in ``dtype`` (``None``: the model's)."""
    copy_ = copy.deepcopy(model).requires_grad_(False).eval()
    return copy_.to(DTYPES[dtype]) if dtype is not None else copy_


class PolicyModule(L.LightningModule):
    """Trains ``policy`` with ``method.loss``: SFT on examples, or DPO / YFPO on pairs, optionally with
    FDT on the LM head and the NLL term ``method.nll_weight`` on the chosen responses. The pairwise
    losses also hold the frozen reference (or its precomputed log-probs); SFT has none.

    Args:
        policy: a causal LM with ``.model`` (decoder returning ``last_hidden_state``) and an
            output embedding without bias (Qwen2, Llama).
        method: the ``method`` config (``loss``, ``fdt``, ``form``, ``nll_weight``).
        optim: the ``optim`` config (AdamW + schedule).
        beta, lam: DPO temperature and YFPO strength.
        neurons: the selected set; required for ``loss=yfpo``. With ``dpo`` it is only tracked:
            its margin is logged, the loss stays DPO's.
        reference: ``live`` (a frozen copy, run every step) or ``precompute`` (its log-probs
            computed once at the start of fit, see :mod:`yfpo.train.reference`, then the copy is freed).
        reference_dtype: dtype of the frozen copy (``None``: the policy's).
        reference_cache: where ``precompute`` keeps its table (``None``: in memory only).
        chunk_tokens: response tokens per LM-head block (:mod:`yfpo.train.logprobs`).
    """

    def __init__(self, policy: nn.Module, method: DictConfig, optim: DictConfig, beta: float, lam: float,
                 neurons: NeuronSet | None = None, reference: str = "live", reference_dtype: str | None = None,
                 reference_cache: ReferenceCache | None = None, chunk_tokens: int = 512):
        super().__init__()
        check_method(method)
        if method.loss == "yfpo" and neurons is None:
            raise ConfigError("method.loss=yfpo needs a neuron file (neurons.path)")
        self.policy = policy.train()  # from_pretrained returns eval mode, and Lightning keeps modes as they are
        self.method, self.optim_cfg, self.beta, self.lam = method, optim, float(beta), float(lam)
        self.nll_weight = float(method.nll_weight)
        self.pairwise = method.loss != "sft"
        self.chunk_tokens = chunk_tokens
        self.reference_mode, self.reference_cache = reference, reference_cache
        # live: a frozen copy of the initial policy, excluded from checkpoints (see on_save_checkpoint).
        # precompute: no copy; the policy itself, still initial in setup(), makes the table.
        self.reference, self.reference_dtype = None, reference_dtype
        if self.pairwise and reference == "live":
            self.reference = frozen_copy(policy, reference_dtype)
        self.ref_table: torch.Tensor | None = None  # [rows, 2] with reference=precompute
        self.neurons = neurons
        # (mean, std) of the normalised score (docs/methods.md, "YFPO: the neuron margin"),
        # moved to the device with the module
        self.neuron_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        if neurons is not None and method.neuron_score == "normalised":
            self.neuron_stats = neurons.stats_by_layer()
        self.recorder: NeuronRecorder | None = None
        self._last_step: tuple[float, int] | None = None  # (time, non-pad tokens) of the previous batch
        self._log_row: tuple[int, dict] | None = None  # (step, metrics) the loggers write after this step

    # --- the reference stays frozen and in eval mode whatever Lightning does ---------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("reference.")}
        # Lightning writes a step's metrics row after that step's checkpoint callbacks: the row goes
        # into the checkpoint, so a kill between the two loses no row of metrics.csv on resume.
        if self._log_row is not None and self._log_row[0] == self.trainer.global_step - 1:
            step, metrics = self._log_row
            checkpoint["yfpo_log_row"] = {"epoch": self.current_epoch, "step": step, **{k: float(v) for k, v in metrics.items()}}
        # Nothing in training draws random numbers today; the states are kept so that anything that
        # does (dropout, sampling) resumes bit-identically too.
        # Stored as tensors and ints: Lightning reads checkpoints with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["yfpo_rng"] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                  "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
                                  "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # The reference is rebuilt from the initial model, so restoring it from disk is unnecessary.
        if self.reference is not None:
            checkpoint["state_dict"].update({f"reference.{k}": v for k, v in self.reference.state_dict().items()})
        rng = checkpoint.get("yfpo_rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            kind, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def setup(self, stage: str) -> None:
        # Before the strategy moves or wraps the model (DDP, FSDP): a precomputed reference is
        # computed and freed here, so no strategy ever holds a copy of it.
        if self.pairwise and self.reference_mode == "precompute" and self.ref_table is None:
            self.ref_table = self._precomputed_table()
        if self.pairwise and self.neurons is not None and self.recorder is None:
            self.recorder = NeuronRecorder(self.policy, self.neurons.by_layer())

    def teardown(self, stage: str) -> None:
        if self.recorder is not None:
            self.recorder.remove()
            self.recorder = None

    def on_fit_start(self) -> None:
        if self.neuron_stats is not None:
            self.neuron_stats = tuple(t.to(self.device) for t in self.neuron_stats)

    def reference_table(self, rows, collate, batch_size: int, device: torch.device, rank: int = 0,
                        world: int = 1) -> torch.Tensor:
        """``[len(rows), 2]`` reference log-probs (chosen, rejected) of ``rows`` (encoded training rows),
        this process's share (:func:`yfpo.train.reference.compute_table`): the policy before its first
        step is the reference, a copy only for another ``reference_dtype``; it visits ``device`` for
        this pass only."""
        reference = self.policy if self.reference_dtype is None else frozen_copy(self.policy, self.reference_dtype)
        home = next(reference.parameters()).device
        reference.eval().to(device)
        table = compute_table(rows, lambda b: model_logps(reference, b, self.chunk_tokens).logps, collate, batch_size,
                              device, rank, world)
        reference.to(home)
        self.policy.train()
        return table

    def _precomputed_table(self) -> torch.Tensor:
        """The ``[rows, 2]`` reference table on this process's device: from the cache, or computed
        over all ranks (the reference visits the device for that pass only) and cached."""
        trainer, cache = self.trainer, self.reference_cache
        device = trainer.strategy.root_device
        table = cache.load() if cache is not None else None
        if table is not None:
            return table.to(device)
        data = trainer.datamodule
        with trainer.precision_plugin.forward_context():  # compute_table runs in inference mode
            table = self.reference_table(data.train_set, data.collate, data.cfg.batch_size, device,
                                         trainer.global_rank, trainer.world_size)
        table = trainer.strategy.reduce(table, reduce_op="sum")  # each rank filled its own rows
        if cache is not None and trainer.is_global_zero:
            cache.save(table)
        trainer.strategy.barrier("reference cache")
        return table

    # --- forward ------------------------------------------------------------------------------
    def reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[rows]`` summed response log-probs of the frozen reference (or its precomputed table)."""
        if self.ref_table is not None:
            return self.ref_table[batch["index"]].T.reshape(-1)  # chosen rows first, as in the batch
        with torch.no_grad():
            return model_logps(self.reference, batch, self.chunk_tokens).logps

    def _neuron_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[rows]`` ``s(y)`` of the policy's last forward (raw, or normalised with ``method.neuron_score``)."""
        stats = self.neuron_stats or (None, None)
        return losses.neuron_scores(self.recorder.activations(), batch["response_mask"], *stats)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and metrics of one batch (see :func:`yfpo.data.encode.collate` for its layout)."""
        out = model_logps(self.policy, batch, self.chunk_tokens, fdt=bool(self.method.fdt))
        if not self.pairwise:
            return losses.sft_loss(out.logps, out.tokens), {}
        pc, pr = out.logps.chunk(2)
        rc, rr = self.reference_logps(batch).chunk(2)
        if self.method.loss == "yfpo":
            sc, sr = self._neuron_scores(batch).chunk(2)
            loss, metrics = losses.yfpo_loss(pc, pr, rc, rr, sc, sr, self.beta, self.lam, self.method.form)
        else:
            loss, metrics = losses.dpo_loss(pc, pr, rc, rr, self.beta)
            if self.recorder is not None:  # tracked only: the margin is logged, never optimised
                with torch.no_grad():
                    sc, sr = self._neuron_scores(batch).chunk(2)
                metrics.update(losses.neuron_metrics(sc, sr))
        if self.nll_weight:
            nll = losses.nll(pc, out.tokens.chunk(2)[0])
            loss = loss + self.nll_weight * nll
            metrics["train/nll"] = nll.detach()
        lc, lr = out.mean_logit.chunk(2)
        metrics.update({"logps/chosen": pc.detach().mean(), "logps/rejected": pr.detach().mean(),
                        "logits/chosen": lc.mean(), "logits/rejected": lr.mean()})
        return loss, metrics

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.compute_loss(batch)
        # Throughput of the previous step (forward, backward, optimizer and data loading); the
        # token count comes from the collate function on the host, so nothing waits for the GPU.
        now, tokens = time.perf_counter(), batch["num_tokens"]
        if self._last_step is not None:
            then, last_tokens = self._last_step
            metrics["perf/tokens_per_sec"] = torch.tensor(last_tokens / (now - then))
        self._last_step = (now, tokens)
        metrics["train/loss"] = loss.detach()
        metrics = {k: v.to(self.device) for k, v in metrics.items()}
        if self.trainer.world_size > 1 and logs_this_step(self.trainer):
            # One all-reduce of all metrics, and only on the steps that Lightning writes to the loggers.
            names = sorted(metrics)
            mean = self.trainer.strategy.reduce(torch.stack([metrics[n].float() for n in names]), reduce_op="mean")
            metrics = dict(zip(names, mean.unbind()))
        metrics["train/lr"] = torch.tensor(self.optimizers().param_groups[0]["lr"])
        self.log_dict(metrics, on_step=True, prog_bar=False, batch_size=batch["input_ids"].shape[0])
        self._log_row = (self.trainer.global_step, metrics) if logs_this_step(self.trainer) else None
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss

    def _own_strategy(self) -> bool:
        """Single device or DDP: the strategy steps and clips the optimizer as Lightning's loop does."""
        return not isinstance(self.trainer.strategy, (FSDPStrategy, DeepSpeedStrategy))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        plugin = self.trainer.precision_plugin
        if gradient_clip_val and isinstance(plugin, MixedPrecision) and plugin.scaler is None and self._own_strategy():
            # bf16 autocast scales no loss, so the gradients are final here; Lightning refuses to clip
            # with any optimizer that may unscale internally (fused AdamW) for fp16's sake.
            params = [p for p in self.policy.parameters() if p.requires_grad]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:  # Lightning's default, "norm"
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        o = self.optim_cfg
        plugin = self.trainer.precision_plugin
        # foreach where the optimizer is wrapped (FSDP, DeepSpeed) or fp16's loss scaler has to unscale before clipping
        fp16_clip = getattr(plugin, "scaler", None) is not None and bool(self.trainer.gradient_clip_val)
        opt = build_optimizer(self.policy, o, fused=bool(o.fused) and self._own_strategy() and not fp16_clip)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = max(1, round(o.warmup_ratio * total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.schedule, warmup, total, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
