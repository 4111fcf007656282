"""Which reverse steps get attacked, and how (METHOD §6.1 "steps attacked", §10.8, §11)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..diffusion import GaussianDiffusion
from ..sampling import StepHook
from ..seeding import ATTACK, generators
from .chain import RANDOM_DISTS, ChainAttack, ChainFGSM, ChainPGD, ChainRandom, GeneratorArg
from .losses import LOSSES

WINDOWS = ("spread", "first", "last")
METHODS = ("fgsm", "pgd", "random")


def attacked_steps(num_steps: int, percent: float, window: str = "spread") -> list[int]:
    """Sorted reverse-step indices to attack (0 = the first reverse step, at x_T).

    count = round(percent/100·num_steps) (halves round up). ``first``: the first (high-noise)
    steps; ``last``: the last (low-noise) steps; ``spread``: evenly strided over the chain,
    step ⌊(i + ½)·num_steps/count⌋ for i < count, so every noise level is represented.
    """
    if not 0 <= percent <= 100:
        raise ValueError(f"percent of steps attacked must be in [0, 100], got {percent}")
    if window not in WINDOWS:
        raise ValueError(f"unknown attack window {window!r}; allowed: {', '.join(WINDOWS)}")
    count = math.floor(percent / 100 * num_steps + 0.5)
    if count == 0:
        return []
    if window == "first":
        return list(range(count))
    if window == "last":
        return list(range(num_steps - count, num_steps))
    return [math.floor((i + 0.5) * num_steps / count) for i in range(count)]


@dataclass(frozen=True)
class AttackSpec:
    """One attack setting of an evaluation: method, share of steps, window and attack options.

    ``loss`` applies to fgsm/pgd, ``random_dist`` to random, ``pgd_steps`` and ``alpha_scale``
    to pgd. ``project``: None = the method's default (fgsm: no projection; pgd: every
    iteration); fgsm accepts True, pgd True or ``"end"``. Budget ε_t = eps_scale·√β̃_t.
    """

    method: str
    percent: float
    window: str = "spread"
    loss: str = "mean"
    pgd_steps: int = 20
    alpha_scale: float = 1 / 8
    project: bool | str | None = None
    random_dist: str = "sign"
    eps_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown attack method {self.method!r}; allowed: "
                             f"{', '.join(METHODS)}")
        attacked_steps(1, self.percent, self.window)  # validates percent and window
        if self.loss not in LOSSES:
            raise ValueError(f"unknown attack loss {self.loss!r}; allowed: {', '.join(LOSSES)}")
        if self.random_dist not in RANDOM_DISTS:
            raise ValueError(f"unknown random dist {self.random_dist!r}; allowed: "
                             f"{', '.join(RANDOM_DISTS)}")
        allowed_project = {"fgsm": (None, False, True), "pgd": (None, True, "end"),
                           "random": (None,)}[self.method]
        if self.project not in allowed_project:
            raise ValueError(f"project={self.project!r} is not valid for {self.method}; "
                             f"allowed: {', '.join(map(repr, allowed_project))}")
        if self.pgd_steps < 1 or self.alpha_scale <= 0 or self.eps_scale < 0:
            raise ValueError("need pgd_steps >= 1, alpha_scale > 0 and eps_scale >= 0")

    def describe(self, with_percent: bool = True) -> str:
        """Short label, e.g. ``pgd20-mean-spread-50%``; options off their defaults are appended
        (``-projend``, ``-alpha0.25``, ``-x2``), so distinct specs get distinct labels."""
        if self.method == "pgd":
            parts = [f"pgd{self.pgd_steps}", self.loss]
        elif self.method == "fgsm":
            parts = ["fgsm", self.loss]
        else:
            parts = ["random", self.random_dist]
        parts.append(self.window)
        if with_percent:
            parts.append(f"{self.percent:g}%")
        if self.method == "fgsm" and self.project:
            parts.append("proj")
        if self.method == "pgd" and self.project == "end":
            parts.append("projend")
        if self.method == "pgd" and self.alpha_scale != 1 / 8:
            parts.append(f"alpha{self.alpha_scale:g}")
        if self.eps_scale != 1:
            parts.append(f"x{self.eps_scale:g}")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.describe()}

    def make_attack(self, model: nn.Module, diffusion: GaussianDiffusion,
                    generator: GeneratorArg = None) -> ChainAttack:
        """The per-step attack this spec describes, on ``diffusion`` (the one sampled)."""
        if self.method == "random":
            return ChainRandom(model, diffusion, self.random_dist, self.eps_scale, generator)
        if self.method == "fgsm":
            return ChainFGSM(model, diffusion, self.loss, self.eps_scale, bool(self.project),
                             generator)
        return ChainPGD(model, diffusion, self.loss, self.eps_scale, self.pgd_steps,
                        self.alpha_scale, True if self.project is None else self.project,
                        generator)


def make_hook_factory(
    spec: AttackSpec,
    model: nn.Module,
    sampling_diffusion: GaussianDiffusion,
    num_steps: int,
    device: torch.device | str = "cpu",
) -> Callable[[Sequence[int]], StepHook | None]:
    """A ``hook_factory(chunk_seeds)`` for :func:`dmattack.sampling.sample_batched`.

    Each chunk's attack draws its random starts from per-sample ATTACK-stream generators of the
    chunk's seeds, and attacks only at :func:`attacked_steps` (``num_steps`` reverse steps of
    ``sampling_diffusion``). With no attacked step the factory returns None, so the run is the
    clean run, bit for bit.
    """
    if num_steps != sampling_diffusion.num_timesteps:
        raise ValueError(f"num_steps {num_steps} differs from the sampling diffusion's "
                         f"{sampling_diffusion.num_timesteps} steps")
    steps = frozenset(attacked_steps(num_steps, spec.percent, spec.window))

    def factory(chunk_seeds: Sequence[int]) -> StepHook | None:
        if not steps:
            return None
        atk = spec.make_attack(model, sampling_diffusion, generators(chunk_seeds, ATTACK, device))

        def hook(x_t: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
            return atk(x_t, t) if step in steps else x_t

        return hook

    return factory
