"""Robustness cards: versioned protocols, the ``card.json`` format, computing cards and their
comparisons, and the leaderboard page (docs/card.md).

``make_cards``, ``compare_cards`` and ``write_comparison`` load torch on first use (the
leaderboard and the protocols do not need it)."""

from typing import Any

from .leaderboard import write_leaderboard
from .protocol import CardProtocol, list_protocols, load_protocol, protocol_identity
from .schema import CARD_FORMAT, HEADLINE_KEYS, check_card

LAZY = {"make_cards": "compute", "load_models": "compute", "compare_cards": "compare",
        "write_comparison": "compare"}

__all__ = ["CARD_FORMAT", "HEADLINE_KEYS", "CardProtocol", "check_card", "compare_cards",
           "list_protocols", "load_models", "load_protocol", "make_cards", "protocol_identity",
           "write_comparison", "write_leaderboard"]


def __getattr__(name: str) -> Any:
    if name in LAZY:
        import importlib

        return getattr(importlib.import_module(f".{LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
