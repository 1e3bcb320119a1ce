"""The house rules of CONTRIBUTING.md "Layers", checked on the source: one direction, no cycles (imports inside
functions included), no borrowed private names, and a package import that stays light."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "featbench"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, current: str, level: int, is_package: bool) -> str:
    if not level:
        return name
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(modules: dict[str, Path]):
    """(importer, imported module, imported name or None) for every featbench import, at any depth."""
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield mod, alias.name, None
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node.module or "", mod, node.level, is_package)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    yield (mod, full, None) if full in modules else (mod, base, alias.name)


def _owner(name: str, modules) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_no_import_cycles_even_through_imports_inside_functions():
    modules = _modules()
    graph = defaultdict(set)
    for mod, target, _ in _imports(modules):
        owner = _owner(target, modules) if target.startswith("featbench") else None
        if owner and owner != mod and not mod.startswith(owner + "."):  # a package's own __init__ is not a cycle
            graph[mod].add(owner)
    seen, stack, cycles = {}, [], []

    def visit(node):
        seen[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if seen.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = "done"

    for m in list(modules):
        if m not in seen:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_no_module_takes_another_modules_private_names():
    modules = _modules()
    borrowed = []
    for mod, target, name in _imports(modules):
        if not target.startswith("featbench"):
            continue
        owner = _owner(target, modules)
        leaf = (name or target.rpartition(".")[2])
        if leaf.startswith("_") and not leaf.startswith("__"):
            same_package = owner and owner.rpartition(".")[0] == mod.rpartition(".")[0] and name is None
            inside = owner and (owner.startswith(mod + ".") or mod.startswith(owner.rpartition(".")[0] + ".")) and name is None
            if not (same_package or inside):  # a package may use its own private modules (sklearn's layout)
                borrowed.append(f"{mod} takes {target}{'.' + name if name else ''}")
    assert not borrowed, "\n".join(borrowed)


def test_layers_contract_is_kept():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(lint).exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([lint], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_import_featbench_is_light_and_the_api_loads_lazily():
    code = ("import sys, featbench; heavy = [m for m in ('torch', 'h5py', 'open_clip', 'pandas', 'sklearn') "
            "if m in sys.modules]; assert not heavy, heavy; "
            "assert set(featbench.__all__) <= set(dir(featbench)); "
            "f = featbench.evaluate; assert callable(f) and 'featbench.api' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
