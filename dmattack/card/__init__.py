"""Robustness cards: versioned protocols, the ``card.json`` format and the leaderboard page
(docs/card.md)."""

from .leaderboard import write_leaderboard
from .protocol import Protocol, list_protocols, load_protocol, protocol_identity
from .schema import CARD_FORMAT, HEADLINE_KEYS, check_card

__all__ = ["CARD_FORMAT", "HEADLINE_KEYS", "Protocol", "check_card", "list_protocols",
           "load_protocol", "protocol_identity", "write_leaderboard"]
