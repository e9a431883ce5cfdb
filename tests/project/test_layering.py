"""The import layering of the README's architecture section, checked on every first-party module.

    tomesd (engine)  <-  bigain's subpackages (libraries)  <-  eval  <-  commands

Each module's layer follows from its path alone: `tomesd/**` is the engine; a module directly in `bigain/`
(other than `__init__`), anything under `bigain/runs/` (the commands' Python face) and every `__main__.py` is a
command; the rest of `eval/**` is eval; the rest of `bigain/**` is a library. A module may import from its own
layer and the layers to its left, never to its right; and first-party imports sit at module top (a
function-local import hides a dependency from readers and from this test).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tomesd", "bigain", "eval")
ENGINE, LIBRARY, EVAL, COMMAND = 0, 1, 2, 3
LAYER_NAMES = {ENGINE: "tomesd (engine)", LIBRARY: "bigain library", EVAL: "eval", COMMAND: "command"}


def module_name(path: Path) -> str:
    """Dotted module name of a file under ROOT ('eval.speed.__main__', 'bigain.runs')."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def module_path(module: str) -> Path:
    """The file of a first-party module name: its package's `__init__.py` or its `.py` file."""
    package = ROOT.joinpath(*module.split(".")) / "__init__.py"
    return package if package.exists() else ROOT.joinpath(*module.split(".")).with_suffix(".py")


def layer_of(module: str) -> int:
    """Layer of a first-party module, read from its path by the rule above."""
    rel = module_path(module).relative_to(ROOT)
    top = rel.parts[0]
    if top == "tomesd":
        return ENGINE
    if rel.name == "__main__.py":
        return COMMAND
    if top == "eval":
        return EVAL
    if len(rel.parts) == 2 and rel.name != "__init__.py" or rel.parts[1] == "runs":
        return COMMAND
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
    assert layer_of("bigain") == LIBRARY
    assert layer_of("bigain.data") == LIBRARY
    assert layer_of("bigain.data.datasets") == LIBRARY
    assert layer_of("bigain.testbed.train") == LIBRARY
    assert layer_of("eval.metrics") == EVAL
    assert layer_of("eval.report.benchmark_outputs") == EVAL
    assert layer_of("eval.speed.__main__") == COMMAND
    assert layer_of("bigain.classify") == COMMAND
    assert layer_of("bigain.runs") == COMMAND
    assert layer_of("bigain.runs.classification") == COMMAND
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


@pytest.mark.parametrize("path", sorted((ROOT / "bigain").glob("*.py")), ids=lambda p: p.name)
def test_bigain_top_level_holds_only_commands(path: Path):
    """A file directly in bigain/ is a command (a `main` run under `__main__`); a library belongs in a subpackage."""
    if path.name == "__init__.py":
        return
    tree = ast.parse(path.read_text(), filename=str(path))
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    runs_as_main = any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)
    assert "main" in functions and runs_as_main, f"{path.name} is not a command: move it into a bigain subpackage"


def imported_modules(path: Path) -> set[str]:
    """First-party modules a file imports at module level; `from package import submodule` names the submodule."""
    module, is_package = module_name(path), path.name == "__init__.py"
    found = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for base in resolve(node, module, is_package):
                subs = [f"{base}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
                found.update([s for s in subs if module_path(s).exists()] or [base])
    return found - {module}


def test_no_import_cycles_among_first_party_modules():
    """No first-party module reaches itself through module-level imports (e.g. eval.speed.op_count <-> timing)."""
    graph = {module_name(path): imported_modules(path) for path in first_party_modules()}
    cycles = []

    def visit(node: str, stack: list[str], on_stack: set[str], done: set[str]) -> None:
        on_stack.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, stack, on_stack, done)
        stack.pop()
        on_stack.discard(node)
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [], set(), done)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
