"""Name → implementation registries: attacks, training objectives, samplers, metrics, datasets,
model presets.

Each entry owns its options, validation and label; the command line lists a registry's names
as the allowed values of the matching option. A new entry is one registration::

    from dmattack.registry import ATTACKS

    @ATTACKS.register("my-attack")
    class MyAttack(ChainAttack): ...

Third-party packages add entries without touching dmattack through the ``dmattack``
entry-point group (``[project.entry-points.dmattack]`` in their pyproject.toml). Each entry
point names a module or a zero-argument callable; dmattack imports (or calls) it the first time
any registry is looked up, and the registrations it makes are then available everywhere,
the CLI included (``dmattack plugins`` lists them).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

from .errors import ConfigError, first_line

T = TypeVar("T")
ENTRY_POINT_GROUP = "dmattack"
log = logging.getLogger("dmattack")

_plugins_loaded = False
PLUGINS: dict[str, str] = {}
"""Entry points loaded so far: name → ``"ok"`` or the one-line reason it failed to load."""


def load_plugins() -> dict[str, str]:
    """Import every ``dmattack`` entry point once (later calls return the same record)."""
    global _plugins_loaded
    if _plugins_loaded:
        return PLUGINS
    _plugins_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()
            PLUGINS[ep.name] = "ok"
        except Exception as e:  # a broken plugin must not take the toolkit down
            PLUGINS[ep.name] = first_line(e)
            log.warning("plugin %r (%s) failed to load: %s", ep.name, ep.value, first_line(e))
    return PLUGINS


class Registry(Generic[T]):
    """A named collection of implementations of one kind (``kind`` is used in messages).

    ``registry[name]`` returns the entry or raises :class:`ConfigError` naming the unknown
    value and the allowed names; ``registry.names()`` lists them in registration order.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._origin: dict[str, str] = {}

    def register(self, name: str, entry: T | None = None, *, replace: bool = False
                 ) -> Any:
        """Register ``entry`` under ``name``; without ``entry``, a decorator that does so.

        Registering a taken name raises ValueError unless ``replace=True``.
        """
        if not isinstance(name, str) or not name or name != name.strip() or "," in name:
            raise ValueError(f"{self.kind} name {name!r} must be a non-empty string "
                             "without commas or surrounding spaces")
        caller = sys._getframe(1).f_globals.get("__name__", "?")  # the registering module

        def add(obj: T) -> T:
            if name in self._entries and not replace:
                raise ValueError(f"{self.kind} {name!r} is already registered "
                                 f"(by {self._origin[name]}); pass replace=True to override")
            self._entries[name] = obj
            self._origin[name] = caller
            return obj

        if entry is None:
            return add
        return add(entry)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (e.g. a test's temporary entry); unknown names are ignored."""
        self._entries.pop(name, None)
        self._origin.pop(name, None)

    def names(self) -> tuple[str, ...]:
        load_plugins()
        return tuple(self._entries)

    def origin(self, name: str) -> str:
        """The module that registered ``name``."""
        self[name]
        return self._origin[name]

    def get(self, name: str, option: str | None = None) -> T:
        """The entry for ``name``; an unknown name raises :class:`ConfigError` that names
        ``option`` (e.g. ``"--method"``) when given."""
        load_plugins()
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        what = f"{option} {name!r}" if option else f"{self.kind} {name!r}"
        allowed = ", ".join(self._entries) or "(none registered)"
        raise ConfigError(f"unknown {what}; allowed: {allowed}",
                          field=option.lstrip("-").replace("-", "_") if option else None)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


def registry_choices(registry: Registry[Any]) -> Callable[[], tuple[str, ...]]:
    """The allowed values of a setting that names a registry entry, looked up when checked
    (so plugin entries count)."""
    return registry.names


ATTACKS: Registry[Any] = Registry("attack")
"""Reverse-chain attacks: name → factory ``(spec, model, diffusion, generator) -> ChainAttack``
(per-step) or an adaptive attack class; see :mod:`dmattack.attacks`."""
OBJECTIVES: Registry[Any] = Registry("training objective")
SAMPLERS: Registry[Any] = Registry("sampler")
METRICS: Registry[Any] = Registry("metric")
DATASETS: Registry[Any] = Registry("dataset")
PRESETS: Registry[Any] = Registry("model preset")
REGISTRIES: dict[str, Registry[Any]] = {
    "attacks": ATTACKS, "objectives": OBJECTIVES, "samplers": SAMPLERS, "metrics": METRICS,
    "datasets": DATASETS, "presets": PRESETS,
}
