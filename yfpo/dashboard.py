"""``python -m yfpo.dashboard``: the entry point of :mod:`yfpo.pipelines.dashboard`."""

import sys

from yfpo.pipelines.dashboard import main

if __name__ == "__main__":
    main(sys.argv[1:])
