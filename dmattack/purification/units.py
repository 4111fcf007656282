"""Units of a purify run (docs/method.md §13): the predictions of one defended model on one batch,
clean or under one attack, stored atomically under ``out_dir/units/`` with the full dict of
what determines them (a rerun reuses a unit whose dict matches), and the evaluation draws
that make the predictions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..runs.checkpoints import digest
from .attacks import PurifyAttackSpec, image_generators
from .classifier import PurifiedClassifier
from .defended import Defended, NonFiniteError, _attacked, _surrogate
from .draws import seeded_logits

if TYPE_CHECKING:
    from .evaluate import PurifyConfig

EVAL_STREAM = 1301  # seed purpose of the evaluation purifications (3-key seeds: no collision)
UNITS = "units"
UNIT_FORMAT = 2


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


def _key(cfg: PurifyConfig, d: Defended, spec: PurifyAttackSpec | None, common: dict[str, Any],
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


def _uid(d: Defended, spec: PurifyAttackSpec | None, start: int) -> str:
    return f"{d.label}|{d.t_star}|{spec.label if spec else None}|{start}"

