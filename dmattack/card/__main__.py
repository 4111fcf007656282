"""``python -m dmattack.card [DIR]``: each protocol's label, hash and whether it is pinned."""

import sys

from .protocol import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
