"""The product's packages import one way (docs/architecture.md): no arrow up, no circle.

Every import counts, also the lazy ones inside functions and those only for type checking:
each is a dependency a reader has to hold in mind.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import REPO

ROOT = REPO
# lower number = lower layer; a package may import its own modules and lower layers only
LAYERS = {
    "core": 0,  # domain model, params, config, topics, small helpers: imports no stage
    "alerts": 1,  # rules, engine, delivery
    "ingest": 2,  # line protocol (alert lines too), spool, sinks, pipeline, queries
    "gateway": 3,  # the MQTT edge, the message handler, the app's wiring
    "dashboards": 3,  # dashboards as code over the stored schema
    "sim": 4,  # the squad simulator and the demo (runs a gateway)
    "ops": 5,  # the command line and operations tools
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in LAYERS for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The product modules `path` imports (`from pkg import mod` names the module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names
                     if f"{node.module}.{a.name}" in modules] or [node.module]
        else:
            continue
        out.update(n for n in names if n.split(".")[0] in LAYERS)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def test_every_product_package_has_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_import_points_up_or_sideways(package: str) -> None:
    wrong = sorted(
        f"{mod} imports {dep}"
        for mod, deps in _graph().items() if mod.split(".")[0] == package
        for dep in deps
        if (top := dep.split(".")[0]) != package and LAYERS[top] >= LAYERS[package]
    )
    assert wrong == []


def test_no_circle_between_modules() -> None:
    graph = _graph()
    done: set[str] = set()
    path: list[str] = []

    def visit(mod: str) -> list[str] | None:
        if mod in path:
            return [*path[path.index(mod):], mod]
        if mod in done:
            return None
        path.append(mod)
        for dep in sorted(graph.get(mod, ())):
            if (cycle := visit(dep)) is not None:
                return cycle
        path.pop()
        done.add(mod)
        return None

    for mod in sorted(graph):
        cycle = visit(mod)
        assert cycle is None, " → ".join(cycle)


def test_the_checker_sees_lazy_imports() -> None:
    # ops.cli imports the gateway inside a function (fast start-up): still an arrow
    assert "gateway.app" in _graph()["ops.cli"]
