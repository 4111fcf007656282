"""Card protocols: versioned TOML files that fix everything a card measures (docs/card.md).

A protocol file ``protocols/<name>-v<version>.toml`` states every setting explicitly (there are
no defaults to drift). :func:`load_protocol` parses and validates it into a frozen
:class:`Protocol`; its identity is ``{"name", "version", "hash"}``, the hash being the sha256 of
the canonical JSON of the parsed content. ``protocols/HASHES.json`` pins each ``<name>-v<N>``
to its hash, so a protocol edited without a new version is refused on load (and by a test).

``python -m dmattack.card`` prints every protocol's hash and whether it is pinned.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from ..errors import ConfigError
from .schema import HEADLINE_KEYS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport (a dependency there)
    import tomli as tomllib

PROTOCOL_DIR = Path(__file__).resolve().parent / "protocols"
REGISTRY = "HASHES.json"
LABEL = re.compile(r"([a-z0-9]+(?:-[a-z0-9]+)*)-v([1-9][0-9]*)")
FEATURE_DIMS = {"digits-cnn": 64, "inception": 2048}
"""Feature dimension of each extractor: FID needs more samples than this (docs/method.md §8)."""
Headline = Literal[HEADLINE_KEYS]  # type: ignore[valid-type]  # one list, in schema.py
Loss = Literal["mean", "eps", "x0"]
Distance = Literal["pixel", "features"]
Keep = Literal["best", "last"]


@dataclass(frozen=True)
class Sampling:
    """The clean chain every attack is paired with (docs/method.md §2, §8). Sample i of a
    card uses ``dmattack.seeding.sample_seeds(seed, num_samples)[i]`` (``--seed``, first
    sample 0), so every attack and every model sees the same x_T and chain noise."""
    sampler: Literal["ddpm", "respaced", "ddim"]
    clip_denoised: bool
    ema: bool
    num_samples: int
    seed: int
    steps: int | None = None  # respaced/ddim only; ddpm runs all T steps
    eta: float | None = None  # ddim only


@dataclass(frozen=True)
class Reference:
    """Clean reference set and set metrics; ``weights_sha256`` pins the feature extractor."""
    dataset: str
    image_shape: tuple[int, ...]
    metrics: tuple[str, ...]
    headline_metric: str
    feature_extractor: Literal["digits-cnn", "inception"]
    weights: str
    weights_sha256: str
    classifier: str | None = None  # for the class-change rate (digits-cnn)


@dataclass(frozen=True)
class Budget:
    """ε_s = eps_scale·√β̃_s on the attacked steps chosen by ``window`` (docs/method.md §6, §12)."""
    eps_scale: float
    window: Literal["spread", "first", "last"]
    count_steps: Literal["with-budget", "all"]


@dataclass(frozen=True)
class RandomAttack:
    name: Literal["random"]
    percents: tuple[int, ...]
    random_dist: Literal["sign", "uniform"]
    num_samples: int | None = None


@dataclass(frozen=True)
class FGSMAttack:
    name: Literal["fgsm"]
    percents: tuple[int, ...]
    loss: Loss
    num_samples: int | None = None


@dataclass(frozen=True)
class PGDAttack:
    name: Literal["pgd"]
    percents: tuple[int, ...]
    loss: Loss
    pgd_steps: int
    alpha_scale: float
    num_samples: int | None = None


@dataclass(frozen=True)
class TrajectoryAttack:
    name: Literal["trajectory"]
    percents: tuple[int, ...]
    iterations: int
    restarts: int
    alpha_scale: float
    distance: Distance
    keep: Keep
    num_samples: int | None = None  # the first num_samples of the protocol's samples


@dataclass(frozen=True)
class LookaheadAttack:
    name: Literal["lookahead"]
    percents: tuple[int, ...]
    iterations: int
    restarts: int
    alpha_scale: float
    distance: Distance
    keep: Keep
    eot: int
    horizon: int | Literal["end"]
    num_samples: int | None = None


Attack = RandomAttack | FGSMAttack | PGDAttack | TrajectoryAttack | LookaheadAttack
ATTACK_TABLES: dict[str, type] = {"random": RandomAttack, "fgsm": FGSMAttack, "pgd": PGDAttack,
                            "trajectory": TrajectoryAttack, "lookahead": LookaheadAttack}


@dataclass(frozen=True)
class Bootstrap:
    """Interval and verdict settings (dmattack.stats); ``min_effect`` per headline key."""
    resamples: int
    level: float
    seed: int
    method: Literal["bca", "percentile"]
    min_effect: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Purification:
    """Optional purification block (docs/method.md §13, `dmattack purify`)."""
    classifier: str
    data: str
    eps: float
    t_star: tuple[float, ...]
    purify_steps: int
    purify_sampler: Literal["ancestral", "ddim"]
    attacks: tuple[Literal["pgd-eot", "bpda-eot", "autoattack-rand"], ...]
    iterations: int
    eot: int
    eval_modes: tuple[str, ...]
    num_samples: int
    batch_size: int
    seed: int


@dataclass(frozen=True)
class Protocol:
    """A parsed, validated protocol. ``hash`` is the sha256 of :meth:`content`'s canonical JSON."""
    name: str
    version: int
    description: str
    device: Literal["cpu", "cuda"]
    cost: str
    headline: tuple[Headline, ...]
    sampling: Sampling
    reference: Reference
    budget: Budget
    attacks: tuple[Attack, ...]
    bootstrap: Bootstrap
    purification: Purification | None = None
    hash: str = dataclasses.field(default="", compare=False)

    @property
    def label(self) -> str:
        """``<name>-v<version>``, the name the CLI and the file use (e.g. ``digits-v1``)."""
        return f"{self.name}-v{self.version}"

    def content(self) -> dict[str, Any]:
        """The parsed content as plain JSON values (what the hash covers)."""
        out = dataclasses.asdict(self)
        del out["hash"]
        out["bootstrap"]["min_effect"] = dict(self.bootstrap.min_effect)
        return json.loads(json.dumps(out))


class _Bad(Exception):
    """A validation problem inside one file, before the protocol's label is prefixed."""


def _fail(where: str, problem: str) -> typing.NoReturn:
    raise _Bad(f"{where} {problem}")


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
            except _Bad:
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


def _attack(table: Any, where: str) -> Attack:
    name = table.get("name") if isinstance(table, dict) else None
    if name not in ATTACK_TABLES:
        _fail(f"{where}.name = {name!r}",
              f"is not a card attack; allowed: {', '.join(ATTACK_TABLES)}")
    return _build(ATTACK_TABLES[name], table, where)


def _parse(raw: dict[str, Any]) -> Protocol:
    """The :class:`Protocol` of a parsed TOML document (hash not yet set)."""
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
    proto = _build(Protocol, {**raw, "attacks": []}, "")
    parsed = tuple(_attack(a, f"attack[{i}]") for i, a in enumerate(attacks))
    return dataclasses.replace(proto, attacks=parsed)


SET_METRICS = ("fid", "kid", "is")
EVAL_MODE = re.compile(r"single|(majority|worst):[1-9][0-9]*")
HEX64 = re.compile(r"[0-9a-f]{64}")


def _need(ok: bool, where: str, value: Any, allowed: str) -> None:
    if not ok:
        _fail(f"{where} = {value!r}", f"is not allowed; {allowed}")


def _check_sampling(s: Sampling) -> None:
    strided = s.sampler in ("respaced", "ddim")
    _need((s.steps is not None) == strided, "sampling.steps", s.steps,
          "respaced and ddim need steps (an integer >= 1), ddpm takes none (it runs all T)")
    _need(s.steps is None or s.steps >= 1, "sampling.steps", s.steps, "at least 1")
    _need((s.eta is not None) == (s.sampler == "ddim"), "sampling.eta", s.eta,
          "ddim needs eta (in [0, 1]), other samplers take none")
    _need(s.eta is None or 0 <= s.eta <= 1, "sampling.eta", s.eta, "eta lies in [0, 1]")
    _need(s.num_samples >= 2, "sampling.num_samples", s.num_samples, "at least 2")
    _need(s.seed >= 0, "sampling.seed", s.seed, "a seed is >= 0")


def _check_reference(p: Protocol) -> None:
    r = p.reference
    for i, m in enumerate(r.metrics):
        _need(m in SET_METRICS, f"reference.metrics[{i}]", m, f"one of {', '.join(SET_METRICS)}")
    _need(r.headline_metric in r.metrics, "reference.headline_metric", r.headline_metric,
          "it must be one of reference.metrics")
    _need(bool(HEX64.fullmatch(r.weights_sha256)), "reference.weights_sha256",
          r.weights_sha256, "a sha256 is 64 lowercase hex digits")
    dim = FEATURE_DIMS[r.feature_extractor]
    _need("fid" not in r.metrics or p.sampling.num_samples > dim, "sampling.num_samples",
          p.sampling.num_samples, f"FID with {dim}-D {r.feature_extractor} features needs more "
          f"than {dim} samples (docs/method.md §8)")
    _need(len(r.image_shape) == 3 and min(r.image_shape) >= 1, "reference.image_shape",
          list(r.image_shape), "[channels, height, width]")


def _check_attack(a: Attack, where: str, total: int) -> None:
    pc = a.percents
    _need(bool(pc) and pc[0] == 0 and all(0 <= x <= 100 for x in pc)
          and list(pc) == sorted(set(pc)), f"{where}.percents", list(pc),
          "strictly increasing percents in 0..100 starting at 0 (the clean chain)")
    _need(a.num_samples is None or 2 <= a.num_samples <= total, f"{where}.num_samples",
          a.num_samples, f"2 .. sampling.num_samples ({total})")
    for key in ("pgd_steps", "iterations", "restarts", "eot"):
        value = getattr(a, key, 1)
        _need(value >= 1, f"{where}.{key}", value, "at least 1")
    _need(getattr(a, "alpha_scale", 1.0) > 0, f"{where}.alpha_scale",
          getattr(a, "alpha_scale", None), "a positive step in units of eps_s")
    horizon = getattr(a, "horizon", 0)
    _need(horizon == "end" or horizon >= 0, f"{where}.horizon", horizon, "an integer >= 0 or 'end'")


def _check_purification(c: Purification) -> None:
    _need(0 < c.eps <= 1, "purification.eps", c.eps, "in (0, 1] pixel units")
    _need(bool(c.t_star) and all(0 < t < 1 for t in c.t_star), "purification.t_star",
          list(c.t_star), "fractions of T in (0, 1)")
    for i, mode in enumerate(c.eval_modes):
        _need(bool(EVAL_MODE.fullmatch(mode)), f"purification.eval_modes[{i}]", mode,
              "single, majority:N or worst:N")
    for key in ("purify_steps", "iterations", "eot", "num_samples", "batch_size"):
        _need(getattr(c, key) >= 1, f"purification.{key}", getattr(c, key), "at least 1")
    _need(bool(c.attacks), "purification.attacks", [], "at least one attack")


def _check_bootstrap(p: Protocol) -> None:
    b = p.bootstrap
    _need(b.resamples >= 100, "bootstrap.resamples", b.resamples, "at least 100")
    _need(0 < b.level < 1, "bootstrap.level", b.level, "in (0, 1)")
    for key, value in b.min_effect:
        _need(key in p.headline, f"bootstrap.min_effect.{key}", value,
              f"keys are the protocol's headline keys: {', '.join(p.headline)}")
        _need(value >= 0, f"bootstrap.min_effect.{key}", value, "a minimum effect is >= 0")


def _check(p: Protocol) -> None:
    """Cross-field rules of a protocol (types were checked while parsing)."""
    _need(p.version >= 1, "version", p.version, "versions start at 1")
    _need(bool(LABEL.fullmatch(f"{p.name}-v{p.version}")), "name", p.name,
          "lowercase letters, digits and single '-'")
    _need(len(set(p.headline)) == len(p.headline) and bool(p.headline), "headline",
          list(p.headline), "distinct headline keys")
    _need("class_change_at_100" not in p.headline or p.reference.classifier is not None,
          "headline", list(p.headline), "class_change_at_100 needs reference.classifier")
    _check_sampling(p.sampling)
    _check_reference(p)
    _need(p.budget.eps_scale > 0, "budget.eps_scale", p.budget.eps_scale, "a positive multiple")
    names = [a.name for a in p.attacks]
    _need(len(set(names)) == len(names) and "random" in names, "attack", names,
          "each attack once, the random control included")
    for i, a in enumerate(p.attacks):
        _check_attack(a, f"attack[{i}]", p.sampling.num_samples)
    _check_bootstrap(p)
    if p.purification is not None:
        _check_purification(p.purification)


def canonical_json(content: Any) -> str:
    """Keys sorted, no spaces, UTF-8 text: the bytes the protocol hash covers."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _read(path: Path) -> Protocol:
    """Parse, validate and hash one protocol file; the file's stem must be its label."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        proto = _parse(raw)
        _check(proto)
        _need(path.stem == proto.label, "name", proto.name,
              f"the file {path.name} must be named {proto.label}.toml")
    except _Bad as e:
        raise ConfigError(f"protocol {path.name}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"protocol {path.name}: not valid TOML ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"protocol {path}: cannot be read ({e})") from None
    digest = hashlib.sha256(canonical_json(proto.content()).encode("utf-8")).hexdigest()
    return dataclasses.replace(proto, hash=digest)


def registered_hashes(directory: Path = PROTOCOL_DIR) -> dict[str, str]:
    """``{"<name>-v<N>": sha256}`` from ``directory/HASHES.json``."""
    path = directory / REGISTRY
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"protocol registry {path} cannot be read: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"protocol registry {path} is not an object of label -> sha256")
    return data


def list_protocols(directory: Path = PROTOCOL_DIR) -> list[str]:
    """Labels (``<name>-v<N>``) of the protocol files in ``directory``, sorted."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def load_protocol(name: str, directory: Path = PROTOCOL_DIR) -> Protocol:
    """The protocol ``name`` (a label such as ``digits-v1``), validated, hashed and checked
    against its pinned hash: a protocol edited without a new version is refused (one line)."""
    known = list_protocols(directory)
    if name not in known:
        raise ConfigError(f"unknown protocol {name!r}; allowed: {', '.join(known) or 'none'}",
                          field="protocol")
    proto = _read(directory / f"{name}.toml")
    pinned = registered_hashes(directory).get(name)
    if pinned != proto.hash:
        raise ConfigError(
            f"protocol {name} has hash {proto.hash[:12]}… but {REGISTRY} pins "
            f"{(pinned or 'nothing')[:12]}…: a protocol is never edited in place; copy it to "
            f"{proto.name}-v{proto.version + 1}.toml with version = {proto.version + 1} and "
            "register that (docs/card.md)", field="protocol")
    return proto


def protocol_identity(p: Protocol) -> dict[str, Any]:
    """``{"name", "version", "hash"}``: what a card records and what comparisons match on."""
    return {"name": p.name, "version": p.version, "hash": p.hash}


def main(argv: list[str] | None = None) -> int:
    """Print each protocol file's label, hash and whether HASHES.json pins that hash."""
    directory = Path(argv[0]) if argv else PROTOCOL_DIR
    pins = registered_hashes(directory)
    status = 0
    for label in list_protocols(directory):
        digest = _read(directory / f"{label}.toml").hash
        ok = pins.get(label) == digest
        status |= not ok
        print(f"{label}  {digest}  {'pinned' if ok else 'NOT PINNED'}")
    return status
