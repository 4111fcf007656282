"""From per-draw predictions to the numbers of a purify row (docs/method.md §13).

Each image is purified and classified R times (R evaluation draws, independent noise, the same
draw j for its clean and its adversarial input). For a matrix ``ok`` (R, n) of per-draw
correctness:

* ``mean`` ± ``sd``: accuracy of each draw (a mean over images), averaged over the R draws, and
  the sample standard deviation over draws; ``ci95``: the 95% bootstrap interval over images of
  the per-image mean over draws (:func:`dmattack.core.stats.summarize`);
* ``majority``: an image counts when the most frequent label of its R draws is right (ties go to
  the lowest class index); ``worst``: when all R draws are right (for robust accuracy: the
  attack succeeds if any draw misclassifies). Each with its 95% interval over images.

Robust = correct on the clean AND the adversarial image (per draw; for majority, both majority
labels; for worst, all 2R draws), so robust ≤ clean holds in every aggregate.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..core.stats import compare, paired_difference, summarize

REFERENCE = "pgd-eot"
"""The attack every other attack is checked against (``weaker_than``)."""


def majority_labels(preds: torch.Tensor) -> torch.Tensor:
    """(R, n) labels → (n,) most frequent label per image (ties: the lowest class index)."""
    votes = torch.nn.functional.one_hot(preds, int(preds.max()) + 1).sum(0)  # (n, classes)
    return votes.argmax(1)


def aggregate(ok: torch.Tensor, majority: torch.Tensor, worst: torch.Tensor) -> dict[str, Any]:
    """The numbers of one accuracy (module docstring): ``ok`` (R, n) per-draw correctness,
    ``majority`` and ``worst`` (n,) per-image indicators. Fractions in [0, 1]."""
    per_draw = ok.double().mean(1).numpy()
    per_image = ok.double().mean(0).numpy()
    maj, wor = summarize(majority.double().numpy()), summarize(worst.double().numpy())
    return {"mean": float(per_draw.mean()),
            "sd": float(per_draw.std(ddof=1)) if len(per_draw) > 1 else None,
            "ci95": summarize(per_image)["ci95"], "per_draw": per_draw.tolist(),
            "majority": {"value": maj["mean"], "ci95": maj["ci95"]},
            "worst": {"value": wor["mean"], "ci95": wor["ci95"]}}


def accuracies(clean: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor
               ) -> dict[str, Any]:
    """Clean, robust and adversarial accuracy of (R, n) clean and adversarial predictions
    against (n,) labels, plus the (R, n) 0/1 correctness of every draw (``correct``)."""
    ok_c, ok_a = clean == labels, adv == labels
    maj_c, maj_a = majority_labels(clean) == labels, majority_labels(adv) == labels
    all_c, all_a = ok_c.all(0), ok_a.all(0)
    return {"clean": aggregate(ok_c, maj_c, all_c),
            "robust": aggregate(ok_c & ok_a, maj_c & maj_a, all_c & all_a),
            "adversarial": aggregate(ok_a, maj_a, all_a),
            "correct": {"clean": ok_c.int().tolist(), "adversarial": ok_a.int().tolist()},
            "robust_per_image": (ok_c & ok_a).double().mean(0).tolist()}


def weaker_check(rows: list[dict[str, Any]]) -> None:
    """Flag, in place, every row whose robust accuracy (per-image mean over draws) exceeds
    that of ``pgd-eot`` (in the same run, so through the same surrogate) on the same purifier,
    t* and images beyond the paired 95% interval:
    ``weaker_than = "pgd-eot"`` and ``vs_pgd_eot`` (the comparison). A weaker "strongest
    attack" is a bug in the evaluation, not a property of the defence."""
    reference = {(r["purifier"], r["t_star"]): r for r in rows
                 if r["attack_name"] == REFERENCE}  # (through the same surrogate, if any)
    for r in rows:
        ref = reference.get((r["purifier"], r["t_star"]))
        r["weaker_than"], r["vs_pgd_eot"] = None, None
        if ref is None or ref is r or len(r["robust_per_image"]) < 2:
            continue
        eff = paired_difference(r["robust_per_image"], ref["robust_per_image"])
        comparison = compare(eff, direction="greater")
        r["vs_pgd_eot"] = {**comparison.to_dict(),
                           "what": "robust accuracy of this attack minus pgd-eot's (paired "
                                   "over images, per-image mean over draws)"}
        if comparison.verdict == "held":
            r["weaker_than"] = REFERENCE


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "" if ci is None else f" [{100 * ci[0]:.0f},{100 * ci[1]:.0f}]"


def _mean_sd(a: dict[str, Any]) -> str:
    sd = "" if a["sd"] is None else f"±{100 * a['sd']:.1f}"
    return f"{_pct(a['mean'])}{sd}{_ci(a['ci95'])}"


TABLE_COLUMNS = ["purifier", "t* (K)", "attack", "clean %", "robust % (mean±sd [95%])",
                 "majority %", "worst %", "notes", "s"]


def _notes(r: dict[str, Any]) -> str:
    notes = [] if r["converged"] is not False else ["not converged"]
    return ", ".join(notes + ([f"weaker than {r['weaker_than']}"] if r["weaker_than"] else []))


def table_rows(result: dict[str, Any]) -> list[list[Any]]:
    """The terminal table of a purify result: one row per purifier × t* × attack; robust
    accuracy as mean ± sd over draws, majority and worst of the draws, 95% intervals."""
    out = []
    for r in result["rows"]:
        rob = r["robust"]
        t = "—" if r["t_star"] is None else f"{r['t_star']:g} ({r['reverse_steps']})"
        out.append([r["purifier"], t, r["attack"], _mean_sd(r["clean"]), _mean_sd(rob),
                    _pct(rob["majority"]["value"]) + _ci(rob["majority"]["ci95"]),
                    _pct(rob["worst"]["value"]) + _ci(rob["worst"]["ci95"]), _notes(r),
                    f"{r['attack_seconds']:.1f}"])
    return out


def table_notes(result: dict[str, Any]) -> list[str]:
    """Lines printed under the table: weaker-than-PGD flags, lighter AutoAttacks, and
    purifiers that saw the evaluation images in training."""
    notes = []
    for r in result["rows"]:
        if r["weaker_than"]:
            diff = r["vs_pgd_eot"]
            notes.append(f"WARNING {r['purifier']} t*={r['t_star']} {r['attack']}: robust "
                         f"accuracy {100 * diff['value']:+.1f} points above pgd-eot's (95% "
                         f"[{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}]): a "
                         "weaker attack, not robustness")
    if any(not r["standard"] for r in result["rows"]):
        notes.append("autoattack-rand-NxM rows are lighter than the standard 100 × EOT-20")
    for p in result["purifiers"]:
        if p["eval_images_in_training"]:
            notes.append(f"NOTE {p['name']}: the evaluation images were seen in training "
                         f"({p['eval_images_in_training_reason']})")
    return list(dict.fromkeys(notes))


CSV_COLUMNS = ("purifier", "t_star", "forward_steps", "reverse_steps", "attack", "draws",
               "num_samples", "clean_mean", "clean_sd", "clean_lo", "clean_hi",
               "clean_majority", "clean_worst", "robust_mean", "robust_sd", "robust_lo",
               "robust_hi", "robust_majority", "robust_majority_lo", "robust_majority_hi",
               "robust_worst", "robust_worst_lo", "robust_worst_hi", "adversarial_mean",
               "converged", "weaker_than", "attack_seconds", "clean_seconds")


def lo_hi(ci: Sequence[float] | None) -> tuple[float | None, float | None]:
    return (None, None) if ci is None else (ci[0], ci[1])


def _flat(r: dict[str, Any]) -> dict[str, Any]:
    c, rob = r["clean"], r["robust"]
    flat = {k: r.get(k) for k in CSV_COLUMNS}
    flat.update(clean_mean=c["mean"], clean_sd=c["sd"], clean_majority=c["majority"]["value"],
                clean_worst=c["worst"]["value"], robust_mean=rob["mean"], robust_sd=rob["sd"],
                robust_majority=rob["majority"]["value"], robust_worst=rob["worst"]["value"],
                adversarial_mean=r["adversarial"]["mean"])
    flat["clean_lo"], flat["clean_hi"] = lo_hi(c["ci95"])
    flat["robust_lo"], flat["robust_hi"] = lo_hi(rob["ci95"])
    flat["robust_majority_lo"], flat["robust_majority_hi"] = lo_hi(rob["majority"]["ci95"])
    flat["robust_worst_lo"], flat["robust_worst_hi"] = lo_hi(rob["worst"]["ci95"])
    return flat


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """One CSV line per row (the per-draw lists stay in the JSON)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in _flat(row).items()})
    return buf.getvalue()


def data_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of the decoded images (float32) and labels (int64): the data a unit saw."""
    import hashlib

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x.float().numpy()).tobytes())
    h.update(np.ascontiguousarray(y.long().numpy()).tobytes())
    return h.hexdigest()
