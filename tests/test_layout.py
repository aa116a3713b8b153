"""The package's layering, read from its source with ``ast``: imports point one way.

Every ``import`` of a transferscope module counts, at any depth of the file (function-level ones
too) but for ``if TYPE_CHECKING:`` blocks, which never run."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import transferscope

ROOT = Path(transferscope.__file__).parent
#: function-level imports of the package's own modules that are allowed, and why
LATE = {
    ("transferscope.driver", "transferscope.ray_executor"): "Ray is an optional dependency",
    # the command imports what needs torch in the commands that use it: --help, and `report` on an
    # unchanged study (answered from its stamp), start in a fraction of a second
    **{("transferscope.cli", f"transferscope.{m}"): "torch only where a command needs it"
       for m in ("analysis.estimate", "data", "data.standin", "disk", "driver", "dryrun", "models", "record", "report",
                 "stats", "store", "study")},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The module an imported name lives in (``a.b.c`` may be a function c of module a.b)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported module, whether the import is inside a function) for each import of the package."""
    tree = ast.parse(MODULES[module].read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` bodies never run
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {id(n) for n in ast.walk(node) if n is not node}
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        targets = {resolve(n) for n in names if n.startswith("transferscope")} - {None, module}
        out += [(t, id(node) in inside) for t in targets]
    return out


def graph() -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(MODULES)
    for m in MODULES:
        g.add_edges_from((m, t) for t, _ in imports(m))
    return g


def test_the_modules_import_one_another_without_a_cycle():
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph()) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_function_level_imports_are_only_the_declared_ones():
    late = {(m, t) for m in MODULES for t, inside in imports(m) if inside}
    assert late == set(LATE), f"undeclared: {sorted(late - set(LATE))}; no longer needed: {sorted(set(LATE) - late)}"


def test_a_study_imports_nothing_above_its_data_models_and_treatments():
    """study.py (the plan bound to its data) sits below the driver, executors, analyses and report."""
    below = {"transferscope.atomic", "transferscope.config", "transferscope.errors", "transferscope.seeds",
             "transferscope.store", "transferscope.record", "transferscope.sources", "transferscope.surgery", "transferscope.train", "transferscope.features",
             "transferscope.treatments", "transferscope.precision"}
    reached = nx.descendants(graph(), "transferscope.study")
    above = {m for m in reached if m not in below and not m.startswith(("transferscope.data", "transferscope.models"))}
    assert not above, f"study.py reaches {sorted(above)}"


def test_analyses_compute_and_the_report_writes():
    """analysis/ returns tables and dataclasses; every word and figure is report/'s: nothing in
    analysis/ imports report/ (report/ imports analysis/)."""
    g = graph()
    up = [(m, t) for m, t in g.edges if m.startswith("transferscope.analysis") and t.startswith("transferscope.report")]
    assert not up, up


def test_only_the_command_and_the_package_entry_import_the_driver():
    g = graph()
    assert set(g.predecessors("transferscope.driver")) == {"transferscope.cli"}
    # the package entry names it for its lazy attributes (PEP 562), read by name rather than imported
    assert transferscope._EXPORTS["run_study"] == "driver"


def test_the_readme_map_names_every_module():
    """README's "Where things are" names every module of the package and every folder: a newcomer
    finds each file from it."""
    readme = (ROOT.parents[1] / "README.md").read_text()
    start = readme.index("## Where things are")
    block = readme[start:readme.index("```\n", readme.index("```", start) + 3)]
    unnamed = [str(p.relative_to(ROOT)) for p in sorted(ROOT.rglob("*.py"))
               if p.name not in ("__init__.py", "__main__.py") and p.name not in block]
    folders = [f"{p.name}/" for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    assert not unnamed and all(f in block for f in folders), (unnamed, [f for f in folders if f not in block])
