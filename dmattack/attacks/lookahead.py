r"""Look-ahead PGD with EOT over the future noise (threat model C, docs/method.md §12).

The attacker sees the current state x_s but not the future noise. At each attacked step s, in
order, PGD on δ (‖δ‖∞ ≤ ε_s = eps_scale·√β̃_s) maximises

    E_z[ D(x̂_0^z(x_s + δ), x̂_0^z(x_s)) ]  ≈  (1/M) Σ_m D(x̂_0^{z_m}(x_s + δ), x̂_0^{z_m}(x_s))

where x̂_0^z(x) runs H reverse steps from x with noise z and then predicts x̂_0 at the reached
step (the chain's output itself when it reaches the end). The two continuations share the same
M draws of future noise (common random numbers; EOT, Athalye et al. 2018). H = 0 compares the
one-step predictions x̂_0 (with the pixel distance: the per-step ``x0`` loss); H = ``"end"`` runs
to the last step. The M draws (``eot``) are drawn once per attacked step from the sample's
ATTACK stream, after its random start, and kept for all PGD iterations, so the objective is a
fixed function of δ and the clean continuations are computed once. Then the chain continues from
x_s + δ with the true noise: the chain's noise draws are exactly the clean run's.

PGD as in :class:`~dmattack.attacks.trajectory.TrajectoryPGD`: random start δ ~ U(−ε_s, ε_s),
``iterations`` sign steps α = alpha_scale·ε_s, projection after each; ``keep="best"`` returns,
per sample, the iterate with the highest estimated objective (``"last"``: the last iterate).
``restarts`` = R > 1 reruns each attacked step's PGD from new random starts, drawn from the
ATTACK stream after that step's EOT draws (restart 0 keeps its place before them, so R = 1 is
the run without restarts), on the same objective, and keeps per sample the restart scoring
highest. Trace (:attr:`AdaptiveResult.trace`): per iterate, the mean over attacked steps and
samples of the best look-ahead objective so far (not D of the final samples, so its last entry
is not the mean ``distance``); docs/method.md §12 "convergence".

Cost per attacked step: R × (N × M × (H forwards + 1 x̂_0 forward, their recomputation and
one backward) + one evaluation of the last iterate) + M × (H + 1) forwards for the clean
continuations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.errors import ConfigError
from ..core.seeding import ATTACK, generators, randn_per_sample
from ..diffusion.gaussian import EpsModel, GaussianDiffusion
from ..diffusion.sampling import SamplerConfig, SamplingChain, sample
from .adaptive import AdaptiveChainAttack, AdaptiveResult
from .configs import HORIZON_END, LookaheadConfig
from .differentiable import DifferentiableChain, attack_mode, require_grad_path
from .distances import Distance


class LookaheadPGD(AdaptiveChainAttack):
    """Look-ahead EOT PGD (see the module docstring).

    Args: the fields of :class:`LookaheadConfig`; ``distance`` is ``"pixel"``,
    ``"features"`` or a callable ``D(x0_adv, x0_clean) -> (B,)``.

    Examples::
        >>> atk = LookaheadPGD(eot=4, horizon=5)
        >>> x0_adv = atk.sample_attacked(model, diffusion, SamplerConfig("respaced", 25),
        ...                              (1, 8, 8), seeds, attacked_steps(25, 50, "spread"))
    """

    name = "lookahead"

    def __init__(self, distance: str | Distance = "pixel", **settings) -> None:
        name = distance if isinstance(distance, str) else "pixel"
        super().__init__(LookaheadConfig(distance=name, **settings), distance)

    def label_parts(self) -> list[str]:
        """``eotM`` and ``hH``: the label reads e.g. ``lookahead-pgd20-eot4-h5-pixel``."""
        return [f"eot{self.config.eot}", f"h{self.config.horizon}"]

    def horizon_steps(self, step: int, num_steps: int) -> int:
        """Reverse steps run ahead from step ``step`` (truncated at the chain's end)."""
        h = self.config.horizon
        return num_steps - step if h == HORIZON_END else min(int(h), num_steps - step)

    def validate(self, diffusion: GaussianDiffusion, sampler: SamplerConfig,
                 shape: Sequence[int]) -> None:
        """As :meth:`AdaptiveChainAttack.validate`, and a horizon longer than the chain."""
        super().validate(diffusion, sampler, shape)
        k = SamplingChain.of(diffusion, sampler).num_steps
        h = self.config.horizon
        if h != HORIZON_END and h > k:
            raise ConfigError(f"horizon (--horizon) = {h} is larger than the chain's {k} steps; "
                              f"allowed: 0..{k} or '{HORIZON_END}'", field="horizon")

    def attack(self, model: EpsModel, diffusion: GaussianDiffusion, sampler: SamplerConfig,
               shape: Sequence[int], seeds: Sequence[int], steps: Sequence[int],
               device: torch.device | str = "cpu") -> AdaptiveResult:
        self.validate(diffusion, sampler, shape)
        c = self.config
        chain = DifferentiableChain(model, diffusion, sampler, c.checkpoint)
        shape, device = tuple(shape), torch.device(device)
        D = self.make_distance(shape, device)
        budgets = self.budgets(chain, steps, len(seeds), shape, device)
        gens = generators(seeds, ATTACK, device)
        chosen: dict[int, torch.Tensor] = {}
        progress: list[torch.Tensor] = []

        def hook(x: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
            if step not in budgets:
                return x
            chosen[step], p = self._attack_step(chain, x, step, budgets[step], gens, D)
            progress.append(p)
            return x + chosen[step]

        with attack_mode(model), torch.no_grad():
            clean = sample(model, diffusion, shape, seeds, sampler, device=device)
            x0 = sample(model, diffusion, shape, seeds, sampler, hook=hook, device=device)
            dist = D(x0, clean)
        return AdaptiveResult(x0, clean, chosen, dist,
                              torch.cat(progress, -1) if progress else None)

    def _attack_step(self, chain: DifferentiableChain, x: torch.Tensor, step: int,
                     eps: torch.Tensor, gens: Sequence[torch.Generator], D: Distance
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """PGD on δ (B, *shape) at reverse step ``step`` from the state ``x`` (B, *shape);
        returns the chosen δ and the progress (R, N + 1, B) of its look-ahead objective."""
        c, B, shape = self.config, len(x), x.shape[1:]
        h = self.horizon_steps(step, chain.num_steps)
        first = self.random_start(eps, shape, gens)
        draws = [[randn_per_sample(shape, gens, x.device) for _ in range(h)]
                 for _ in range(c.eot)]
        starts = [first]  # restart 0 starts before the draws (as without restarts)
        noise = [torch.cat([draws[m][j] for m in range(c.eot)]) for j in range(h)]
        x_rep = x.repeat(c.eot, *([1] * len(shape)))

        def ahead(x_start: torch.Tensor) -> torch.Tensor:
            return chain.predict_x0(chain.run(x_start, noise, step, step + h), step + h)

        def objective(d: torch.Tensor) -> torch.Tensor:
            return D(ahead(x_rep + d.repeat(c.eot, *([1] * len(shape)))), ref) \
                .view(c.eot, B).mean(0)

        ref = ahead(x_rep)

        def value_and_grad(deltas: dict[int, torch.Tensor]
                           ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
            with torch.enable_grad():
                leaf = deltas[0].detach().requires_grad_(True)
                value = objective(leaf)
                require_grad_path(value, "the look-ahead distance")
                (g,) = torch.autograd.grad(value.sum(), leaf)
            return value.detach(), {0: g}

        def start() -> dict[int, torch.Tensor]:
            return {0: starts.pop() if starts else self.random_start(eps, shape, gens)}

        chosen, progress = self.pgd(start, {0: eps}, value_and_grad,
                                    lambda deltas: objective(deltas[0]))
        return chosen[0], progress

