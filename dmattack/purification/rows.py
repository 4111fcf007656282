"""The rows and records of a purify result (docs/method.md §13): per defended model and attack the
accuracies over draws, the PGD trace and convergence, the surrogate and the seconds; what every
number means (``protocol``); each purifier's record, with whether the evaluation images were
in its training data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..core.registry import LABELLED_DATA
from ..runs.checkpoints import LoadedModel
from .attacks import CONVERGENCE_TOL, SELECT_STREAM, PurifyAttackSpec, converged
from .defended import Defended, _label, _surrogate, attacked_record
from .results import accuracies, weaker_check
from .units import _uid

if TYPE_CHECKING:
    from .evaluate import PurifyConfig


def in_training(m: LoadedModel, cfg: PurifyConfig) -> tuple[bool | None, str]:
    """Whether the evaluation images were in ``m``'s training data, and why we say so (the
    labelled set's ``seen_by``; unknown for a file or a set that cannot tell)."""
    data = m.config.get("data", {}) if isinstance(m.config.get("data"), dict) else {}
    entry = LABELLED_DATA[cfg.data] if cfg.data in LABELLED_DATA else None
    seen = entry.seen_by(m.dataset, data) if entry is not None and entry.seen_by else None
    return seen or (None, f"unknown: the purifier's training data is {m.dataset!r}, the "
                          f"evaluation data {cfg.data!r}")


def _purifier_record(d: Defended, cfg: PurifyConfig) -> dict[str, Any]:
    m, seen = d.loaded, in_training(d.loaded, cfg)
    return {"name": d.label, "t_star": d.t_star, "source": m.source,
            "fingerprint": m.fingerprint, "ema": m.ema, "dataset": m.dataset,
            **d.defence.purifier.describe(), "gradient": None,
            "attacked_purification": attacked_record(d),
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
                "(dmattack.core.stats.summarize)",
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
        def collect(spec: PurifyAttackSpec | None, d: Defended = d) -> list[dict[str, Any]]:
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

