"""The architecture rules that import-linter cannot see (it checks the layers, see pyproject).

- Imports live at module top. A function-body import is allowed only for an optional extra or a
  documented start-up cost, and then the line above it says why (``# Imported here: ...``).
- No import cycles at all between galmock modules (import-linter's acyclic contract looks at
  siblings; this looks at every module).
- The stage registry is the one list of stages: the CLI, ``galmock run`` and the config's
  per-stage sections all follow it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

from galmock.cli import build_parser
from galmock.config import SlurmConfig
from galmock.layout import STAGE_ORDER, RunLayout
from galmock.stages import COMMANDS, STAGE_NAMES, STAGES

PACKAGE = Path(__file__).resolve().parents[1] / "galmock"
REASON = "# Imported here:"


def _body_imports(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every import inside a function or class body of ``path``."""
    lines = path.read_text().splitlines()
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    found.append((inner.lineno, lines[inner.lineno - 1].strip()))
    return sorted(set(found))


def _has_reason(path: Path, lineno: int) -> bool:
    """The import at ``lineno`` is preceded (within its block) by a ``# Imported here:`` line."""
    lines = path.read_text().splitlines()
    for i in range(lineno - 2, max(lineno - 6, -1), -1):
        text = lines[i].strip()
        if text.startswith(REASON):
            return True
        if not (text.startswith(("import ", "from ", "#", "try:")) or text == ""):
            return False
    return False


def test_function_body_imports_say_why() -> None:
    unexplained = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {text}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, text in _body_imports(path)
        if not _has_reason(path, line)
    ]
    assert not unexplained, "imports inside functions without a reason:\n" + "\n".join(unexplained)


def test_the_reason_check_catches_an_unexplained_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import json\n    return json\n")
    good = tmp_path / "good.py"
    good.write_text("def f():\n    # Imported here: an optional extra.\n    import json\n")
    assert [line for line, _ in _body_imports(bad)] == [2]
    assert not _has_reason(bad, 2)
    assert _has_reason(good, 3)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return out


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("galmock")
    # A package's __init__ importing its own children is how a package exposes them; a child
    # importing its package's __init__ back is the cycle that hurts. Drop parent->child edges.
    for module in list(graph.modules):
        for child in graph.find_children(module):
            if graph.direct_import_exists(importer=module, imported=child):
                graph.remove_import(importer=module, imported=child)
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b"]]


def test_one_stage_registry() -> None:
    assert STAGE_NAMES == STAGE_ORDER
    assert {s.kind for s in STAGES} <= {"serial", "mpi", "dask"}
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = list(sub.choices)
    assert commands == [*STAGE_NAMES, "run", "submit", "status", *(s.name for s in COMMANDS),
                        "models"]
    # Per-stage Slurm sections accept exactly the chain's stages.
    assert set(SlurmConfig.model_fields["stages"].annotation.__args__[0].__args__) == set(
        STAGE_ORDER
    )


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_stage_reports_progress_on_an_empty_run(stage, tmp_path: Path) -> None:
    text = stage.progress(RunLayout(tmp_path))
    assert isinstance(text, str) and text
