"""Command-line value types shared by every command: numbers (fractions such as ``8/255``
allowed) and "a number or a name" settings. Range checks are left to the config dataclasses
(:mod:`dmattack.core.settings`), so the library and the CLI refuse a value with the same message."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import click

from .errors import ConfigError
from .text import comma_list


class OutOfRange(ValueError):
    """A well-formed number beyond a float's range (its message says so)."""


MAX_EXPONENT = 4000
"""Decimal exponents beyond ±this are refused before :class:`~fractions.Fraction` builds
10**exponent (``1e999999999/1`` would take minutes); a float's range ends near 1e308."""


def parse_number(text: str, kind: type = float) -> int | float:
    """``"0.5"``, ``"1e-4"``, ``"8/255"`` (floats), ``"nan"`` → the number; raises ValueError
    for anything else, :class:`OutOfRange` (a ValueError) for a fraction whose value overflows a
    float (``"1e400/1"``; plain ``"1e400"`` parses as inf, which the settings refuse)."""
    text = text.strip()
    if kind is int:
        return int(text)
    if "/" not in text:
        return float(text)
    num, den = (_fraction(part) for part in text.split("/", 1))
    value = num / den  # ZeroDivisionError for a zero denominator
    try:
        return float(value)
    except OverflowError:
        raise OutOfRange(f"{text!r} overflows a float (|value| > {sys.float_info.max:.4g})"
                         ) from None


def _fraction(part: str) -> Fraction:
    """One side of ``a/b`` as an exact Fraction; ValueError when not a finite decimal or its
    exponent is beyond :data:`MAX_EXPONENT`."""
    part = part.strip()
    _, e, exponent = part.lower().partition("e")
    if e:
        try:
            too_big = abs(int(exponent)) > MAX_EXPONENT
        except ValueError:
            raise ValueError(f"{part!r} is not a number") from None
        if too_big:
            raise OutOfRange(f"{part!r} is out of range (exponent beyond ±{MAX_EXPONENT})")
    return Fraction(part)


class Number(click.ParamType):
    """An int or float option (floats also as a fraction, e.g. ``8/255``); ``optional``: the
    word ``none`` gives None (a setting typed ``int | None`` / ``float | None``)."""

    def __init__(self, kind: type, optional: bool = False) -> None:
        self.kind = kind
        self.optional = optional
        self.name = ("integer" if kind is int else "number") + ("|none" if optional else "")

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int | float | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if self.optional and str(value).strip().lower() == "none":
            return None
        try:
            return parse_number(str(value), self.kind)
        except OutOfRange as e:
            self.fail(str(e), param, ctx)
        except (ValueError, ZeroDivisionError):
            self.fail(f"{value!r} is not {'an integer' if self.kind is int else 'a number'}"
                      + (" or none" if self.optional else ""), param, ctx)


class NumberOrName(click.ParamType):
    """A setting that is a number or a named choice (e.g. ``--fgsm-step std|wong|0.5``,
    ``--horizon 5|end`` with ``kind=int``); text that is not a ``kind`` number stays a name."""

    def __init__(self, kind: type = float) -> None:
        self.kind = kind
        self.name = "integer|name" if kind is int else "number|name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> int | float | str:
        if not isinstance(value, str):
            return value
        try:
            return parse_number(value, self.kind)
        except (ValueError, ZeroDivisionError):
            return value


def parse_t_star(text: str) -> int | float:
    """A purification depth t* (docs/method.md §13): a fraction of T in [0, 1) (a float) or an
    integer timestep >= 1 (an int; ``"2"`` and ``"2.0"`` alike). Raises ValueError for
    anything else, e.g. ``"1.5"`` (neither: never rounded), ``"-0.1"``, ``"nan"``."""
    v = parse_number(text)
    if math.isfinite(v) and 0 <= v < 1:
        return v
    if math.isfinite(v) and v >= 1 and v == int(v):
        return int(v)
    raise ValueError(f"{text.strip()!r} is neither a fraction of T in [0, 1) nor an integer "
                     "timestep >= 1")


_NUMBERS = {(k, optional): Number(k, optional) for k in (int, float)
            for optional in (False, True)}
NUMBER_OR_NAME = NumberOrName(float)
INTEGER_OR_NAME = NumberOrName(int)


def number_type(kind: type, optional: bool = False) -> Number:
    """The click type of an ``int`` / ``float`` setting (``optional``: ``none`` parses too)."""
    return _NUMBERS[kind, optional]


def parse_list(value: str, what: str, allowed: Iterable[str] | None = None) -> list[str]:
    """A comma list of ``--what`` (``"fgsm,pgd"``), each item in ``allowed`` when given."""
    items = comma_list(value, what)
    note = getattr(allowed, "note", "")  # a registry's names: the plugins that failed to load
    allowed = None if allowed is None else tuple(allowed)
    for v in items:
        if allowed is not None and v not in allowed:
            raise ConfigError(f"unknown {what} {v!r}; allowed: {', '.join(allowed)}{note}",
                              field=what)
    return items


def parse_percents(value: str) -> list[float]:
    """``--steps-attacked`` as a list of percents in 0..100."""
    out = []
    for v in parse_list(value, "steps-attacked"):
        try:
            p = parse_number(v)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"--steps-attacked {v!r} is not a number; allowed: 0..100",
                              field="steps_attacked") from None
        if not 0 <= p <= 100:  # nan fails too
            raise ConfigError(f"--steps-attacked {v} is outside 0..100 (percent of reverse "
                              "steps)", field="steps_attacked")
        out.append(p)
    return out
