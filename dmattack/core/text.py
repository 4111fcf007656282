"""Text a user types, parsed the same way everywhere (comma lists), and numbers as text.

A foundation module (imports only :mod:`dmattack.core.errors`).
"""

from __future__ import annotations

from .errors import ConfigError


def comma_list(text: str, what: str | None = None) -> list[str]:
    """``"fgsm, pgd,,"`` → ``["fgsm", "pgd"]``: the comma-separated items, stripped, empty
    ones dropped. With ``what`` (the option's name without ``--``), a list left empty is a
    one-line :class:`ConfigError` naming ``--what``; without it, ``[]`` is returned."""
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items and what is not None:
        raise ConfigError(f"--{what} is empty; give a comma-separated list", field=what)
    return items


def format_number(x: float) -> str:
    """Shortest exact text of ``x``: ``50``, ``0.25``, ``4.9999999`` (never rounded, so distinct
    settings get distinct labels and store keys)."""
    short = format(x, "g")
    return short if float(short) == x else repr(float(x))
