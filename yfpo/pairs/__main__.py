"""``python -m yfpo.pairs``: :func:`yfpo.pairs.sampling.main`."""

import sys

from yfpo.pairs.sampling import main

main(sys.argv[1:])
