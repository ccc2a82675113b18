"""Math-neuron selection (YFPO stage 1): selectors, the neuron file, and the CLI ``python -m yfpo.neurons``."""

from yfpo.neurons.io import NeuronFileError, NeuronSet, load, save, top_k

__all__ = ["NeuronFileError", "NeuronSet", "load", "save", "top_k"]
