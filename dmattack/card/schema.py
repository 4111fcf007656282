"""The ``card.json`` format (``card_format`` 1), shared by ``dmattack card`` and the leaderboard.

A card is one model measured under one protocol (docs/card.md, "The card"). :func:`check_card`
validates the parts every reader relies on (identity, headline numbers with intervals, file
names); ``measurements``, ``convergence`` and ``provenance`` are free-form objects.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..core.errors import ConfigError

CARD_FORMAT = 1
HEADLINE_KEYS = ("clean_quality", "damage_auc_strongest", "damage_auc_relative_to_random",
                 "class_change_at_100")
"""Headline numbers a protocol may report (definitions: docs/card.md, "Headline numbers")."""
BETTER = ("higher", "lower")
TOP_KEYS = ("card_format", "protocol", "model", "headline", "measurements", "convergence",
            "provenance", "seeds", "seconds", "files")
HEX64 = re.compile(r"[0-9a-f]{64}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _fail(where: str, problem: str) -> None:
    raise ConfigError(f"card: {where} {problem}", field=where)


def _keys(obj: Any, where: str, required: tuple[str, ...]) -> dict[str, Any]:
    """``obj`` as a dict with exactly the ``required`` keys."""
    if not isinstance(obj, dict):
        _fail(where, f"is {type(obj).__name__}, not an object")
    unknown = sorted(set(obj) - set(required))
    if unknown:
        _fail(where, f"has unknown key {unknown[0]!r}; allowed: {', '.join(required)}")
    missing = [k for k in required if k not in obj]
    if missing:
        _fail(where, f"lacks key {missing[0]!r}")
    return obj


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(where, f"= {value!r} is not a finite number")
    return float(value)


def _text(value: Any, where: str, *, nonempty: bool = True) -> str:
    if not isinstance(value, str) or (nonempty and not value.strip()):
        _fail(where, f"= {value!r} is not a non-empty string")
    return value


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(where, f"= {value!r} is not an integer >= {minimum}")
    return value


def _hex64(value: Any, where: str) -> None:
    if not isinstance(value, str) or not HEX64.fullmatch(value):
        _fail(where, f"= {value!r} is not a sha256 (64 lowercase hex digits)")


def check_identity(obj: Any, where: str = "protocol") -> None:
    """``{"name", "version", "hash"}`` of a protocol (dmattack.card.protocol_identity)."""
    _keys(obj, where, ("name", "version", "hash"))
    _text(obj["name"], f"{where}.name")
    _int(obj["version"], f"{where}.version", 1)
    _hex64(obj["hash"], f"{where}.hash")


def _check_headline_entry(entry: Any, where: str) -> None:
    _keys(entry, where, ("label", "value", "ci95", "n", "better"))
    _text(entry["label"], f"{where}.label")
    _number(entry["value"], f"{where}.value")
    ci = entry["ci95"]
    if not isinstance(ci, list) or len(ci) != 2:
        _fail(f"{where}.ci95", f"= {ci!r} is not a list [lo, hi]")
    lo, hi = (_number(v, f"{where}.ci95") for v in ci)
    if lo > hi:
        _fail(f"{where}.ci95", f"= {ci!r} has lo > hi")
    _int(entry["n"], f"{where}.n", 1)
    if entry["better"] not in BETTER:
        _fail(f"{where}.better", f"= {entry['better']!r} is not one of {', '.join(BETTER)}")


def _check_headline(obj: Any) -> None:
    if not isinstance(obj, dict) or not obj:
        _fail("headline", "is not a non-empty object")
    for key, entry in obj.items():
        if key not in HEADLINE_KEYS:
            _fail("headline", f"has unknown key {key!r}; allowed: {', '.join(HEADLINE_KEYS)}")
        _check_headline_entry(entry, f"headline.{key}")


def _check_files(obj: Any) -> None:
    _keys(obj, "files", ("md", "curves"))
    for key in ("md", "curves"):
        name = obj[key]
        if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
            _fail(f"files.{key}", f"= {name!r} is not a plain file name beside card.json "
                  "(letters, digits, '.', '_', '-')")


def check_card(obj: Any) -> None:
    """Raise :class:`ConfigError` (one line naming the bad value) unless ``obj`` is a valid
    ``card_format`` 1 card (docs/card.md, "The card")."""
    _keys(obj, "card", TOP_KEYS)
    if obj["card_format"] != CARD_FORMAT or isinstance(obj["card_format"], bool):
        _fail("card_format", f"= {obj['card_format']!r} is not {CARD_FORMAT}")
    check_identity(obj["protocol"])
    model = _keys(obj["model"], "model", ("name", "source", "fingerprint"))
    _text(model["name"], "model.name")
    _text(model["source"], "model.source", nonempty=False)
    _hex64(model["fingerprint"], "model.fingerprint")
    _check_headline(obj["headline"])
    for key in ("measurements", "convergence", "provenance"):
        if not isinstance(obj[key], dict):
            _fail(key, f"is {type(obj[key]).__name__}, not an object")
    if not isinstance(obj["seeds"], list) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in obj["seeds"]):
        _fail("seeds", f"= {str(obj['seeds'])[:40]} is not a list of integers")
    seconds = obj["seconds"]
    if not isinstance(seconds, dict):
        _fail("seconds", f"is {type(seconds).__name__}, not an object")
    for key, value in seconds.items():
        if _number(value, f"seconds.{key}") < 0:
            _fail(f"seconds.{key}", f"= {value!r} is negative")
    _check_files(obj["files"])
