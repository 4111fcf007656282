"""dmattack: adversarial training and reverse-chain attacks for diffusion models."""

from .diffusion import GaussianDiffusion, beta_schedule, respace
from .sampling import SamplerConfig, sample, sample_batched

__version__ = "0.1.0"
__all__ = ["GaussianDiffusion", "beta_schedule", "respace", "SamplerConfig", "sample",
           "sample_batched"]
