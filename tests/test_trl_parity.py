"""The module's DPO loss equals TRL's ``DPOTrainer.compute_loss`` on the same model and texts."""

import json

import pytest
import torch

from tests.conftest import compose_cfg, make_model
from yfpo.data.encode import Encoder, collate
from yfpo.data.prompts import format_prompt
from yfpo.train.module import PolicyModule

trl = pytest.importorskip("trl", reason="trl is in the dev extra (make install adds it)")
datasets = pytest.importorskip("datasets")


def test_dpo_loss_matches_trl(tmp_path, synth_dir, tokenizer):
    cfg = compose_cfg("method=dpo", "data.append_eos=true", "data.add_bos=false", "beta=0.25")
    rows = [json.loads(l) for l in (synth_dir / "preference.jsonl").read_text().splitlines()]
    n_tokens = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    unequal = [r for r in rows if n_tokens(r["chosen"]) != n_tokens(r["rejected"])]
    rows = unequal[:3] + [r for r in rows if r not in unequal][:1]
    policy, reference = make_model(tokenizer, seed=0), make_model(tokenizer, seed=1)  # a reference that differs

    ours = PolicyModule(policy, cfg.method, cfg.optim, beta=cfg.beta, lam=0.0)
    ours.reference.load_state_dict(reference.state_dict())
    encoded = Encoder(cfg.data, tokenizer).encode_all(rows, "pairs", "pairs")
    # unequal lengths everywhere: chosen vs rejected, and prompts across rows
    assert any(len(e.chosen) != len(e.rejected) for e in encoded) and len({len(e.prompt) for e in encoded}) > 1
    batch = collate(encoded, tokenizer.pad_token_id)
    loss, metrics = ours.compute_loss(batch)

    texts = [{"prompt": format_prompt("alpaca", r["prompt"], r["initial_reason_steps"]),
              "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    args = trl.DPOConfig(output_dir=str(tmp_path), beta=cfg.beta, report_to=[], per_device_train_batch_size=4,
                         max_length=None, use_cpu=True, bf16=False, gradient_checkpointing=False)
    trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args,
                             train_dataset=datasets.Dataset.from_list(texts), processing_class=tokenizer)
    examples = [trainer.train_dataset[i] for i in range(len(texts))]
    # Same tokens on both sides, so any difference below is a difference of the loss itself.
    for i, ex in enumerate(examples):
        n = len(ex["prompt_ids"])
        assert ex["prompt_ids"] + ex["chosen_ids"] == batch["input_ids"][i, : n + len(ex["chosen_ids"])].tolist()
    trl_batch = trainer.data_collator(examples)
    policy.train()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(policy, trl_batch)
    torch.testing.assert_close(loss.detach(), trl_loss.detach(), rtol=1e-5, atol=1e-6)
    assert metrics["rewards/margins"] != 0
