r"""Trajectory PGD: all perturbations of a chain optimised jointly (threat model B,
docs/method.md §12).

The attacker knows x_T and every future noise z (it controls or has observed the sampler's
RNG, or attacks a deterministic DDIM chain). Variables: δ_s for the attacked steps s ∈ S,
‖δ_s‖∞ ≤ ε_s = eps_scale·√β̃_s. With x_0(δ) the chain's output when δ_s is added to the state
before step s, PGD maximises

    L(δ) = D(x_0(δ), x_0(0))        (x_0(0): the clean sample with the same seeds)

from a random start δ_s ~ U(−ε_s, ε_s), ``iterations`` times: one forward pass of the whole
chain, one backward pass to every δ_s, δ_s ← clip(δ_s + α_s·sign(∂L/∂δ_s), ±ε_s),
α_s = alpha_scale·ε_s.

Which iterate is returned (``keep="best"``, the default): per sample, the best of the N + 1
iterates δ^(0) … δ^(N) by D (the random start counts; the last iterate is evaluated with one
more forward pass). Sign steps of fixed size overshoot, so the ascent is not monotone: the best
iterate is the strongest attack the run found, for one extra chain forward, as is standard for
robustness evaluation (e.g. AutoAttack's APGD). ``keep="last"`` returns δ^(N). The returned
sample is ``sample()`` with the chosen δ added by a hook, so it can be reproduced exactly.

Restarts (``restarts`` = R): the PGD runs R times, restart r from the (r+1)-th random start
drawn from each sample's ATTACK stream (so R = 1 is the run without restarts, bit for bit);
per sample the restart whose chosen iterate has the highest D is returned.

Trace: :attr:`AdaptiveResult.trace` (N + 1 values) is the batch mean of the per-sample best D
so far after iterate i (i = 0: the random start), across restarts the best of the R restarts
at the same i; with ``keep="best"`` its last entry is the mean of the returned ``distance``.
``trace_per_restart`` gives each restart's own; docs/method.md §12 "convergence".

Cost: R × (N × (one chain forward + one recomputed forward per step + one backward) + one
forward for the last iterate) + 2 forwards (clean sample, returned sample).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.seeding import ATTACK, generators
from ..diffusion.gaussian import EpsModel, GaussianDiffusion
from ..diffusion.sampling import SamplerConfig, sample
from .adaptive import AdaptiveChainAttack, AdaptiveResult
from .configs import TrajectoryConfig
from .differentiable import DifferentiableChain, attack_mode, draw_chain_noise, require_grad_path
from .distances import Distance


class TrajectoryPGD(AdaptiveChainAttack):
    """Trajectory PGD (see the module docstring).

    Args: the fields of :class:`TrajectoryConfig`; ``distance`` is ``"pixel"``,
    ``"features"`` or a callable ``D(x0_adv, x0_clean) -> (B,)``.

    Examples::
        >>> atk = TrajectoryPGD(iterations=20, distance="pixel")
        >>> steps = attacked_steps(25, percent=50, window="spread")
        >>> x0_adv = atk.sample_attacked(model, diffusion, SamplerConfig("respaced", 25),
        ...                              (1, 8, 8), seeds, steps)
        >>> # or through run_attack / run_curve: AttackPlan(atk, percent=50, window="spread")
    """

    name = "trajectory"

    def __init__(self, distance: str | Distance = "pixel", **settings) -> None:
        name = distance if isinstance(distance, str) else "pixel"
        super().__init__(TrajectoryConfig(distance=name, **settings), distance)

    def attack(self, model: EpsModel, diffusion: GaussianDiffusion, sampler: SamplerConfig,
               shape: Sequence[int], seeds: Sequence[int], steps: Sequence[int],
               device: torch.device | str = "cpu") -> AdaptiveResult:
        self.validate(diffusion, sampler, shape)
        c = self.config
        chain = DifferentiableChain(model, diffusion, sampler, c.checkpoint)
        shape, device = tuple(shape), torch.device(device)
        D = self.make_distance(shape, device)
        with attack_mode(model):
            with torch.no_grad():
                clean = sample(model, diffusion, shape, seeds, sampler, device=device)
            budgets = self.budgets(chain, steps, len(seeds), shape, device)
            if not budgets:
                return AdaptiveResult(clean, clean, {}, torch.zeros(len(seeds), device=device))
            noise = draw_chain_noise(shape, seeds, chain.num_steps, device)
            gens = generators(seeds, ATTACK, device)

            def value(deltas: dict[int, torch.Tensor]) -> torch.Tensor:
                with torch.no_grad():
                    return D(chain.run(noise.x_T, noise.z, deltas=deltas), clean)

            best, progress = self.pgd(
                lambda: {s: self.random_start(eps, shape, gens) for s, eps in budgets.items()},
                budgets, lambda deltas: self._value_and_grad(chain, noise, deltas, clean, D),
                value)
            with torch.no_grad():
                x0 = sample(model, diffusion, shape, seeds, sampler, hook=_adder(best),
                            device=device)
                dist = D(x0, clean)
        return AdaptiveResult(x0, clean, best, dist, progress)

    @staticmethod
    def _value_and_grad(chain: DifferentiableChain, noise, deltas: dict[int, torch.Tensor],
                        clean: torch.Tensor, D: Distance
                        ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """D (B,) at ``deltas`` and ∂ΣD/∂δ_s for every attacked step."""
        with torch.enable_grad():
            leaves = {s: d.detach().requires_grad_(True) for s, d in deltas.items()}
            x0 = chain.run(noise.x_T, noise.z, deltas=leaves)
            d = D(x0, clean)
            require_grad_path(d, "the trajectory distance")
            grads = torch.autograd.grad(d.sum(), list(leaves.values()))
        return d.detach(), dict(zip(leaves, grads, strict=True))


def _adder(deltas: dict[int, torch.Tensor]):
    """A ``sample()`` hook adding ``deltas[step]`` before each attacked step."""

    def hook(x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        return x + deltas[step] if step in deltas else x

    return hook

