"""Settings of `dmattack demo`: the default run (≤ 10 min on a 2-core CPU) and ``--quick``
(≤ 2 min). Every number here is recorded in results.json and in the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainSettings:
    """How each model of a section is trained (see :class:`dmattack.train.TrainConfig`).

    ``lr`` is above the library default (2e-4): at these short runs 2e-4 leaves the MLPs
    under-trained (DDPM samples farther from the subspace than the noisy data itself)."""

    preset: str = "mlp-small"
    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    warmup: int = 100
    lam: float = 0.3
    lambda_scaling: str = "var"


@dataclass(frozen=True)
class SubspacePlan:
    """Section 1: digits-subspace (64-D, known Gaussian on k = 9 PCA directions)."""

    methods: tuple[str, ...] = ("ddpm", "robust-rand", "robust-adv", "invariance")
    corrupt_fraction: float = 0.9
    corrupt_sigma: float = 0.2
    num_data: int = 2000
    train: TrainSettings = field(default_factory=TrainSettings)
    num_samples: int = 1000
    sampler_steps: int = 1000  # full ancestral DDPM sampler (METHOD Eq. 4)


@dataclass(frozen=True)
class Corruption:
    """One corruption of the 3-D sets: ``gaussian`` inlier noise or uniform ``outliers``."""

    label: str
    mode: str
    fraction: float
    sigma: float = 0.0


@dataclass(frozen=True)
class ToyPlan:
    """Section 2: 3-D oblique-plane and 3-gaussians, generations and trajectories."""

    datasets: tuple[str, ...] = ("oblique-plane", "3-gaussians")
    corruptions: tuple[Corruption, ...] = (
        Corruption("inlier noise", "gaussian", 0.9, 0.2),
        Corruption("outliers", "outliers", 0.2),
    )
    methods: tuple[str, ...] = ("ddpm", "robust-adv", "invariance")
    num_data: int = 4000
    train: TrainSettings = field(default_factory=lambda: TrainSettings(steps=1500))
    num_samples: int = 1000
    sampler_steps: int = 250
    num_trajectories: int = 8


@dataclass(frozen=True)
class CurvePlan:
    """One attack-curve grid: methods × windows × percents on one kind of data."""

    methods: tuple[str, ...]
    windows: tuple[str, ...]
    percents: tuple[float, ...]
    num_samples: int
    sampler_steps: int
    # methods run only at some percents (e.g. PGD-20 on images), {method: percents}
    only_at: dict[str, tuple[float, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class AttackPlan:
    """Section 3: ddpm vs robust-adv under FGSM / PGD-20 / the random control."""

    subspace: CurvePlan = field(default_factory=lambda: CurvePlan(
        ("fgsm", "pgd", "random"), ("first", "last", "spread"), (25, 50, 75, 100), 500, 50))
    images: CurvePlan = field(default_factory=lambda: CurvePlan(
        ("fgsm", "pgd", "random"), ("spread",), (25, 50, 75, 100), 256, 25,
        only_at={"pgd": (50,)}))
    loss: str = "mean"  # the paper's J_att (METHOD §6.1)


@dataclass(frozen=True)
class StepsPlan:
    """Section 4: respaced ancestral sampling with fewer steps (paper Table 3)."""

    steps: tuple[int, ...] = (1000, 500, 300)
    methods: tuple[str, ...] = ("ddpm", "robust-adv")


@dataclass(frozen=True)
class DemoPlan:
    quick: bool
    subspace: SubspacePlan
    toy: ToyPlan
    attacks: AttackPlan
    steps: StepsPlan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_plan() -> DemoPlan:
    """The full demo: every section as the issue describes it."""
    return DemoPlan(False, SubspacePlan(), ToyPlan(), AttackPlan(), StepsPlan())


def quick_plan() -> DemoPlan:
    """``--quick``: shorter training, fewer samples, the ``spread`` window only, FGSM + random
    on images; still every section and every method of sections 1, 2 and 4."""
    sub_train = TrainSettings(steps=500)
    toy_train = TrainSettings(steps=400)
    return DemoPlan(
        True,
        SubspacePlan(train=sub_train, num_samples=500, sampler_steps=1000),
        ToyPlan(datasets=("oblique-plane", "3-gaussians"), train=toy_train, num_samples=500,
                sampler_steps=100, num_trajectories=6),
        AttackPlan(
            subspace=CurvePlan(("fgsm", "pgd", "random"), ("spread",), (25, 50, 75, 100), 250,
                               25, only_at={"pgd": (50,)}),
            images=CurvePlan(("fgsm", "random"), ("spread",), (50, 100), 64, 10),
        ),
        StepsPlan(),
    )

