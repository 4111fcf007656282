"""Where the toolkit's files are: the folder holding ``dmattack/``, ``evaluators/``, ``cli.py``
and the shipped ``checkpoints/``. Imports nothing (the command line reads it before torch)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The checkout (or the site-packages folder of an installed wheel): dmattack/core/checkout.py
lies two levels below it."""
CHECKPOINTS = ROOT / "checkpoints"
"""The shipped checkpoints (checkpoints/README.md says how each was made)."""
