"""docs/library.md's Python blocks run, in order, against this code (the documented API cannot
drift). Paths under /tmp/ in the docs are moved into the test's temporary folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "library.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[str]:
    return BLOCK.findall(DOC.read_text())


def test_the_docs_have_python_blocks():
    found = blocks()
    assert len(found) >= 10
    assert all(b.strip() for b in found)


@pytest.mark.slow
def test_every_python_block_of_library_md_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("DMATTACK_CACHE", str(tmp_path / "cache"))
    for n, code in enumerate(blocks(), 1):
        code = code.replace("/tmp/", f"{tmp_path}/")
        namespace = {"__name__": f"library_md_block_{n}"}
        try:
            exec(compile(code, f"docs/library.md block {n}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"docs/library.md python block {n} failed: {e!r}\n{code}") from e
    out = capsys.readouterr().out
    assert "fgsm-eps-spread-50% 10 of 20 False" in out
    assert "whole-chain" in out
    assert "trajectory-pgd3-pixel-spread-50% 4 of 8 True" in out
