"""Helpers of the docs/architecture.md tests: a section's fenced blocks, its plugins installed
as a distribution in a site folder, and ``dmattack`` run in a fresh process with that folder on
its path (so the plugin loads through its entry point, as a user's installed one does)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def section(title: str) -> str:
    """The text of the section headed ``title`` (up to the next level-2 heading)."""
    text = DOC.read_text()
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:] if end < 0 else text[start:end]


def blocks(title: str, language: str) -> list[str]:
    """The fenced ``language`` blocks of the section ``title``."""
    return re.findall(rf"^```{language}\n(.*?)^```", section(title), re.S | re.M)


def commands(title: str) -> list[list[str]]:
    """The section's documented shell commands (continuation lines joined), as argument lists."""
    (bash,) = blocks(title, "bash")
    return [shlex.split(line) for line in bash.replace("\\\n", " ").splitlines() if line]


def entry_points(title: str) -> list[tuple[str, str]]:
    """(name, module) of each entry point in the section's pyproject block."""
    (toml,) = blocks(title, "toml")
    assert toml.startswith("[project.entry-points.dmattack]\n")
    return re.findall(r'^([\w.-]+) = "([\w.]+)"$', toml, re.M)


def install(site: Path, title: str, distribution: str) -> list[tuple[str, str]]:
    """Write the section's plugin modules (each python block starts ``# <module>.py``) and a
    ``<distribution>-0.1.dist-info`` with its entry points into ``site``; returns them."""
    points = entry_points(title)
    sources = blocks(title, "python")
    for _, module in points:
        (source,) = [b for b in sources if b.startswith(f"# {module}.py")]
        (site / f"{module}.py").write_text(source)
    info = site / f"{distribution.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[dmattack]\n" + "".join(f"{n} = {m}\n" for n, m in points))
    return points


def dmattack(site: Path, tmp: Path, args: list[str], cwd: Path = ROOT
             ) -> subprocess.CompletedProcess:
    """``dmattack *args`` in a fresh process with ``site`` on its path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(site)]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "200",
           "DMATTACK_CACHE": str(tmp / "cache")}
    env.pop("DMATTACK_DEBUG", None)
    return subprocess.run([sys.executable, "-c", "import sys, cli; sys.argv[0] = 'dmattack'; "
                           "cli.main()", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
