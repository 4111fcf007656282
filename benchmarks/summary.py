"""One table from the JSON files of train_throughput.py and sampling_throughput.py, with the
targets of docs/performance.md: ``python benchmarks/summary.py train.json sampling.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# (job, ratio key) of train_throughput -> (target on CUDA, target on CPU); None: no target
TARGETS: dict[tuple[str, str], tuple[str | None, str | None]] = {
    ("ddpm", "speedup_vs_reference"): (">= 2", ">= 1"),
    ("robust-adv", "step_vs_ddpm"): ("<= 2.3", None),
}
COLUMNS = ["benchmark", "job", "rate", "speed × reference", "time × baseline", "target",
           "verdict"]


def _verdict(value: float, target: str) -> str:
    op, bound = target.split()
    return "met" if (value >= float(bound) if op == ">=" else value <= float(bound)) else "MISSED"


def rows(result: dict[str, Any]) -> list[list[str]]:
    """Table rows of one benchmark result; the baseline is a ddpm step (training) or a clean
    step (sampling)."""
    cuda = result.get("device_type") == "cuda"
    out = []
    for r in result["rows"]:
        if result["benchmark"] == "train_throughput":
            rate, speed = f"{r['images_per_s']:.1f} images/s", f"{r['speedup_vs_reference']:.2f}"
            time_x = "" if r["step_vs_ddpm"] is None else f"{r['step_vs_ddpm']:.2f}"
        else:
            rate, speed = f"{r['step_images_per_s']:.1f} steps×images/s", ""
            time_x = f"{r['cost_vs_clean']:.2f}"
        targets, verdicts = [], []
        for (job, key), both in TARGETS.items():
            target = both[0 if cuda else 1]
            if result["benchmark"] == "train_throughput" and job == r["job"] and target:
                what = "speed" if key == "speedup_vs_reference" else "time"
                targets.append(f"{what} {target}")
                verdicts.append(_verdict(r[key], target))
        out.append([result["benchmark"].split("_")[0], r["job"], rate, speed, time_x,
                    ", ".join(targets), ", ".join(verdicts)])
    return out


def main(paths: list[str]) -> None:
    results = [json.loads(Path(p).read_text()) for p in paths]
    devices = sorted({r["device"] for r in results})
    print(f"dmattack benchmarks on {', '.join(devices)} (torch {results[0]['torch']})")
    for r in results:
        settings = {k: v for k, v in r.items() if k not in ("rows", "device", "torch")}
        print(f"  {json.dumps(settings)}")
    table = [COLUMNS]
    for r in results:
        table += rows(r)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for n, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    main(sys.argv[1:])
