"""The import rules of docs/ARCHITECTURE.md, enforced for every module of every package.

The rules are read from the table in docs/ARCHITECTURE.md ("Import rules"), so the document and
the check cannot drift apart: a new import that breaks the data path's direction, pulls torch into
a client, or closes a cycle fails here.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
PROJECT_PACKAGES = ("msk", "training", "export", "server", "clients")
HEAVY = ("torch", "torchvision", "ultralytics", "cv2")


@dataclass(frozen=True)
class Layer:
    """One row of the import-rules table."""

    name: str
    paths: tuple[str, ...]
    module_level: frozenset[str]      # layers importable at module level
    in_functions: frozenset[str]      # layers importable inside functions as well
    heavy: str                        # "never" | "yes" | "inside functions only"


@dataclass(frozen=True)
class ImportSite:
    """One import statement: who imports what, and whether at module level."""

    source: str
    line: int
    target: str
    module_level: bool


def _layer_names(text: str) -> set[str]:
    return set(re.findall(r"\b(shared|training|export|server|clients|cli)\b", text))


def _layers() -> list[Layer]:
    text = ARCHITECTURE.read_text()
    section = text.split("## Import rules", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`" in line]
    layers = []
    for row in rows:
        name, paths, allowed, heavy = (cell.strip() for cell in row.strip("|").split("|"))
        if "module level" in allowed:
            top, inner = allowed.split("module level", 1)
            module_level = _layer_names(top)
            in_functions = module_level | _layer_names(inner)
        else:
            module_level = in_functions = _layer_names(allowed)
        layers.append(Layer(name, tuple(re.findall(r"`([^`]+)`", paths)),
                            frozenset(module_level | {name}), frozenset(in_functions | {name}),
                            heavy))
    return layers


LAYERS = _layers()


def _layer_of(relpath: str) -> Layer:
    """The layer owning a file (longest matching path prefix)."""
    best: tuple[int, Layer] | None = None
    for layer in LAYERS:
        for prefix in layer.paths:
            hit = relpath == prefix if not prefix.endswith("/") else relpath.startswith(prefix)
            if hit and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer)
    if best is None:
        raise AssertionError(f"{relpath} belongs to no layer of the import-rules table in "
                             f"{ARCHITECTURE.name}; add it there")
    return best[1]


def _module_name(relpath: str) -> str:
    parts = relpath[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer_of_module(module: str) -> Layer:
    base = module.replace(".", "/")
    for candidate in (base + ".py", base + "/__init__.py"):
        if (ROOT / candidate).exists():
            return _layer_of(candidate)
    raise AssertionError(f"import of {module!r} names no module in the tree")


def _sources() -> list[str]:
    files = []
    for package in PROJECT_PACKAGES:
        files += [str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py")]
    return sorted(files)


def _imports(relpath: str) -> list[ImportSite]:
    tree = ast.parse((ROOT / relpath).read_text(), relpath)
    package = _module_name(relpath) if relpath.endswith("__init__.py") else \
        _module_name(relpath).rpartition(".")[0]
    functions = {id(n) for f in ast.walk(tree)
                 if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f) if n is not f}
    sites = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                targets = [".".join(base + ([node.module] if node.module else []))]
            else:
                targets = [node.module or ""]
        else:
            continue
        for target in targets:
            sites.append(ImportSite(relpath, node.lineno, target, id(node) not in functions))
    return sites


ALL_IMPORTS = [site for path in _sources() for site in _imports(path)]


def test_the_rules_table_is_read() -> None:
    """The table parses into every layer the document names (guards the parser itself)."""
    assert [layer.name for layer in LAYERS] == ["shared", "training", "export", "server",
                                                "clients", "cli"]
    by_name = {layer.name: layer for layer in LAYERS}
    assert "training" not in by_name["clients"].in_functions
    assert "training" in by_name["export"].module_level
    assert "export" in by_name["cli"].in_functions and "export" not in by_name["cli"].module_level


@pytest.mark.parametrize("relpath", _sources())
def test_every_module_follows_the_import_rules(relpath: str) -> None:
    layer = _layer_of(relpath)
    problems = []
    for site in (s for s in ALL_IMPORTS if s.source == relpath):
        top = site.target.split(".")[0]
        if top in HEAVY:
            if layer.heavy == "never" or (layer.heavy.startswith("inside") and site.module_level):
                problems.append(f"{relpath}:{site.line} imports {site.target} ({layer.name}: "
                                f"torch/Ultralytics {layer.heavy})")
            continue
        if top not in PROJECT_PACKAGES:
            continue
        target = _layer_of_module(site.target)
        allowed = layer.module_level if site.module_level else layer.in_functions
        if target.name not in allowed:
            where = "at module level" if site.module_level else "inside a function"
            problems.append(f"{relpath}:{site.line} imports {site.target} ({target.name}) {where}; "
                            f"{layer.name} may import {sorted(allowed)}")
    assert not problems, "\n".join(problems)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _resolve(target: str, modules: set[str]) -> str | None:
    """The project module an import loads (a `from pkg import name` may name a module)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_cycles_between_modules() -> None:
    modules = {_module_name(p) for p in _sources()}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for site in ALL_IMPORTS:
        if not site.module_level or site.target.split(".")[0] not in PROJECT_PACKAGES:
            continue
        source, target = _module_name(site.source), _resolve(site.target, modules)
        # A package's __init__ re-exporting its own submodules is not a cycle of jobs.
        if target and target != source and not target.startswith(source + "."):
            graph[source].add(target)
    assert _cycles(graph) == []


def test_cycle_detector_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_light_layers_load_no_torch_at_run_time() -> None:
    """Importing every shared, server and clients module, and building the CLI, loads no torch."""
    light = [_module_name(p) for p in _sources()
             if _layer_of(p).name in ("shared", "server", "clients")
             and "/backends/" not in p]
    code = ("import importlib, sys, argparse\n"
            f"for m in {light!r}: importlib.import_module(m)\n"
            "import msk.cli\n"
            "msk.cli.build_parser() if hasattr(msk.cli, 'build_parser') else None\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
