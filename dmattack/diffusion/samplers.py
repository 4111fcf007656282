"""The registered reverse samplers (:data:`~dmattack.core.registry.SAMPLERS`): each entry
(:class:`Sampler`) makes one reverse step and owns its options in a config dataclass (DDIM's
η in :class:`DDIMConfig`), which :class:`~dmattack.diffusion.sampling.SamplerConfig` holds
beside the settings every sampler shares (docs/method.md §8)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch

from ..core.entry_options import check_entry_config, entry_spelling, field_default
from ..core.registry import SAMPLERS
from ..core.settings import check_settings, setting
from .gaussian import EpsModel, GaussianDiffusion, respace

if TYPE_CHECKING:
    from .sampling import SamplerConfig

SHARED_SAMPLER_SETTINGS = ("name", "steps", "clip_denoised", "options")
"""The settings every sampler shares (:class:`~dmattack.diffusion.sampling.SamplerConfig`'s
own fields); a sampler's own options are the fields of its :attr:`Sampler.config`."""

SamplerStep = Callable[[GaussianDiffusion, EpsModel, torch.Tensor, torch.Tensor, torch.Tensor,
                        "SamplerConfig"], torch.Tensor]
"""``step(sd, model, x_t, t, noise, cfg) -> x_prev``: one reverse step on the sampler's chain
``sd``; ``x_t`` (B, *shape) model space, ``t`` (B,) indices into ``sd``, ``noise`` (B, *shape)
standard normal (one is drawn for every step; a deterministic step ignores it), ``cfg`` the
sampler settings with ``clip_denoised`` resolved to a bool (its own options: ``cfg.options``,
also readable as ``cfg.<option>``)."""


@dataclass(frozen=True)
class NoSamplerOptions:
    """The config of a sampler without options of its own."""


@dataclass(frozen=True)
class DDIMConfig:
    """DDIM's own option (Song et al. 2021, Eq. 12)."""

    eta: float = setting(0.0, "DDIM η (0: deterministic DDIM, 1: ancestral-like).", low=0,
                         high=1)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class Sampler:
    """A reverse sampler as registered in :data:`~dmattack.core.registry.SAMPLERS`.

    ``step`` makes one reverse step (:data:`SamplerStep`); :meth:`chain` is the diffusion it
    walks (:class:`~dmattack.diffusion.sampling.SamplingChain` calls it, the one place a chain
    is resolved). ``config``: a frozen dataclass whose fields, declared with
    :func:`~dmattack.core.settings.setting`, are the sampler's own options (DDIM's ``eta``;
    the command line offers them too); default :class:`NoSamplerOptions`. ``strided``: it
    runs ``steps`` evenly strided timesteps (False: always all T); ``differentiable``: the
    adaptive attacks may backpropagate through ``step``; ``purify_name``: the purifier's name
    for this chain (``--purify-sampler``) where it has another (``respaced`` is the
    purifier's ``ancestral``), else None: its registered name.
    """

    description: str
    step: SamplerStep
    config: type = NoSamplerOptions
    strided: bool = True
    differentiable: bool = True
    purify_name: str | None = None

    def __post_init__(self) -> None:
        check_entry_config(self.config, "Sampler", SHARED_SAMPLER_SETTINGS)

    def options(self) -> tuple[str, ...]:
        """The names of the sampler's own options (its config's fields)."""
        return tuple(f.name for f in fields(self.config))

    def chain(self, diffusion: GaussianDiffusion, cfg: SamplerConfig) -> GaussianDiffusion:
        """The diffusion whose indices the sampler walks: ``diffusion`` itself at full length,
        else respaced to ``cfg.num_steps`` timesteps (docs/method.md §8)."""
        k = cfg.num_steps(diffusion.num_timesteps)
        return diffusion if k == diffusion.num_timesteps else respace(diffusion, k)


def ancestral_step(sd: GaussianDiffusion, model: EpsModel, x: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    """One ancestral step x_t → x_{t−1} ~ p_θ (Ho et al. 2020, Algorithm 2)."""
    return sd.p_sample(model, x, t, noise, cfg.clip_denoised)


def ddim_step(sd: GaussianDiffusion, model: EpsModel, x: torch.Tensor, t: torch.Tensor,
              noise: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    """One DDIM step with ``cfg.eta`` (Song et al. 2021, Eq. 12)."""
    return sd.ddim_step(model, x, t, noise, cfg.options.eta, cfg.clip_denoised)


SAMPLERS.register("ddpm", Sampler("ancestral sampling on all T steps (Ho et al. 2020)",
                                  ancestral_step, strided=False))
SAMPLERS.register("respaced", Sampler("ancestral sampling on `steps` evenly strided timesteps",
                                      ancestral_step, purify_name="ancestral"))
SAMPLERS.register("ddim", Sampler("DDIM with η on `steps` strided timesteps (Song et al. 2021)",
                                  ddim_step, config=DDIMConfig))

BUILTIN_SAMPLER_CONFIGS = (DDIMConfig,)
SAMPLER_RECORD = ("eta",)
"""The built-in samplers' options, in the order a sampler's record
(:meth:`~dmattack.diffusion.sampling.SamplerConfig.to_dict`) lists them between ``steps`` and
``clip_denoised``: every record has them (a sampler that does not read one shows its default),
so records and the store keys made from them are those of the former flat config."""


SAMPLER_RECORD_DEFAULTS = {name: field_default(f) for name in SAMPLER_RECORD
                           for c in BUILTIN_SAMPLER_CONFIGS for f in fields(c) if f.name == name}


def samplers_reading(option: str) -> list[str]:
    """The registered samplers that read own option ``option``, in registration order."""
    return [n for n in SAMPLERS.names() if option in SAMPLERS[n].options()]


def sampler_spelling(option: str) -> str:
    """The command-line spelling of sampler option ``option`` (as the first sampler declaring
    it spells it; ``--option`` when none does)."""
    return entry_spelling((SAMPLERS[n].config for n in SAMPLERS.names()), option)
