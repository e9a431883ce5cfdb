"""The import layering of the README's architecture section, checked on every first-party module.

    tomesd  <-  bigain libraries  <-  eval  <-  entry points (bigain CLIs and runs, eval/**/__main__.py)

A module may import from its own layer and the layers to its left, never to its right; and
first-party imports sit at module top (a function-local import hides a dependency from readers
and from this test), except in the few modules listed in LOCAL_IMPORT_OK with the reason.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tomesd", "bigain", "eval")
ENGINE, LIBRARY, EVAL, ENTRY = 0, 1, 2, 3
LAYER_NAMES = {ENGINE: "tomesd (engine)", LIBRARY: "bigain library", EVAL: "eval", ENTRY: "entry point"}
# bigain modules that are entry points: they parse a command line or chain runs, and may use eval.
BIGAIN_ENTRY_POINTS = {
    "bigain.cli", "bigain.runs", "bigain.classify", "bigain.generate", "bigain.benchmark",
    "bigain.benchmark_outputs", "bigain.sweep", "bigain.demo", "bigain.make_prompts", "bigain.sensitivity",
}


def module_name(path: Path) -> str:
    """Dotted module name of a file under ROOT ('eval.speed.__main__', 'bigain.runs')."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    """Layer of a first-party module by the rule above."""
    top = module.split(".")[0]
    if top == "tomesd":
        return ENGINE
    if module.endswith(".__main__") or module.split(".")[-1] == "__main__":
        return ENTRY
    if top == "eval":
        return EVAL
    if any(module == m or module.startswith(m + ".") for m in BIGAIN_ENTRY_POINTS):
        return ENTRY
    return LIBRARY


def first_party_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def resolve(node: ast.ImportFrom | ast.Import, module: str, is_package: bool) -> list[str]:
    """Absolute first-party module names an import statement refers to."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = [base]
    return [n for n in names if n.split(".")[0] in PACKAGES]


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for each first-party import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module, is_package = module_name(path), path.name == "__init__.py"
    top_level = {id(n) for n in tree.body}
    # imports under a module-level `if TYPE_CHECKING:` / try block still count as module level
    for n in tree.body:
        if isinstance(n, (ast.If, ast.Try)):
            top_level.update(id(c) for c in ast.walk(n))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in resolve(node, module, is_package):
                found.append((name, node.lineno, id(node) in top_level))
    return found


def test_the_rule_classifies_modules_as_the_readme_says():
    assert layer_of("tomesd.reducers.tome") == ENGINE
    assert layer_of("bigain.datasets") == LIBRARY
    assert layer_of("eval.metrics") == EVAL
    assert layer_of("eval.speed.__main__") == ENTRY
    assert layer_of("bigain.runs.classification") == ENTRY
    assert resolve(ast.parse("from ..rng import X").body[0], "tomesd.reducers.base", False) == ["tomesd.rng"]
    assert resolve(ast.parse("from . import timing").body[0], "eval.speed", True) == ["eval.speed"]


@pytest.mark.parametrize("path", first_party_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path: Path):
    module = module_name(path)
    mine = layer_of(module)
    bad = [f"line {line}: imports {name} ({LAYER_NAMES[layer_of(name)]})"
           for name, line, _ in imports_of(path) if layer_of(name) > mine]
    assert not bad, f"{module} ({LAYER_NAMES[mine]}) imports a later layer:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", first_party_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_first_party_imports_at_module_top(path: Path):
    local = [f"line {line}: {name}" for name, line, at_top in imports_of(path) if not at_top]
    assert not local, f"{module_name(path)} imports first-party modules inside functions:\n" + "\n".join(local)
