"""Command-line startup: how fast `dmattack` answers --help and option errors, as a ratio to
``python -c "import click"`` (the least any click program costs) and to ``import torch``.

Each job is one fresh process (wall time, median over ``--repeats`` interleaved rounds, after
one untimed warm-up round that also fills the option cache, dmattack/commands/lazy.py). The job
``attack-bogus-cold`` empties the option cache before each run: the first answer after
installing or editing dmattack, which builds the options from the config dataclasses (and so
imports torch once). Every job's exit status is checked (0 for help, 2 for the option error).

    python benchmarks/cli_startup.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DMATTACK = ["-c", "import cli; cli.main()"]
JOBS: dict[str, tuple[list[str], int]] = {
    "import click": (["-c", "import click"], 0),
    "import torch": (["-c", "import torch"], 0),
    "dmattack --help": ([*DMATTACK, "--help"], 0),
    "dmattack attack --help": ([*DMATTACK, "attack", "--help"], 0),
    "dmattack attack --method pgd --bogus 1": ([*DMATTACK, "attack", "--method", "pgd",
                                                "--bogus", "1"], 2),
    "attack-bogus-cold": ([*DMATTACK, "attack", "--method", "pgd", "--bogus", "1"], 2),
}


def run_once(name: str, env: dict[str, str]) -> float:
    """Wall seconds of one fresh process of job ``name``."""
    args, code = JOBS[name]
    if name.endswith("-cold"):
        shutil.rmtree(Path(env["DMATTACK_CACHE"]) / "cli", ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != code:
        raise SystemExit(f"{name}: exit {proc.returncode}, expected {code}: {proc.stderr}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="Also write the JSON here.")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DMATTACK_CACHE": cache}
        times: dict[str, list[float]] = {name: [] for name in JOBS}
        for name in JOBS:  # warm-up: page cache, .pyc files, the option cache
            run_once(name, env)
        for _ in range(a.repeats):
            for name in JOBS:
                times[name].append(run_once(name, env))
    median = {name: statistics.median(t) for name, t in times.items()}
    click_s, torch_s = median["import click"], median["import torch"]
    result = {
        "what": "wall seconds of a fresh process (median), and ratios to `import click` and "
                "`import torch`",
        "repeats": a.repeats, "load_average": os.getloadavg(), "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "jobs": {name: {"seconds": round(s, 3), "x_import_click": round(s / click_s, 2),
                        "x_import_torch": round(s / torch_s, 3)} for name, s in median.items()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out is not None:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
