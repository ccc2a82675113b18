"""``python -m yfpo.reproduce``: the entry point of :mod:`yfpo.pipelines.reproduce`."""

import sys

from yfpo.pipelines.reproduce import main

if __name__ == "__main__":
    main(sys.argv[1:])
