"""Known clean distributions of the synthetic vector sets (docs/method.md §7, §8).

All parameters, moments and outputs are torch.float64 tensors on the CPU; inputs ``x`` may be
any float tensor of shape (N, d) or (d,) and are converted to float64.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch


def _f64(x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x).to(device="cpu", dtype=torch.float64)


class KnownDistribution(ABC):
    """A distribution on R^d with closed-form first and second moments."""

    mean: torch.Tensor  # (d,)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @abstractmethod
    def covariance(self) -> torch.Tensor:
        """The (d, d) covariance matrix."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` independent draws, (n, d) float64."""


class GaussianSubspace(KnownDistribution):
    """x = μ + U diag(stds) z + normal_std · (I − UUᵀ) w with z ~ N(0, I_k), w ~ N(0, I_d).

    ``basis`` U is (d, k) with orthonormal columns, ``stds`` (k,) the per-direction standard
    deviations; ``normal_std`` adds isotropic noise orthogonal to the subspace (0: exactly on it).
    """

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, stds: torch.Tensor,
                 normal_std: float = 0.0) -> None:
        self.mean = _f64(mean).clone()
        self.basis = _f64(basis).clone()
        self.stds = _f64(stds).clone()
        self.normal_std = float(normal_std)
        gram = self.basis.T @ self.basis
        if not torch.allclose(gram, torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-8):
            raise ValueError("basis columns must be orthonormal")

    def _complement(self) -> torch.Tensor:
        """I − UUᵀ, the (d, d) projector onto the orthogonal complement."""
        return torch.eye(self.dim, dtype=torch.float64) - self.basis @ self.basis.T

    def covariance(self) -> torch.Tensor:
        u = self.basis
        return (u * self.stds**2) @ u.T + self.normal_std**2 * self._complement()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.stds.shape[0], generator=generator, dtype=torch.float64)
        x = self.mean + (z * self.stds) @ self.basis.T
        if self.normal_std > 0:
            w = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
            x = x + self.normal_std * w @ self._complement()
        return x

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Orthogonal projection onto the affine subspace: μ + UUᵀ(x − μ); same shape as x."""
        c = _f64(x) - self.mean
        return self.mean + (c @ self.basis) @ self.basis.T

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """Euclidean distance ‖x − project(x)‖ to the subspace: (N,) for (N, d) input."""
        x = _f64(x)
        return torch.linalg.vector_norm(x - self.project(x), dim=-1)


class ObliquePlane(GaussianSubspace):
    """The oblique plane through the origin with unit normal n = (1, 1, 1)/√3.

    In-plane coordinates ~ N(0, in_plane_std² I_2) on the orthonormal basis
    u = (1, −1, 0)/√2, v = (1, 1, −2)/√6, plus s·n with s ~ N(0, normal_std²).
    """

    def __init__(self, in_plane_std: float = 0.5, normal_std: float = 0.0) -> None:
        basis = torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, -2.0]], dtype=torch.float64).T
        basis = basis / torch.linalg.vector_norm(basis, dim=0)
        super().__init__(torch.zeros(3), basis, torch.full((2,), float(in_plane_std)),
                         normal_std)
        self.in_plane_std = float(in_plane_std)
        self.normal = torch.ones(3, dtype=torch.float64) / math.sqrt(3.0)

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """Signed distance n·x to the plane: (N,) for (N, 3) input."""
        return _f64(x) @ self.normal


class GaussianMixture(KnownDistribution):
    """Equal-weight mixture of isotropic Gaussians N(means[j], std² I_d); ``means`` is (K, d)."""

    def __init__(self, means: torch.Tensor, std: float) -> None:
        self.means = _f64(means).clone()
        self.std = float(std)
        if self.std <= 0:
            raise ValueError(f"mixture std must be > 0, got {std}")
        self.mean = self.means.mean(dim=0)

    def covariance(self) -> torch.Tensor:
        c = self.means - self.mean
        return self.std**2 * torch.eye(self.dim, dtype=torch.float64) + c.T @ c / len(c)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        comp = torch.randint(len(self.means), (n,), generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[comp] + self.std * noise

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density, (N,) for (N, d) input (a scalar for (d,))."""
        x = _f64(x)
        sq = ((x.unsqueeze(-2) - self.means) ** 2).sum(dim=-1)  # (..., K)
        log_norm = 0.5 * self.dim * math.log(2 * math.pi * self.std**2) + math.log(len(self.means))
        return torch.logsumexp(-sq / (2 * self.std**2), dim=-1) - log_norm
