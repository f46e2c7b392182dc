"""The import layering, read from the source (AST, function-local imports included).

    models/   imports neither datagen/ nor train/
    datagen/  imports models/ at most, never train/
    train/    imports anything below it

and no import cycle among first-party modules. A failure names the file, the line and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "datagen", "train")
# what each layer may import (besides itself)
ALLOWED = {"models": set(), "datagen": {"models"}, "train": {"models", "datagen"}}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: Path, name: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import statement in the file, at any depth."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import submodule` imports the submodule
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def _first_party_edges() -> dict[str, list[tuple[int, str]]]:
    mods = _modules()
    edges: dict[str, list[tuple[int, str]]] = {}
    for name, path in mods.items():
        seen = []
        for line, target in _imports(path, name):
            if target.split(".")[0] in PACKAGES and target in mods and target != name:
                seen.append((line, target))
        edges[name] = seen
    return edges


def test_every_module_parses_and_the_walk_sees_them():
    mods = _modules()
    assert "train.cli" in mods and "datagen.stream" in mods and "models.io" in mods


@pytest.mark.parametrize("layer", PACKAGES)
def test_a_layer_imports_only_the_layers_below_it(layer):
    bad = []
    for name, path in _modules().items():
        if name.split(".")[0] != layer:
            continue
        for line, target in _imports(path, name):
            top = target.split(".")[0]
            if top in PACKAGES and top != layer and top not in ALLOWED[layer]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: imports {target}")
    assert not bad, f"{layer}/ may import only {sorted(ALLOWED[layer]) or 'nothing first-party'}:\n" + "\n".join(bad)


def test_no_import_cycles_among_first_party_modules():
    edges = _first_party_edges()
    # a package __init__ that re-exports from its own submodules is the package's face, not a cycle:
    # `train.gift` -> `train.gift.module` -> `train.gift.losses` is fine, so drop edges parent -> child
    graph = {m: sorted({t for _, t in es if not t.startswith(m + ".")}) for m, es in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, []):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    lines = []
    for c in cycles:
        hops = []
        for a, b in zip(c, c[1:]):
            line = next(ln for ln, t in edges[a] if t == b)
            hops.append(f"{_modules()[a].relative_to(ROOT)}:{line} imports {b}")
        lines.append(" -> ".join(hops))
    assert not cycles, "import cycles:\n" + "\n".join(lines)


def test_the_synthloop_entry_point_imports_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, train.cli; heavy = [m for m in ('torch', 'pytorch_lightning', 'numpy', 'open_clip') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"`import train.cli` pulls in {out.stdout.strip()}"
