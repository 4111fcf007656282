"""Content keys of user callables (distances, metrics, attack factories) for result stores.

A store that reuses a number must see everything that determines it; for a user's function
that is its code, not its name. :func:`callable_key` is a sha256 over the function's module,
qualified name, bytecode, constants (nested code objects recursively), the globals it names,
its defaults and its closure's values. Values are keyed by content: numbers and strings by
value, tensors and arrays by their bytes, containers and objects (an ``nn.Module`` too:
its parameters are tensors in its ``__dict__``) member by member, library functions (the
standard library, installed packages, dmattack and evaluators themselves) by module and name.
A value that cannot be keyed (a generator, a lock, a file, …) raises
:class:`UnkeyableError` saying how to give a key: an attribute ``key = "<your version>"`` on
the callable (a string: the user's promise that the same key means the same numbers).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sys
import sysconfig
import types
from typing import Any

from .errors import ConfigError

KEY_ATTRIBUTE = "key"
"""A callable carrying a string attribute of this name is keyed by it instead of its code."""

_SCALARS = (type(None), bool, int, float, complex, str, bytes)
_LIBRARY_ROOTS = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib",
                                                            "platlib")} | {sys.base_prefix})


_TOOLKIT = ("dmattack", "evaluators")  # this toolkit: keyed by name (its revision is recorded)


class UnkeyableError(ConfigError):
    """A callable whose numbers cannot be keyed by content (one line saying how to key it)."""


def callable_key(fn: Any) -> str:
    """sha256 (hex) identifying what ``fn`` computes: its explicit ``key`` attribute if it has
    a string one, else its code and the values it reads (see the module docstring). Same code
    and values → same key in every process; a change of one constant → another key. Raises
    :class:`UnkeyableError` for a callable that reads a value that cannot be keyed."""
    explicit = getattr(fn, KEY_ATTRIBUTE, None)
    if isinstance(explicit, str):  # the user's own key, also on a non-callable attack object
        return hashlib.sha256(b"key:" + explicit.encode()).hexdigest()
    h = hashlib.sha256()
    try:
        _feed(h, fn, set())
    except _Unkeyable as e:
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        short = name.rsplit(".", 1)[-1]
        target = "fn" if short.startswith("<") else short  # a lambda: "fn"
        raise UnkeyableError(
            f"cannot key {name} by its code: it reads {e} (no content key); set "
            f"`{target}.{KEY_ATTRIBUTE} = '<version>'` (a string you change whenever what it "
            "computes changes), or pass an explicit key (e.g. run_curve(metric_key=...))",
            field="key") from None
    return h.hexdigest()


class _Unkeyable(Exception):
    """Internal: a value without a content key (the message names its type)."""


def _is_library(obj: Any, toolkit: bool = True) -> bool:
    """Whether ``obj`` (a function or class) comes from the standard library or an installed
    package, or (``toolkit``) from dmattack / evaluators: keyed by module and name, not by
    code."""
    name = getattr(obj, "__module__", None) or ""
    if toolkit and name.split(".")[0] in _TOOLKIT:
        return True
    path = getattr(sys.modules.get(name), "__file__", None)
    return name in sys.builtin_module_names or path is not None and path.startswith(
        _LIBRARY_ROOTS)


def _feed(h: Any, v: Any, seen: set[int]) -> None:
    """Add value ``v`` to hash ``h`` by content (``seen`` guards against cycles)."""
    h.update(type(v).__qualname__.encode() + b"\0")
    if isinstance(v, _SCALARS):
        h.update(repr(v).encode() + b"\0")
        return
    if id(v) in seen:
        h.update(b"<cycle>")
        return
    seen.add(id(v))
    explicit = getattr(v, KEY_ATTRIBUTE, None) if callable(v) else None
    if isinstance(explicit, str):
        h.update(b"key:" + explicit.encode() + b"\0")
    elif isinstance(v, (list, tuple, set, frozenset, dict)):
        _feed_container(h, v, seen)
    elif isinstance(v, types.ModuleType):
        h.update(v.__name__.encode())
    elif isinstance(v, types.CodeType):
        _feed_code(h, v, seen)
    elif isinstance(v, types.FunctionType):
        _feed_function(h, v, seen)
    elif isinstance(v, (types.MethodType, functools.partial)):
        _feed_bound(h, v, seen)
    elif isinstance(v, type) or isinstance(v, (types.BuiltinFunctionType,
                                               types.MethodWrapperType)):
        _feed_named(h, v, seen)
    elif callable(v) and hasattr(v, "__wrapped__"):  # functools.lru_cache / wraps
        _feed(h, v.__wrapped__, seen)
    elif _feed_array(h, v):
        return
    elif hasattr(v, "__dict__") and not _is_library(type(v), toolkit=False) or _is_module(v):
        _feed_named(h, type(v), seen)
        _feed_container(h, vars(v), seen)
    elif _is_plain_library_value(v):
        h.update(str(v).encode())
    else:
        raise _Unkeyable(f"a {type(v).__module__}.{type(v).__qualname__}")


def _is_module(v: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(v, torch.nn.Module)


def _is_plain_library_value(v: Any) -> bool:
    """A logger, torch dtype or device (keyed by its text)."""
    torch = sys.modules.get("torch")
    return isinstance(v, logging.Logger) or torch is not None and isinstance(
        v, (torch.dtype, torch.device))


def _feed_array(h: Any, v: Any) -> bool:
    """Key a torch tensor or numpy array by dtype, shape and bytes; False for anything else."""
    torch, np = sys.modules.get("torch"), sys.modules.get("numpy")
    if torch is not None and isinstance(v, torch.Tensor):
        v = v.detach().cpu().contiguous()
        h.update(f"{v.dtype}{tuple(v.shape)}{v.requires_grad}".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
        return True
    if np is not None and isinstance(v, np.ndarray) and v.dtype != object:
        h.update(f"{v.dtype}{v.shape}".encode())
        h.update(np.ascontiguousarray(v).tobytes())
        return True
    return False


def _feed_container(h: Any, v: Any, seen: set[int]) -> None:
    items = sorted(v.items(), key=lambda kv: repr(kv[0])) if isinstance(v, dict) else (
        sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v)
    h.update(f"[{len(v)}".encode())
    for item in items:
        _feed(h, item, seen)
    h.update(b"]")


def _feed_named(h: Any, v: Any, seen: set[int]) -> None:
    """A class or builtin by module and qualified name; a user class also by its methods."""
    h.update(f"{getattr(v, '__module__', '')}.{getattr(v, '__qualname__', v)}".encode())
    if isinstance(v, type) and not _is_library(v):
        for name, member in sorted(vars(v).items()):
            if isinstance(member, (types.FunctionType, staticmethod, classmethod, property)):
                h.update(name.encode())
                _feed(h, getattr(member, "__func__", None) or getattr(member, "fget", member),
                      seen)


def _feed_bound(h: Any, v: Any, seen: set[int]) -> None:
    if isinstance(v, functools.partial):
        _feed(h, v.func, seen)
        _feed(h, v.args, seen)
        _feed(h, v.keywords, seen)
    else:
        _feed(h, v.__func__, seen)
        _feed(h, v.__self__, seen)


def _feed_function(h: Any, fn: types.FunctionType, seen: set[int]) -> None:
    """A Python function: library ones by name, user ones by code, defaults, closure and the
    globals their code names."""
    h.update(f"{fn.__module__}.{fn.__qualname__}".encode() + b"\0")
    if _is_library(fn):
        return
    _feed_code(h, fn.__code__, seen)
    _feed(h, fn.__defaults__, seen)
    _feed(h, fn.__kwdefaults__, seen)
    for cell in fn.__closure__ or ():
        try:
            _feed(h, cell.cell_contents, seen)
        except ValueError:  # an empty cell (a name assigned after the function was made)
            h.update(b"<empty>")
    for name in sorted(_global_names(fn.__code__)):
        if name in fn.__globals__:
            h.update(b"global:" + name.encode())
            _feed(h, fn.__globals__[name], seen)


def _feed_code(h: Any, code: types.CodeType, seen: set[int]) -> None:
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_argcount,
                   code.co_kwonlyargcount, code.co_flags)).encode())
    for const in code.co_consts:
        _feed(h, const, seen)


def _global_names(code: types.CodeType) -> set[str]:
    """Every name the code (and its nested code) may read as a global."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names
