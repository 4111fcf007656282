"""Paired comparisons of cards made under one protocol (docs/card.md, docs/method.md §14).

:func:`compare_cards` reads card.json files (or folders holding one), refuses cards of
different protocol hashes or seeds (one line), and for every ordered pair (A, B) of the
listing (A before B) and every headline number returns A − B with its paired 95% interval and
the verdict on "A is better than B" (:func:`dmattack.core.stats.verdict` with the protocol's
``min_effect``). :func:`write_comparison` writes ``comparison.json`` and ``comparison.md``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, InputFileError
from ..core.io import provenance, write_json, write_text
from . import report
from .headline import compare_headlines
from .protocol import PROTOCOL_DIR, CardProtocol, load_protocol
from .schema import check_card


def read_card(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(card.json path, validated content) of a card file or a folder holding card.json."""
    p = Path(path)
    if p.is_dir():
        p = p / "card.json"
    try:
        card = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputFileError(f"card {p} cannot be read: {e}") from None
    try:
        check_card(card)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}", field="cards") from None
    if not isinstance(card["measurements"].get("per_sample"), dict):
        raise ConfigError(f"{p}: measurements.per_sample is missing; only cards written by "
                          "`dmattack card` can be compared", field="cards")
    return p, card


def _protocol_of(cards: Sequence[tuple[Path, dict[str, Any]]], protocol: CardProtocol | None,
                 directory: Path) -> CardProtocol:
    """The one protocol every card was made under (same hash and seeds), else ConfigError."""
    first_path, first = cards[0]
    for path, card in cards[1:]:
        if card["protocol"]["hash"] != first["protocol"]["hash"]:
            a, b = first["protocol"], card["protocol"]
            raise ConfigError(
                f"cards of different protocols are never compared: {first_path} is "
                f"{a['name']}-v{a['version']} ({a['hash'][:12]}…), {path} is "
                f"{b['name']}-v{b['version']} ({b['hash'][:12]}…)", field="cards")
        if card["seeds"] != first["seeds"]:
            raise ConfigError(f"cards {first_path} and {path} were made with different seeds",
                              field="cards")
    ident = first["protocol"]
    if protocol is None:
        protocol = load_protocol(f"{ident['name']}-v{ident['version']}", directory)
    if protocol.hash != ident["hash"]:
        raise ConfigError(f"card {first_path} was made under protocol hash "
                          f"{ident['hash'][:12]}… but {protocol.label} here has "
                          f"{protocol.hash[:12]}…", field="cards")
    return protocol


def compare_cards(paths: Sequence[str | Path], protocol: CardProtocol | None = None,
                  directory: Path = PROTOCOL_DIR) -> dict[str, Any]:
    """The ``comparison.json`` content of two or more cards (see the module docstring)."""
    if len(paths) < 2:
        raise ConfigError(f"comparing needs at least 2 cards, got {len(paths)}", field="cards")
    cards = [read_card(p) for p in paths]
    p = _protocol_of(cards, protocol, Path(directory))
    better = {k: e["better"] for k, e in cards[0][1]["headline"].items()}
    pairs = []
    for (pa, a), (pb, b) in itertools.combinations(cards, 2):
        rows = compare_headlines(p, a["measurements"]["per_sample"],
                                 b["measurements"]["per_sample"], better)
        pairs.append({"a": a["model"]["name"], "b": b["model"]["name"],
                      "a_card": str(pa), "b_card": str(pb), "rows": rows})
    return {"kind": "dmattack-card-comparison", "protocol": cards[0][1]["protocol"],
            "cards": [{"name": c["model"]["name"], "fingerprint": c["model"]["fingerprint"],
                       "card": str(path)} for path, c in cards],
            "definitions": "docs/method.md §14; difference = A - B on the same seeds",
            "pairs": pairs, "provenance": provenance()}


def write_comparison(paths: Sequence[str | Path], out_dir: str | Path,
                     protocol: CardProtocol | None = None,
                     directory: Path = PROTOCOL_DIR) -> Path:
    """Write ``comparison.json`` and ``comparison.md`` into ``out_dir``; returns the JSON."""
    return save_comparison(compare_cards(paths, protocol, directory), out_dir)


def save_comparison(result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write a :func:`compare_cards` result as ``comparison.json`` and ``comparison.md``."""
    out = Path(out_dir)
    write_text(out / "comparison.md", report.comparison_markdown(result))
    return write_json(out / "comparison.json", result)
