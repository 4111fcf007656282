"""``python -m dmattack.card [DIR]``: each protocol's label, hash and whether it is pinned."""

import sys

from .protocol import main

sys.exit(main(sys.argv[1:]))
