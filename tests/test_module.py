"""The LightningModule on a tiny model: YFPO at lambda=0, FDT's gradients, the neuron hooks."""

import json
import traceback

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from tests import unfused
from tests.conftest import compose_cfg, make_model
from yfpo.train import losses
from yfpo.data.encode import Encoder, collate
from yfpo.neurons.hooks import NeuronRecorder
from yfpo.train.module import PolicyModule
from yfpo.neurons.io import NeuronSet


@pytest.fixture
def batch(synth_dir, tokenizer):
    cfg = compose_cfg()
    rows = [json.loads(l) for l in (synth_dir / "preference.jsonl").read_text().splitlines()[:3]]
    return collate(Encoder(cfg.data, tokenizer).encode_all(rows, "pairs", "pairs"), tokenizer.pad_token_id)


NEURONS = NeuronSet(torch.tensor([0, 0, 1, 1, 1]), torch.tensor([3, 40, 0, 7, 47]), torch.ones(5))


def module(tokenizer, method, lam=0.0, tied=True, neurons=NEURONS, nll_weight=None):
    cfg = compose_cfg(f"method={method}", *([f"method.nll_weight={nll_weight}"] if nll_weight is not None else []))
    return PolicyModule(make_model(tokenizer, tied=tied), cfg.method, cfg.optim, beta=0.1, lam=lam, neurons=neurons)


def loss_and_grads(mod, batch):
    mod.setup("fit")
    loss, metrics = mod.compute_loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in mod.policy.named_parameters()}
    mod.teardown("fit")
    return loss.detach(), metrics, grads


def test_yfpo_lambda_zero_gives_dpo_loss_and_gradients_exactly(tokenizer, batch):
    l_dpo, m_dpo, g_dpo = loss_and_grads(module(tokenizer, "dpo", neurons=None), batch)
    l_y, m_y, g_y = loss_and_grads(module(tokenizer, "yfpo", lam=0.0), batch)
    assert torch.equal(l_dpo, l_y)
    assert all(torch.equal(g_dpo[n], g_y[n]) for n in g_dpo)
    assert m_y["neuron/margin"] != 0  # the reward is computed, it just has no weight


def test_yfpo_lambda_positive_subtracts_the_neuron_margin(tokenizer, batch):
    l0, m0, g0 = loss_and_grads(module(tokenizer, "yfpo", lam=0.0), batch)
    l1, m1, g1 = loss_and_grads(module(tokenizer, "yfpo", lam=0.5), batch)
    torch.testing.assert_close(l1, l0 - 0.5 * m1["neuron/margin"])
    # only the MLP weights that feed the selected neurons (and what lies below them) change gradient
    assert not torch.equal(g0["model.layers.0.mlp.up_proj.weight"], g1["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(g0["model.layers.1.mlp.down_proj.weight"], g1["model.layers.1.mlp.down_proj.weight"])


def test_reference_is_frozen_and_not_checkpointed(tokenizer):
    mod = module(tokenizer, "dpo", neurons=None)
    mod.train()
    assert not mod.reference.training and not any(p.requires_grad for p in mod.reference.parameters())
    ckpt = {"state_dict": mod.state_dict()}
    mod.on_save_checkpoint(ckpt)
    assert ckpt["state_dict"] and not any(k.startswith("reference.") for k in ckpt["state_dict"])
    mod.on_load_checkpoint(ckpt)
    mod.load_state_dict(ckpt["state_dict"], strict=True)


def _unfused_loss(mod, batch, fdt):
    """The DPO loss from full logits, FDT as docs/methods.md writes it (tests/unfused.py)."""
    ids, attn, resp = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    hidden = mod.policy.model(input_ids=ids, attention_mask=attn).last_hidden_state
    weight = mod.policy.get_output_embeddings().weight
    logits = unfused.fdt_logits(hidden, weight, resp) if fdt else hidden @ weight.T
    with torch.no_grad():
        ref = unfused.sequence_logps(mod.reference(input_ids=ids, attention_mask=attn).logits, ids, resp)
    loss, _ = losses.dpo_loss(*unfused.sequence_logps(logits, ids, resp).chunk(2), *ref.chunk(2), mod.beta)
    return loss


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("method", ["dpo", "fdt"])
def test_module_loss_and_every_gradient_equal_the_unfused_implementation(tokenizer, batch, method, tied):
    fused = module(tokenizer, method, tied=tied, neurons=None)
    l_f, _, g_f = loss_and_grads(fused, batch)
    ref = module(tokenizer, method, tied=tied, neurons=None)
    l_u = _unfused_loss(ref, batch, fdt=method == "fdt")
    l_u.backward()
    torch.testing.assert_close(l_f, l_u.detach(), rtol=1e-6, atol=1e-6)
    for n, p in ref.policy.named_parameters():
        torch.testing.assert_close(g_f[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)


def test_fdt_changes_only_the_heads_gradient(tokenizer, batch):
    plain, fdt = module(tokenizer, "dpo", tied=False, neurons=None), module(tokenizer, "fdt", tied=False, neurons=None)
    l_p, m_p, g_p = loss_and_grads(plain, batch)
    l_f, m_f, g_f = loss_and_grads(fdt, batch)
    assert torch.equal(l_f, l_p) and torch.equal(m_f["rewards/margins"], m_p["rewards/margins"])
    assert not torch.allclose(g_f["lm_head.weight"], g_p["lm_head.weight"])
    for n in g_p:
        if n != "lm_head.weight":
            torch.testing.assert_close(g_f[n], g_p[n], rtol=1e-4, atol=1e-7, msg=n)


def test_dpo_with_a_tracked_neuron_set_is_dpo(tokenizer, batch):
    l_0, m_0, g_0 = loss_and_grads(module(tokenizer, "dpo", neurons=None), batch)
    l_t, m_t, g_t = loss_and_grads(module(tokenizer, "dpo", neurons=NEURONS), batch)
    assert torch.equal(l_0, l_t) and all(torch.equal(g_0[n], g_t[n]) for n in g_0)
    assert "neuron/margin" in m_t and "neuron/margin" not in m_0  # logged, never optimised


def test_nll_term_adds_alpha_times_chosen_nll_and_alpha_zero_is_dpo(tokenizer, batch):
    l_dpo, _, g_dpo = loss_and_grads(module(tokenizer, "dpo", neurons=None), batch)
    l_0, m_0, g_0 = loss_and_grads(module(tokenizer, "dpo", neurons=None, nll_weight=0.0), batch)
    assert torch.equal(l_0, l_dpo) and all(torch.equal(g_0[n], g_dpo[n]) for n in g_0) and "train/nll" not in m_0
    mod = module(tokenizer, "dpo", neurons=None, nll_weight=0.5)
    with torch.no_grad():
        logits = mod.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        chosen_logps = unfused.sequence_logps(logits, batch["input_ids"], batch["response_mask"]).chunk(2)[0]
    chosen_tokens = batch["response_mask"].chunk(2)[0][:, 1:].sum(-1)
    l_a, m_a, _ = loss_and_grads(mod, batch)
    torch.testing.assert_close(m_a["train/nll"], (-chosen_logps / chosen_tokens).mean())
    torch.testing.assert_close(l_a, l_dpo + 0.5 * m_a["train/nll"])


def test_recorder_captures_exactly_the_listed_down_proj_channels(tokenizer, batch):
    model = make_model(tokenizer)
    seen = {}
    handles = [model.model.layers[l].mlp.register_forward_hook(lambda m, a, o, l=l: seen.__setitem__(l, a[0]))
               for l in range(2)]
    with NeuronRecorder(model, NEURONS.by_layer()) as rec:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        got = rec.activations()
    for h in handles:
        h.remove()
    manual = []
    for l, idx in NEURONS.by_layer().items():
        mlp, x = model.model.layers[l].mlp, seen[l]
        manual.append((mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))[..., idx])
    torch.testing.assert_close(got, torch.cat(manual, -1))
    assert got.shape[-1] == len(NEURONS) and got.requires_grad


def test_recorder_hooks_are_removed(tokenizer):
    model = make_model(tokenizer)
    rec = NeuronRecorder(model, NEURONS.by_layer())
    rec.remove()
    assert all(not layer.mlp.down_proj._forward_pre_hooks for layer in model.model.layers)


def test_module_rejects_bad_method_combinations(tokenizer):
    cfg = compose_cfg("method=yfpo")
    with pytest.raises(ValueError, match="neuron file"):
        PolicyModule(make_model(tokenizer), cfg.method, cfg.optim, 0.1, 0.1, neurons=None)
    bad = OmegaConf.merge(compose_cfg("method=sft").method, {"fdt": True})
    with pytest.raises(ValueError, match="pairwise"):
        PolicyModule(make_model(tokenizer), bad, cfg.optim, 0.1, 0.0)


class _HostSyncs(TorchDispatchMode):
    """Records, for every op that makes the host wait for the device, the innermost caller outside torch."""

    SYNCING = ("_local_scalar_dense", "nonzero", "is_nonzero", "equal")

    def __init__(self):
        super().__init__()
        self.callers = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.SYNCING:
            frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename and f.filename != __file__]
            self.callers.append(f"{frames[-1].filename}:{frames[-1].lineno}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["dpo", "yfpo", "yfpo_fdt"])
def test_the_training_step_of_yfpo_never_waits_for_the_device(tokenizer, batch, method):
    mod = module(tokenizer, method, lam=0.1)
    mod.setup("fit")
    with _HostSyncs() as syncs:
        loss, _ = mod.compute_loss(batch)
        loss.backward()
    ours = [c for c in syncs.callers if "/yfpo/" in c]
    assert not ours, ours  # (transformers' own padding-mask check still syncs, outside our code)


def test_normalised_neuron_score_uses_the_files_statistics(tokenizer, batch):
    mean, std = torch.tensor([0.1, -0.2, 0.0, 0.3, 0.05]), torch.tensor([2.0, 0.5, 1.0, 4.0, 0.25])
    stats = NeuronSet(NEURONS.layers, NEURONS.indices, NEURONS.scores, mean=mean, std=std)
    cfg = compose_cfg("method=yfpo", "method.neuron_score=normalised")
    mod = PolicyModule(make_model(tokenizer), cfg.method, cfg.optim, beta=0.1, lam=0.5, neurons=stats)
    _, m_norm, _ = loss_and_grads(mod, batch)
    model = make_model(tokenizer)
    with torch.no_grad(), NeuronRecorder(model, NEURONS.by_layer()) as rec:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        acts = rec.activations()
    want = losses.neuron_scores((acts - mean) / std, batch["response_mask"])
    torch.testing.assert_close(m_norm["neuron/margin"], (want.chunk(2)[0] - want.chunk(2)[1]).mean())


def test_sft_loss_is_the_token_mean_cross_entropy_of_the_response(synth_dir, tokenizer):
    rows = [json.loads(l) for l in (synth_dir / "sft.jsonl").read_text().splitlines()[:4]]
    cfg = compose_cfg("method=sft", "data=synthetic_sft")
    b = collate(Encoder(cfg.data, tokenizer).encode_all(rows, "sft", "sft"), tokenizer.pad_token_id)
    mod = PolicyModule(make_model(tokenizer), cfg.method, cfg.optim, beta=0.1, lam=0.0)
    loss, _ = mod.compute_loss(b)
    logits = mod.policy(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    mask = b["response_mask"][:, 1:]
    want = torch.nn.functional.cross_entropy(logits[mask], b["input_ids"][:, 1:][mask])
    torch.testing.assert_close(loss, want)


@pytest.mark.parametrize("precision,algorithm", [("32-true", "norm"), ("bf16-mixed", "norm"), ("bf16-mixed", "value")])
def test_fused_adamw_and_gradient_clipping_in_a_real_step(tokenizer, batch, precision, algorithm):
    """The default optimizer is fused AdamW, and gradients are clipped to gradient_clip_val before it
    steps, also under bf16-mixed (where Lightning itself refuses to clip with a fused optimizer)."""
    import lightning as L

    mod, seen = module(tokenizer, "dpo", neurons=None), {}
    clip, configure = mod.configure_gradient_clipping, mod.configure_optimizers

    def clip_and_measure(*args, **kwargs):
        clip(*args, **kwargs)
        grads = [p.grad for p in mod.policy.parameters()]
        seen["norm"] = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
        seen["max"] = max(g.abs().max().item() for g in grads)

    def configure_and_keep():
        out = configure()
        seen["fused"] = out["optimizer"].defaults["fused"]
        return out

    mod.configure_gradient_clipping, mod.configure_optimizers = clip_and_measure, configure_and_keep
    trainer = L.Trainer(max_steps=1, precision=precision, gradient_clip_val=1e-3, gradient_clip_algorithm=algorithm,
                        accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(mod, torch.utils.data.DataLoader([batch], batch_size=None))
    assert seen["fused"] is True
    if algorithm == "norm":
        assert 0 < seen["norm"] <= 1e-3 * 1.001
    else:
        assert 0 < seen["max"] <= 1e-3 * 1.001 and seen["norm"] > 1e-3 * 1.001  # each entry clipped, not the norm
