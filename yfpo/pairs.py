"""``python -m yfpo.pairs``: the entry point of :mod:`yfpo.data.pairs`."""

import sys

from yfpo.data.pairs import main

if __name__ == "__main__":
    main(sys.argv[1:])
