"""``python -m yfpo.prepare``: the entry point of :mod:`yfpo.assets.prepare`."""

import sys

from yfpo.assets.prepare import main

if __name__ == "__main__":
    main(sys.argv[1:])
