"""The settings of each built-in reverse-chain attack, declared once with
:func:`~dmattack.core.settings.setting` (docs/method.md §6, §12).

Each config is what one registered attack reads (:class:`~dmattack.attacks.schedule.AttackEntry`
``config``): its fields are that attack's own options, on the command line too; the settings
every attack shares (which steps, the budget ε_t = eps_scale·√β̃_t) are the
:class:`~dmattack.attacks.schedule.AttackSpec`'s. A field named like one of those (``eps_scale``
of the adaptive attacks, whose classes take it) is set from the spec, not an option of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.settings import check_settings, setting
from .distances import DISTANCES, FEATURE_EXTRACTORS
from .losses import LOSSES

RANDOM_DISTS = ("sign", "uniform")
KEEP = ("best", "last")
HORIZON_END = "end"
_LOSS_HELP = "Attack loss: mean (‖Δμ_θ‖², the paper's), eps (‖Δε_θ‖²) or x0 (‖Δx̂_0‖²)."


def _alpha_scale() -> float:
    return setting(1 / 8, "PGD step size in units of ε_t.", low=0, low_open=True)


def _restarts() -> int:
    return setting(1, "PGD runs, each from a new random start (attack stream); per sample the "
                   "best is kept (docs/method.md §12).", low=1)


def _eps_scale() -> float:
    return setting(1.0, "Budget multiplier: ε_s = eps_scale·√β̃_s.", low=0)


def _feature_extractor() -> str | None:
    return setting(None, "Embedding of distance 'features' [default: digits-cnn for digits, "
                   "else inception].", choices=FEATURE_EXTRACTORS)


@dataclass(frozen=True)
class FGSMConfig:
    """``fgsm``: :class:`~dmattack.attacks.chain.ChainFGSM` (docs/method.md §6.1)."""

    loss: str = setting("mean", _LOSS_HELP, choices=LOSSES)
    project: str = setting("auto", "Projection onto the ℓ∞ ball after the random start: auto "
                           "(= off, the paper's), off or on.", choices=("auto", "off", "on"))

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class PGDConfig:
    """``pgd``: :class:`~dmattack.attacks.chain.ChainPGD` (docs/method.md §6.2)."""

    loss: str = setting("mean", _LOSS_HELP, choices=LOSSES)
    pgd_steps: int = setting(20, "PGD iterations per attacked step.", low=1)
    alpha_scale: float = _alpha_scale()
    project: str = setting("auto", "Projection onto the ℓ∞ ball: auto (= on, every iteration), "
                           "on, or end (once at the end).", choices=("auto", "on", "end"))
    restarts: int = _restarts()

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class RandomConfig:
    """``random``: :class:`~dmattack.attacks.chain.ChainRandom`, the model-free control."""

    random_dist: str = setting("sign", "Distribution of the random step: sign (±ε_t) or uniform "
                               "(U(−ε_t, ε_t)).",
                               choices=RANDOM_DISTS)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class TrajectoryConfig:
    """Settings of :class:`~dmattack.attacks.trajectory.TrajectoryPGD` (``distance`` may also
    be a callable from Python)."""

    eps_scale: float = _eps_scale()
    iterations: int = setting(20, "PGD iterations (one chain forward and backward each).",
                              low=1)
    alpha_scale: float = _alpha_scale()
    distance: str = setting("pixel", "What the attack maximises between the attacked and the "
                            "clean sample.", choices=DISTANCES)
    feature_extractor: str | None = _feature_extractor()
    checkpoint: bool = setting(True, "Checkpoint every reverse step (memory: K states + one "
                               "step's activations).")
    keep: str = setting("best", "Which PGD iterate is returned, per sample: the best by D or "
                        "the last.", choices=KEEP)
    restarts: int = _restarts()

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class LookaheadConfig:
    """Settings of :class:`~dmattack.attacks.lookahead.LookaheadPGD` (``distance`` may also be
    a callable from Python)."""

    eps_scale: float = _eps_scale()
    iterations: int = setting(20, "PGD iterations per attacked step.", low=1)
    alpha_scale: float = _alpha_scale()
    eot: int = setting(4, "Draws of future noise averaged over (EOT).", low=1)
    horizon: int | str = setting(5, "Reverse steps looked ahead before predicting x0: an "
                                 "integer >= 0 or 'end'.", low=0, choices=(HORIZON_END,))
    distance: str = setting("pixel", "What the attack maximises between the two "
                            "continuations.", choices=DISTANCES)
    feature_extractor: str | None = _feature_extractor()
    checkpoint: bool = setting(True, "Checkpoint every reverse step of the look-ahead.")
    keep: str = setting("best", "Which PGD iterate is used, per sample: the best by the "
                        "look-ahead objective or the last.", choices=KEEP)
    restarts: int = _restarts()

    def __post_init__(self) -> None:
        check_settings(self)
