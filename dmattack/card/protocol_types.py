"""The parsed form of a card protocol (docs/card.md): frozen dataclasses, one per TOML table.

:class:`CardProtocol` is a whole protocol; its identity is ``{"name", "version", "hash"}``, the
hash being the sha256 of the canonical JSON of :meth:`CardProtocol.content`. Fields marked
:data:`OMIT_IF_ABSENT` were added by a later protocol version: absent (None) they are left out
of the content, so the hashes of protocols written before them do not change.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from .schema import HEADLINE_KEYS

FEATURE_DIMS = {"digits-cnn": 64, "inception": 2048}
"""Feature dimension of each extractor: FID needs more samples than this (docs/method.md §8)."""
Headline = Literal[HEADLINE_KEYS]  # type: ignore[valid-type]  # one list, in schema.py
Loss = Literal["mean", "eps", "x0"]
CardDistance = Literal["pixel", "features"]
Keep = Literal["best", "last"]
OMIT_IF_ABSENT = {"omit_if_absent": True}
"""``dataclasses.field`` metadata of a field added after v1: left out of the content when None."""


def _later(default: Any = None) -> Any:
    """A field added by a later protocol version (default None: absent, not hashed)."""
    return dataclasses.field(default=default, metadata=OMIT_IF_ABSENT)


def _without_absent(obj: Any, data: Any) -> Any:
    """``data`` (``dataclasses.asdict(obj)``) without the absent :data:`OMIT_IF_ABSENT` fields,
    recursively."""
    if dataclasses.is_dataclass(obj):
        return {f.name: _without_absent(getattr(obj, f.name), data[f.name])
                for f in dataclasses.fields(obj)
                if f.name in data and not (f.metadata.get("omit_if_absent")
                                           and getattr(obj, f.name) is None)}
    if isinstance(obj, (tuple, list)):
        return [_without_absent(o, d) for o, d in zip(obj, data, strict=True)]
    return data


@dataclass(frozen=True)
class Sampling:
    """The clean chain every attack is paired with (docs/method.md §2, §8). Sample i of a
    card uses ``dmattack.core.seeding.sample_seeds(seed, num_samples)[i]`` (``--seed``, first
    sample 0), so every attack and every model sees the same x_T and chain noise."""
    sampler: str  # a registered sampler (checked against the registry)
    clip_denoised: bool
    ema: bool
    num_samples: int
    seed: int
    steps: int | None = None  # a strided sampler's only (respaced, ddim); ddpm runs all T steps
    eta: float | None = None  # a sampler reading eta only (ddim)


@dataclass(frozen=True)
class CardReference:
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
    distance: CardDistance
    keep: Keep
    num_samples: int | None = None  # the first num_samples of the protocol's samples


@dataclass(frozen=True)
class LookaheadAttack:
    name: Literal["lookahead"]
    percents: tuple[int, ...]
    iterations: int
    restarts: int
    alpha_scale: float
    distance: CardDistance
    keep: Keep
    eot: int
    horizon: int | Literal["end"]
    num_samples: int | None = None


CardAttack = RandomAttack | FGSMAttack | PGDAttack | TrajectoryAttack | LookaheadAttack
ATTACK_TABLES: dict[str, type] = {"random": RandomAttack, "fgsm": FGSMAttack, "pgd": PGDAttack,
                            "trajectory": TrajectoryAttack, "lookahead": LookaheadAttack}


@dataclass(frozen=True)
class Bootstrap:
    """Interval and verdict settings (dmattack.core.stats); ``min_effect`` per headline key."""
    resamples: int
    level: float
    seed: int
    method: Literal["bca", "percentile"]
    min_effect: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Purification:
    """Optional purification block (docs/method.md §13, `dmattack purify`): exactly one of
    ``eval_modes`` (v1 protocols) and ``draws`` (later versions) fixes the evaluation draws."""
    classifier: str
    data: str
    eps: float
    t_star: tuple[float, ...]
    purify_steps: int
    purify_sampler: str  # a purifier chain: purify_samplers() (checked by protocol_check)
    attacks: tuple[Literal["pgd-eot", "bpda-eot", "autoattack-rand"], ...]
    iterations: int
    eot: int
    num_samples: int
    batch_size: int
    seed: int
    eval_modes: tuple[str, ...] | None = _later()  # v1: single / majority:N / worst:N
    draws: int | None = _later()  # from v2: evaluation draws R (`dmattack purify --draws`)

    @property
    def evaluation_draws(self) -> int:
        """Evaluation draws R: ``draws``, or the largest N of the v1 ``eval_modes``."""
        if self.draws is not None:
            return self.draws
        return max(1 if m == "single" else int(m.split(":")[1]) for m in self.eval_modes or ())


@dataclass(frozen=True)
class CardProtocol:
    """A parsed, validated protocol. ``hash`` is the sha256 of :meth:`content`'s canonical JSON."""
    name: str
    version: int
    description: str
    device: Literal["cpu", "cuda"]
    cost: str
    headline: tuple[Headline, ...]
    sampling: Sampling
    reference: CardReference
    budget: Budget
    attacks: tuple[CardAttack, ...]
    bootstrap: Bootstrap
    purification: Purification | None = None
    hash: str = dataclasses.field(default="", compare=False)

    @property
    def label(self) -> str:
        """``<name>-v<version>``, the name the CLI and the file use (e.g. ``digits-v1``)."""
        return f"{self.name}-v{self.version}"

    def content(self) -> dict[str, Any]:
        """The parsed content as plain JSON values (what the hash covers)."""
        out = _without_absent(self, dataclasses.asdict(self))
        del out["hash"]
        out["bootstrap"]["min_effect"] = dict(self.bootstrap.min_effect)
        return json.loads(json.dumps(out))
