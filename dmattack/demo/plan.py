"""Settings of `dmattack demo`: the default run (≤ 10 min on a 2-core CPU) and ``--quick``
(≤ 2 min). Every number here is recorded in results.json and in the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainSettings:
    """How each model of a section is trained (see :class:`dmattack.training.train.TrainConfig`).

    ``lr`` is far above the library default (2e-4) and the batch large: these small MLPs need
    ~0.5M training samples, and few large steps fit the time budget best. Measured on
    digits-subspace (90% noisy, DDPM, subspace error / FD): 2000 × 256 at lr 2e-4 leaves
    4.10 / 4.27 (worse than the noisy data's 1.98 / 2.03); 2000 × 256 at 2e-3 gives
    2.90 / 3.10; 700 × 1024 at 5e-3 gives 2.79 / 2.99 in ~60% of the time."""

    preset: str = "mlp-small"
    steps: int = 500
    batch_size: int = 1024
    lr: float = 5e-3
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
    num_samples: int = 500
    sampler_steps: int = 1000  # full ancestral DDPM sampler (Eq. 4, docs/method.md §2)


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
    train: TrainSettings = field(default_factory=lambda: TrainSettings(
        steps=500, batch_size=256, lr=5e-3))
    num_samples: int = 1000
    sampler_steps: int = 100
    num_trajectories: int = 8


@dataclass(frozen=True)
class CurvePlan:
    """Attack curves of ``methods`` on ``windows`` at ``percents`` of the steps attacked
    (plus the clean 0% point), ``num_samples`` per point, respaced sampler of
    ``sampler_steps``. Plans with the same window, samples and sampler share one table."""

    methods: tuple[str, ...]
    windows: tuple[str, ...]
    percents: tuple[float, ...]
    num_samples: int
    sampler_steps: int


ALL_WINDOWS = ("first", "last", "spread")
PERCENTS = (25.0, 50.0, 75.0, 100.0)


@dataclass(frozen=True)
class AttackSectionPlan:
    """Section 3: ddpm vs robust-adv under FGSM / PGD-20 / the random control. PGD-20 costs
    ~21 network gradients per attacked step, so it runs on fewer points than FGSM; every
    table has the random control at its own samples, the baseline of the verdicts."""

    subspace: tuple[CurvePlan, ...] = (
        CurvePlan(("fgsm", "random"), ALL_WINDOWS, PERCENTS, 250, 50),
        CurvePlan(("pgd",), ("spread",), PERCENTS, 250, 50),
        CurvePlan(("pgd",), ("first", "last"), (50.0,), 250, 50),
    )
    images: tuple[CurvePlan, ...] = (
        CurvePlan(("fgsm", "random"), ("spread",), PERCENTS, 96, 25),
        CurvePlan(("pgd", "random"), ("spread",), (50.0,), 64, 25),
    )
    loss: str = "mean"  # the paper's J_att (docs/method.md §6.1)
    # --train-images: the settings of `dmattack train --method …` (tiny preset defaults)
    image_train: TrainSettings = field(default_factory=lambda: TrainSettings(
        preset="tiny", steps=1000, batch_size=64, lr=2e-4, warmup=100))


@dataclass(frozen=True)
class StepsPlan:
    """Section 4: respaced ancestral sampling with fewer steps (paper Table 3)."""

    steps: tuple[int, ...] = (1000, 500, 300)
    methods: tuple[str, ...] = ("ddpm", "robust-adv")


@dataclass(frozen=True)
class SweepPlan:
    """Section ``sweep`` (reviewers' control): DDPM vs Robust_adv on digits-subspace over a
    grid of corruption fractions × noise σ, exact FD of each. A fraction of 0 leaves the data
    clean whatever σ, so that column is trained once per method and shared by every σ.
    Training is shorter than section 1's (same preset, lr, λ) so 20 models fit a few minutes."""

    methods: tuple[str, ...] = ("ddpm", "robust-adv")
    fractions: tuple[float, ...] = (0.0, 0.3, 0.6, 0.9)
    sigmas: tuple[float, ...] = (0.1, 0.2, 0.4)
    num_data: int = 2000
    train: TrainSettings = field(default_factory=lambda: TrainSettings(
        steps=300, batch_size=512))
    num_samples: int = 500
    sampler_steps: int = 200


@dataclass(frozen=True)
class ComputePlan:
    """Section ``compute`` (reviewers' control): section 1's corrupted digits-subspace, Robust_adv
    vs a DDPM trained for as many optimiser steps as fit in Robust_adv's measured training wall
    time (and vs the step-matched DDPM of section 1's settings)."""

    corrupt_fraction: float = 0.9
    corrupt_sigma: float = 0.2
    num_data: int = 2000
    train: TrainSettings = field(default_factory=TrainSettings)
    num_samples: int = 500
    sampler_steps: int = 1000


@dataclass(frozen=True)
class AdaptivePlan:
    """Section ``adaptive``: DDPM vs Robust_adv under the per-step PGD (``mean`` and ``eps``
    losses), the whole-chain trajectory PGD, the look-ahead EOT PGD and the random control, all
    at ``percent`` of the steps on ``window`` with the per-step budgets ε_s = √β̃_s, on section
    1's clean-trained digits-subspace MLPs and the shipped digits U-Nets. Every attack runs
    ``iterations`` PGD iterations (look-ahead: per attacked step, with ``eot`` draws of the
    future noise and ``horizon`` steps of look-ahead), except the trajectory attack:
    ``trajectory_iterations``, 80 by default, where its trace converged on the digits U-Nets
    (docs/method.md §12; its ``converged`` flag is recorded and labels the verdicts). Sizes
    are cut to fit the demo's budget: trajectory PGD-80 on 24 digits took ~2 min per model
    on a loaded 2-core machine."""

    attacks: tuple[str, ...] = ("pgd-mean", "pgd-eps", "trajectory", "lookahead", "random")
    percent: float = 50.0
    window: str = "spread"
    iterations: int = 5
    trajectory_iterations: int = 80
    eot: int = 2
    horizon: int = 2
    distance: str = "pixel"
    subspace_samples: int = 250
    subspace_steps: int = 50
    image_samples: int = 24
    image_steps: int = 25


@dataclass(frozen=True)
class PurificationPlan:
    """Section ``purification``: digits-cnn undefended and purified by the shipped DDPM and
    Robust_adv U-Nets (:func:`dmattack.demo.purification.purification_section`'s settings):
    ``num_samples`` held-out digits, t* ∈ ``t_stars`` (one pool task each), K = ``purify_steps``
    reverse steps, ``attacks`` with ``iterations`` × EOT-``eot`` at ℓ∞ ``eps`` ([0, 1] units;
    0.25: the undefended classifier keeps 0% under PGD-20), single evaluation."""

    t_stars: tuple[float, ...] = (0.1, 0.2)
    purify_steps: int = 4
    attacks: tuple[str, ...] = ("pgd-eot", "bpda-eot")
    eps: float = 0.25
    iterations: int = 6
    eot: int = 2
    num_samples: int = 48


@dataclass(frozen=True)
class DemoPlan:
    quick: bool
    subspace: SubspacePlan
    toy: ToyPlan
    attacks: AttackSectionPlan
    steps: StepsPlan
    sweep: SweepPlan = field(default_factory=SweepPlan)
    compute: ComputePlan = field(default_factory=ComputePlan)
    adaptive: AdaptivePlan = field(default_factory=AdaptivePlan)
    purification: PurificationPlan = field(default_factory=PurificationPlan)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_plan() -> DemoPlan:
    """The full demo: every section as the issue describes it."""
    return DemoPlan(False, SubspacePlan(), ToyPlan(), AttackSectionPlan(), StepsPlan())


def quick_plan() -> DemoPlan:
    """``--quick``: shorter training, fewer samples, the ``spread`` window only, PGD-20 at one
    point, FGSM + random on images, and half-length chains (section 4 compares 500 / 250 / 150
    respaced steps, the default's ratios); still every section and every method of sections
    1, 2 and 4. The controls (``sweep``, ``compute``) get section 1's quick training. The
    adaptive attacks run 3 iterations (trajectory too: unconverged, and its verdicts say so)
    on 16 digits / 100 subspace samples and 10-step chains;
    purification (opt-in with ``--quick``) 24 digits, 4 iterations, one t*."""
    return DemoPlan(
        True,
        SubspacePlan(train=TrainSettings(steps=120, batch_size=512), num_samples=200,
                     sampler_steps=500),
        ToyPlan(train=TrainSettings(steps=100, batch_size=256, lr=5e-3), num_samples=500,
                sampler_steps=50, num_trajectories=6),
        AttackSectionPlan(
            subspace=(CurvePlan(("fgsm", "random"), ("spread",), PERCENTS, 200, 25),
                      CurvePlan(("pgd",), ("spread",), (50.0,), 200, 25)),
            images=(CurvePlan(("fgsm", "random"), ("spread",), (100.0,), 64, 10),),
        ),
        StepsPlan(steps=(500, 250, 150)),
        SweepPlan(train=TrainSettings(steps=120, batch_size=512), num_samples=200,
                  sampler_steps=100),
        ComputePlan(train=TrainSettings(steps=120, batch_size=512), num_samples=200,
                    sampler_steps=500),
        AdaptivePlan(iterations=3, trajectory_iterations=3, subspace_samples=100,
                     subspace_steps=20, image_samples=16, image_steps=10),
        PurificationPlan(t_stars=(0.1,), iterations=4, num_samples=24),
    )
