"""The layering of docs/architecture.md, checked on the source: the CLI layer is a leaf, packages form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "dcd_itr"


def imported_modules(path: Path) -> set[str]:
    """Every absolute ``dcd_itr...`` module a file imports, at any level of the file (``from dcd_itr import x``
    counts as ``dcd_itr.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return {name for name in found if name.split(".")[0] == "dcd_itr"}


def unit(path: Path) -> str:
    """The package-level unit of a source file: ``models/dual.py`` -> ``models``, ``features.py`` -> ``features``."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def test_only_the_cli_imports_the_commands_layer() -> None:
    library = [p for p in PACKAGE.rglob("*.py") if unit(p) not in ("commands", "cli")]
    scripts = list((ROOT / "benchmarks").glob("*.py")) + list((ROOT / "examples").glob("*.py"))
    offenders = [
        str(path.relative_to(ROOT))
        for path in library + scripts
        if any(name.startswith("dcd_itr.commands") for name in imported_modules(path))
    ]
    assert offenders == []


def test_packages_import_each_other_without_a_cycle() -> None:
    units = {unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    edges: dict[str, set[str]] = {name: set() for name in units}
    for path in PACKAGE.rglob("*.py"):
        source = unit(path)
        for name in imported_modules(path):
            target = name.split(".")[1] if name.count(".") else None
            if target in units and target != source and source != "__init__":
                edges[source].add(target)
    finished: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:  # depth-first; a unit met again on the stack is a cycle
        assert name not in stack, f"import cycle: {' -> '.join([*stack[stack.index(name) :], name])}"
        if name not in finished:
            for target in sorted(edges[name]):
                visit(target, [*stack, name])
            finished.add(name)

    for name in sorted(units):
        visit(name, [])
