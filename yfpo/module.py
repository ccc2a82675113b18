"""The LightningModule: a policy, a frozen reference, and one of the losses in :mod:`yfpo.losses`."""

from __future__ import annotations

import copy
import math
import time

import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn

from yfpo import losses
from yfpo.hooks import NeuronRecorder
from yfpo.neurons.io import NeuronSet

LOSSES = ("sft", "dpo", "yfpo")
SCHEDULES = ("cosine", "linear", "constant")


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int, min_ratio: float):
    """Linear warmup over ``warmup_steps``, then ``schedule`` decay to ``min_ratio`` at ``total_steps``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={schedule!r}: choose one of {SCHEDULES}")

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * decay

    return f


class PreferenceModule(L.LightningModule):
    """Trains ``policy`` with ``method.loss`` (sft | dpo | yfpo), optionally with FDT on the LM head.

    Args:
        policy: a causal LM with ``.model`` (decoder returning ``last_hidden_state``) and an
            output embedding without bias (Qwen2, Llama).
        method: the ``method`` config (``loss``, ``fdt``, ``form``).
        optim: the ``optim`` config (AdamW + schedule).
        beta, lam: DPO temperature and YFPO strength.
        neurons: the selected set; required for ``loss=yfpo``; with any other pair loss it is
            only tracked (its margin is logged, it does not enter the loss).
    """

    def __init__(self, policy: nn.Module, method: DictConfig, optim: DictConfig, beta: float, lam: float,
                 neurons: NeuronSet | None = None):
        super().__init__()
        if method.loss not in LOSSES:
            raise ValueError(f"method.loss={method.loss!r}: choose one of {LOSSES}")
        if method.loss == "yfpo" and neurons is None:
            raise ValueError("method.loss=yfpo needs a neuron file (neurons.path)")
        if method.fdt and method.loss == "sft":
            raise ValueError("method.fdt needs a pairwise loss (dpo or yfpo), not sft")
        self.policy = policy.train()  # from_pretrained returns eval mode, and Lightning keeps modes as they are
        self.method, self.optim_cfg, self.beta, self.lam = method, optim, float(beta), float(lam)
        self.pairwise = method.loss != "sft"
        # A frozen copy of the initial policy; excluded from checkpoints (see on_save_checkpoint).
        self.reference = copy.deepcopy(policy).requires_grad_(False).eval() if self.pairwise else None
        self.neurons = neurons
        self.recorder: NeuronRecorder | None = None
        self._last_step: tuple[float, int] | None = None  # (time, non-pad tokens) of the previous batch

    # --- the reference stays frozen and in eval mode whatever Lightning does ---------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("reference.")}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # The reference is rebuilt from the initial model, so restoring it from disk is unnecessary.
        if self.reference is not None:
            checkpoint["state_dict"].update({f"reference.{k}": v for k, v in self.reference.state_dict().items()})

    def setup(self, stage: str) -> None:
        if self.pairwise and self.neurons is not None and self.recorder is None:
            self.recorder = NeuronRecorder(self.policy, self.neurons.by_layer())

    def teardown(self, stage: str) -> None:
        if self.recorder is not None:
            self.recorder.remove()
            self.recorder = None

    # --- forward ------------------------------------------------------------------------------
    def policy_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[batch, T, V]`` logits of the policy; FDT changes only their gradient to the head."""
        hidden = self.policy.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        head = self.policy.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise ValueError("LM heads with a bias are not supported")
        if self.method.fdt:
            return losses.fdt_logits(hidden, head.weight)
        return head(hidden)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss and metrics of one batch (see :func:`yfpo.data.collate` for its layout)."""
        ids, attn, resp = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        logits = self.policy_logits(ids, attn)
        if not self.pairwise:
            return losses.sft_loss(logits, ids, resp), {}
        logps = losses.sequence_logps(logits, ids, resp)
        with torch.no_grad():
            ref_logps = losses.sequence_logps(self.reference(input_ids=ids, attention_mask=attn).logits, ids, resp)
        pc, pr = logps.chunk(2)
        rc, rr = ref_logps.chunk(2)
        if self.recorder is not None:
            sc, sr = losses.neuron_scores(self.recorder.activations(), resp).chunk(2)
            lam = self.lam if self.method.loss == "yfpo" else 0.0
            if self.method.loss != "yfpo":
                sc, sr = sc.detach(), sr.detach()
            loss, metrics = losses.yfpo_loss(pc, pr, rc, rr, sc, sr, self.beta, lam, self.method.get("form", "margin"))
        else:
            loss, metrics = losses.dpo_loss(pc, pr, rc, rr, self.beta)
        logits_c, logits_r = logits.chunk(2)
        mask_c, mask_r = resp.chunk(2)
        metrics.update({
            "logps/chosen": pc.detach().mean(),
            "logps/rejected": pr.detach().mean(),
            "logits/chosen": losses.mean_response_logits(logits_c, mask_c),
            "logits/rejected": losses.mean_response_logits(logits_r, mask_r),
        })
        return loss, metrics

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.compute_loss(batch)
        # Throughput of the previous step (forward, backward, optimizer and data loading).
        now, tokens = time.perf_counter(), batch["attention_mask"].sum().item()
        if self._last_step is not None:
            then, last_tokens = self._last_step
            metrics["perf/tokens_per_sec"] = torch.tensor(last_tokens / (now - then))
        self._last_step = (now, tokens)
        metrics["train/loss"] = loss.detach()
        metrics["train/lr"] = torch.tensor(self.optimizers().param_groups[0]["lr"])
        self.log_dict(metrics, on_step=True, prog_bar=False, sync_dist=True, batch_size=batch["input_ids"].shape[0])
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss

    def configure_optimizers(self):
        o = self.optim_cfg
        params = [p for p in self.policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = max(1, round(o.warmup_ratio * total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.schedule, warmup, total, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
