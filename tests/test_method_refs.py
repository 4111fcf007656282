"""The repository's method spec, docs/method.md, is self-contained and every citation of it
resolves: ``docs/method.md §N`` (or §N.M) anywhere in a .py or .md file names a section heading
that exists, and nothing cites a spec or folder outside the repository."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD_DOC = ROOT / "docs" / "method.md"
SUFFIXES = (".py", ".md")
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "runs", "reports", "__pycache__",
             ".pytest_cache", ".ruff_cache"}

HEADING = re.compile(r"^#{2,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)
SECTION = r"\d+(?:\.\d+)*"
# "docs/method.md §6.1", "`docs/method.md` §8", "docs/method.md §3–§4", "docs/method.md §6, §11"
CITATION = re.compile(
    rf"docs/method\.md`?\s*(§\s*{SECTION}(?:\s*(?:[–-]|,|and|or)\s*§?\s*{SECTION})*)")
INTERNAL = re.compile(rf"§\s*({SECTION})")
# Split so that this file does not match itself.
FORBIDDEN = {
    "the outside spec (cite docs/method.md §N instead)": re.compile(r"\bMETH" r"OD\b"),
    "a folder outside the repository": re.compile("shared" "/"),
}
# The section numbering every citation relies on (same numbers as the paper-derived spec).
TOP_SECTIONS = [str(n) for n in range(15)]  # §14: robustness-card headline numbers
SUBSECTIONS = ["3.1", "3.2", "6.1", "6.2"] + [f"10.{n}" for n in range(1, 15)]


def repo_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored .py/.md files (a plain walk without git)."""
    if shutil.which("git") and (ROOT / ".git").exists():
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, capture_output=True, check=True).stdout.decode()
        paths = [ROOT / p for p in out.split("\0") if p]
    else:
        paths = [p for p in ROOT.rglob("*")
                 if not any(part in SKIP_DIRS or part.endswith(".egg-info")
                            for part in p.relative_to(ROOT).parts)]
    return sorted(p for p in paths if p.suffix in SUFFIXES and p.is_file())


def sections() -> set[str]:
    return set(HEADING.findall(METHOD_DOC.read_text(encoding="utf-8")))


def line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def test_method_doc_has_the_fixed_numbering():
    found = HEADING.findall(METHOD_DOC.read_text(encoding="utf-8"))
    top = [s for s in found if "." not in s]
    assert top == TOP_SECTIONS, f"docs/method.md top-level sections {top} != {TOP_SECTIONS}"
    missing = [s for s in SUBSECTIONS if s not in found]
    assert not missing, f"docs/method.md lacks the subsections {missing}"
    assert len(found) == len(set(found)), "docs/method.md numbers a section twice"


def test_every_method_citation_names_an_existing_section():
    known = sections()
    bad = []
    for path in repo_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in CITATION.finditer(text):
            for number in re.findall(SECTION, m.group(1)):
                if number not in known:
                    bad.append(f"{path.relative_to(ROOT)}:{line_of(text, m.start())}: "
                               f"§{number} ({m.group(0)!r})")
    assert not bad, "citations of missing docs/method.md sections:\n" + "\n".join(bad)


def test_method_doc_internal_references_resolve():
    known = sections()
    text = METHOD_DOC.read_text(encoding="utf-8")
    bad = [f"docs/method.md:{line_of(text, m.start())}: §{m.group(1)}"
           for m in INTERNAL.finditer(text) if m.group(1) not in known]
    assert not bad, "docs/method.md refers to sections it does not have:\n" + "\n".join(bad)


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_nothing_cites_outside_the_repository(what):
    pattern = FORBIDDEN[what]
    hits = []
    for path in repo_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace")
                                 .splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, f"{len(hits)} lines cite {what}:\n" + "\n".join(hits)
