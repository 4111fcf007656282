"""Size limits of the code (issue 19; docs/architecture.md): no module of ``dmattack/`` over
:data:`MAX_MODULE_LINES` lines, no function (nested ones and methods included) of
``dmattack/``, ``evaluators/`` or ``cli.py`` over :data:`MAX_FUNCTION_LINES` lines, counted
from its ``def`` line to its last line (decorators excluded, docstring included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def _sources(*tops: str) -> list[Path]:
    files: list[Path] = []
    for top in tops:
        path = ROOT / top
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def long_modules(files: list[Path], limit: int = MAX_MODULE_LINES) -> list[str]:
    """``path: N lines`` of every file over ``limit`` lines."""
    out = []
    for f in files:
        n = len(f.read_text(encoding="utf-8").splitlines())
        if n > limit:
            out.append(f"{f.relative_to(ROOT)}: {n} lines")
    return out


def long_functions(files: list[Path], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name: N lines`` of every function or method over ``limit`` lines."""
    out = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    return out


def test_the_counters_find_planted_long_code(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    body = "".join(f"\n    x{i} = {i}" for i in range(59))
    (tmp_path / "m.py").write_text(  # lines 1-60: ok, 65-127: long (inner: 125-126)
        f"def ok():{body}\n\n\nclass C:\n    @property\n    def long(self):"
        + body.replace("\n", "\n    ")
        + "\n        def inner():\n            return 1\n        return inner\n")
    files = [tmp_path / "m.py"]
    assert long_functions(files) == ["m.py:65 long: 63 lines"]  # `ok` is exactly 60
    assert long_functions(files, limit=1) == ["m.py:1 ok: 60 lines", "m.py:65 long: 63 lines",
                                              "m.py:125 inner: 2 lines"]
    assert long_modules(files, limit=126) == ["m.py: 127 lines"]
    assert long_modules(files, limit=127) == []


def test_no_module_of_dmattack_over_the_limit():
    too_long = long_modules(_sources("dmattack"))
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: split them by job: {too_long}"


@pytest.mark.parametrize("top", ["dmattack", "evaluators", "cli.py"])
def test_no_function_over_the_limit(top):
    too_long = long_functions(_sources(top))
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"
