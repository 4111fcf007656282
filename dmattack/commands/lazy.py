"""Command-line options generated from config dataclasses without importing torch each time.

The options of ``dmattack train/sample/attack/curve/evaluate/purify`` come from config
dataclasses (:func:`dmattack.core.settings.click_options`) whose modules import torch, which takes
seconds. A command declares them with :func:`lazy_options`; they are built when the command
is first parsed (``--help``, an option error, or a run), from a cache holding every lazy
group's options as plain data, so ``dmattack attack --bogus 1`` answers without torch.

On a miss the declaring modules are imported (all of them, in declaration order, as an eager
import would), the options are built by :func:`~dmattack.core.settings.click_options` and written
to ``$DMATTACK_CACHE/cli/`` (default ``~/.cache/dmattack/cli/``, the folder of the other
caches).
The cache is keyed by everything the options depend on: the content of every source file of
dmattack and evaluators, the Python, click and rich installations, and the installed packages
(the modification times of the ``site-packages`` folders on ``sys.path``: installing a plugin
changes its registry's names, listed in --help), and the ``dmattack`` entry points with the
source of the modules they name (a plugin's attack brings its own options); on read the key
and a digest of the content are checked. An option that cannot be written as data (an unknown
type or callback) makes its group uncached: always built live, never wrong. An unwritable cache
folder only costs the speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import click

from ..core.checkout import ROOT
from ..core.registry import ENTRY_POINT_GROUP

FORMAT = 2
CACHE_ENV = "DMATTACK_CACHE"
_GROUPS: dict[str, LazyOptions] = {}
_MEMO: dict[str, Any] = {}


class LazyOptions:
    """A placeholder in a command's parameter list standing for the options of config
    dataclass ``target`` (``"module:Class"``), as ``click_options(cls, exclude=…,
    prefix=…)`` makes them; or, for a function ``target`` (``"module:function"``), the
    options it returns, ``function(exclude=…, prefix=…)`` (e.g. the registered attacks'
    options, :func:`dmattack.attacks.options.attack_options`)."""

    def __init__(self, target: str, exclude: tuple[str, ...] = (), prefix: str = "") -> None:
        self.target, self.exclude, self.prefix = target, tuple(exclude), prefix
        self.key = f"{target}|{','.join(self.exclude)}|{prefix}"
        _GROUPS.setdefault(self.key, self)

    def live(self) -> list[click.Parameter]:
        """The options built from the dataclass (imports its module)."""
        from ..core.settings import click_options

        module, name = self.target.split(":")
        obj = getattr(importlib.import_module(module), name)
        if not isinstance(obj, type):
            return list(obj(exclude=self.exclude, prefix=self.prefix))
        holder = click_options(obj, exclude=self.exclude, prefix=self.prefix)(lambda: None)
        return list(reversed(holder.__click_params__))


def lazy_options(target: str, *, exclude: tuple[str, ...] = (), prefix: str = ""
                 ) -> Callable[[Callable], Callable]:
    """Like ``click_options(cls, exclude=…, prefix=…)`` for ``target = "module:Class"``, the
    options built when the command (a :class:`LazyParamsCommand`) is first parsed."""
    group = LazyOptions(target, exclude, prefix)

    def apply(fn: Callable) -> Callable:
        params = getattr(fn, "__click_params__", [])
        params.append(group)
        fn.__click_params__ = params
        return fn

    return apply


def expand(params: list[Any]) -> list[click.Parameter]:
    """``params`` with each :class:`LazyOptions` replaced by its options."""
    if not any(isinstance(p, LazyOptions) for p in params):
        return params
    out: list[click.Parameter] = []
    for p in params:
        out.extend(_options(p) if isinstance(p, LazyOptions) else [p])
    return out


def _options(group: LazyOptions) -> list[click.Parameter]:
    cached = _read_cache()
    if cached is not None and group.key in cached:
        return [_from_data(d) for d in cached[group.key]]
    built = {key: g.live() for key, g in _GROUPS.items()}  # every group: same import order
    data = {}
    for key, options in built.items():
        try:
            data[key] = [_to_data(o) for o in options]
        except TypeError:  # not expressible as data: this group is always built live
            continue
    _write_cache(data)
    return built[group.key]


# ----------------------------------------------------------------------------- the cache
def cache_key() -> str:
    """sha256 of everything the generated options depend on (see the module docstring): the
    installations and sources (hashed once per process), the ``dmattack`` entry points on
    ``sys.path`` now (a plugin's names are listed in --help) and their modules' sources (a
    plugin's attack brings its own options), hashed once per process and set of entry points."""
    if "base" not in _MEMO:
        _MEMO["base"] = _base_key()
    plugins = sorted((ep.name, ep.value, getattr(ep.dist, "name", None) or "",
                      getattr(ep.dist, "version", None) or "")
                     for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
    if ("plugins", str(plugins)) not in _MEMO:  # a plugin's options are in its source
        _MEMO["plugins", str(plugins)] = [_module_digest(value) for _, value, _, _ in plugins]
    sources = _MEMO["plugins", str(plugins)]
    return hashlib.sha256(f"{_MEMO['base']} {plugins} {sources}".encode()).hexdigest()


def _module_digest(value: str) -> str:
    """sha256 of the source files of the top-level module an entry point names (found on
    ``sys.path`` without importing it; a package: every .py file in it), or "missing"."""
    from importlib.machinery import PathFinder

    found = PathFinder.find_spec(value.split(":")[0].split(".")[0])
    if found is None:
        return "missing"
    if found.submodule_search_locations:
        files = sorted(f for d in found.submodule_search_locations for f in Path(d).rglob("*.py"))
    else:
        files = [Path(found.origin)] if found.origin else []
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f} ".encode())
        with contextlib.suppress(OSError):
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _base_key() -> str:
    h = hashlib.sha256(f"format {FORMAT} python {sys.version} {sys.executable}".encode())
    for pkg in ("click", "rich"):
        h.update(f"{pkg} {_stat(Path(importlib.util.find_spec(pkg).origin))}".encode())
    for entry in sys.path:  # installed / removed distributions
        if Path(entry).name in ("site-packages", "dist-packages"):
            h.update(f"path {entry} {_stat(Path(entry))}".encode())
    for pkg in ("dmattack", "evaluators"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            h.update(f"{f.relative_to(ROOT)} ".encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _stat(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_mtime_ns} {st.st_size}"


def cache_dir() -> Path:
    """``$DMATTACK_CACHE/cli``, else ``~/.cache/dmattack/cli``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dmattack") / "cli"


def cache_file() -> Path:
    return cache_dir() / f"options-{cache_key()[:20]}.json"


def _digest(groups: Any) -> str:
    return hashlib.sha256(json.dumps(groups, sort_keys=True).encode()).hexdigest()


def _read_cache() -> dict[str, list[dict[str, Any]]] | None:
    """The cached groups, or None when missing, for another key, or damaged."""
    key = cache_key()
    if ("groups", key) not in _MEMO:
        try:
            doc = json.loads(cache_file().read_text())
            ok = (doc.get("key") == key and doc.get("format") == FORMAT
                  and doc.get("sha256") == _digest(doc.get("groups")))
            _MEMO["groups", key] = doc["groups"] if ok else None
        except (OSError, ValueError, AttributeError, KeyError):
            _MEMO["groups", key] = None
    return _MEMO["groups", key]


def _write_cache(groups: dict[str, Any]) -> None:
    """Write the cache atomically (a temporary file renamed); failures are ignored."""
    key = cache_key()
    doc = {"format": FORMAT, "key": key, "groups": groups, "sha256": _digest(groups)}
    _MEMO["groups", key] = groups
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".options-", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, cache_file())
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


# ----------------------------------------------------------------------------- options as data
OPTION_CLASSES = ("click.core.Option", "dmattack.core.settings._lazy_help_option.<locals>"
                  ".LazyHelpOption")
"""Option classes rebuilt as a plain ``click.Option`` (the second only computes its help
when read)."""
ATTRS = ("name", "opts", "secondary_opts", "default", "show_default", "help", "hidden",
         "multiple", "nargs", "required", "is_flag", "expose_value", "count")


def _to_data(opt: click.Parameter) -> dict[str, Any]:
    """An option as JSON data; TypeError for one that cannot be rebuilt exactly from it."""
    cls = f"{type(opt).__module__}.{type(opt).__qualname__}"
    if cls not in OPTION_CLASSES:
        raise TypeError(f"option class {cls}")
    d = {a: getattr(opt, a) for a in ATTRS}
    if _unset(d["default"]):  # click's "no default given"
        d["default"] = {"unset": True}
    elif isinstance(d["default"], tuple):
        d["default"] = {"tuple": list(d["default"])}
    json.dumps(d)  # TypeError for a default that is not data
    d["type"] = _type_data(opt.type)
    d["callback"] = _callback_data(opt.callback)
    return d


def _unset(value: Any) -> bool:
    return type(value).__name__ == "Sentinel" and getattr(value, "name", "") == "UNSET"


def _from_data(d: dict[str, Any]) -> click.Option:
    decls = list(d["opts"])
    if d["secondary_opts"]:
        decls = [f"{decls[0]}/{d['secondary_opts'][0]}"]
    kw: dict[str, Any] = {k: d[k] for k in ("show_default", "help", "hidden", "multiple",
                                            "required", "expose_value", "count")}
    default = d["default"]
    if not (isinstance(default, dict) and default.get("unset")):
        kw["default"] = tuple(default["tuple"]) if isinstance(default, dict) else default
    if d["is_flag"]:
        kw["is_flag"] = True
    elif not d["count"]:
        kw["type"] = _type_from(d["type"])
        if d["nargs"] != 1 and not isinstance(kw["type"], click.Tuple):
            kw["nargs"] = d["nargs"]
    if d["callback"] is not None:
        from ..core.settings import _warn_deprecated

        kw["callback"] = _warn_deprecated(*d["callback"])
    return click.Option([*decls, d["name"]], **kw)


def _type_data(t: click.ParamType) -> dict[str, Any]:
    from ..core import option_types

    for name in ("NUMBER_OR_NAME", "INTEGER_OR_NAME"):
        if t is getattr(option_types, name, None):
            return {"t": name}
    if type(t) is option_types.Number:
        return {"t": "number", "kind": t.kind.__name__, "optional": t.optional}
    if type(t) is click.Tuple:
        return {"t": "tuple", "types": [_type_data(x) for x in t.types]}
    for name in ("STRING", "INT", "FLOAT", "BOOL"):
        if type(t) is type(getattr(click, name)):
            return {"t": name}
    raise TypeError(f"option type {t!r}")


def _type_from(d: dict[str, Any]) -> click.ParamType:
    from ..core import option_types

    if d["t"] in ("NUMBER_OR_NAME", "INTEGER_OR_NAME"):
        return getattr(option_types, d["t"])
    if d["t"] == "number":
        return option_types.number_type(int if d["kind"] == "int" else float, d["optional"])
    if d["t"] == "tuple":
        return click.Tuple([_type_from(x) for x in d["types"]])
    return getattr(click, d["t"])


def _callback_data(callback: Any) -> list[str] | None:
    """None, or ``[old, new]`` of :func:`dmattack.core.settings._warn_deprecated`'s callback."""
    if callback is None:
        return None
    if callback.__qualname__ == "_warn_deprecated.<locals>.callback":
        cells = dict(zip(callback.__code__.co_freevars,
                         (c.cell_contents for c in callback.__closure__), strict=True))
        return [cells["old"], cells["new"]]
    raise TypeError(f"option callback {callback!r}")
