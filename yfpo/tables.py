"""``python -m yfpo.tables``: the entry point of :mod:`yfpo.pipelines.tables`."""

import sys

from yfpo.pipelines.tables import main

if __name__ == "__main__":
    main(sys.argv[1:])
