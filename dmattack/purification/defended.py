"""The defended models of a purify run (docs/method.md §13): the undefended classifier and one
purifier per model and t*, each with the purification the attacks differentiate (the defence
itself, its BPDA, or a surrogate) and the defence without gradients that evaluates; the checks
of everything before any attack (classifier, data, shapes, finite weights, t*)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import ConfigError, DmattackError
from ..diffusion.samplers import SAMPLER_RECORD
from ..runs.checkpoints import LoadedModel
from .attacks import PurifyAttackSpec
from .classifier import PurifiedClassifier, check_classifier, load_classifier
from .labelled import load_labeled_data
from .purifier import Purifier, forward_steps
from .results import data_digest

if TYPE_CHECKING:
    from .evaluate import PurifyConfig

UNDEFENDED = "none"


class NonFiniteError(DmattackError, FloatingPointError):
    """A purifier with non-finite weights, or one whose outputs are not finite: its
    predictions would be argmaxes of NaN, so nothing is scored."""


def check_finite_weights(m: LoadedModel) -> None:
    """Refuse (one line, :class:`NonFiniteError`) a purifier with NaN or inf weights."""
    bad = [n for n, p in m.model.named_parameters() if not torch.isfinite(p).all()]
    bad += [n for n, b in m.model.named_buffers()
            if b.is_floating_point() and not torch.isfinite(b).all()]
    if bad:
        raise NonFiniteError(f"purifier {m.source} has non-finite (NaN/inf) weights in {len(bad)}"
                             f" tensor(s), e.g. {bad[0]}; refusing to evaluate it")


@dataclass
class Defended:
    """One row group: a purifier (None: undefended) at t*, the defence and what attacks it."""

    label: str
    t_star: float | None
    loaded: LoadedModel | None
    defence: PurifiedClassifier  # gradient "full": what pgd-eot differentiates by default
    evaluator: PurifiedClassifier  # the defence without gradients (evaluation, selection)
    attacked: PurifiedClassifier  # what pgd-eot / autoattack differentiate (maybe a surrogate)


def _names(models: Sequence[LoadedModel]) -> list[str]:
    names = [Path(m.source).name or m.source for m in models]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def _steps(steps: int | None, t_star: float, m: LoadedModel) -> int | None:
    return None if steps is None else min(steps, max(1, forward_steps(
        t_star, m.diffusion.num_timesteps)))


def _defended(cfg: PurifyConfig, name: str, m: LoadedModel, t_star: float,
              classifier: torch.nn.Module, device: torch.device) -> Defended:
    forward_steps(t_star, m.diffusion.num_timesteps)  # refuse t* outside the chain
    purifier = Purifier.from_loaded(
        m, t_star=t_star, steps=_steps(cfg.purify_steps, t_star, m),
        sampler=cfg.purify_sampler, sampler_options=cfg.sampler_options, gradient="full",
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


def _attacked(d: Defended, spec: PurifyAttackSpec) -> PurifiedClassifier:
    """What ``spec`` differentiates: BPDA of the attacked purification for bpda-eot."""
    p = d.attacked.purifier
    if spec.name == "bpda-eot" and p is not None:
        return PurifiedClassifier(p.replace(gradient="bpda"), d.attacked.classifier)
    return d.attacked


def attacked_record(d: Defended) -> dict[str, Any]:
    """The record of the purification the attacks differentiate (``d.attacked``): its
    settings, where its chain does not read a built-in record slot (``eta``) the defence's
    value there (a surrogate inherits the defence's η; records and keys as before samplers
    owned their options)."""
    p = d.attacked.purifier
    record, defence = p.describe(), d.defence.purifier.describe()
    return {**record, **{k: defence[k] for k in SAMPLER_RECORD if k not in p.own()}}


def _surrogate(d: Defended, spec: PurifyAttackSpec) -> dict[str, Any] | None:
    """The attack's purification when it differs from the defence (for keys and rows): a
    plugin sampler's own options under ``sampler_options``."""
    if d.attacked is d.defence or d.attacked.purifier is None:
        return None
    p, record = d.attacked.purifier, attacked_record(d)
    own = {k: record[k] for k in (*SAMPLER_RECORD, "sampler_options") if k in record}
    return {"reverse_steps": p.num_reverse_steps, "sampler": p.sampler, **own,
            "gradient": "bpda" if spec.name == "bpda-eot" else p.gradient}


def _label(spec: PurifyAttackSpec, surrogate: dict[str, Any] | None) -> str:
    if surrogate is None:
        return spec.label
    return (f"{spec.label} via surrogate(K={surrogate['reverse_steps']},"
            f"{surrogate['sampler']},{surrogate['gradient']})")

