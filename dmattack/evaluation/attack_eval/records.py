"""What an attack result and a curve point record besides the metric: the paired per-sample
damage (pixel deviation; for 8×8 digits, whether the digits-cnn class changed; the feature
distance an attack maximised), which steps were attacked on the chain, the attack's
convergence, the sampler and the model (docs/method.md §6.1, §10.8, §11.1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ...attacks.plan import AttackPlan
from ...diffusion.sampling import SamplingChain
from ...runs.checkpoints import LoadedModel
from ..damage import (
    PerSample,
    damage_feature_extractor,
    damage_per_sample,
)
from .store import model_identity


def point_damage(clean: torch.Tensor, attacked: torch.Tensor, attack: dict[str, Any] | None,
                 data_shape: Sequence[int], device: torch.device | str) -> PerSample:
    """The per-sample damage (:func:`~dmattack.evaluation.damage.damage_per_sample`) of ``attacked``
    against ``clean`` (N, *shape, same seeds), in the feature space the attack (its record)
    maximised a distance in, if any."""
    return damage_per_sample(clean, attacked, damage_feature_extractor(attack, data_shape),
                             device)


def steps_record(plan: AttackPlan | None, chain: SamplingChain) -> dict[str, Any]:
    """Which steps of ``chain`` were attacked: the list, ``n of K``, how ``percent`` counted
    them (``step_counting``), how many steps have a positive budget (``steps_with_budget``:
    all but the last) and which zero-budget steps are among the attacked
    (``zero_budget_steps_attacked``; only the last step, only with ``step_counting = "all"``;
    docs/method.md §10.8)."""
    num_steps = chain.num_steps
    steps = [] if plan is None else plan.steps(num_steps)
    budget = set(chain.attackable_steps)
    return {"attacked_steps": steps, "num_attacked_steps": len(steps), "num_steps": num_steps,
            "steps_attacked": f"{len(steps)} of {num_steps}",
            "step_counting": "budget" if plan is None else plan.step_counting,
            "steps_with_budget": len(budget),
            "zero_budget_steps_attacked": [s for s in steps if s not in budget],
            "last_step_attacked": (num_steps - 1) in steps}


def convergence_record(diagnostics: dict[str, Any] | None) -> dict[str, Any]:
    """``trace``, ``converged`` and ``convergence`` (the whole diagnostics dict: trace,
    converged, iterations, restarts, tolerance, rise_last_fifth) of an attack that filled
    ``diagnostics``; all None for one that did not (e.g. a per-step attack)."""
    if not diagnostics:
        return {"trace": None, "converged": None, "convergence": None}
    return {"trace": diagnostics.get("trace"), "converged": diagnostics.get("converged"),
            "convergence": dict(diagnostics)}


def model_record(loaded: LoadedModel) -> dict[str, Any]:
    """The model a result was computed on: folder, EMA, content fingerprint, data and T."""
    return {"source": loaded.source, "ema": loaded.ema, "fingerprint": model_identity(loaded),
            "dataset": loaded.dataset,
            "preset": loaded.preset, "data_shape": list(loaded.data_shape),
            "num_timesteps": loaded.diffusion.num_timesteps,
            "variance_type": loaded.diffusion.variance_type}
