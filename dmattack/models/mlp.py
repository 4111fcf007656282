"""MLP noise predictor for vector data (3-D toy sets, linearised subspace data)."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps, shape (B, dim) (improved-diffusion's)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return nn.functional.pad(emb, (0, dim % 2))


class MLPEps(nn.Module):
    """ε_θ(x_t, t) for x of shape (B, dim): residual SiLU MLP with a time embedding added to
    every block. Output in noise units, same shape as x."""

    def __init__(
        self, dim: int, hidden: int = 256, depth: int = 4, time_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.config = dict(dim=dim, hidden=hidden, depth=depth, time_dim=time_dim,
                           dropout=dropout)
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
            for _ in range(depth)
        )
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.time_dim))
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + temb)
        return self.out(h)
