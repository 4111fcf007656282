"""The import structure of dmattack and evaluators, read from the code (``ast``, nothing run).

- No import cycle, counting the imports inside functions too (a cycle through a function-level
  import does not fail at import time, but it ties two modules into one room all the same).
- ``evaluators/`` sits below dmattack's evaluation layer: it imports only dmattack's
  foundations (:data:`FOUNDATIONS`: errors, files, hashing, statistics, registries), which
  import nothing else of dmattack and nothing of evaluators. So the evaluation layer imports
  evaluators, never the reverse.
- Training does not reach the attack package or torchattacks.
- A public name is defined by one module of dmattack only (re-exports are imports, not
  definitions), and no class takes the name of a typing/stdlib name (``Protocol``).

``if TYPE_CHECKING:`` blocks never run and are left out. The graph is printed by
``python tests/test_import_structure.py`` (one ``module -> imported`` line per edge).
"""

import abc
import ast
import builtins
import collections.abc
import contextlib
import dataclasses
import enum
import functools
import pathlib
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dmattack", "evaluators")
FOUNDATIONS = frozenset({
    "dmattack", "dmattack.core", "dmattack.core.errors", "dmattack.core.io",
    "dmattack.core.hashing", "dmattack.core.stats", "dmattack.core.registry", "dmattack.core.text",
    "dmattack.core.oserrors", "dmattack.core.checkout", "dmattack.core.settings",
    "dmattack.core.option_types", "dmattack.core.entry_options",
})
"""dmattack's bottom layer: the only dmattack modules ``evaluators/`` may import."""
TRAINING = tuple(f"dmattack.training.{p.stem}" for p in sorted((ROOT / "dmattack" / "training")
                                                                 .glob("[!_]*.py")))
"""Every module of the training package."""
STDLIB_CLASS_NAMES = frozenset(
    name for module in (typing, collections.abc, abc, dataclasses, enum, functools, pathlib,
                        contextlib)
    for name in getattr(module, "__all__", dir(module)) if not name.startswith("_")
) | frozenset(n for n in dir(builtins) if not n.startswith("_"))
"""Names a class of ours must not take: a reader would take it for the standard one."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, target] if target else base)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk(node: ast.AST, inside_functions: bool) -> Iterator[ast.AST]:
    """Every node under ``node`` that runs: ``if TYPE_CHECKING:`` bodies left out, function
    bodies only when ``inside_functions``."""
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            yield from (n for c in child.orelse for n in (c, *_walk(c, inside_functions)))
            continue
        if not inside_functions and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        yield child
        yield from _walk(child, inside_functions)


def _targets(node: ast.AST, name: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The modules (ours, by full name; others by top-level name) one import statement names."""
    if isinstance(node, ast.Import):
        return [a.name if a.name.split(".")[0] in PACKAGES else a.name.split(".")[0]
                for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if not node.level and node.module.split(".")[0] not in PACKAGES:
        return [node.module.split(".")[0]]
    base = _resolve(name, is_package, node.level, node.module) if node.level else node.module
    # `from pkg import sub` imports the submodule pkg.sub when there is one
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def import_graph(inside_functions: bool = True) -> dict[str, set[str]]:
    """module → what it imports: our modules by full name, third-party ones by top-level name
    (e.g. ``torchattacks``); with ``inside_functions``, imports in function bodies count."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in _walk(ast.parse(path.read_text()), inside_functions):
            edges.update(t for t in _targets(node, name, is_package, modules) if t != name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, …, a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            # a package's __init__ importing its own submodules is how packages work; a
            # submodule reaching back to its package is resolved to the submodule it names
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def reach(graph: dict[str, set[str]], start: str) -> dict[str, str | None]:
    """Everything importing ``start`` executes, each mapped to the module that imports it (for
    the chain in a message). Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` too."""
    seen: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        parents = [".".join(parts[:i]) for i in range(1, len(parts))]
        for nxt in (*graph.get(module, ()), *(p for p in parents if p in graph)):
            if nxt not in seen:
                seen[nxt] = module
                todo.append(nxt)
    return seen


def chain_to(seen: dict[str, str | None], end: str) -> str:
    links = [end]
    while seen[links[-1]] is not None:
        links.append(seen[links[-1]])
    return " → ".join(reversed(links))


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_graph_reads_function_level_and_skips_type_checking_imports():
    graph = import_graph()
    assert graph["dmattack.training.train"] >= {"dmattack.runs.checkpoints",
                                                "dmattack.training.config", "torch"}
    # dmattack.evaluation.metrics imports evaluators only inside functions
    assert "evaluators" in graph["dmattack.evaluation.metrics"]
    assert "evaluators" not in import_graph(inside_functions=False)["dmattack.evaluation.metrics"]
    # train_stop names TrainConfig only for type checking
    assert "dmattack.training.config" not in import_graph(inside_functions=False)[
        "dmattack.training.stop"]


def test_no_import_cycle():
    """No cycle, module-level or through an import inside a function."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_evaluators_import_only_dmattack_foundations():
    """evaluators/ is below dmattack's evaluation layer: of dmattack it imports only the
    foundations, and those import neither evaluators nor the rest of dmattack."""
    graph = import_graph()
    ours = [m for m in graph if m.split(".")[0] in PACKAGES]
    upward = sorted(f"{m} → {t}" for m in ours if m.split(".")[0] == "evaluators"
                    for t in graph[m] if t.split(".")[0] == "dmattack" and t not in FOUNDATIONS)
    assert not upward, "evaluators imports dmattack above its foundations: " + ", ".join(upward)
    for foundation in sorted(FOUNDATIONS):
        seen = reach(graph, foundation)
        above = sorted(m for m in seen if m.split(".")[0] in PACKAGES and m not in FOUNDATIONS)
        assert not above, (f"foundation {foundation} reaches "
                           + ", ".join(chain_to(seen, m) for m in above))


@pytest.mark.parametrize("module", TRAINING)
def test_training_does_not_reach_attack_machinery(module):
    """Training needs the perturbation maths (dmattack.diffusion.perturbation), not the attack
    package
    or torchattacks, not even through an import inside a function."""
    seen = reach(import_graph(), module)
    bad = [m for m in seen if m == "torchattacks" or m.startswith("dmattack.attacks")]
    assert not bad, "training reaches attack machinery: " + chain_to(seen, sorted(bad)[0])


def test_runs_does_not_need_train():
    """Not even inside a function: train builds on runs, never the other way round."""
    assert "dmattack.training.train" not in reach(import_graph(), "dmattack.runs.checkpoints")


def test_reach_follows_parent_packages():
    seen = reach({"a.b.c": set(), "a.b": {"x"}, "a": set(), "x": set()}, "a.b.c")
    assert set(seen) == {"a.b.c", "a.b", "a", "x"}
    assert chain_to(seen, "x") == "a.b.c → a.b → x"


def _definitions(tree: ast.Module) -> Iterator[tuple[str, bool]]:
    """(name, is_class) of each top-level class, function and constant/type alias (an
    assignment to a name that is not all lower case) of a module; imports are not
    definitions. Bodies of top-level ``if``/``try`` count, ``if TYPE_CHECKING`` does not."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.If) and not _is_type_checking(node):
            todo.extend([*node.body, *node.orelse])
        elif isinstance(node, ast.Try):
            todo.extend([*node.body, *node.orelse, *node.finalbody,
                         *(n for h in node.handlers for n in h.body)])
        elif isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, isinstance(node, ast.ClassDef)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if _is_typevar(node.value):
                continue  # a type variable (``T``) is local to its module's annotations
            for t in targets:
                if isinstance(t, ast.Name) and t.id != t.id.lower():
                    yield t.id, False


def _is_typevar(value: ast.expr | None) -> bool:
    return (isinstance(value, ast.Call)
            and ast.unparse(value.func).split(".")[-1] in ("TypeVar", "ParamSpec"))


def public_definitions(package: str = "dmattack") -> dict[str, list[str]]:
    """Public name → the modules of ``package`` that define it."""
    where: dict[str, list[str]] = {}
    for name, path in _modules().items():
        if name.split(".")[0] != package:
            continue
        names = {n for n, _ in _definitions(ast.parse(path.read_text())) if not n.startswith("_")}
        for n in names:
            where.setdefault(n, []).append(name)
    return where


def test_definitions_reader_on_a_planted_module():
    tree = ast.parse("import os\nfrom x import Y\nclass A: pass\ndef f(): pass\nK = 1\n"
                     "Alias = int\nT = TypeVar('T')\nlog = 2\nif True:\n    B = 3\n"
                     "try:\n    C = 1\nexcept Exception:\n    C = 2\n")
    assert sorted(_definitions(tree)) == [("A", True), ("Alias", False), ("B", False),
                                          ("C", False), ("C", False), ("K", False),
                                          ("f", False)]


def test_public_names_are_defined_once():
    """Two modules defining the same public name (two ``AttackPlan``) make an import's meaning
    depend on where it comes from; re-exports (imports) are fine."""
    clashes = {n: ms for n, ms in public_definitions().items() if len(ms) > 1}
    assert not clashes, "defined by several modules: " + "; ".join(
        f"{n} ({', '.join(ms)})" for n, ms in sorted(clashes.items()))


def test_no_class_named_like_a_standard_name():
    bad = sorted(f"{m}.{n}" for m, path in _modules().items() if m.split(".")[0] in PACKAGES
                 for n, is_class in _definitions(ast.parse(path.read_text()))
                 if is_class and n in STDLIB_CLASS_NAMES)
    assert not bad, "classes named like a typing/stdlib name: " + ", ".join(bad)


@pytest.mark.slow
@pytest.mark.parametrize("first", ["dmattack.runs.checkpoints", "evaluators"])
def test_each_module_imports_first_in_a_fresh_process(first):
    """Importing a module first (before anything else) works: the order a cycle breaks."""
    code = f"import {first}; import dmattack.training.train, dmattack.runs.checkpoints, cli"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]


if __name__ == "__main__":
    for module, imported in sorted(import_graph().items()):
        for target in sorted(imported):
            print(module, "->", target)


# ------------------------------------------------------------------------------- layers
LAYERS = {
    "dmattack.core": 0, "evaluators": 1, "dmattack.diffusion": 1, "dmattack.models": 1,
    "dmattack.data": 1, "dmattack.runs": 2, "dmattack.training": 2, "dmattack.attacks": 3,
    "dmattack.purification": 3, "dmattack.evaluation": 4, "dmattack.commands": 5,
    "dmattack.card": 5, "dmattack.demo": 5,
}
"""The layers of docs/architecture.md, bottom (0) to top: a package imports only packages of
lower layers (and itself)."""
SAME_LAYER = {("dmattack.training", "dmattack.runs"),
              ("dmattack.runs.config", "dmattack.training.config")}
"""The arrows allowed within a layer (docs/architecture.md): the training loop saves and
resumes through runs (any module); runs validates a run's ``train`` section with the training
config module only."""


def layer_of(module: str) -> str | None:
    """The :data:`LAYERS` package holding ``module`` (None: the ``dmattack`` package face, or
    not ours)."""
    return next((p for p in LAYERS if module == p or module.startswith(p + ".")), None)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``module -> target`` edges of ``graph`` that run up the layers, or across packages of one
    layer other than :data:`SAME_LAYER`."""
    bad = []
    for module, targets in graph.items():
        src = layer_of(module)
        for target in targets:
            dst = layer_of(target)
            if src is None or dst is None or src == dst or LAYERS[dst] < LAYERS[src]:
                continue
            if LAYERS[dst] == LAYERS[src] and ({(src, dst), (module, target)} & SAME_LAYER):
                continue
            bad.append(f"{module} -> {target}")
    return sorted(bad)


def test_every_module_is_in_a_layer():
    """A new module of dmattack goes into one of the layers (the top level holds only the
    package face)."""
    loose = [m for m in _modules() if m != "dmattack" and layer_of(m) is None]
    assert not loose, f"modules outside the layers of docs/architecture.md: {loose}"


def test_imports_run_down_the_layers():
    """Module-level and function-level imports alike."""
    bad = layer_violations(import_graph())
    assert not bad, "imports up or across the layers: " + "; ".join(bad)


def test_layer_check_finds_planted_violations():
    planted = {"dmattack.core.io": {"dmattack.attacks.chain", "dmattack.core.errors"},
               "dmattack.runs.checkpoints": {"dmattack.training.train"},
               "dmattack.runs.config": {"dmattack.training.config"},
               "dmattack.training.train": {"dmattack.runs.checkpoints"},
               "dmattack.attacks.chain": {"dmattack.purification.attacks"}}
    assert layer_violations(planted) == [
        "dmattack.attacks.chain -> dmattack.purification.attacks",
        "dmattack.core.io -> dmattack.attacks.chain",
        "dmattack.runs.checkpoints -> dmattack.training.train"]
