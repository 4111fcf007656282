"""Name → implementation registries: attacks, training objectives, samplers, metrics, datasets,
model presets, and purification's labelled data and classifiers.

Each entry owns its options, validation and label; the command line lists a registry's names
as the allowed values of the matching option. A new entry is one registration, e.g. a
per-step attack (a :class:`~dmattack.attacks.ChainAttack` subclass; its own options, if any,
in a config dataclass, see docs/architecture.md)::

    from functools import partial

    from dmattack.attacks import AttackEntry, AttackSpec, ChainAttack
    from dmattack.core.registry import ATTACKS

    class Nudge(ChainAttack):  # x_t + ε_t, every coordinate
        def __init__(self, model, diffusion, eps_scale=1.0, generator=None):
            super().__init__("Nudge", model, diffusion, eps_scale, generator)

        def perturb(self, x_t, t, budget):
            return x_t + budget

    ATTACKS.register("nudge", AttackEntry(
        make=lambda spec: partial(Nudge, eps_scale=spec.eps_scale)))
    AttackSpec("nudge", 50).describe()  # 'nudge-spread-50%'

Third-party packages add entries without touching dmattack through the ``dmattack``
entry-point group (``[project.entry-points.dmattack]`` in their pyproject.toml). Each entry
point names a module or a zero-argument callable; dmattack imports (or calls) it the first time
any registry is looked up outside an import of dmattack itself (:func:`load_plugins`), and the
registrations it makes are then available everywhere, the CLI included (``dmattack plugins``
lists them). A plugin that fails is one warning; see docs/library.md §7.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any, Generic, TypeVar

from .errors import ConfigError, first_line

T = TypeVar("T")
ENTRY_POINT_GROUP = "dmattack"
TOOLKIT_MODULES = ("dmattack", "evaluators", "cli")
"""Top-level modules whose import defers plugin loading: a plugin may import any of them."""
log = logging.getLogger("dmattack")

_plugins_loaded = False
_lock = threading.RLock()
PLUGINS: dict[str, str] = {}
"""Entry points loaded so far: name → ``"ok"`` or the one-line reason it failed to load."""


def importing_toolkit() -> str | None:
    """The toolkit module (:data:`TOOLKIT_MODULES`) whose body this thread is executing, i.e.
    one that is half-imported, or None. Plugins are not loaded then: a plugin importing it
    would see it half-initialised (a circular import)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            name = frame.f_globals.get("__name__", "")
            if isinstance(name, str) and name.split(".")[0] in TOOLKIT_MODULES:
                return name
        frame = frame.f_back
    return None


def load_plugins() -> dict[str, str]:
    """Import every ``dmattack`` entry point once; later calls return the same record.

    Registries call this on every lookup. It does nothing while a toolkit module is being
    imported (:func:`importing_toolkit`; the lookup then sees the built-in entries) or while
    plugins are loading (a plugin's own lookups see what is registered so far). A plugin that
    raises anything, ``SystemExit`` included, is recorded in :data:`PLUGINS` and logged as one
    warning; only the user's own Ctrl-C (SIGINT while loading) propagates.
    """
    global _plugins_loaded
    if _plugins_loaded or importing_toolkit() is not None:
        return PLUGINS
    with _lock:  # another thread waits here until loading is complete
        if _plugins_loaded:  # done by another thread, or re-entered by a plugin of this one
            return PLUGINS
        _plugins_loaded = True
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            PLUGINS[ep.name] = _load_one(ep)
    return PLUGINS


def _load_one(ep: metadata.EntryPoint) -> str:
    """Import (and call, if it names a function) one entry point: ``"ok"`` or why it failed."""
    with _sigint_seen() as sigint:
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()
            return "ok"
        except KeyboardInterrupt as e:
            if sigint is None or sigint:  # the user's Ctrl-C (or we cannot tell)
                raise
            reason = _reason(e)
        except BaseException as e:  # SystemExit too: a broken plugin must not stop dmattack
            reason = _reason(e)
    log.warning("plugin %r (%s) failed to load: %s", ep.name, ep.value, reason)
    return reason


def _reason(error: BaseException) -> str:
    """``"SystemExit: 3"``: the exception's type and first line."""
    text = first_line(error)
    name = type(error).__name__
    return name if text == name else f"{name}: {text}"


@contextmanager
def _sigint_seen() -> Iterator[list[bool] | None]:
    """A list that becomes non-empty when SIGINT (Ctrl-C) arrives inside the block, so that a
    KeyboardInterrupt the user caused is told apart from one a plugin raised; it stays empty
    where SIGINT is ignored (a background job: no Ctrl-C can arrive). None where that cannot be
    watched (not the main thread, or SIGINT handled by someone else's handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    current = signal.getsignal(signal.SIGINT)
    if current is signal.SIG_IGN:
        yield []
        return
    if current is not signal.default_int_handler:
        yield None
        return
    seen: list[bool] = []

    def handler(signum: int, frame: Any) -> None:
        seen.append(True)
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def failed_plugins_note() -> str:
    """``"; plugins that failed to load: a (SystemExit: 3)"`` for a message about an unknown
    name (an entry the failed plugin would have registered), or "" when none failed."""
    failed = [f"{name} ({why})" for name, why in PLUGINS.items() if why != "ok"]
    return f"; plugins that failed to load: {', '.join(failed)}" if failed else ""


class Names(tuple):
    """A registry's names in registration order (a tuple); :attr:`note` names the plugins that
    failed to load, for a message about a name that is not among them."""

    __slots__ = ()

    @property
    def note(self) -> str:
        return failed_plugins_note()


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

    def names(self) -> Names:
        load_plugins()
        return Names(self._entries)

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
        raise ConfigError(f"unknown {what}; allowed: {allowed}{failed_plugins_note()}",
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
LABELLED_DATA: Registry[Any] = Registry("labelled data")
"""Labelled test sets of ``dmattack purify --data``: name →
:class:`~dmattack.purification.labelled.LabelledSet`."""
CLASSIFIERS: Registry[Any] = Registry("classifier")
"""Classifiers of ``dmattack purify --classifier``: name →
:class:`~dmattack.purification.classifier.ClassifierEntry`."""
REGISTRIES: dict[str, Registry[Any]] = {
    "attacks": ATTACKS, "objectives": OBJECTIVES, "samplers": SAMPLERS, "metrics": METRICS,
    "datasets": DATASETS, "presets": PRESETS, "labelled-data": LABELLED_DATA,
    "classifiers": CLASSIFIERS,
}
