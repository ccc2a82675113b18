"""``python -m yfpo.train``: :func:`yfpo.train.fit.main`."""

from yfpo.train.fit import main

main()
