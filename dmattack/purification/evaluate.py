"""Robustness of diffusion purification: clean and robust accuracy per purifier × t* × attack,
over repeated evaluation draws (docs/method.md §13), the library behind ``dmattack purify``.

Protocol: each image (clean, then the attack's adversarial image) is purified and classified
R = ``draws`` times with independent noise; the headline is robust accuracy as mean ± sd over
the draws, majority-of-R and worst-of-R, each with a 95% interval over images
(:mod:`dmattack.purification.results` defines every number). The attack differentiates either
the defence itself or a *surrogate* purification process (``attack_purify_steps``,
``attack_sampler``, ``attack_gradient``); the defence is always evaluated with its own settings.

Reproducibility: image i has seed ``sample_seeds(seed, n)[i]``; evaluation draw j of it draws
noise from ``derive_seed(sample_seed, EVAL_STREAM, j)`` (the same for its clean and adversarial
input and for every purifier); PGD restart r from ``derive_seed(sample_seed, ATTACK_STREAM, r)``
(start and EOT noise); the candidates' selection draws from ``SELECT_STREAM``. So PGD-EOT and
the evaluation do not depend on batching. AutoAttack's random start comes from torch's global
generator seeded from (seed, batch start). The undefended classifier is always a row; a
purifier with t* = 0 is the identity and reproduces it exactly.

Resume: every finished unit (the predictions of one purifier on one batch, clean or under one
attack) is written atomically to ``out_dir/units/`` with the full dict of what determines it,
including a hash of the batch's decoded images and labels (never a path); a rerun reuses units
whose dict matches and recomputes the others.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..errors import ConfigError, DmattackError
from ..io import MiB, check_writable, provenance, write_json, write_text
from ..locking import lock_folder
from ..option_types import parse_t_star
from ..registry import SAMPLERS
from ..runs import LoadedModel, digest
from ..seeding import derive_seed, sample_seeds
from ..settings import check_settings, setting
from .attacks import (
    ATTACK_STREAM,
    CONVERGENCE_TOL,
    LOSSES,
    SELECT_STREAM,
    AttackSettings,
    AttackSpec,
    converged,
    image_generators,
    parse_attack,
    run_attack,
)
from .classifier import (
    PurifiedClassifier,
    check_classifier,
    load_classifier,
    load_labeled_data,
)
from .draws import seeded_logits
from .purifier import Purifier, forward_steps, load_model, purify_sampler_name, purify_samplers
from .results import accuracies, data_digest, to_csv, weaker_check

EVAL_STREAM = 1301  # seed purpose of the evaluation purifications (3-key seeds: no collision)
UNITS = "units"
UNIT_FORMAT = 2
UNDEFENDED = "none"
Progress = Callable[[int, int, str], None]


class NonFiniteError(DmattackError, FloatingPointError):
    """A purifier with non-finite weights, or one whose outputs are not finite: its
    predictions would be argmaxes of NaN, so nothing is scored."""


# ----------------------------------------------------------------------------- settings
def legacy_draws(text: str) -> int:
    """R of a deprecated ``--eval-mode`` list (``single``, ``majority:N``, ``worst:N``): the
    largest N (single: 1). Every aggregate is reported for every R."""
    draws = []
    for item in _split(text):
        kind, _, count = item.partition(":")
        n = int(count) if count.isdigit() else 0
        if kind == "single" and not count:
            draws.append(1)
        elif kind in ("majority", "worst") and n >= 1:
            draws.append(n)
        else:
            raise ConfigError(f"eval_modes (--eval-mode) entry {item!r} is invalid; allowed: "
                              "single, majority:N, worst:N with N >= 1 (deprecated: use "
                              "--draws N)", field="eval_modes")
    if not draws:
        raise ConfigError("eval_modes (--eval-mode) is empty; use --draws N", field="eval_modes")
    return max(draws)


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


ATTACK_GRADIENTS = ("full", "bpda")


@dataclass(frozen=True)
class PurifyConfig:
    """Settings of a purification robustness evaluation (``dmattack purify``)."""

    classifier: str = setting("digits-cnn", "Classifier: digits-cnn, a TorchScript file taking "
                              "[0, 1] images, or digits-cnn-shaped .safetensors weights.")
    data: str = setting("digits", "Labelled images: digits (digits-cnn's held-out split), "
                        "cifar10 (test batch under --data-dir) or a .safetensors file with "
                        "'images' in [0, 1] and 'labels'.")
    data_dir: str | None = setting(None, "Folder holding cifar-10-batches-py (for --data "
                                   "cifar10).")
    t_star: str = setting("0.1", "Purification depth(s), comma-separated: fractions of T (< 1) "
                          "or integer timesteps 1..T; 0 is no purification.")
    purify_steps: int | None = setting(5, "Reverse steps K over [0, t*] (respaced); none = "
                                       "every timestep.", low=1)
    purify_sampler: str = setting("ancestral", "Reverse chain of the purifier.",
                                  choices=purify_samplers)
    eta: float = setting(0.0, "DDIM eta (with --purify-sampler ddim).", low=0, high=1)
    clip_denoised: bool | None = setting(
        None, "Clip x̂_0 to [-1, 1] inside the purifier's chain.",
        auto="the data: on for images, as sampling; a pipeline: its scheduler's clip_sample")
    attacks: str = setting("pgd-eot,bpda-eot", "Attacks, comma-separated: pgd-eot, bpda-eot, "
                           "autoattack-rand (APGD-CE + APGD-DLR, 100 iterations × EOT-20) or "
                           "autoattack-rand-NxM (lighter, labelled so).", option="--method",
                           deprecated=("--attack",))
    eps: float = setting(0.25, "ℓ∞ budget in [0, 1] pixel units (e.g. 8/255).", low=0, high=1)
    step_size: float | None = setting(None, "PGD step α in [0, 1] units (default ε/4).",
                                      low=0, low_open=True, high=1)
    iterations: int = setting(10, "PGD iterations (pgd-eot, bpda-eot).", low=1)
    eot: int = setting(4, "EOT draws per PGD iteration (1 for a deterministic model).", low=1)
    restarts: int = setting(1, "PGD random restarts; per image the restart that fools the most "
                            "selection draws (separate from the evaluation draws) is kept.",
                            low=1)
    loss: str = setting("ce", "PGD loss: ce (cross entropy) or margin (CW margin).",
                        choices=LOSSES)
    draws: int = setting(8, "Evaluation draws R: every clean and adversarial image is purified "
                         "and classified R times (mean ± sd, majority and worst of R).", low=1)
    eval_modes: str | None = setting(None, "Deprecated: single, majority:N, worst:N set "
                                     "--draws to the largest N (every aggregate is reported).",
                                     option="--eval-mode")
    attack_purify_steps: int | None = setting(
        None, "Surrogate: reverse steps K of the purification the attack differentiates "
        "(default: the defence's; the defence is evaluated with --purify-steps).", low=1)
    attack_sampler: str | None = setting(
        None, "Surrogate: reverse chain the attack differentiates (default: the defence's).",
        choices=purify_samplers)
    attack_gradient: str = setting(
        "full", "Gradient of the attack's purification: full (exact) or bpda (identity "
        "backward); bpda-eot always uses bpda.", choices=ATTACK_GRADIENTS)
    num_samples: int = setting(64, "Labelled images evaluated (the first N).", low=1)
    batch_size: int = setting(64, "Images per attack batch (AutoAttack depends on it).", low=1)
    seed: int = setting(0, "Seed of every random draw.", low=0)
    checkpoint_steps: bool = setting(True, "Recompute reverse steps in the backward pass "
                                     "(bounded memory; off is faster when memory allows).")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.eta != 0 and not SAMPLERS[purify_sampler_name(self.purify_sampler)].uses_eta:
            with_eta = ", ".join(n for n in purify_samplers()
                                 if SAMPLERS[purify_sampler_name(n)].uses_eta)
            raise ConfigError(f"eta (--eta) = {self.eta!r} is ignored by --purify-sampler "
                              f"{self.purify_sampler}; allowed: a nonzero --eta only with "
                              f"--purify-sampler {with_eta}", field="eta")
        if self.eval_modes is not None:
            legacy = legacy_draws(self.eval_modes)
            warnings.warn("--eval-mode is deprecated: use --draws N (majority and worst of N "
                          "are always reported)", DeprecationWarning, stacklevel=3)
            object.__setattr__(self, "draws", legacy)
        self.attack_specs()
        self.t_stars()

    def attack_specs(self) -> tuple[AttackSpec, ...]:
        specs = [parse_attack(n, self.iterations, self.eot) for n in _split(self.attacks)]
        if not specs:
            raise ConfigError("attacks (--method) is empty; allowed: pgd-eot, bpda-eot, "
                              "autoattack-rand, autoattack-rand-NxM", field="attacks")
        return tuple(dict.fromkeys(specs))

    def attack_names(self) -> tuple[str, ...]:
        """The row labels of the attacks (``autoattack-rand`` as ``autoattack-rand-100x20``)."""
        return tuple(s.label for s in self.attack_specs())

    @property
    def surrogate(self) -> bool:
        """True when the attack differentiates a purification other than the defence."""
        return (self.attack_purify_steps is not None or self.attack_sampler is not None
                or self.attack_gradient != "full")

    def attack_settings(self) -> AttackSettings:
        return AttackSettings(self.eps, self.step_size, self.loss, self.restarts, self.draws)

    def t_stars(self) -> tuple[float, ...]:
        values = []
        for item in _split(self.t_star):
            try:
                values.append(parse_t_star(item))
            except (ValueError, ZeroDivisionError):
                raise ConfigError(f"t_star (--t-star) entry {item!r} is invalid; allowed: "
                                  "fractions of T in [0, 1) or integer timesteps",
                                  field="t_star") from None
        if not values:
            raise ConfigError("t_star (--t-star) is empty", field="t_star")
        return tuple(dict.fromkeys(values))


def purify_folder(config: PurifyConfig, models: Sequence[LoadedModel], root: str | Path
                  ) -> Path:
    """``root/purify/<hash>``: the default result folder of ``config`` with these purifiers
    (the same settings and weights give the same folder, so a rerun resumes there)."""
    what = {"config": asdict(config),
            "models": [[m.source, m.fingerprint, m.ema] for m in models]}
    return Path(root) / "purify" / digest(what)[:12]


# ----------------------------------------------------------------------------- units
def _unit_path(out: Path, key: dict[str, Any]) -> Path:
    return out / UNITS / f"{digest(key)[:24]}.json"


def _read_unit(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """A stored unit whose key equals ``key`` (else None: missing, torn or different)."""
    try:
        unit = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(unit, dict) or unit.get("key") != json.loads(json.dumps(key)):
        return None
    return unit


def _predictions(model: PurifiedClassifier, x: torch.Tensor, seeds: Sequence[int],
                 draws: int, device: torch.device, what: str) -> torch.Tensor:
    """(draws, B) labels of evaluation draw j = 0..draws−1 of each image (no gradients).
    Raises :class:`NonFiniteError` when a draw's logits are not finite."""
    runs = 1 if model.deterministic else draws
    gens = [image_generators(seeds, EVAL_STREAM, j, device) for j in range(runs)]
    with torch.no_grad():
        logits = seeded_logits(model, x.to(device), gens)  # (runs, B, classes), few calls
    bad = int((~torch.isfinite(logits).all(2)).sum(1).max())
    if bad:
        raise NonFiniteError(f"{what}: non-finite logits for {bad} of {len(x)} images "
                             "(non-finite purified images); refusing to score them "
                             "as misclassified")
    out = logits.argmax(2).cpu()
    return out.expand(draws, -1) if runs < draws else out


def check_finite_weights(m: LoadedModel) -> None:
    """Refuse (one line, :class:`NonFiniteError`) a purifier with NaN or inf weights."""
    bad = [n for n, p in m.model.named_parameters() if not torch.isfinite(p).all()]
    bad += [n for n, b in m.model.named_buffers()
            if b.is_floating_point() and not torch.isfinite(b).all()]
    if bad:
        raise NonFiniteError(f"purifier {m.source} has non-finite (NaN/inf) weights in {len(bad)}"
                             f" tensor(s), e.g. {bad[0]}; refusing to evaluate it")


# ----------------------------------------------------------------------------- the run
def run_purification(config: PurifyConfig, models: Sequence[LoadedModel | str | Path],
                     out_dir: str | Path, device: torch.device | str = "cpu",
                     progress: Progress | None = None) -> dict[str, Any]:
    """Evaluate ``config`` for the undefended classifier and a purifier per model and t*, and
    write ``purify.json`` and ``purify.csv`` into ``out_dir`` (rank 0). Returns the JSON content.

    ``models``: loaded models or dmattack run / diffusers pipeline folders. ``progress(done,
    total, label)`` is called after each unit. See the module docstring for the protocol,
    seeds and resumption; a one-line :class:`ConfigError` / :class:`InputFileError` /
    :class:`NonFiniteError` for bad input before any work starts.
    """
    device = distributed.init(torch.device(device))
    loaded = [m if isinstance(m, LoadedModel) else load_model(m, device) for m in models]
    out = Path(out_dir)
    if not distributed.is_main():
        return _run_locked(config, loaded, out, device, progress)
    check_writable(out, 8 * MiB)
    with lock_folder(out, "purify folder", command="dmattack purify"):
        return _run_locked(config, loaded, out, device, progress)


def _names(models: Sequence[LoadedModel]) -> list[str]:
    names = [Path(m.source).name or m.source for m in models]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


@dataclass
class Defended:
    """One row group: a purifier (None: undefended) at t*, the defence and what attacks it."""

    label: str
    t_star: float | None
    loaded: LoadedModel | None
    defence: PurifiedClassifier  # gradient "full": what pgd-eot differentiates by default
    evaluator: PurifiedClassifier  # the defence without gradients (evaluation, selection)
    attacked: PurifiedClassifier  # what pgd-eot / autoattack differentiate (maybe a surrogate)


def _steps(steps: int | None, t_star: float, m: LoadedModel) -> int | None:
    return None if steps is None else min(steps, max(1, forward_steps(
        t_star, m.diffusion.num_timesteps)))


def _defended(cfg: PurifyConfig, name: str, m: LoadedModel, t_star: float,
              classifier: torch.nn.Module, device: torch.device) -> Defended:
    forward_steps(t_star, m.diffusion.num_timesteps)  # refuse t* outside the chain
    purifier = Purifier.from_loaded(
        m, t_star=t_star, steps=_steps(cfg.purify_steps, t_star, m),
        sampler=cfg.purify_sampler, eta=cfg.eta, gradient="full",
        checkpoint_steps=cfg.checkpoint_steps,
        **({} if cfg.clip_denoised is None else {"clip_denoised": cfg.clip_denoised})
    ).to(device)
    defence = PurifiedClassifier(purifier, classifier)
    attacked = defence
    if cfg.surrogate and purifier.n > 0:  # (t* = 0: the identity has no purification)
        attacked = PurifiedClassifier(purifier.replace(
            steps=_steps(cfg.attack_purify_steps, t_star, m) or purifier.steps,
            sampler=cfg.attack_sampler or purifier.sampler, gradient=cfg.attack_gradient),
            classifier)
    return Defended(name, t_star, m, defence,
                    PurifiedClassifier(purifier.replace(gradient="none"), classifier), attacked)


def prepare_purification(cfg: PurifyConfig, models: Sequence[LoadedModel],
                         device: torch.device | str = "cpu") -> tuple[Any, ...]:
    """Everything the evaluation needs before any attack, checked (one-line
    :class:`ConfigError` / :class:`InputFileError` / :class:`NonFiniteError` for the
    classifier file, the data, a shape mismatch, non-finite purifier weights or a t* outside a
    model's chain): ``(classifier info, images, labels, data info, number of classes, defended
    models)``. Cheap: call it to refuse bad input early."""
    device = torch.device(device)
    classifier, cls_info = load_classifier(cfg.classifier, device)
    x_all, y_all, data_info = load_labeled_data(cfg.data, cfg.data_dir, cfg.num_samples)
    data_info["sha256_decoded"] = data_digest(x_all, y_all)
    shape = tuple(x_all.shape[1:])
    num_classes = check_classifier(classifier, shape, cfg.classifier, device)
    if int(y_all.max()) >= num_classes or int(y_all.min()) < 0:
        raise ConfigError(f"labels of {cfg.data} fall outside the classifier's {num_classes} "
                          "classes", field="data")
    undefended = PurifiedClassifier(None, classifier)
    defended = [Defended(UNDEFENDED, None, None, undefended, undefended, undefended)]
    for name, m in zip(_names(models), models, strict=True):
        if tuple(m.data_shape) != shape:
            raise ConfigError(f"purifier {m.source} works on data of shape {tuple(m.data_shape)}"
                              f" but the images of {cfg.data} have shape {shape}", field="data")
        check_finite_weights(m)
        defended += [_defended(cfg, name, m, t, classifier, device) for t in cfg.t_stars()]
    return cls_info, x_all, y_all, data_info, num_classes, defended


def _attacked(d: Defended, spec: AttackSpec) -> PurifiedClassifier:
    """What ``spec`` differentiates: BPDA of the attacked purification for bpda-eot."""
    p = d.attacked.purifier
    if spec.name == "bpda-eot" and p is not None:
        return PurifiedClassifier(p.replace(gradient="bpda"), d.attacked.classifier)
    return d.attacked


def _surrogate(d: Defended, spec: AttackSpec) -> dict[str, Any] | None:
    """The attack's purification when it differs from the defence (for keys and rows)."""
    if d.attacked is d.defence or d.attacked.purifier is None:
        return None
    p = d.attacked.purifier
    return {"reverse_steps": p.num_reverse_steps, "sampler": p.sampler, "eta": p.eta,
            "gradient": "bpda" if spec.name == "bpda-eot" else p.gradient}


def _label(spec: AttackSpec, surrogate: dict[str, Any] | None) -> str:
    if surrogate is None:
        return spec.label
    return (f"{spec.label} via surrogate(K={surrogate['reverse_steps']},"
            f"{surrogate['sampler']},{surrogate['gradient']})")


def _unit(cfg: PurifyConfig, d: Defended, spec: AttackSpec | None, x: torch.Tensor,
          y: torch.Tensor, seeds: Sequence[int], start: int, device: torch.device
          ) -> dict[str, Any]:
    """Compute one unit: (draws, B) predictions of ``d`` on a batch, clean (``spec`` None) or
    under one attack, with the attack's info and the seconds taken."""
    tic, info = time.perf_counter(), None
    x = x.to(device)
    what = "the undefended classifier" if d.loaded is None else \
        f"purifier {d.label} t*={d.t_star}"
    if spec is not None:
        x, info = run_attack(spec, _attacked(d, spec), d.evaluator, x, y.to(device), seeds,
                             cfg.attack_settings(),
                             batch_seed=derive_seed(cfg.seed, ATTACK_STREAM, start))
    preds = _predictions(d.evaluator, x, seeds, cfg.draws, device, what)
    return {"preds": preds.tolist(), "attack_info": info,
            "seconds": time.perf_counter() - tic}


def _key(cfg: PurifyConfig, d: Defended, spec: AttackSpec | None, common: dict[str, Any],
         batch: tuple[int, int], data_sha: str) -> dict[str, Any]:
    m = d.loaded
    who = {"purifier": None} if m is None else {"purifier": {
        "source": m.source, "fingerprint": m.fingerprint, "ema": m.ema,
        **d.defence.purifier.describe(), "gradient": None}}
    attack = None if spec is None else {
        "name": spec.label, "iterations": spec.iterations, "eot": spec.eot,
        **asdict(cfg.attack_settings()), "surrogate": _surrogate(d, spec),
        "deterministic": _attacked(d, spec).deterministic}
    return {**common, **who, "batch": list(batch), "data_sha256": data_sha, "attack": attack}


def _run_locked(cfg: PurifyConfig, models: Sequence[LoadedModel], out: Path,
                device: torch.device, progress: Progress | None) -> dict[str, Any]:
    started = time.perf_counter()
    cls_info, x_all, y_all, data_info, num_classes, defended = prepare_purification(
        cfg, models, device)
    seeds_all = sample_seeds(cfg.seed, len(x_all))
    first, stop = distributed.shard_range(len(x_all), cfg.batch_size)
    batches = [(s, min(s + cfg.batch_size, stop)) for s in range(first, stop, cfg.batch_size)]
    specs = cfg.attack_specs()
    total, done = len(defended) * (1 + len(specs)) * len(batches), 0
    common = {"format": UNIT_FORMAT, "classifier": cls_info["sha256"], "seed": cfg.seed,
              "draws": cfg.draws, "batch_size": cfg.batch_size}
    mine: dict[str, dict[str, Any]] = {}
    for d in defended:
        for spec in (None, *specs):
            for start, end in batches:
                x, y = x_all[start:end], y_all[start:end]
                key = _key(cfg, d, spec, common, (start, end), data_digest(x, y))
                path = _unit_path(out, key)
                unit = _read_unit(path, key)
                if unit is None:
                    unit = {"key": key, **_unit(cfg, d, spec, x, y, seeds_all[start:end],
                                                start, device)}
                    write_json(path, unit)
                mine[_uid(d, spec, start)] = {k: unit[k] for k in
                                              ("preds", "attack_info", "seconds")}
                done += 1
                if progress is not None:
                    progress(done, total, f"{d.label} t*={d.t_star} "
                                          f"{spec.label if spec else 'clean'} [{start}:{end}]")
    gathered = distributed.all_gather_objects(mine)
    if not distributed.is_main():
        return distributed.broadcast_object(None)
    units = {k: v for part in gathered for k, v in part.items()}
    result = {
        "kind": "dmattack-purify",
        "config": asdict(cfg),
        "protocol": protocol(cfg),
        "purifiers": [_purifier_record(d, cfg) for d in defended if d.loaded is not None],
        "classifier": {**cls_info, "num_classes": num_classes},
        "data": data_info,
        "seeds": {"seed": cfg.seed, "sample_seeds": seeds_all, "eval_stream": EVAL_STREAM,
                  "attack_stream": ATTACK_STREAM, "select_stream": SELECT_STREAM},
        "rows": _rows(cfg, defended, units, y_all),
        "device": str(device), "world_size": distributed.world_size(),
        "seconds": round(time.perf_counter() - started, 3),
        "provenance": provenance(),
    }
    write_json(out / "purify.json", result)
    write_text(out / "purify.csv", to_csv(result["rows"]))
    return distributed.broadcast_object(result)


def _uid(d: Defended, spec: AttackSpec | None, start: int) -> str:
    return f"{d.label}|{d.t_star}|{spec.label if spec else None}|{start}"


DIGITS_TOTAL = 1797


def in_training(m: LoadedModel, cfg: PurifyConfig) -> tuple[bool | None, str]:
    """Whether the evaluation images were in ``m``'s training data, and why we say so."""
    data = m.config.get("data", {}) if isinstance(m.config.get("data"), dict) else {}
    if m.dataset == "digits" and cfg.data == "digits":
        if data.get("num_samples") == DIGITS_TOTAL:
            return True, ("the purifier was trained on all 1797 sklearn digits; digits-cnn's "
                          "held-out split (the evaluation images) is among them")
        return None, "the purifier was trained on a subset of the digits; overlap not checked"
    if m.dataset == "cifar10" and cfg.data == "cifar10":
        return False, ("CIFAR-10 training reads data_batch_1..5; the evaluation reads "
                       "test_batch")
    return None, (f"unknown: the purifier's training data is {m.dataset!r}, the evaluation "
                  f"data {cfg.data!r}")


def _purifier_record(d: Defended, cfg: PurifyConfig) -> dict[str, Any]:
    m, seen = d.loaded, in_training(d.loaded, cfg)
    return {"name": d.label, "t_star": d.t_star, "source": m.source,
            "fingerprint": m.fingerprint, "ema": m.ema, "dataset": m.dataset,
            **d.defence.purifier.describe(), "gradient": None,
            "attacked_purification": d.attacked.purifier.describe(),
            "eval_images_in_training": seen[0], "eval_images_in_training_reason": seen[1]}


def protocol(cfg: PurifyConfig) -> dict[str, Any]:
    """What every number of the result means (stored with it)."""
    return {
        "draws": cfg.draws,
        "clean": "correct on the clean image",
        "robust": "correct on the clean AND the adversarial image (same noise per draw; "
                  "majority: both majority labels; worst: all draws of both)",
        "adversarial": "correct on the adversarial image",
        "mean": "mean over the draws of each draw's accuracy over images",
        "sd": "sample standard deviation of the per-draw accuracies",
        "ci95": "95% BCa bootstrap interval over images of the per-image mean over draws "
                "(dmattack.stats.summarize)",
        "majority": "most frequent label of the draws is right (ties: lowest class)",
        "worst": "every draw is right (the attack succeeds if any draw misclassifies)",
        "correct": "0/1 per draw (rows) and image (columns), clean and adversarial",
        "converged": f"PGD success-rate rise over the last fifth of iterations <= "
                     f"{CONVERGENCE_TOL} (every restart); None for AutoAttack",
        "weaker_than": "set when this attack leaves higher robust accuracy than pgd-eot on "
                       "the same images beyond the paired 95% interval",
        "selection": f"restarts and AutoAttack candidates chosen per image by the most of "
                     f"{cfg.draws} selection draws misclassified (seed stream "
                     f"{SELECT_STREAM}, never the evaluation draws)",
    }


def _trace(infos: Sequence[dict[str, Any] | None], sizes: Sequence[int]
           ) -> list[list[float]] | None:
    """Per restart, the success rate per iteration over all batches (weighted by size)."""
    if not infos or any(i is None or i["traces"] is None for i in infos):
        return None
    total = sum(sizes)
    return [[sum(i["traces"][r][k] * n for i, n in zip(infos, sizes, strict=True)) / total
             for k in range(len(infos[0]["traces"][r]))]
            for r in range(len(infos[0]["traces"]))]


def _rows(cfg: PurifyConfig, defended: Sequence[Defended], units: dict[str, dict[str, Any]],
          y_all: torch.Tensor) -> list[dict[str, Any]]:
    starts = list(range(0, len(y_all), cfg.batch_size))
    sizes = [min(cfg.batch_size, len(y_all) - s) for s in starts]
    rows = []
    for d in defended:
        def collect(spec: AttackSpec | None, d: Defended = d) -> list[dict[str, Any]]:
            return [units[_uid(d, spec, s)] for s in starts]

        clean = collect(None)
        clean_preds = torch.cat([torch.tensor(u["preds"]) for u in clean], dim=1)
        for spec in cfg.attack_specs():
            adv = collect(spec)
            acc = accuracies(clean_preds, torch.cat([torch.tensor(u["preds"]) for u in adv],
                                                    dim=1), y_all)
            trace, surrogate = _trace([u["attack_info"] for u in adv], sizes), _surrogate(d, spec)
            flags = None if trace is None else [converged(t) for t in trace]
            p = d.defence.purifier
            rows.append({
                "purifier": d.label, "t_star": d.t_star,
                "forward_steps": None if p is None else p.n,
                "reverse_steps": None if p is None else p.num_reverse_steps,
                "attack": _label(spec, surrogate), "attack_name": spec.name,
                "attack_iterations": spec.iterations, "attack_eot": spec.eot,
                "standard": spec.standard, "surrogate": surrogate, "draws": cfg.draws,
                "num_samples": len(y_all), **acc,
                "clean_accuracy": acc["clean"]["mean"], "robust_accuracy": acc["robust"]["mean"],
                "trace": trace,
                "converged": None if flags is None or None in flags else all(flags),
                "attack_seconds": round(sum(u["seconds"] for u in adv), 3),
                "clean_seconds": round(sum(u["seconds"] for u in clean), 3)})
    weaker_check(rows)
    return rows
