"""What the adaptive (whole-chain) attacks share: settings, budgets, random starts and the
:class:`~dmattack.attacks.base.WholeChainAttack` interface (docs/method.md §12).

An adaptive attack produces attacked samples for a batch of per-sample seeds::

    steps = attacked_steps(K, percent=50, window="spread")
    x0_adv = attack.sample_attacked(model, diffusion, sampler, shape, seeds, steps, device)

or runs through ``run_attack`` / ``run_curve`` as ``AttackPlan(attack, percent, window)``.
With the same seeds, the clean sample is ``sample(model, diffusion, shape, seeds, sampler)``:
x_T and every chain noise z are the clean run's, only the perturbations δ_s at the attacked
steps S differ. S and the budgets ε_s = eps_scale·√β̃_s (model space) are those of the per-step
attacks, so all attacks plot on the same curves. Random starts and any other draw of the
attacker come from the per-sample ATTACK streams (:mod:`dmattack.core.seeding`): a sample's result
does not depend on its batch.

Every PGD here (:meth:`AdaptiveChainAttack.pgd`) runs ``restarts`` times from new random
starts and records its progress: per restart, iterate and column (sample, or attacked step and
sample), the best objective so far (:attr:`AdaptiveResult.progress`), from which
:func:`~dmattack.attacks.convergence.convergence` judges whether the attack has converged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

import torch

from ..core import progress as progress_report
from ..core.errors import ConfigError
from ..core.seeding import rand_per_sample
from ..core.text import format_number
from ..diffusion.gaussian import EpsModel, GaussianDiffusion
from ..diffusion.sampling import SamplerConfig
from .convergence import trace_of
from .differentiable import DifferentiableChain, check_differentiable
from .distances import (
    Distance,
    check_distance,
    check_feature_shape,
    default_extractor,
    distance_key,
    distance_name,
    make_distance,
)

Deltas = dict[int, torch.Tensor]


@dataclass
class AdaptiveResult:
    """One batch's outcome: attacked samples ``x0`` and clean samples ``clean`` (B, *shape),
    model space; ``deltas[k]`` (B, *shape) the perturbation added before reverse step k (only
    attacked steps with a positive budget); ``distance`` (B,) the attack's D(x0, clean) — for
    the look-ahead attack this is D between the final samples, not its look-ahead objective.

    ``progress`` (R, N + 1, C): the per-column best objective so far after iterate i of restart
    r (i = 0: the random start), for R restarts of N iterations; a column is a sample
    (trajectory: the objective is D itself) or an (attacked step, sample) pair (look-ahead: its
    look-ahead objective); None when no step had a budget."""

    x0: torch.Tensor
    clean: torch.Tensor
    deltas: dict[int, torch.Tensor]
    distance: torch.Tensor
    progress: torch.Tensor | None = None

    @property
    def trace(self) -> list[float] | None:
        """Best-so-far mean objective after each iteration (N + 1 values), across restarts:
        entry i is the column mean of the best over restarts of each restart's best so far
        (docs/method.md §12); trajectory PGD with ``keep="best"``: the last entry is the mean
        of ``distance``."""
        return None if self.progress is None else trace_of(self.progress)

    @property
    def trace_per_restart(self) -> list[list[float]] | None:
        """Each restart's own best-so-far mean objective (R lists of N + 1 values)."""
        return None if self.progress is None else self.progress.mean(-1).tolist()


A = TypeVar("A", bound="AdaptiveChainAttack")


class AdaptiveChainAttack(ABC):
    """Base of :class:`~dmattack.attacks.trajectory.TrajectoryPGD` and
    :class:`~dmattack.attacks.lookahead.LookaheadPGD`.

    ``config`` is the attack's settings dataclass (checked on construction); ``distance`` a
    name from :data:`~dmattack.attacks.distances.DISTANCES` or a callable
    ``D(x0_adv, x0_clean) -> (B,)``.
    """

    name: str = "adaptive"

    def __init__(self, config: Any, distance: str | Distance) -> None:
        check_distance(distance, config.feature_extractor)
        self.config = config
        self.distance = distance

    @classmethod
    def from_config(cls: type[A], config: Any) -> A:
        """The attack with every field of its settings dataclass ``config`` (a subclass's
        ``__init__`` takes them as keyword arguments)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(config)})

    # -------------------------------------------------------------------- interface
    @property
    def label(self) -> str:
        """Series name without window or percent: :meth:`head`, then :meth:`suffix` and
        ``-x<eps_scale>`` when off its default, e.g. ``trajectory-pgd20-pixel-last-x2``."""
        eps = self.config.eps_scale
        return "-".join([self.head(), *self.suffix(),
                         *([f"x{format_number(eps)}"] if eps != 1 else [])])

    def head(self) -> str:
        """The label's leading part: name, ``pgdN``, :meth:`label_parts`, the distance (with
        its feature extractor when one is named), e.g. ``lookahead-pgd20-eot4-h5-pixel``."""
        c = self.config
        dist = distance_name(self.distance)
        if c.feature_extractor is not None:
            dist += f"-{c.feature_extractor}"
        return "-".join([self.name, f"pgd{c.iterations}", *self.label_parts(), dist])

    def suffix(self) -> list[str]:
        """Label parts of options off their defaults besides eps_scale: ``alpha<α>``,
        ``last``, ``r<R>`` (restarts > 1)."""
        c = self.config
        return [*([f"alpha{format_number(c.alpha_scale)}"] if c.alpha_scale != 1 / 8 else []),
                *([c.keep] if c.keep != "best" else []),
                *([f"r{c.restarts}"] if c.restarts != 1 else [])]

    def label_parts(self) -> list[str]:
        """Attack-specific label parts after ``pgdN`` (none here)."""
        return []

    def validate(self, diffusion: GaussianDiffusion, sampler: SamplerConfig,
                 shape: Sequence[int]) -> None:
        """ConfigError for a run this attack cannot do, checked before any sampling: a sampler
        it cannot differentiate, a feature extractor that does not fit samples of ``shape``.
        ``diffusion`` is the model's or the sampled one (as in :meth:`attack`)."""
        check_differentiable(sampler)
        if isinstance(self.distance, str) and self.distance == "features":
            check_feature_shape(self.config.feature_extractor or default_extractor(shape), shape)

    def settings(self) -> dict[str, Any]:
        """Every setting that determines the attacked samples, JSON-ready (a user distance is
        recorded by its name and keyed by its code)."""
        key = distance_key(self.distance)
        return {**asdict(self.config), "distance": distance_name(self.distance),
                **({"distance_key": key} if key is not None else {})}

    def sample_attacked(self, model: EpsModel, diffusion: GaussianDiffusion,
                        sampler: SamplerConfig, shape: Sequence[int], seeds: Sequence[int],
                        steps: Sequence[int], device: torch.device | str = "cpu"
                        ) -> torch.Tensor:
        """Attacked samples (B, *shape) for ``seeds`` (model space, on ``device``); ``steps``
        are the attacked reverse steps (0 = at x_T), e.g. from ``attacked_steps``."""
        return self.attack(model, diffusion, sampler, shape, seeds, steps, device).x0

    @abstractmethod
    def attack(self, model: EpsModel, diffusion: GaussianDiffusion, sampler: SamplerConfig,
               shape: Sequence[int], seeds: Sequence[int], steps: Sequence[int],
               device: torch.device | str = "cpu") -> AdaptiveResult:
        """Attack one batch at reverse ``steps``; see :class:`AdaptiveResult`.

        ``diffusion`` is a :class:`~dmattack.diffusion.sampling.SamplingChain` (what ``AttackPlan``
        passes), or the model's diffusion with ``sampler`` resolved against it."""

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({body})"

    # -------------------------------------------------------------------- helpers
    def make_distance(self, shape: Sequence[int], device: torch.device | str) -> Distance:
        return make_distance(self.distance, self.config.feature_extractor, shape, device)

    def budgets(self, chain: DifferentiableChain, steps: Sequence[int], batch: int,
                shape: Sequence[int], device: torch.device | str) -> dict[int, torch.Tensor]:
        """ε_s (B, 1, …) of every attacked reverse step s with a positive budget, in order."""
        k = chain.num_steps
        bad = [s for s in steps if not 0 <= s < k or int(s) != s]
        if bad:
            raise ConfigError(f"attacked steps {bad} are outside the chain's steps 0..{k - 1}",
                              field="steps")
        like = torch.empty(batch, *shape, device=device)
        out = {}
        for s in sorted({int(s) for s in steps}):
            eps = self.config.eps_scale * chain.chain.budget(s, like)
            if (eps > 0).any():
                out[s] = eps
        return out

    @staticmethod
    def random_start(budget: torch.Tensor, shape: Sequence[int],
                     gens: Sequence[torch.Generator]) -> torch.Tensor:
        """δ ~ U(−ε, ε) (B, *shape), row i from ``gens[i]``."""
        u = rand_per_sample(shape, gens, budget.device, budget.dtype)
        return (2 * u - 1) * budget

    def pgd(self, start: Callable[[], Deltas], budgets: Deltas,
            value_and_grad: Callable[[Deltas], tuple[torch.Tensor, Deltas]],
            value: Callable[[Deltas], torch.Tensor]) -> tuple[Deltas, torch.Tensor]:
        """Sign PGD with restarts on perturbations ``{key: δ (B, *shape)}`` within
        ``budgets[key]`` (B, 1, …); returns the chosen δ and the progress (R, N + 1, B).

        ``start()`` draws a random start (restart r calls it r + 1-th, so restart 0 is the run
        without restarts); ``value_and_grad(δ)`` gives the objective (B,) and its gradient per
        key; ``value(δ)`` the objective alone (evaluates the last iterate). Per restart,
        ``keep="best"`` takes each sample's best iterate (the random start counts), ``"last"``
        the last one; across restarts each sample keeps the restart whose pick scores highest
        (ties: the earlier restart)."""
        c = self.config
        chosen: tuple[Deltas, torch.Tensor] | None = None  # per sample: δ and its objective
        progress = []
        total = c.restarts * c.iterations
        for r in range(c.restarts):
            deltas = start()
            first = next(iter(deltas.values()))
            best = {k: d.clone() for k, d in deltas.items()}
            best_d = torch.full((len(first),), -torch.inf, device=first.device)
            rows = []
            for i in range(c.iterations):
                progress_report.inner(r * c.iterations + i + 1, total,
                                      f"restart {r + 1}/{c.restarts} · PGD iteration")
                d, grads = value_and_grad(deltas)
                self.keep_best(best, best_d, deltas, d)
                rows.append(best_d.clone())
                deltas = {k: torch.clamp(deltas[k] + c.alpha_scale * budgets[k] * g.sign(),
                                         -budgets[k], budgets[k]) for k, g in grads.items()}
            last_d = value(deltas)
            self.keep_best(best, best_d, deltas, last_d)
            rows.append(best_d.clone())
            progress.append(torch.stack(rows))
            pick, pick_d = (deltas, last_d) if c.keep == "last" else (best, best_d)
            if chosen is None:
                chosen = pick, pick_d.clone()
            else:
                self.keep_best(*chosen, pick, pick_d)
        return chosen[0], torch.stack(progress)

    @staticmethod
    def keep_best(best: dict[int, torch.Tensor], best_d: torch.Tensor,
                  deltas: dict[int, torch.Tensor], d: torch.Tensor) -> None:
        """Per sample, copy ``deltas`` into ``best`` where ``d`` (B,) beats ``best_d`` (both
        updated in place)."""
        better = d > best_d
        best_d[better] = d[better]
        for s, delta in deltas.items():
            best[s][better] = delta[better].detach()
