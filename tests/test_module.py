"""The LightningModule on a tiny model: YFPO at lambda=0, FDT's gradients, the neuron hooks."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose_cfg, make_model
from yfpo import losses
from yfpo.data import Encoder, collate
from yfpo.hooks import NeuronRecorder
from yfpo.module import PreferenceModule
from yfpo.neurons.io import NeuronSet


@pytest.fixture
def batch(synth_dir, tokenizer):
    cfg = compose_cfg()
    rows = [json.loads(l) for l in (synth_dir / "preference.jsonl").read_text().splitlines()[:3]]
    return collate(Encoder(cfg.data, tokenizer).encode_all(rows, "pairs", "pairs"), tokenizer.pad_token_id)


NEURONS = NeuronSet(torch.tensor([0, 0, 1, 1, 1]), torch.tensor([3, 40, 0, 7, 47]), torch.ones(5))


def module(tokenizer, method, lam=0.0, tied=True, neurons=NEURONS):
    cfg = compose_cfg(f"method={method}")
    return PreferenceModule(make_model(tokenizer, tied=tied), cfg.method, cfg.optim, beta=0.1, lam=lam, neurons=neurons)


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


def _head_grad_theorem1(mod, batch):
    """Theorem 1's head gradient, from the plain loss's gradient c with respect to the logits."""
    ids, attn, resp = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    hidden = mod.policy.model(input_ids=ids, attention_mask=attn).last_hidden_state.detach()
    logits = (hidden @ mod.policy.get_output_embeddings().weight.detach().T).requires_grad_()
    with torch.no_grad():
        ref = losses.sequence_logps(mod.reference(input_ids=ids, attention_mask=attn).logits, ids, resp)
    lp = losses.sequence_logps(logits, ids, resp)
    loss, _ = losses.dpo_loss(*lp.chunk(2), *ref.chunk(2), mod.beta)
    c, = torch.autograd.grad(loss, logits)
    h_w, h_l = hidden.chunk(2)
    c_w, c_l = c.chunk(2)
    return torch.einsum("btv,bth->vh", c_w, h_w - h_l) + torch.einsum("btv,bth->vh", c_l, h_l - h_w), c, hidden


def test_fdt_untied_head_gradient_is_theorem1_and_other_gradients_are_dpo(tokenizer, batch):
    plain, fdt = module(tokenizer, "dpo", tied=False, neurons=None), module(tokenizer, "fdt", tied=False, neurons=None)
    with torch.no_grad():
        torch.testing.assert_close(fdt.policy_logits(batch["input_ids"], batch["attention_mask"]),
                                   plain.policy_logits(batch["input_ids"], batch["attention_mask"]))
    expected, _, _ = _head_grad_theorem1(plain, batch)
    l_p, _, g_p = loss_and_grads(plain, batch)
    l_f, _, g_f = loss_and_grads(fdt, batch)
    torch.testing.assert_close(l_f, l_p)
    torch.testing.assert_close(g_f["lm_head.weight"], expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(g_f["lm_head.weight"], g_p["lm_head.weight"])
    for n in g_p:
        if n != "lm_head.weight":
            torch.testing.assert_close(g_f[n], g_p[n], rtol=1e-4, atol=1e-7, msg=n)


def test_fdt_tied_head_changes_only_the_heads_use_of_the_weight(tokenizer, batch):
    plain, fdt = module(tokenizer, "dpo", neurons=None), module(tokenizer, "fdt", neurons=None)
    expected, c, hidden = _head_grad_theorem1(plain, batch)
    plain_head = torch.einsum("btv,bth->vh", c, hidden)  # the plain head's share of the tied gradient
    _, _, g_p = loss_and_grads(plain, batch)
    _, _, g_f = loss_and_grads(fdt, batch)
    emb = "model.embed_tokens.weight"
    torch.testing.assert_close(g_f[emb] - g_p[emb], expected - plain_head, rtol=1e-4, atol=1e-6)


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
        PreferenceModule(make_model(tokenizer), cfg.method, cfg.optim, 0.1, 0.1, neurons=None)
    bad = OmegaConf.merge(compose_cfg("method=sft").method, {"fdt": True})
    with pytest.raises(ValueError, match="pairwise"):
        PreferenceModule(make_model(tokenizer), bad, cfg.optim, 0.1, 0.0)
