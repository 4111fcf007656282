"""Parsing and validating a card protocol's TOML content (docs/card.md).

:func:`parse` turns a parsed TOML document into a :class:`~.protocol_types.CardProtocol`
(every key typed by the dataclass fields: unknown, missing and mistyped keys are refused) and
:func:`check` applies the rules between fields. Both raise :class:`Bad`, a one-line problem that
the loader prefixes with the file's name.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, Union

from .protocol_types import (
    ATTACK_TABLES,
    FEATURE_DIMS,
    CardAttack,
    CardProtocol,
    Purification,
    Sampling,
)
from .schema import HEX64

LABEL = re.compile(r"([a-z0-9]+(?:-[a-z0-9]+)*)-v([1-9][0-9]*)")



class Bad(Exception):
    """A validation problem inside one file, before the protocol's label is prefixed."""


def _fail(where: str, problem: str) -> typing.NoReturn:
    raise Bad(f"{where} {problem}")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _scalar(value: Any, hint: Any) -> bool:
    """Whether TOML ``value`` is of the scalar type ``hint`` (a bool is never a number)."""
    if isinstance(value, bool) or hint is bool:
        return hint is bool and isinstance(value, bool)
    return isinstance(value, (int, float)) if hint is float else isinstance(value, hint)


def _convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` (parsed TOML) as type ``hint``; a one-line error naming ``where`` otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
    elif origin is tuple and isinstance(value, list):
        if args[-1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) == len(args):
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(
                zip(value, args, strict=True)))
    elif origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: None is the absent key, so the value must be an X
            return _convert(value, options[0], where)
        for arg in options:
            try:
                return _convert(value, arg, where)
            except Bad:
                continue
    elif dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    elif _scalar(value, hint):
        return float(value) if hint is float else value
    _fail(f"{where} = {value!r}", f"is not {_type_name(hint)}")


def _build(cls: type, table: Any, where: str) -> Any:
    """Dataclass ``cls`` from a TOML table: every field without a default is required."""
    if not isinstance(table, dict):
        _fail(where, f"is {type(table).__name__}, not a table")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "hash"}
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    unknown = sorted(set(table) - set(fields))
    if unknown:
        _fail(f"{prefix}{unknown[0]}", f"is an unknown key; allowed: {', '.join(fields)}")
    missing = [n for n, f in fields.items() if n not in table
               and f.default is dataclasses.MISSING]
    if missing:
        _fail(where or "the file", f"lacks key {missing[0]!r}")
    return cls(**{k: _convert(v, hints[k], f"{prefix}{k}") for k, v in table.items()})


def _attack(table: Any, where: str) -> CardAttack:
    name = table.get("name") if isinstance(table, dict) else None
    if name not in ATTACK_TABLES:
        _fail(f"{where}.name = {name!r}",
              f"is not a card attack; allowed: {', '.join(ATTACK_TABLES)}")
    return _build(ATTACK_TABLES[name], table, where)


def parse(raw: dict[str, Any]) -> CardProtocol:
    """The :class:`CardProtocol` of a parsed TOML document (hash not yet set)."""
    raw = dict(raw)
    if "attacks" in raw:
        _fail("attacks", "is an unknown key; write one [[attack]] table per attack")
    attacks = raw.pop("attack", None)
    if not isinstance(attacks, list) or not attacks:
        _fail("attack", "must be a non-empty array of tables ([[attack]])")
    boot = raw.get("bootstrap")
    if isinstance(boot, dict) and "min_effect" in boot and not isinstance(boot["min_effect"],
                                                                          dict):
        _fail(f"bootstrap.min_effect = {boot['min_effect']!r}", "is not a table of "
              "<headline key> = <minimum effect>")
    if isinstance(boot, dict) and isinstance(boot.get("min_effect"), dict):
        raw["bootstrap"] = {**boot, "min_effect": sorted(
            [k, v] for k, v in boot["min_effect"].items())}
    proto = _build(CardProtocol, {**raw, "attacks": []}, "")
    parsed = tuple(_attack(a, f"attack[{i}]") for i, a in enumerate(attacks))
    return dataclasses.replace(proto, attacks=parsed)


def feature_metrics() -> tuple[str, ...]:
    """The registered metrics scored on the feature extractor's features (a protocol's
    reference metrics; :attr:`evaluators.Metric.on_features`; built-in: fid, is, kid)."""
    import evaluators  # noqa: F401 - registers the built-in metrics

    from ..core.registry import METRICS

    return tuple(n for n in METRICS.names() if METRICS[n].on_features)


EVAL_MODE = re.compile(r"single|(majority|worst):[1-9][0-9]*")


def need(ok: bool, where: str, value: Any, allowed: str) -> None:
    if not ok:
        _fail(f"{where} = {value!r}", f"is not allowed; {allowed}")


def _names(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} and {names[-1]}"


def _check_sampling(s: Sampling) -> None:
    from ..core.registry import SAMPLERS
    from ..diffusion import samplers  # noqa: F401 - registers the built-in samplers

    names = list(SAMPLERS.names())
    if s.sampler not in names:
        _fail(f"sampling.sampler = {s.sampler!r}", "is not a registered sampler; allowed: "
              f"{', '.join(names)}{SAMPLERS.names().note}")
    entry, strided = SAMPLERS[s.sampler], [n for n in names if SAMPLERS[n].strided]
    full = [n for n in names if not SAMPLERS[n].strided]
    need((s.steps is not None) == entry.strided, "sampling.steps", s.steps,
         f"{_names(strided)} need steps (an integer >= 1), {_names(full)} "
         f"take{'s' if len(full) == 1 else ''} none (it runs all T)")
    need(s.steps is None or s.steps >= 1, "sampling.steps", s.steps, "at least 1")
    with_eta = [n for n in names if "eta" in SAMPLERS[n].options()]
    need((s.eta is not None) == ("eta" in entry.options()), "sampling.eta", s.eta,
         f"{_names(with_eta)} need{'s' if len(with_eta) == 1 else ''} eta (in [0, 1]), "
         "other samplers take none")
    need(s.eta is None or 0 <= s.eta <= 1, "sampling.eta", s.eta, "eta lies in [0, 1]")
    need(s.num_samples >= 2, "sampling.num_samples", s.num_samples, "at least 2")
    need(s.seed >= 0, "sampling.seed", s.seed, "a seed is >= 0")


def _check_reference(p: CardProtocol) -> None:
    r = p.reference
    allowed = feature_metrics()
    for i, m in enumerate(r.metrics):
        need(m in allowed, f"reference.metrics[{i}]", m, f"one of {', '.join(allowed)}")
    need(r.headline_metric in r.metrics, "reference.headline_metric", r.headline_metric,
         "it must be one of reference.metrics")
    need(bool(HEX64.fullmatch(r.weights_sha256)), "reference.weights_sha256",
         r.weights_sha256, "a sha256 is 64 lowercase hex digits")
    dim = FEATURE_DIMS[r.feature_extractor]
    need("fid" not in r.metrics or p.sampling.num_samples > dim, "sampling.num_samples",
         p.sampling.num_samples, f"FID with {dim}-D {r.feature_extractor} features needs more "
         f"than {dim} samples (docs/method.md §8)")
    need(len(r.image_shape) == 3 and min(r.image_shape) >= 1, "reference.image_shape",
         list(r.image_shape), "[channels, height, width]")


def _check_attack(a: CardAttack, where: str, total: int) -> None:
    pc = a.percents
    need(bool(pc) and pc[0] == 0 and all(0 <= x <= 100 for x in pc)
         and list(pc) == sorted(set(pc)), f"{where}.percents", list(pc),
         "strictly increasing percents in 0..100 starting at 0 (the clean chain)")
    need(a.num_samples is None or 2 <= a.num_samples <= total, f"{where}.num_samples",
         a.num_samples, f"2 .. sampling.num_samples ({total})")
    for key in ("pgd_steps", "iterations", "restarts", "eot"):
        value = getattr(a, key, 1)
        need(value >= 1, f"{where}.{key}", value, "at least 1")
    need(getattr(a, "alpha_scale", 1.0) > 0, f"{where}.alpha_scale",
         getattr(a, "alpha_scale", None), "a positive step in units of eps_s")
    horizon = getattr(a, "horizon", 0)
    need(horizon == "end" or horizon >= 0, f"{where}.horizon", horizon, "an integer >= 0 or 'end'")


def _check_purification(c: Purification) -> None:
    from ..purification.purifier import purify_samplers

    chains = purify_samplers()
    need(c.purify_sampler in chains, "purification.purify_sampler", c.purify_sampler,
         f"a registered purify sampler: {', '.join(chains)}")
    need((c.eval_modes is None) != (c.draws is None), "purification.draws", c.draws,
         "give exactly one of draws (evaluation draws R >= 1) and the v1 eval_modes")
    need(c.draws is None or c.draws >= 1, "purification.draws", c.draws, "at least 1")
    need(0 < c.eps <= 1, "purification.eps", c.eps, "in (0, 1] pixel units")
    need(bool(c.t_star) and all(0 < t < 1 for t in c.t_star), "purification.t_star",
         list(c.t_star), "fractions of T in (0, 1)")
    for i, mode in enumerate(c.eval_modes or ()):
        need(bool(EVAL_MODE.fullmatch(mode)), f"purification.eval_modes[{i}]", mode,
             "single, majority:N or worst:N")
    for key in ("purify_steps", "iterations", "eot", "num_samples", "batch_size"):
        need(getattr(c, key) >= 1, f"purification.{key}", getattr(c, key), "at least 1")
    need(bool(c.attacks), "purification.attacks", [], "at least one attack")


def _check_bootstrap(p: CardProtocol) -> None:
    b = p.bootstrap
    need(b.resamples >= 100, "bootstrap.resamples", b.resamples, "at least 100")
    need(0 < b.level < 1, "bootstrap.level", b.level, "in (0, 1)")
    for key, value in b.min_effect:
        need(key in p.headline, f"bootstrap.min_effect.{key}", value,
             f"keys are the protocol's headline keys: {', '.join(p.headline)}")
        need(value >= 0, f"bootstrap.min_effect.{key}", value, "a minimum effect is >= 0")


def check_protocol(p: CardProtocol) -> None:
    """Cross-field rules of a protocol (types were checked while parsing)."""
    need(p.version >= 1, "version", p.version, "versions start at 1")
    need(bool(LABEL.fullmatch(f"{p.name}-v{p.version}")), "name", p.name,
         "lowercase letters, digits and single '-'")
    need(len(set(p.headline)) == len(p.headline) and bool(p.headline), "headline",
         list(p.headline), "distinct headline keys")
    need("class_change_at_100" not in p.headline or p.reference.classifier is not None,
         "headline", list(p.headline), "class_change_at_100 needs reference.classifier")
    _check_sampling(p.sampling)
    _check_reference(p)
    need(p.budget.eps_scale > 0, "budget.eps_scale", p.budget.eps_scale, "a positive multiple")
    names = [a.name for a in p.attacks]
    need(len(set(names)) == len(names) and "random" in names, "attack", names,
         "each attack once, the random control included")
    for i, a in enumerate(p.attacks):
        _check_attack(a, f"attack[{i}]", p.sampling.num_samples)
    _check_bootstrap(p)
    if p.purification is not None:
        _check_purification(p.purification)

