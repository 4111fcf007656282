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

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..core import distributed
from ..core.errors import ConfigError
from ..core.io import MiB, check_writable, provenance, write_json, write_text
from ..core.locking import lock_folder
from ..core.option_types import parse_t_star
from ..core.seeding import derive_seed, sample_seeds
from ..core.settings import check_settings, setting
from ..core.text import comma_list
from ..runs.checkpoints import LoadedModel, digest
from .attacks import (
    ATTACK_STREAM,
    PURIFY_LOSSES,
    SELECT_STREAM,
    AttackSettings,
    PurifyAttackSpec,
    parse_attack,
    run_purify_attack,
)
from .classifier import classifier_choices
from .defended import (  # noqa: F401 (UNDEFENDED: demo.py's import)
    UNDEFENDED,
    Defended,
    _attacked,
    prepare_purification,
)
from .labelled import data_choices
from .purifier import (
    load_model,
    options_record,
    purify_sampler_options,
    purify_samplers,
    set_options,
)
from .results import data_digest, to_csv
from .rows import _purifier_record, _rows, protocol
from .units import (
    EVAL_STREAM,
    UNIT_FORMAT,
    _key,
    _predictions,
    _read_unit,
    _uid,
    _unit_path,
)

Progress = Callable[[int, int, str], None]


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
    return comma_list(text)


ATTACK_GRADIENTS = ("full", "bpda")


@dataclass(frozen=True, init=False)
class PurifyConfig:
    """Settings of a purification robustness evaluation (``dmattack purify``).

    Built from keywords: the settings below and the purify sampler's own options (the fields
    of its entry's config), ``PurifyConfig(purify_sampler="ddim", eta=0.3)``, or
    ``sampler_options=`` (a mapping or the entry's config); an option the purify sampler does
    not read is refused in one line (:func:`~.purifier.purify_sampler_options`).
    :meth:`to_dict` is the record (result files, the result folder's hash).
    """

    classifier: str = setting("digits-cnn", "Classifier taking [0, 1] images: a registered one "
                              "(dmattack plugins lists them) or a file.",
                              choices=classifier_choices)
    data: str = setting("digits", "Labelled images: a registered set (dmattack plugins lists "
                        "them; digits is digits-cnn's held-out split) or a file.",
                        choices=data_choices)
    data_dir: str | None = setting(None, "Folder the labelled set reads (--data cifar10: one "
                                   "holding cifar-10-batches-py); other sets ignore it.")
    t_star: str = setting("0.1", "Purification depth(s), comma-separated: fractions of T (< 1) "
                          "or integer timesteps 1..T; 0 is no purification.")
    purify_steps: int | None = setting(5, "Reverse steps K over [0, t*] (respaced); none = "
                                       "every timestep.", low=1)
    purify_sampler: str = setting("ancestral", "Reverse chain of the purifier (its own "
                                  "options, e.g. ddim's --eta, are listed below).",
                                  choices=purify_samplers)
    sampler_options: Any = setting(None, "The purify sampler's own options (DDIM's eta; "
                                   "a plugin's): an instance of its entry's config, built "
                                   "from the keyword options when not given.", cli=False)
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
                        choices=PURIFY_LOSSES)
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

    def __init__(self, **settings: Any) -> None:
        names = {f.name for f in fields(PurifyConfig)}
        own = {k: v for k, v in settings.items() if k not in names}
        for f in fields(PurifyConfig):
            object.__setattr__(self, f.name, settings.get(f.name, f.default))
        object.__setattr__(self, "sampler_options", None)
        check_settings(self)
        given = set_options(settings.get("sampler_options"))
        object.__setattr__(self, "sampler_options", purify_sampler_options(
            self.purify_sampler, {**given, **own}))
        self.__post_init__()

    def __post_init__(self) -> None:
        if self.eval_modes is not None:
            legacy = legacy_draws(self.eval_modes)
            warnings.warn("--eval-mode is deprecated: use --draws N (majority and worst of N "
                          "are always reported)", DeprecationWarning, stacklevel=3)
            object.__setattr__(self, "draws", legacy)
        self.attack_specs()
        self.t_stars()

    def to_dict(self) -> dict[str, Any]:
        """Every setting, the purify sampler's own options as
        :func:`~.purifier.options_record` lists them: ``eta`` where the former flat config had
        it, a plugin's other options last (``sampler_options``); so a built-in sampler's
        record and folder hash are as before."""
        own = options_record(self.sampler_options)
        extra = {k: own.pop(k) for k in ("sampler_options",) if k in own}
        out: dict[str, Any] = {}
        for f in fields(self):
            out.update(own if f.name == "sampler_options" else {f.name: getattr(self, f.name)})
        return {**out, **extra}

    def attack_specs(self) -> tuple[PurifyAttackSpec, ...]:
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
    what = {"config": config.to_dict(),
            "models": [[m.source, m.fingerprint, m.ema] for m in models]}
    return Path(root) / "purify" / digest(what)[:12]


# ----------------------------------------------------------------------------- units


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


def _unit(cfg: PurifyConfig, d: Defended, spec: PurifyAttackSpec | None, x: torch.Tensor,
          y: torch.Tensor, seeds: Sequence[int], start: int, device: torch.device
          ) -> dict[str, Any]:
    """Compute one unit: (draws, B) predictions of ``d`` on a batch, clean (``spec`` None) or
    under one attack, with the attack's info and the seconds taken."""
    tic, info = time.perf_counter(), None
    x = x.to(device)
    what = "the undefended classifier" if d.loaded is None else \
        f"purifier {d.label} t*={d.t_star}"
    if spec is not None:
        x, info = run_purify_attack(spec, _attacked(d, spec), d.evaluator, x, y.to(device), seeds,
                             cfg.attack_settings(),
                             batch_seed=derive_seed(cfg.seed, ATTACK_STREAM, start))
    preds = _predictions(d.evaluator, x, seeds, cfg.draws, device, what)
    return {"preds": preds.tolist(), "attack_info": info,
            "seconds": time.perf_counter() - tic}


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
        "config": cfg.to_dict(),
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


