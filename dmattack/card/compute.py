"""``dmattack card``: one model measured under one protocol, resumably (docs/card.md).

:func:`make_cards` runs, per model, the protocol's stages on the existing content-addressed
stores: one :func:`~dmattack.evaluation.attack_eval.run_curve` for the attacks on all samples (the
random control, FGSM, PGD-20), one per group of attacks on the first ``num_samples`` samples
(trajectory, look-ahead; damage only) and, if the protocol has one,
:func:`~dmattack.purification.run_purification`. A killed card rerun with the same
command recomputes no finished point or unit. Then it scores the clean samples' quality with
an interval, derives the headline numbers (docs/method.md §14, :mod:`.headline`), validates the
card with :func:`~dmattack.card.schema.check_card` and writes ``card.json``, ``card.md`` and
``curves.png`` atomically; with several models also ``comparison.json`` / ``.md``.
Under torchrun every process calls it; the curves shard their samples, rank 0 writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..attacks.schedule import AttackSpec
from ..core import distributed, stats
from ..core.errors import ConfigError
from ..core.io import provenance, write_json, write_text
from ..core.seeding import sample_seeds
from ..diffusion.sampling import SamplerConfig
from ..evaluation.damage import CLASS_CHANGED, PIXEL
from ..runs.checkpoints import LoadedModel
from . import headline, report
from .compare import write_comparison
from .protocol import CardProtocol, protocol_identity
from .schema import CARD_FORMAT, check_card

Say = Callable[[str], None]
SET_METRIC_RESAMPLES = 200
"""Resamples of the clean-quality interval (each recomputes FID: d×d matrix roots)."""
STEP_COUNTING = {"with-budget": "budget", "all": "all"}


def _sampler(p: CardProtocol) -> SamplerConfig:
    s = p.sampling
    own = {} if s.eta is None else {"eta": s.eta}  # checked: only a sampler reading it has one
    return SamplerConfig(s.sampler, s.steps, clip_denoised=s.clip_denoised, **own)


def _specs(p: CardProtocol, attack: Any) -> list[AttackSpec]:
    """The AttackSpec of each percent > 0 of one protocol attack (its settings, the budget)."""
    own = {f.name: getattr(attack, f.name) for f in fields(attack)
           if f.name not in ("name", "percents", "num_samples")}
    common = {"eps_scale": p.budget.eps_scale, "window": p.budget.window,
              "step_counting": STEP_COUNTING[p.budget.count_steps]}
    return [AttackSpec(method=attack.name, percent=float(pc), **common, **own)
            for pc in attack.percents if pc > 0]


def attack_groups(p: CardProtocol) -> dict[int, list[Any]]:
    """CardProtocol attacks by the number of samples they run on (all, or their first n)."""
    groups: dict[int, list[Any]] = {}
    for a in p.attacks:
        groups.setdefault(a.num_samples or p.sampling.num_samples, []).append(a)
    return dict(sorted(groups.items(), reverse=True))


def _no_metric(samples: torch.Tensor) -> dict[str, float]:
    """The subset curves score damage only: a set metric of 16–32 samples is estimator bias."""
    return {}


NO_METRIC_KEY = {"metrics": "none: damage only (dmattack card)"}


def _evaluation(loaded: LoadedModel, p: CardProtocol, data_dir: str | None) -> Any:
    """The scoring setup: the protocol's metrics on its reference (read from ``data_dir`` for
    on-disk data such as CIFAR-10), extractor weights checked against the protocol's pin."""
    from evaluators.extractors import resolve_weights, weights_sha256

    from ..evaluation.metrics import EvaluationConfig, prepare_evaluation

    r = p.reference
    cfg = EvaluationConfig(num_samples=p.sampling.num_samples, seed=p.sampling.seed,
                           metrics=",".join(r.metrics), dataset=r.dataset, data_dir=data_dir)
    ev = prepare_evaluation(loaded, cfg, _sampler(p), feature_extractor=r.feature_extractor)
    found = weights_sha256(resolve_weights(r.feature_extractor, None))
    if found != r.weights_sha256:
        raise ConfigError(f"feature extractor {r.feature_extractor} weights have sha256 "
                          f"{found[:12]}… but protocol {p.label} pins {r.weights_sha256[:12]}…; "
                          "install the pinned weights (docs/card.md)", field="protocol")
    return ev


def _run_curves(loaded: LoadedModel, p: CardProtocol, ev: Any, store: Path,
                device: torch.device | str, say: Say,
                resumed: dict[str, dict[str, int]]) -> dict[int, dict[str, Any]]:
    """Every attack group's curve (resumable stores under ``store``): {num_samples: curve};
    ``resumed[store name]`` counts the points read back from the store and those computed."""
    from ..evaluation.attack_eval import run_curve

    curves = {}
    for n, attacks in attack_groups(p).items():
        counts = resumed.setdefault(f"curve-n{n}", {"resumed": 0, "computed": 0})

        def tally(done: int, total: int, record: dict[str, Any], c: dict = counts) -> None:
            c["resumed" if record.get("resumed") else "computed"] += 1

        full = n == p.sampling.num_samples
        specs = [s for a in attacks for s in _specs(p, a)]
        names = ", ".join(a.name for a in attacks)
        say(f"{Path(loaded.source).name}: {names} on {n} samples ({len(specs) + 1} points)")
        curves[n] = run_curve(
            [loaded], specs, num_samples=n, seed=p.sampling.seed, sampler=ev.sampler,
            batch_size=min(ev.batch_size, n), metric_fn=ev.metric_fn() if full else _no_metric,
            metric_key=None if full else NO_METRIC_KEY, device=device,
            out_dir=store / f"curve-n{n}", progress=tally)
    return curves


def _purify(loaded: LoadedModel, p: CardProtocol, store: Path, device: torch.device | str,
            say: Say) -> dict[str, Any] | None:
    """The protocol's purification block (resumable units under ``store/purify``)."""
    if p.purification is None:
        return None
    from ..purification import run_purification
    from ..purification.evaluate import PurifyConfig

    c = p.purification
    cfg = PurifyConfig(classifier=c.classifier, data=c.data, eps=c.eps,
                       t_star=",".join(repr(t) for t in c.t_star), purify_steps=c.purify_steps,
                       purify_sampler=c.purify_sampler, attacks=",".join(c.attacks),
                       iterations=c.iterations, eot=c.eot,
                       draws=c.evaluation_draws,
                       num_samples=c.num_samples, batch_size=c.batch_size, seed=c.seed)
    say(f"{Path(loaded.source).name}: purification ({', '.join(c.attacks)}, "
        f"{c.num_samples} images)")
    return run_purification(cfg, [loaded], store / "purify", torch.device(device))


# --------------------------------------------------------------------------- clean quality
def _clean_samples(loaded: LoadedModel, p: CardProtocol, ev: Any, curve_dir: Path,
                   device: torch.device | str) -> torch.Tensor:
    """The full curve's clean samples, read from its store (resampled if that file is gone or
    does not match the clean point's sha256)."""
    from ..evaluation.attack_eval import curve_clean_samples

    return curve_clean_samples(loaded, curve_dir, num_samples=p.sampling.num_samples,
                               seed=p.sampling.seed, sampler=ev.sampler,
                               batch_size=ev.batch_size, metric_fn=ev.metric_fn(),
                               device=device)


def clean_quality(samples: torch.Tensor, reference: torch.Tensor, extractor: str,
                  p: CardProtocol, reported: float | None) -> dict[str, Any]:
    """FID of the clean samples against the reference with its interval: FID recomputed on
    :data:`SET_METRIC_RESAMPLES` resamples of the samples' features (reference fixed;
    :func:`dmattack.core.stats.set_metric_ci`, seeded, so two cards resample the same seeds). The
    recomputation must match the curve's FID (``reported``) to 0.1%."""
    from evaluators.exact import frechet_distance
    from evaluators.extractors import extract_features, resolve_weights

    weights = resolve_weights(extractor, None)
    f = extract_features(samples, extractor, weights).double().cpu().numpy()
    g = extract_features(reference, extractor, weights).double().cpu().numpy()
    mu_g, cov_g = g.mean(0), np.cov(g, rowvar=False)

    def fid(idx: np.ndarray) -> float:
        x = f[idx]
        return frechet_distance(x.mean(0), np.cov(x, rowvar=False), mu_g, cov_g)

    value = fid(np.arange(len(f)))
    if reported is not None and abs(value - reported) > 1e-3 * max(abs(reported), 1.0):
        raise RuntimeError(f"FID recomputed from features ({value:.6g}) differs from the "
                           f"curve's ({reported:.6g})")
    replicates: list[float] = []
    lo, hi = stats.set_metric_ci(lambda idx: replicates.append(fid(idx)) or replicates[-1],
                                 len(f), seed=p.bootstrap.seed, level=p.bootstrap.level,
                                 n_resamples=SET_METRIC_RESAMPLES)
    return {"value": value, "ci95": [lo, hi], "n": len(f), "replicates": replicates,
            "interval": f"percentile over {SET_METRIC_RESAMPLES} resamples of the samples "
                        "(reference fixed)"}


# --------------------------------------------------------------------------- measurements
def _points(curve: dict[str, Any]) -> list[dict[str, Any]]:
    return [pt for pt in curve["points"] if pt["label"] != "clean"]


def _attack_block(name: str, pts: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """One attack's measurements: per percent the damage, set metric and random ratio."""
    rows = [{"percent": pt["percent"], "label": pt["label"],
             "steps_attacked": pt["steps_attacked"], "damage": pt["damage"],
             "metrics": {k: v for k, v in pt["metrics"].items() if k != "protocol"},
             "improved_under_attack": pt.get("improved_under_attack"),
             "relative_to_random": pt.get("relative_to_random")}
            for pt in sorted(pts, key=lambda r: r["percent"])]
    return {"attack": name, "num_samples": n, "points": rows}


def _per_sample(p: CardProtocol, by_attack: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per attack, each sample's damage AUC (pixel deviation) and its class change at 100%."""
    auc, changed = {}, {}
    for name, pts in by_attack.items():
        pts = sorted(pts, key=lambda r: r["percent"])
        damage = [headline.as_array(pt["damage_per_sample"][PIXEL]) for pt in pts]
        auc[name] = headline.as_json(headline.per_sample_auc([pt["percent"] for pt in pts],
                                                             damage))
        at100 = [pt for pt in pts if pt["percent"] == 100.0]
        if at100 and CLASS_CHANGED in at100[0]["damage_per_sample"]:
            changed[name] = at100[0]["damage_per_sample"][CLASS_CHANGED]
    return {"auc": auc, "class_change_at_100": changed}


def _convergence(by_attack: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per attack: ``status`` (converged / not converged / no trace) and each point's record."""
    out = {}
    for name, pts in by_attack.items():
        flags = [pt.get("converged") for pt in pts]
        status = ("no trace" if all(f is None for f in flags) else
                  "not converged" if any(f is False for f in flags) else "converged")
        out[name] = {"status": status, "points": [
            {"percent": pt["percent"], "converged": pt.get("converged"),
             "trace": pt.get("trace"),
             "rise_last_fifth": (pt.get("convergence") or {}).get("rise_last_fifth"),
             "tolerance": (pt.get("convergence") or {}).get("tolerance")} for pt in pts]}
    return out


def _purification_block(result: dict[str, Any] | None, p: CardProtocol) -> dict[str, Any] | None:
    """The purification rows of :func:`~dmattack.purification.run_purification`: per purifier,
    t* and attack the clean, robust and adversarial accuracy, each as the mean over the
    evaluation draws with its 95% interval over images and the ``majority`` / ``worst``
    aggregates over the draws with theirs (the protocol's ``draws``, or in v1 protocols its
    ``eval_modes``: ``single`` is one draw, ``worst:N`` N draws); the per-image 0/1 tables
    stay in the store."""
    if result is None:
        return None
    bulky = ("correct", "robust_per_image", "trace")
    rows = [{k: ({kk: vv for kk, vv in v.items() if kk != "per_draw"}
                 if isinstance(v, dict) and "per_draw" in v else v)
             for k, v in row.items() if k not in bulky} for row in result["rows"]]
    c = p.purification
    modes = {} if c.eval_modes is None else {"eval_modes": list(c.eval_modes)}
    return {**modes, "draws": c.evaluation_draws, "config": result["config"],
            "classifier": result["classifier"], "rows": rows}


# --------------------------------------------------------------------------- one card
def _measure(loaded: LoadedModel, p: CardProtocol, folder: Path, device: torch.device | str,
             say: Say, data_dir: str | None) -> dict[str, Any]:
    """Run every stage of one model (resumable; every process under torchrun). Returns the
    card's parts, with ``seconds`` of each stage in this invocation."""
    seconds: dict[str, float] = {}
    tic = time.perf_counter()
    ev = _evaluation(loaded, p, data_dir)
    store = folder / "store"
    resumed: dict[str, dict[str, int]] = {}
    curves = _run_curves(loaded, p, ev, store, device, say, resumed)
    seconds["curves"] = time.perf_counter() - tic
    tic = time.perf_counter()
    purified = _purify(loaded, p, store, device, say)
    seconds["purification"] = time.perf_counter() - tic
    return {"ev": ev, "curves": curves, "purified": purified, "resumed": resumed,
            "seconds": seconds, "device": str(device)}


def _score_quality(loaded: LoadedModel, p: CardProtocol, folder: Path, parts: dict[str, Any],
                   device: torch.device | str) -> None:
    """Add the clean set metrics and the clean-quality interval to ``parts`` (rank 0 only,
    after every collective step, so the other processes never wait on it)."""
    tic = time.perf_counter()
    n_all, ev = p.sampling.num_samples, parts["ev"]
    clean_point = next(pt for pt in parts["curves"][n_all]["points"] if pt["label"] == "clean")
    metrics = {k: v for k, v in clean_point["metrics"].items() if k != "protocol"}
    fid_label = next((k for k in metrics if k.startswith("FID")), None)
    samples = _clean_samples(loaded, p, ev, folder / "store" / f"curve-n{n_all}", device)
    parts["quality"] = clean_quality(samples, ev.reference.data, p.reference.feature_extractor,
                                     p, metrics.get(fid_label))
    parts.update(metrics=metrics, fid_label=fid_label)
    parts["seconds"]["clean_quality"] = time.perf_counter() - tic


def _assemble(loaded: LoadedModel, name: str, p: CardProtocol, parts: dict[str, Any],
              seconds: dict[str, float]) -> dict[str, Any]:
    """The card.json content of one model from its measured parts."""
    by_attack: dict[str, list[dict[str, Any]]] = {}
    blocks, computed = {}, 0.0
    for n, curve in parts["curves"].items():
        pts = curve["points"]
        computed += sum(float(pt.get("seconds") or 0.0) for pt in pts)
        for pt in _points(curve):
            by_attack.setdefault(pt["attack"]["method"], []).append(pt)
        for a in attack_groups(p)[n]:
            blocks[a.name] = _attack_block(a.name, [pt for pt in _points(curve)
                                                    if pt["attack"]["method"] == a.name], n)
    per_sample = _per_sample(p, by_attack)
    quality = parts["quality"]
    per_sample.update(num_samples=p.sampling.num_samples,
                      strongest=headline.strongest_attack(
                          {k: headline.as_array(v) for k, v in per_sample["auc"].items()}),
                      clean_quality_value=quality["value"],
                      clean_quality_replicates=quality["replicates"])
    label = parts["fid_label"] or p.reference.headline_metric
    cq = headline.entry(f"{label} of {quality['n']} clean samples", quality["value"],
                        quality["ci95"], quality["n"], "lower")
    head = headline.headline_numbers(p, per_sample, cq)
    for name_, block in blocks.items():
        block["damage_auc"] = headline.mean_interval(
            headline.as_array(per_sample["auc"][name_]), p)
    purification = _purification_block(parts["purified"], p)
    if purification is not None:
        computed += float(parts["purified"].get("seconds") or 0.0)
    ev = parts["ev"]
    return {
        "card_format": CARD_FORMAT,
        "protocol": protocol_identity(p),
        "model": {"name": name, "source": loaded.source,
                  "fingerprint": _fingerprint(loaded)},
        "headline": head,
        "measurements": {
            "clean": {"metrics": parts["metrics"], "quality": {
                k: v for k, v in quality.items() if k != "replicates"}},
            "attacks": blocks, "strongest": per_sample["strongest"],
            "damage_measure": PIXEL, "purification": purification,
            "per_sample": per_sample,
            "setup": {"sampler": ev.sampler_label, "batch_size": ev.batch_size,
                      "reference": ev.reference.name, "evaluation": ev.label,
                      "device": str(parts.get("device", "")),
                      "world_size": distributed.world_size()},
            "points_resumed": parts["resumed"]},
        "convergence": _convergence(by_attack),
        "provenance": {**provenance(), "protocol_label": p.label,
                       "protocol_content": p.content()},
        "seeds": sample_seeds(p.sampling.seed, p.sampling.num_samples),
        "seconds": {**{k: round(v, 3) for k, v in seconds.items()},
                    "total": round(sum(seconds.values()), 3),
                    "compute_in_stores": round(computed, 3)},
        "files": {"md": "card.md", "curves": "curves.png"},
    }


def _fingerprint(loaded: LoadedModel) -> str:
    from ..evaluation.attack_eval import model_identity

    return model_identity(loaded)


def write_card(card: dict[str, Any], curves: Sequence[dict[str, Any]], folder: Path) -> Path:
    """Validate and write ``card.json``, ``card.md`` and ``curves.png`` into ``folder``
    (each atomically; card.json last, so it always describes the files beside it)."""
    check_card(card)
    report.curves_png(curves, folder / card["files"]["curves"])
    write_text(folder / card["files"]["md"], report.card_markdown(card))
    return write_json(folder / "card.json", card)


# --------------------------------------------------------------------------- entry point
def load_models(runs: Sequence[str], pipelines: Sequence[str], p: CardProtocol,
                device: torch.device | str) -> list[LoadedModel]:
    """The models of a card command: runs (the protocol's EMA choice), then pipelines."""
    from ..runs.checkpoints import load_run
    from ..runs.pipeline import load_pipeline

    if not runs and not pipelines:
        raise ConfigError("give at least one --run or --pipeline", field="run")
    return ([load_run(r, use_ema=p.sampling.ema, device=device) for r in runs]
            + [load_pipeline(q, device=device) for q in pipelines])


def card_names(models: Sequence[LoadedModel]) -> list[str]:
    """Folder name per model: its folder's name, with ``#i`` where two share a name; the
    same folder twice is refused."""
    sources = [m.source for m in models]
    dup = next((s for s in sources if sources.count(s) > 1), None)
    if dup is not None:
        raise ConfigError(f"model {dup} is given twice", field="run")
    names = [Path(s).name or "model" for s in sources]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]


def make_cards(models: Sequence[LoadedModel], protocol: CardProtocol, out_dir: str | Path, *,
               device: torch.device | str = "cpu", say: Say = lambda s: None,
               data_dir: str | None = None) -> list[Path]:
    """One card per model under ``out_dir/<model name>/`` (card.json, card.md, curves.png,
    and ``store/`` holding the resumable curve and purification stores); with several models
    also ``out_dir/comparison.json`` and ``.md``. ``data_dir``: where on-disk reference data
    lives (CIFAR-10; refused for embedded data such as digits). Returns the card.json paths
    (rank 0; other ranks an empty list). Rerunning the same call resumes: no finished point
    is recomputed."""
    out = Path(out_dir)
    names = card_names(models)
    measured = [_measure(loaded, protocol, out / name, device, say, data_dir)
                for name, loaded in zip(names, models, strict=True)]
    if not distributed.is_main():
        return []
    paths = []
    for name, loaded, parts in zip(names, models, measured, strict=True):
        folder = out / name
        _score_quality(loaded, protocol, folder, parts, device)
        tic = time.perf_counter()
        card = _assemble(loaded, name, protocol, parts, parts["seconds"])
        card["seconds"]["assemble"] = round(time.perf_counter() - tic, 3)
        card["seconds"]["total"] = round(card["seconds"]["total"]
                                         + card["seconds"]["assemble"], 3)
        paths.append(write_card(card, list(parts["curves"].values()), folder))
        say(f"{name}: {paths[-1]}")
    if len(paths) > 1:
        write_comparison(paths, out, protocol)
    return paths
