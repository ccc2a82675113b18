"""The neuron file format, the random selector and the fit checks."""

import pytest
import torch

from tests.conftest import FAST, compose_cfg, job_of, model_dir, neurons_for
from yfpo.core.artefacts import StaleArtefactError
from yfpo.neurons import io
from yfpo.neurons.selectors import random_neurons


def test_top_k_is_global_and_deterministic():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.9, 0.2, 0.8]])
    layers, indices, top = io.top_k(scores, 3)
    assert layers.tolist() == [0, 1, 1] and indices.tolist() == [1, 0, 2]  # tie at 0.9: lower flat index first
    torch.testing.assert_close(top, torch.tensor([0.9, 0.9, 0.8]))
    with pytest.raises(ValueError, match="top_k=7"):
        io.top_k(scores, 7)


def test_round_trip_with_metadata(tmp_path):
    n = random_neurons(3, 10, compose_cfg("neurons.top_k=5", "seed=1").neurons)
    path = io.save(tmp_path / "n.safetensors", n, model="m", num_layers=3, intermediate_size=10, selector="random")
    back = io.load(path)
    assert torch.equal(back.layers, n.layers) and torch.equal(back.indices, n.indices)
    assert back.meta["model"] == "m" and back.meta["num_layers"] == "3" and back.meta["format"] == io.FORMAT
    assert "date" in back.meta


def test_random_selection_is_seeded_by_its_own_seed():
    a = random_neurons(4, 50, compose_cfg("neurons.top_k=20", "neurons.seed=1").neurons)
    b = random_neurons(4, 50, compose_cfg("neurons.top_k=20", "neurons.seed=1").neurons)
    c = random_neurons(4, 50, compose_cfg("neurons.top_k=20", "neurons.seed=2").neurons)
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    assert len({(l, i) for l, i in zip(a.layers.tolist(), a.indices.tolist())}) == 20


@pytest.mark.parametrize("selector", ["random", "activation", "attnlrp"])
def test_a_training_seed_sweep_shares_one_neuron_set(selector):
    """The paper fixes the set once per model: the training seed changes neither the file nor its contents."""
    cfgs = [compose_cfg("method=yfpo", f"neurons={selector}", f"seed={s}").neurons for s in (42, 43, 44)]
    assert len({c.path for c in cfgs}) == 1 and len({c.seed for c in cfgs}) == 1
    if selector == "random":
        picks = [random_neurons(4, 50, c) for c in cfgs]
        assert all(torch.equal(p.indices, picks[0].indices) for p in picks)


def test_a_file_for_another_model_or_other_weights_is_refused_with_the_command_that_makes_it(tmp_path, cache):
    """The smoke model and tiny_base share model.name: the file names and the key tell them apart."""
    from yfpo.core.models import load_model, weights_fingerprint
    from yfpo.neurons.selection import SelectionJob, select

    smoke, base = compose_cfg(*FAST), compose_cfg("model=tiny_base")
    assert smoke.model.name == base.model.name and smoke.neurons.path != base.neurons.path
    path = select(job_of(SelectionJob, smoke))
    model = load_model(smoke.model, model_dir(smoke))
    weights, c = weights_fingerprint(model), model.config
    neurons_for(smoke, c, weights, "training", FAST)  # it fits what made it
    elsewhere = compose_cfg(*FAST, f"neurons.path={path}", "model.path=/elsewhere")  # another model, same name
    with pytest.raises(io.NeuronFileError, match=r"model: made with 'tiny_base-\w+', now 'tiny_base-\w+'.*neurons.overwrite=true"):
        neurons_for(elsewhere, c, weights, "training", FAST)
    with pytest.raises(io.NeuronFileError, match=r"weights: made with .*python -m yfpo.neurons \+experiment=smoke neurons.overwrite=true"):
        neurons_for(smoke, c, "retrained", "training", FAST)
    with pytest.raises(io.NeuronFileError, match=r"num_samples: made with '256', now '9'"):
        neurons_for(compose_cfg(*FAST, "neurons.num_samples=9"), c, weights, "training", FAST)
    with pytest.raises(StaleArtefactError, match=r"num_samples.*neurons.num_samples=9 neurons.overwrite=true"):  # so does the CLI
        select(job_of(SelectionJob, compose_cfg(*FAST, "neurons.num_samples=9")), [*FAST, "neurons.num_samples=9"])


@pytest.mark.slow  # real processes: the printed command runs as pasted
def test_the_missing_neuron_file_hint_runs_as_pasted(tmp_path):
    """``python -m yfpo.train +experiment=smoke method=yfpo``: the hint keeps +experiment=smoke, and
    after running it as printed the same training works."""
    import os
    import shlex
    import subprocess
    import sys

    env = {**os.environ, "YFPO_CACHE": str(tmp_path / "cache")}
    train = [sys.executable, "-m", "yfpo.train", "+experiment=smoke", "method=yfpo", "lambda=0.2",
             f"hydra.run.dir={tmp_path / 'run'}"]
    first = subprocess.run(train, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert first.returncode == 2 and "yfpo: error: neuron file" in first.stderr
    hint = first.stderr.split("create it with: ")[1].splitlines()[0]
    assert hint == "python -m yfpo.neurons +experiment=smoke method=yfpo lambda=0.2"
    made = subprocess.run([sys.executable, *shlex.split(hint)[1:]], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    again = subprocess.run(train, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "run" / "DONE").is_file()


def test_a_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(io.NeuronFileError, match="not a yfpo neuron file"):
        io.load(tmp_path / "x.safetensors")


def test_selection_stores_activation_statistics_that_make_the_score_scale_free(synth_dir, tokenizer):
    """mu_i, sigma_i are those of the response tokens; rescaling a neuron in the model rescales them,
    so the normalised score of the rescaled model equals the original's."""
    import json

    from tests.conftest import make_model
    from yfpo.data.encode import Encoder, collate
    from yfpo.neurons.hooks import NeuronRecorder
    from yfpo.train.losses import neuron_scores
    from yfpo.neurons.attribution import ActivationStats, activation_scores

    rows = [json.loads(l) for l in (synth_dir / "sft.jsonl").read_text().splitlines()[:6]]
    batch = collate(Encoder(compose_cfg().data, tokenizer).encode_all(rows, "sft", "sft"), tokenizer.pad_token_id)
    neurons = io.NeuronSet(torch.tensor([1, 0, 1]), torch.tensor([40, 5, 2]), torch.ones(3))  # not in recorder order

    def normalised_scores(scale):
        model = make_model(tokenizer).eval()
        with torch.no_grad():  # a = act(gate) * up: scaling up_proj's row scales neuron (1, 2) by `scale`
            model.model.layers[1].mlp.up_proj.weight[2] *= scale
        stats = ActivationStats(2, 48)
        activation_scores(model, [batch], stats=stats)
        mean, std = stats.mean_std()
        neurons.mean, neurons.std = mean[neurons.layers, neurons.indices].float(), std[neurons.layers, neurons.indices].float()
        with torch.no_grad(), NeuronRecorder(model, neurons.by_layer()) as rec:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            acts = rec.activations()
        resp = batch["response_mask"]
        manual = acts[resp].double()
        torch.testing.assert_close(neurons.stats_by_layer()[0].double(), manual.mean(0), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(neurons.stats_by_layer()[1].double(), manual.std(0, unbiased=False), rtol=1e-4, atol=1e-6)
        return neuron_scores(acts, resp, *neurons.stats_by_layer()), neuron_scores(acts, resp)

    (norm_1, raw_1), (norm_50, raw_50) = normalised_scores(1.0), normalised_scores(50.0)
    torch.testing.assert_close(norm_50, norm_1, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(raw_50, raw_1, rtol=1e-2)


def test_normalised_score_needs_a_file_with_statistics():
    with pytest.raises(io.NeuronFileError, match="no activation statistics.*neurons.overwrite=true"):
        io.NeuronSet(torch.tensor([0]), torch.tensor([1]), torch.ones(1)).stats_by_layer()


def test_a_cached_neuron_file_is_reused_only_for_the_same_weights(cache, monkeypatch, capsys):
    """A retrained model under the same name and path is refused the old neurons; the fix recomputes them."""
    from tests.conftest import FAST
    from yfpo.neurons import selection as stage

    args = [*FAST, "neurons=random", "neurons.num_samples=4"]
    first = io.load(stage.select(job_of(stage.SelectionJob, compose_cfg(*args))))
    assert len(first.meta["weights"]) == 40
    stage.select(job_of(stage.SelectionJob, compose_cfg(*args)))
    assert "keeping it" in capsys.readouterr().out

    load = stage.load_model

    def retrained(*a, **k):  # the same model name and path, other weights
        model = load(*a, **k)
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight.mul_(2.0)
        return model

    monkeypatch.setattr(stage, "load_model", retrained)
    with pytest.raises(StaleArtefactError, match=r"weights: made with .*neurons.overwrite=true"):
        stage.select(job_of(stage.SelectionJob, compose_cfg(*args)), args)
    again = io.load(stage.select(job_of(stage.SelectionJob, compose_cfg(*args, "neurons.overwrite=true"))))
    assert again.meta["weights"] != first.meta["weights"]
    assert not torch.equal(again.mean, first.mean)  # the statistics are those of the new weights


def test_a_neuron_file_with_this_models_key_but_indices_outside_it_is_one_clear_error(tmp_path):
    """A file edited by hand or made by another tool, with the right metadata: refused when loaded,
    naming the file and the value, where it would otherwise raise an IndexError at the first step."""
    from omegaconf import OmegaConf

    key = {"model": "tiny", "weights": "w", "num_layers": 2, "intermediate_size": 48}
    n = OmegaConf.create({"path": str(tmp_path / "n.safetensors")})
    for layers, indices, what in (([0, 1], [3, 48], "index 48, outside this model's 0..47"), ([2, 0], [0, 1], "layer 2, outside this model's 0..1"),
                                  ([0, 1], [-1, 1], "index -1, outside")):
        io.save(n.path, io.NeuronSet(torch.tensor(layers), torch.tensor(indices), torch.ones(2)), **key)
        with pytest.raises(io.NeuronFileError, match=f"neuron file {n.path} holds {what}.*python -m yfpo.neurons x=1 neurons.overwrite=true"):
            io.load_for(n, key, "training", ["x=1"])
    io.save(n.path, io.NeuronSet(torch.tensor([0, 1]), torch.tensor([0, 47]), torch.ones(2)), **key)
    assert len(io.load_for(n, key, "training", ["x=1"])) == 2


def test_a_model_without_the_decoder_layout_is_one_config_error():
    """A model the neuron hooks or the fused log-probs cannot read is refused in one line naming what
    it lacks, not with PyTorch's AttributeError (docs/extending.md: what a model needs)."""
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    from yfpo.core.errors import ConfigError
    from yfpo.neurons.hooks import decoder_layers
    from yfpo.train.logprobs import model_logps

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    with pytest.raises(ConfigError, match=r"GPT2LMHeadModel has no \.model\.layers: .*Qwen2/Llama-style.*choose such a model$"):
        decoder_layers(gpt2)  # every loss reads the decoder too: no method avoids it
    qwen = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                        num_key_value_heads=1, vocab_size=32))
    assert len(decoder_layers(qwen)) == 1
    del qwen.model.layers[0].mlp.down_proj
    with pytest.raises(ConfigError, match=r"has no \.model\.layers\[\*\]\.mlp\.down_proj.*method=dpo method\.track_neurons=false.*trainer=ddp"):
        decoder_layers(qwen)
    qwen.lm_head = torch.nn.Linear(16, 32, bias=True)
    with pytest.raises(ConfigError, match="LM heads with a bias are not supported"):
        model_logps(qwen, {}, chunk_tokens=8)
