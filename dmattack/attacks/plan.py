"""What :func:`~dmattack.evaluation.attack_eval.run_attack` and ``run_curve`` run: an attack plus
the steps
it attacks (docs/method.md §6.1 "steps attacked").

An :class:`AttackPlan` wraps any of

* a registered attack's :class:`~dmattack.attacks.schedule.AttackSpec` (``AttackPlan.of(spec)``);
* a user's per-step attack factory ``factory(model, diffusion, generator=...) -> ChainAttack``
  (a ChainAttack subclass is one);
* a :class:`~dmattack.attacks.base.WholeChainAttack`,

with ``percent`` and ``window``, and samples the attacked chain with the clean run's per-sample
seeds, so clean and attacked samples differ by the attack alone and 0% attacked is the clean run
bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.keys import callable_key
from ..core.seeding import ATTACK, generators
from ..core.text import format_number
from ..diffusion.gaussian import GaussianDiffusion
from ..diffusion.sampling import SamplerConfig, SamplingChain, StepHook, frozen, sample_batched
from .adaptive import AdaptiveChainAttack
from .base import PerStepFactory, WholeChainAttack, build_per_step
from .chain import ChainAttack, ChainPGD
from .convergence import TOLERANCE, convergence_of
from .schedule import AttackSpec, attacked_steps

RESERVED = ("method", "label", "series", "kind", "percent", "window", "code_key")
"""Keys of an attack record that an attack's own settings may not use."""


@dataclass(frozen=True)
class AttackPlan:
    """An attack and the share of reverse steps it attacks.

    Args:
        attack: a per-step factory (called as ``attack(model, diffusion, generator=g)`` once per
            batch, ``g`` one ATTACK-stream generator per sample) or a
            :class:`~dmattack.attacks.base.WholeChainAttack`.
        percent: percent of the sampler's reverse steps attacked, [0, 100].
        window: ``spread``, ``first`` or ``last`` (:func:`attacked_steps`).
        name: the series name (default: a whole-chain attack's ``label``, else the factory's
            ``__name__``, e.g. the ChainAttack subclass's name).
        settings: what to record as the attack's settings (default: the attack's own
            ``settings()``; a per-step factory is built once on the sampled diffusion to ask).
        spec: the registered attack's spec this plan was made from (:meth:`of`), else None.
        step_counting: what ``percent`` counts, ``budget`` (the steps with a positive budget)
            or ``all`` (the former counting; :func:`attacked_steps`, docs/method.md §10.8).
    """

    attack: PerStepFactory | WholeChainAttack
    percent: float
    window: str = "spread"
    name: str | None = None
    settings: Mapping[str, Any] | None = None
    spec: AttackSpec | None = None
    step_counting: str = "budget"

    def __post_init__(self) -> None:
        if not (isinstance(self.percent, (int, float)) and not isinstance(self.percent, bool)
                and math.isfinite(self.percent)):
            raise ConfigError(f"percent = {self.percent!r} is invalid; allowed: a finite number "
                              "in [0, 100]", field="percent")
        try:
            attacked_steps(1, self.percent, self.window, self.step_counting)
        except ValueError as e:
            raise ConfigError(str(e), field="window") from None
        if not (self.whole_chain or callable(self.attack)):
            raise ConfigError(f"attack {self.attack!r} is neither a per-step attack factory "
                              "(model, diffusion, generator=...) -> ChainAttack nor a "
                              "WholeChainAttack", field="attack")
        name = self.base_name
        if not name or name == "<lambda>" or not isinstance(name, str) or "%" in name:
            raise ConfigError(f"attack name {name!r} cannot label results; pass "
                              "AttackPlan(..., name='my-attack')", field="name")

    @classmethod
    def of(cls, attack: AttackSpec | AttackPlan | str) -> AttackPlan:
        """The plan of a spec (or of a registered attack's name, with its default settings);
        a plan is returned as is."""
        if isinstance(attack, AttackPlan):
            return attack
        if isinstance(attack, str):
            attack = AttackSpec(method=attack)
        if not isinstance(attack, AttackSpec):
            raise ConfigError(f"{attack!r} is not an AttackSpec or AttackPlan; wrap your own "
                              "attack as AttackPlan(attack, percent, window)", field="attack")
        return cls(attack.entry().make(attack), attack.percent, attack.window,
                   name=attack.describe(with_percent=False), spec=attack,
                   step_counting=attack.step_counting)

    # ------------------------------------------------------------------ what it is called
    @property
    def whole_chain(self) -> bool:
        return isinstance(self.attack, WholeChainAttack)

    @property
    def kind(self) -> str:
        return "whole-chain" if self.whole_chain else "per-step"

    @property
    def base_name(self) -> str:
        if self.name is not None:
            return self.name
        if self.whole_chain:
            return self.attack.label
        return getattr(self.attack, "__name__", "") or type(self.attack).__name__

    @property
    def method(self) -> str:
        """The registered attack's name, or the series name of a user's attack."""
        return self.spec.method if self.spec is not None else self.base_name

    @property
    def control(self) -> bool:
        """A model-free control (drawn dashed in curve plots)."""
        return self.spec is not None and self.spec.entry().control

    @property
    def series(self) -> str:
        """Label without the percent, e.g. ``pgd20-mean-spread`` or ``MyAttack-spread``."""
        return self.base_name if self.spec is not None else f"{self.base_name}-{self.window}"

    @property
    def label(self) -> str:
        """Label with the percent, e.g. ``pgd20-mean-spread-50%`` (numbers exact)."""
        if self.spec is not None:
            return self.spec.describe()
        return f"{self.series}-{format_number(self.percent)}%"

    def steps(self, num_steps: int) -> list[int]:
        """The reverse steps attacked on a chain of ``num_steps`` (0 = the first, at x_T)."""
        return attacked_steps(num_steps, self.percent, self.window, self.step_counting)

    def attack_settings(self, model: nn.Module, chain: SamplingChain) -> dict[str, Any]:
        """The attack's own settings (see ``settings``) on the sampled ``chain``."""
        if self.settings is not None:
            return dict(self.settings)
        if self.spec is not None:
            return self.spec.settings()
        if self.whole_chain:
            return dict(self.attack.settings())
        return build_per_step(self.attack, model, chain.walk, None).settings()

    def validate(self, chain: SamplingChain, shape: Sequence[int]) -> None:
        """What can be checked before sampling: a whole-chain attack's own
        ``validate(diffusion, sampler, shape)`` where it has one (e.g. a sampler it cannot
        differentiate, a horizon beyond the chain); raises ConfigError."""
        check = getattr(self.attack, "validate", None) if self.whole_chain else None
        if check is not None:
            check(self._target(chain), chain.sampler, tuple(shape))

    def _target(self, chain: SamplingChain) -> SamplingChain | GaussianDiffusion:
        """What a whole-chain attack's ``diffusion`` argument gets: the chain itself for an
        :class:`AdaptiveChainAttack`, the diffusion the chain walks for a user's
        :class:`~dmattack.attacks.base.WholeChainAttack`."""
        return chain if isinstance(self.attack, AdaptiveChainAttack) else chain.walk

    def code_key(self) -> str:
        """A user attack's code key (:func:`~dmattack.core.keys.callable_key`): a per-step factory's
        code, constants and closure; a whole-chain attack's class (its settings are recorded
        beside it; its instance state, e.g. counters, is not a key), or its own ``key``
        string attribute."""
        attack = self.attack
        explicit = isinstance(getattr(attack, "key", None), str)
        return callable_key(type(attack) if self.whole_chain and not explicit else attack)

    def record(self, model: nn.Module, chain: SamplingChain) -> dict[str, Any]:
        """What results record about the attack on the sampled ``chain``: method, label,
        series, kind, percent, window and its settings (flat)."""
        settings = self.attack_settings(model, chain)
        clash = sorted(set(settings) & set(RESERVED))
        if clash:
            raise ConfigError(f"attack settings use reserved keys {clash}; rename them",
                              field="settings")
        code = {} if self.spec is not None else {"code_key": self.code_key()}
        return {"method": self.method, "label": self.label, "series": self.series,
                "kind": self.kind, "percent": self.percent, "window": self.window, **settings,
                **code}

    # ------------------------------------------------------------------ running it
    def hook_factory(self, model: nn.Module, chain: SamplingChain,
                     device: torch.device | str = "cpu", built: list[ChainAttack] | None = None
                     ) -> Callable[[Sequence[int]], StepHook | None]:
        """A ``hook_factory(chunk_seeds)`` for :func:`dmattack.diffusion.sampling.sample_batched`
        (per-step
        attacks only) on ``chain``; each attack is built on the diffusion it walks.

        Each chunk's attack draws its random starts from per-sample ATTACK-stream generators of
        the chunk's seeds and attacks only the :meth:`steps`. With no attacked step the factory
        returns None, so the run is the clean run, bit for bit. Each chunk's attack is appended
        to ``built`` where given (to read its progress afterwards).
        """
        if self.whole_chain:
            raise ConfigError(f"{self.label} attacks the whole chain; it has no per-step hook "
                              "(use AttackPlan.sample)", field="attack")
        steps = frozenset(self.steps(chain.num_steps))

        def factory(chunk_seeds: Sequence[int]) -> StepHook | None:
            if not steps:
                return None
            atk = build_per_step(self.attack, model, chain.walk,
                                 generators(chunk_seeds, ATTACK, device))
            if built is not None:
                built.append(atk)

            def hook(x_t: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
                return atk(x_t, t) if step in steps else x_t

            return hook

        return factory

    def sample(self, model: nn.Module, diffusion: GaussianDiffusion | SamplingChain,
               shape: Sequence[int], seeds: Sequence[int], batch_size: int,
               sampler: SamplerConfig | None = None, device: torch.device | str = "cpu",
               progress: Callable[[int], None] | None = None,
               diagnostics: dict[str, Any] | None = None,
               tolerance: float = TOLERANCE) -> torch.Tensor:
        """Attacked samples (N, *shape) float32 on CPU for ``seeds``, in chunks of
        ``batch_size``. ``progress(step)`` is called once per reverse step of every chunk.
        Wrap the call in ``torch.no_grad()`` (attacks enable gradients themselves).
        ``diffusion`` and ``sampler`` as in
        :func:`~dmattack.diffusion.sampling.sample` (a
        :class:`~dmattack.diffusion.sampling.SamplingChain`, or the
        model's full diffusion with the sampler); an unset ``clip_denoised`` follows the data,
        as in clean sampling.

        ``diagnostics``: a dict filled, when the attack records its progress (trajectory and
        look-ahead PGD, per-step PGD) and attacked a step with a budget, with
        :func:`~dmattack.attacks.convergence.convergence` of all chunks pooled (the trace is
        the sample-count-weighted mean of the chunks' traces) at ``tolerance``; left empty
        otherwise. Under torchrun it describes this process's seeds only."""
        chain = SamplingChain.of(diffusion, sampler).for_shape(shape)
        steps = self.steps(chain.num_steps)
        parts: list[torch.Tensor] = []
        if self.whole_chain and steps:
            out = self._sample_whole_chain(model, chain, shape, seeds, batch_size, steps,
                                           device, progress, parts)
        else:
            built: list[ChainAttack] = []
            factory = None if self.whole_chain else self.hook_factory(model, chain, device,
                                                                      built)
            out = sample_batched(model, chain, shape, seeds, batch_size, None, factory, device,
                                 progress)
            parts = [p for atk in built if isinstance(atk, ChainPGD)
                     for p in atk.pop_progress()]
        if diagnostics is not None:
            found = convergence_of(parts, tolerance)
            if found is not None:
                diagnostics.update(found)
        return out

    def _sample_whole_chain(self, model: nn.Module, chain: SamplingChain,
                            shape: Sequence[int], seeds: Sequence[int], batch_size: int,
                            steps: list[int], device: torch.device | str,
                            progress: Callable[[int], None] | None,
                            parts: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`sample` of a whole-chain attack; the progress of each chunk of an
        :class:`AdaptiveChainAttack` is appended to ``parts``."""
        out = []
        with frozen(model):
            for start in range(0, len(seeds), batch_size):
                chunk = list(seeds[start:start + batch_size])
                if isinstance(self.attack, AdaptiveChainAttack):
                    result = self.attack.attack(model, chain, chain.sampler, tuple(shape),
                                                chunk, steps, device)
                    x = result.x0
                    if result.progress is not None:
                        parts.append(result.progress)
                else:
                    x = self.attack.sample_attacked(model, chain.walk, chain.sampler,
                                                    tuple(shape), chunk, steps, device)
                if not isinstance(x, torch.Tensor) or tuple(x.shape) != (len(chunk), *shape):
                    got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                    raise TypeError(f"{type(self.attack).__name__}.sample_attacked returned "
                                    f"{got}, expected a tensor {(len(chunk), *shape)}")
                out.append(x.detach().float().cpu())
                if progress is not None:
                    for step in range(chain.num_steps):
                        progress(step)
        return torch.cat(out) if out else torch.empty(0, *shape)


def make_hook_factory(
    attack: AttackSpec | AttackPlan,
    model: nn.Module,
    chain: SamplingChain,
    device: torch.device | str = "cpu",
) -> Callable[[Sequence[int]], StepHook | None]:
    """:meth:`AttackPlan.hook_factory` of a spec or plan on the sampled ``chain``."""
    return AttackPlan.of(attack).hook_factory(model, chain, device)
