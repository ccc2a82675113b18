"""``python -m yfpo.train``: :func:`yfpo.train.fit.main`."""

import sys

from yfpo.core.config import record_swept_keys
from yfpo.train.fit import main

record_swept_keys(sys.argv[1:])  # the swept keys come first in long run directory names
main()
