"""``python -m yfpo.neurons``: :func:`yfpo.neurons.selection.main`."""

import sys

from yfpo.neurons.selection import main

main(sys.argv[1:])
