"""Documentation that is generated must match the code."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current():
    # a fresh interpreter: click caches each command's help option once a context was made
    # with other settings (as other tests do), which would change the rendered text
    code = ("import runpy, sys; sys.stdout.write(runpy.run_path(sys.argv[1])['render']())")
    script = str(ROOT / "scripts" / "cli_reference.py")
    rendered = subprocess.run([sys.executable, "-c", code, script], capture_output=True,
                              text=True, check=True, cwd=ROOT).stdout
    assert (ROOT / "docs" / "cli.md").read_text() == rendered, (
        "docs/cli.md is stale: run `python scripts/cli_reference.py`")
