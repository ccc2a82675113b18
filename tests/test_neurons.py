"""The neuron file format, the random selector and the fit checks."""

import pytest
import torch

from tests.conftest import compose_cfg
from yfpo.neurons import io
from yfpo.neurons.select import random_neurons


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


def test_random_selection_is_seeded():
    a = random_neurons(4, 50, compose_cfg("neurons.top_k=20", "seed=1").neurons)
    b = random_neurons(4, 50, compose_cfg("neurons.top_k=20", "seed=1").neurons)
    c = random_neurons(4, 50, compose_cfg("neurons.top_k=20", "seed=2").neurons)
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    assert len({(l, i) for l, i in zip(a.layers.tolist(), a.indices.tolist())}) == 20


def test_a_file_for_another_model_is_refused(tmp_path):
    n = random_neurons(3, 10, compose_cfg("neurons.top_k=5").neurons)
    io.save(tmp_path / "n.safetensors", n, model="other", num_layers=3, intermediate_size=10)
    loaded = io.load(tmp_path / "n.safetensors")
    with pytest.raises(io.NeuronFileError, match=r"computed on model 'other'.*Create one with: python -m yfpo.neurons"):
        io.check_fits(loaded, "tiny", 3, 10, "n.safetensors", "python -m yfpo.neurons model=tiny")
    with pytest.raises(io.NeuronFileError, match="4 x 10"):
        io.check_fits(loaded, "other", 4, 10, "n.safetensors", "cmd")
    io.check_fits(loaded, "other", 3, 10, "n.safetensors", "cmd")


def test_a_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(io.NeuronFileError, match="not a yfpo neuron file"):
        io.load(tmp_path / "x.safetensors")
