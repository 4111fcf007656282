"""Robustness of diffusion purification: clean and robust accuracy per purifier × t* × attack ×
evaluation mode (docs/method.md §13), the library behind ``dmattack purify``.

Definitions (n samples, each evaluated under the same mode for its clean and its adversarial
input, with the same purification noise):

* clean accuracy: the fraction whose clean image is classified correctly under the mode;
* robust accuracy: the fraction classified correctly under the mode on the clean image AND on
  the attack's adversarial image (the usual convention: a misclassified clean point is not
  robust), so robust ≤ clean holds by construction in every row;
* adversarial accuracy: the fraction classified correctly on the adversarial image alone.

Evaluation modes of the stochastic defended classifier (DiffHammer's N-evaluation): ``single``
(one purification), ``majority:N`` (the most frequent label of N purifications; ties go to the
lowest class index) and ``worst:N`` (correct only if all N purifications are correct).

Reproducibility: sample i has seed ``sample_seeds(seed, n)[i]``; purification j of its
evaluation draws noise from ``derive_seed(sample_seed, EVAL_STREAM, j)`` (independent of
batching, the same for clean and adversarial inputs and for every purifier); each attack on a
batch runs with torch's global generator seeded from (seed, batch start), so reruns
with the same batch size reproduce every number, under torchrun too (shards are whole
batches). The undefended classifier is always a row; a purifier with t* = 0 is the identity
and reproduces it exactly.

Resume: every finished unit (the predictions of one purifier on one batch, clean or under one
attack) is written atomically to ``out_dir/units/`` with the full dict of what determines it; a
rerun reuses units whose dict matches and recomputes the others.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..errors import ConfigError
from ..io import MiB, check_writable, provenance, write_json, write_text
from ..locking import lock_folder
from ..option_types import parse_t_star
from ..registry import SAMPLERS
from ..runs import LoadedModel, digest
from ..seeding import derive_seed, sample_seeds
from ..settings import check_settings, setting
from .attacks import ATTACKS, build_attack
from .classifier import (
    PurifiedClassifier,
    check_classifier,
    load_classifier,
    load_labeled_data,
)
from .purifier import Purifier, forward_steps, load_model, purify_sampler_name, purify_samplers

EVAL_STREAM = 1301  # seed purpose of the evaluation purifications (3-key seeds: no collision)
ATTACK_STREAM = 1302
UNITS = "units"
UNIT_FORMAT = 1
UNDEFENDED = "none"
Progress = Callable[[int, int, str], None]


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class EvalMode:
    """How a stochastic classifier's N purifications become one verdict per sample."""

    kind: str  # single | majority | worst
    draws: int = 1

    @classmethod
    def parse(cls, text: str) -> EvalMode:
        kind, _, count = text.strip().partition(":")
        try:
            draws = int(count) if count else 1
        except ValueError:
            draws = 0
        if kind == "single" and not count:
            return cls("single", 1)
        if kind in ("majority", "worst") and count and draws >= 1:
            return cls(kind, draws)
        raise ConfigError(f"eval_modes (--eval-mode) entry {text!r} is invalid; allowed: "
                          "single, majority:N, worst:N with N >= 1", field="eval_modes")

    def __str__(self) -> str:
        return "single" if self.kind == "single" else f"{self.kind}:{self.draws}"

    def correct(self, preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(draws ≥ N, B) predicted labels, (B,) labels → (B,) bool verdicts."""
        preds = preds[: self.draws]
        if self.kind == "worst":
            return (preds == labels).all(0)
        if self.kind == "majority":
            classes = int(max(preds.max(), labels.max())) + 1
            votes = torch.nn.functional.one_hot(preds, classes).sum(0)  # (B, classes)
            return votes.argmax(1) == labels  # argmax: the first (lowest) class among ties
        return preds[0] == labels


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


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
    attacks: str = setting("pgd-eot,bpda-eot", "Attacks, comma-separated: "
                           + ", ".join(ATTACKS) + ".", option="--attack")
    eps: float = setting(0.25, "ℓ∞ budget in [0, 1] pixel units (e.g. 8/255).", low=0, high=1)
    step_size: float | None = setting(None, "PGD step α in [0, 1] units (default ε/4).",
                                      low=0, low_open=True, high=1)
    iterations: int = setting(10, "Attack iterations (PGD steps; APGD steps of AutoAttack).",
                              low=1)
    eot: int = setting(4, "EOT draws per attack iteration (1 for a deterministic model).",
                       low=1)
    eval_modes: str = setting("single", "Evaluation modes, comma-separated: single, "
                              "majority:N, worst:N.", option="--eval-mode")
    num_samples: int = setting(64, "Labelled images evaluated (the first N).", low=1)
    batch_size: int = setting(64, "Images per attack batch (results depend on it).", low=1)
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
        self.attack_names()
        self.modes()
        self.t_stars()

    def attack_names(self) -> tuple[str, ...]:
        names = _split(self.attacks)
        bad = [n for n in names if n not in ATTACKS]
        if bad or not names:
            raise ConfigError(f"attacks (--attack) = {self.attacks!r}: unknown attack "
                              f"{(bad or [''])[0]!r}; allowed: {', '.join(ATTACKS)} "
                              "(comma-separated)", field="attacks")
        return tuple(dict.fromkeys(names))

    def modes(self) -> tuple[EvalMode, ...]:
        modes = [EvalMode.parse(m) for m in _split(self.eval_modes)]
        if not modes:
            raise ConfigError("eval_modes (--eval-mode) is empty; allowed: single, "
                              "majority:N, worst:N", field="eval_modes")
        return tuple(dict.fromkeys(modes))

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

    @property
    def draws(self) -> int:
        """Purifications per evaluated input: the largest N of the modes."""
        return max(m.draws for m in self.modes())


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
                 draws: int, device: torch.device) -> torch.Tensor:
    """(draws, B) labels of purification j = 0..draws−1 of each image (no gradients)."""
    out = []
    with torch.no_grad():
        for j in range(1 if model.deterministic else draws):
            gens = [torch.Generator(device).manual_seed(derive_seed(s, EVAL_STREAM, j))
                    for s in seeds]
            out.append(model(x.to(device), gens).argmax(1).cpu())
    return torch.stack(out).expand(draws, -1) if len(out) < draws else torch.stack(out)


def _attack_batch(model: PurifiedClassifier, attack: str, x: torch.Tensor, y: torch.Tensor,
                  cfg: PurifyConfig, num_classes: int, start: int,
                  device: torch.device) -> torch.Tensor:
    """Adversarial images (B, …) in [0, 1] for one batch, with seeded global randomness."""
    if cfg.eps == 0:
        return x
    seed = derive_seed(cfg.seed, ATTACK_STREAM, start)  # the same for every attack and model
    atk = build_attack(attack, model, cfg.eps, cfg.iterations, cfg.eot, num_classes,
                       cfg.step_size, seed=seed % (1 << 31))
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return atk(x.to(device), y.to(device)).detach().cpu()


# ----------------------------------------------------------------------------- the run
def run_purification(config: PurifyConfig, models: Sequence[LoadedModel | str | Path],
                     out_dir: str | Path, device: torch.device | str = "cpu",
                     progress: Progress | None = None) -> dict[str, Any]:
    """Evaluate ``config`` for the undefended classifier and a purifier per model and t*, and
    write ``purify.json`` and ``purify.csv`` into ``out_dir`` (rank 0). Returns the JSON content.

    ``models``: loaded models or dmattack run / diffusers pipeline folders. ``progress(done,
    total, label)`` is called after each unit. See the module docstring for the definitions,
    seeds and resumption; a one-line :class:`ConfigError` / :class:`InputFileError` for bad
    input before any work starts.
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


Defended = list[tuple[str, float | None, LoadedModel | None, PurifiedClassifier]]


def prepare_purification(cfg: PurifyConfig, models: Sequence[LoadedModel],
                         device: torch.device | str = "cpu") -> tuple[Any, ...]:
    """Everything the evaluation needs before any attack, checked (one-line
    :class:`ConfigError` / :class:`InputFileError` for the classifier file, the data, a shape
    mismatch or a t* outside a model's chain): ``(classifier info, images, labels, data info,
    number of classes, defended models)``. Cheap: call it to refuse bad input early."""
    device = torch.device(device)
    classifier, cls_info = load_classifier(cfg.classifier, device)
    x_all, y_all, data_info = load_labeled_data(cfg.data, cfg.data_dir, cfg.num_samples)
    shape = tuple(x_all.shape[1:])
    num_classes = check_classifier(classifier, shape, cfg.classifier, device)
    if int(y_all.max()) >= num_classes or int(y_all.min()) < 0:
        raise ConfigError(f"labels of {cfg.data} fall outside the classifier's {num_classes} "
                          "classes", field="data")
    names = _names(models)
    defended: Defended = [(UNDEFENDED, None, None, PurifiedClassifier(None, classifier))]
    for name, m in zip(names, models, strict=True):
        if tuple(m.data_shape) != shape:
            raise ConfigError(f"purifier {m.source} works on data of shape {tuple(m.data_shape)}"
                              f" but the images of {cfg.data} have shape {shape}", field="data")
        for t_star in cfg.t_stars():
            forward_steps(t_star, m.diffusion.num_timesteps)  # refuse t* outside the chain
            steps = cfg.purify_steps
            if steps is not None:
                steps = min(steps, max(1, forward_steps(t_star, m.diffusion.num_timesteps)))
            purifier = Purifier.from_loaded(
                m, t_star=t_star, steps=steps, sampler=cfg.purify_sampler, eta=cfg.eta,
                gradient="full", checkpoint_steps=cfg.checkpoint_steps,
                **({} if cfg.clip_denoised is None else {"clip_denoised": cfg.clip_denoised})
            ).to(device)
            defended.append((name, t_star, m, PurifiedClassifier(purifier, classifier)))
    return cls_info, x_all, y_all, data_info, num_classes, defended


def _run_locked(cfg: PurifyConfig, models: Sequence[LoadedModel], out: Path,
                device: torch.device, progress: Progress | None) -> dict[str, Any]:
    started = time.perf_counter()
    cls_info, x_all, y_all, data_info, num_classes, defended = prepare_purification(
        cfg, models, device)
    classifier = defended[0][3].classifier

    seeds_all = sample_seeds(cfg.seed, len(x_all))
    first, stop = distributed.shard_range(len(x_all), cfg.batch_size)
    batches = [(s, min(s + cfg.batch_size, stop)) for s in range(first, stop, cfg.batch_size)]
    attacks = cfg.attack_names()
    total = len(defended) * (1 + len(attacks)) * len(batches)
    done = 0
    data_key = {k: v for k, v in data_info.items() if k != "num_samples"}
    common = {"format": UNIT_FORMAT, "classifier": cls_info["sha256"], "data": data_key,
              "seed": cfg.seed, "draws": cfg.draws, "batch_size": cfg.batch_size}
    attack_settings = {"eps": cfg.eps, "step_size": cfg.step_size, "iterations": cfg.iterations,
                       "eot": cfg.eot}
    mine: dict[str, list[list[int]]] = {}
    unit_seconds: dict[str, float] = {}
    for label, t_star, m, model in defended:
        who = {"purifier": None} if m is None else {"purifier": {
            "source": m.source, "fingerprint": m.fingerprint, "ema": m.ema,
            **model.purifier.describe(), "gradient": None}}
        evaluator = model if model.purifier is None else PurifiedClassifier(
            model.purifier.replace(gradient="none"), classifier)
        for attack in (None, *attacks):
            for start, end in batches:
                key = {**common, **who, "batch": [start, end],
                       "attack": None if attack is None else {"name": attack, **attack_settings,
                                                              "deterministic":
                                                                  model.deterministic}}
                path = _unit_path(out, key)
                unit = _read_unit(path, key)
                if unit is None:
                    tic = time.perf_counter()
                    x, y = x_all[start:end], y_all[start:end]
                    if attack is not None:
                        x = _attack_batch(model, attack, x, y, cfg, num_classes, start, device)
                    preds = _predictions(evaluator, x, seeds_all[start:end], cfg.draws, device)
                    unit = {"key": key, "preds": preds.tolist(),
                            "seconds": time.perf_counter() - tic}
                    write_json(path, unit)
                uid = _uid(label, t_star, attack, start)
                mine[uid] = unit["preds"]
                unit_seconds[uid] = unit["seconds"]
                done += 1
                if progress is not None:
                    progress(done, total, f"{label} t*={t_star} {attack or 'clean'} "
                                          f"[{start}:{end}]")

    gathered = distributed.all_gather_objects((mine, unit_seconds))
    if not distributed.is_main():
        return distributed.broadcast_object(None)
    preds_by_uid: dict[str, list[list[int]]] = {}
    seconds_by_uid: dict[str, float] = {}
    for p, s in gathered:
        preds_by_uid.update(p)
        seconds_by_uid.update(s)
    all_batches = [(s, min(s + cfg.batch_size, len(x_all)))
                   for s in range(0, len(x_all), cfg.batch_size)]

    def collect(label: str, t_star: float | None, attack: str | None) -> tuple[torch.Tensor,
                                                                               float]:
        uids = [_uid(label, t_star, attack, s) for s, _ in all_batches]
        preds = torch.cat([torch.tensor(preds_by_uid[u]) for u in uids], dim=1)
        return preds, sum(seconds_by_uid[u] for u in uids)

    rows = []
    for label, t_star, _, model in defended:
        clean, clean_seconds = collect(label, t_star, None)
        for attack in attacks:
            adv, seconds = collect(label, t_star, attack)
            for mode in cfg.modes():
                ok_clean = mode.correct(clean, y_all)
                ok_adv = mode.correct(adv, y_all)
                rows.append({
                    "purifier": label, "t_star": t_star,
                    "forward_steps": None if model.purifier is None else model.purifier.n,
                    "reverse_steps": None if model.purifier is None
                    else model.purifier.num_reverse_steps,
                    "attack": attack, "eval_mode": str(mode), "num_samples": len(y_all),
                    "clean_accuracy": int(ok_clean.sum()) / len(y_all),
                    "robust_accuracy": int((ok_clean & ok_adv).sum()) / len(y_all),
                    "adversarial_accuracy": int(ok_adv.sum()) / len(y_all),
                    "attack_seconds": round(seconds, 3),
                    "clean_seconds": round(clean_seconds, 3)})
    result = {
        "kind": "dmattack-purify",
        "config": asdict(cfg),
        "definitions": {
            "clean_accuracy": "correct on the clean image under the eval mode",
            "robust_accuracy": "correct on the clean AND the adversarial image under the eval "
                               "mode (<= clean_accuracy)",
            "adversarial_accuracy": "correct on the adversarial image under the eval mode"},
        "purifiers": [{"name": label, "t_star": t_star, "source": m.source,
                       "fingerprint": m.fingerprint, "ema": m.ema, "dataset": m.dataset,
                       **model.purifier.describe()}
                      for label, t_star, m, model in defended if m is not None],
        "classifier": {**cls_info, "num_classes": num_classes},
        "data": data_info,
        "seeds": {"seed": cfg.seed, "sample_seeds": seeds_all,
                  "eval_stream": EVAL_STREAM, "attack_stream": ATTACK_STREAM},
        "rows": rows,
        "device": str(device), "world_size": distributed.world_size(),
        "seconds": round(time.perf_counter() - started, 3),
        "provenance": provenance(),
    }
    write_json(out / "purify.json", result)
    write_text(out / "purify.csv", to_csv(rows))
    return distributed.broadcast_object(result)


def _uid(label: str, t_star: float | None, attack: str | None, start: int) -> str:
    return f"{label}|{t_star}|{attack}|{start}"


CSV_COLUMNS = ("purifier", "t_star", "forward_steps", "reverse_steps", "attack", "eval_mode",
               "num_samples", "clean_accuracy", "robust_accuracy", "adversarial_accuracy",
               "attack_seconds", "clean_seconds")


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})
    return buf.getvalue()

