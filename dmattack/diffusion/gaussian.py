"""Gaussian diffusion math (docs/method.md §2): schedules, forward process, posterior, reverse mean.

Conventions
-----------
* Timesteps are 0-indexed, ``t ∈ {0, …, T−1}``; the paper's ``t`` is ours plus one.
* Every coefficient is precomputed in float64 and cast to the input's dtype on use.
* ``x`` lives in model space (images in [-1, 1]); ``eps`` is in noise units.
* A respaced diffusion (``respace``) keeps a ``timestep_map`` from its own indices to the
  timesteps the network was trained on, so ``model(x, timestep_map[t])`` is always called with
  the original timestep.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.tensors import per_sample

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A noise predictor: ``eps = model(x_t, t)`` with ``t`` a LongTensor of original timesteps."""

VARIANCE_TYPES = ("fixed_large", "fixed_small")
SCHEDULES = ("linear", "cosine")


def beta_schedule(name: str, num_timesteps: int = 1000) -> np.ndarray:
    """Betas of the named schedule, float64, shape (T,).

    ``linear`` is Ho et al.'s 1e-4..0.02 (scaled by 1000/T as in improved-diffusion);
    ``cosine`` is Nichol & Dhariwal's squared-cosine ᾱ with betas capped at 0.999.
    """
    if name == "linear":
        scale = 1000 / num_timesteps
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "cosine":
        def abar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), 0.999)
             for i in range(num_timesteps)],
            dtype=np.float64,
        )
    raise ConfigError(f"unknown beta schedule {name!r}; allowed: {', '.join(SCHEDULES)}")


class GaussianDiffusion:
    """DDPM forward/reverse process for a fixed beta schedule.

    Args:
        betas: forward variances β_t, shape (T,), each in (0, 1].
        variance_type: reverse-step variance σ_t² of the sampler: ``fixed_large`` = β_t
            (improved-diffusion's default without learned sigmas) or ``fixed_small`` = β̃_t.
        timestep_map: original training timestep of each index (set by :func:`respace`).
    """

    def __init__(
        self,
        betas: np.ndarray,
        variance_type: str = "fixed_large",
        timestep_map: Sequence[int] | None = None,
    ) -> None:
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(
                f"unknown variance type {variance_type!r}; allowed: {', '.join(VARIANCE_TYPES)}"
            )
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.variance_type = variance_type
        self.timestep_map = np.asarray(
            range(self.num_timesteps) if timestep_map is None else timestep_map, dtype=np.int64
        )

        alphas = 1.0 - betas
        self.alphas = alphas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, β̃_t)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (
            1.0 - self.alphas_cumprod
        )
        self.posterior_mean_coef1 = (
            betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        if variance_type == "fixed_large":
            # improved-diffusion: β̃_1 in place of β_0 so the (unused) last-step variance is sane
            self.sampler_variance = np.append(self.posterior_variance[1:2], betas[1:])
            if self.num_timesteps == 1:  # a one-step chain: the only step adds no noise
                self.sampler_variance = self.posterior_variance.copy()
        else:
            self.sampler_variance = self.posterior_variance.copy()
        self.sampler_std_table = np.sqrt(self.sampler_variance)
        self.attack_std_table = np.sqrt(self.posterior_variance)
        self._device_tables: dict[tuple[str, torch.device], torch.Tensor] = {}

    def device_table(self, name: str, device: torch.device) -> torch.Tensor:
        """The numpy table ``name`` as a tensor on ``device``, copied there once: a step then
        costs no host-to-device copy (and no sync on a GPU)."""
        key = (name, device)
        if key not in self._device_tables:
            self._device_tables[key] = torch.from_numpy(getattr(self, name)).to(device)
        return self._device_tables[key]

    def _extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Gather table ``name`` at ``t`` (per sample) and broadcast to ``like``'s shape, in
        ``like``'s dtype (tables are float64)."""
        return per_sample(self.device_table(name, t.device)[t], like)

    @classmethod
    def from_schedule(
        cls, schedule: str = "linear", num_timesteps: int = 1000, variance_type: str = "fixed_large"
    ) -> GaussianDiffusion:
        return cls(beta_schedule(schedule, num_timesteps), variance_type=variance_type)

    # ----------------------------------------------------------------- forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (Eq. 2, docs/method.md §2). Shapes (B, …); t (B,)."""
        return (
            self._extract("sqrt_alphas_cumprod", t, x0) * x0
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def noise_std(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """√(1−ᾱ_t) broadcast to ``like`` (the factor in front of ε in x_t)."""
        return self._extract("sqrt_one_minus_alphas_cumprod", t, like)

    # ----------------------------------------------------------------- reverse process
    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original training timesteps for indices ``t`` (identity unless respaced)."""
        return self.device_table("timestep_map", t.device)[t]

    def predict_eps(self, model: EpsModel, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x_t, self.model_timesteps(t))

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t."""
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def q_posterior_mean(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """μ̃_t(x_t, x_0) of q(x_{t−1} | x_t, x_0)."""
        return (
            self._extract("posterior_mean_coef1", t, x_t) * x0
            + self._extract("posterior_mean_coef2", t, x_t) * x_t
        )

    def mean_from_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, clip_denoised: bool = False
    ) -> torch.Tensor:
        """μ_θ from a noise prediction. Without clipping this equals
        (1/√α_t)(x_t − β_t/√(1−ᾱ_t) ε) exactly (docs/method.md §2)."""
        x0 = self.predict_x0(x_t, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        return self.q_posterior_mean(x0, x_t, t)

    def p_mean(
        self, model: EpsModel, x_t: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False
    ) -> torch.Tensor:
        """μ_θ(x_t, t), differentiable with respect to ``x_t``."""
        return self.mean_from_eps(x_t, t, self.predict_eps(model, x_t, t), clip_denoised)

    def sampler_std(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """σ_t of the ancestral sampler (√β_t or √β̃_t per ``variance_type``)."""
        return self._extract("sampler_std_table", t, like)

    def attack_std(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """σ_t = √β̃_t, the per-step attack budget of docs/method.md §6 (0 at the last step)."""
        return self._extract("attack_std_table", t, like)

    def p_sample(
        self,
        model: EpsModel,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        clip_denoised: bool = False,
    ) -> torch.Tensor:
        """One ancestral step (Eq. 4, docs/method.md §2): x_{t−1} = μ_θ + σ_t z, with z = 0 where
        t = 0."""
        mean = self.p_mean(model, x_t, t, clip_denoised)
        nonzero = per_sample(t != 0, x_t)
        return mean + nonzero * self.sampler_std(t, x_t) * noise

    def ddim_step(
        self,
        model: EpsModel,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        eta: float = 0.0,
        clip_denoised: bool = False,
    ) -> torch.Tensor:
        """One DDIM step (Song et al. 2021, Eq. 12) from index t to t−1 of this diffusion."""
        eps = self.predict_eps(model, x_t, t)
        x0 = self.predict_x0(x_t, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
            eps = (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / (
                self._extract("sqrt_recipm1_alphas_cumprod", t, x_t))
        abar = self._extract("alphas_cumprod", t, x_t)
        abar_prev = self._extract("alphas_cumprod_prev", t, x_t)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
        mean = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        nonzero = per_sample(t != 0, x_t)
        return mean + nonzero * sigma * noise


def respace(diffusion: GaussianDiffusion, num_steps: int) -> GaussianDiffusion:
    """The same process on ``num_steps`` evenly strided timesteps (improved-diffusion's
    ``timestep_respacing``): β_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}}, model called at τ_i
    (docs/method.md §8)."""
    T = diffusion.num_timesteps
    if not 1 <= num_steps <= T:
        raise ConfigError(f"respaced steps {num_steps} outside 1..{T}")
    use = sorted({round(x) for x in np.linspace(0, T - 1, num_steps)})
    abar = diffusion.alphas_cumprod[use]
    abar_prev = np.append(1.0, abar[:-1])
    betas = 1.0 - abar / abar_prev
    return GaussianDiffusion(
        betas,
        variance_type=diffusion.variance_type,
        timestep_map=diffusion.timestep_map[use],
    )
