"""``python -m yfpo.demo``: the entry point of :mod:`yfpo.pipelines.demo`."""

import sys

from yfpo.core.errors import run_cli
from yfpo.pipelines.demo import main

if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
