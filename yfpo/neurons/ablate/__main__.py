"""``python -m yfpo.neurons.ablate``: :func:`yfpo.evaluate.ablation.main`, the causal check of a
neuron file (it generates and scores, so it lives with evaluation)."""

import sys

from yfpo.evaluate.ablation import main

main(sys.argv[1:])
