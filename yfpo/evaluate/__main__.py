"""``python -m yfpo.evaluate``: :func:`yfpo.evaluate.run.main`, with run directories passed as typed
(:func:`yfpo.core.config.quote_paths`)."""

import sys

from yfpo.core.config import quote_paths
from yfpo.evaluate.run import main

sys.argv[1:] = quote_paths(sys.argv[1:])
main()
