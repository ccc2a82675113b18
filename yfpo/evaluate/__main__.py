"""``python -m yfpo.evaluate``: :func:`yfpo.evaluate.run.main`."""

from yfpo.evaluate.run import main

main()
