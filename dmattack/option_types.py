"""Command-line value types shared by every command: numbers (fractions such as ``8/255``
allowed) and "a number or a name" settings. Range checks are left to the config dataclasses
(:mod:`dmattack.settings`), so the library and the CLI refuse a value with the same message."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from typing import Any

import click

from .errors import ConfigError


def parse_number(text: str, kind: type = float) -> int | float:
    """``"0.5"``, ``"1e-4"``, ``"8/255"`` (floats), ``"nan"`` → the number; raises ValueError."""
    text = text.strip()
    if kind is int:
        return int(text)
    if "/" in text:
        num, den = text.split("/", 1)
        return float(Fraction(num.strip()) / Fraction(den.strip()))
    return float(text)


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


_NUMBERS = {(k, optional): Number(k, optional) for k in (int, float)
            for optional in (False, True)}
NUMBER_OR_NAME = NumberOrName(float)
INTEGER_OR_NAME = NumberOrName(int)


def number_type(kind: type, optional: bool = False) -> Number:
    """The click type of an ``int`` / ``float`` setting (``optional``: ``none`` parses too)."""
    return _NUMBERS[kind, optional]


def parse_list(value: str, what: str, allowed: Iterable[str] | None = None) -> list[str]:
    """A comma list of ``--what`` (``"fgsm,pgd"``), each item in ``allowed`` when given."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"--{what} is empty; give a comma-separated list", field=what)
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
        if not 0 <= p <= 100:
            raise ConfigError(f"--steps-attacked {v} is outside 0..100 (percent of reverse "
                              "steps)", field="steps_attacked")
        out.append(p)
    return out
