"""Load the upstream `tomesd` 0.1.3 package under another module name, for side-by-side runs.

Our package is also called `tomesd`, so upstream is unpacked from its PyPI wheel into a cache
folder as `tomesd_upstream` (its imports are relative, so the rename is safe).
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Optional

UPSTREAM_VERSION = "0.1.3"
MODULE_NAME = "tomesd_upstream"


def upstream_dir() -> Path:
    """Folder that holds `tomesd_upstream/` (env BIGAIN_UPSTREAM_DIR or ~/.cache/bigain/upstream)."""
    default = Path.home() / ".cache" / "bigain" / "upstream"
    return Path(os.environ.get("BIGAIN_UPSTREAM_DIR", default))


def install_upstream(target: Optional[Path] = None, wheel: Optional[Path] = None) -> Path:
    """Unpack upstream tomesd (a given wheel, or `pip download`ed) into `target/tomesd_upstream`."""
    target = Path(target or upstream_dir())
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", f"tomesd=={UPSTREAM_VERSION}", "--no-deps",
                            "--only-binary=:all:", "-q", "-d", tmp], check=True)
            wheel = next(Path(tmp).glob("tomesd-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(Path(tmp) / "unpacked")
        dest = target / MODULE_NAME
        shutil.rmtree(dest, ignore_errors=True)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copytree(Path(tmp) / "unpacked" / "tomesd", dest)
    return dest


def load_upstream() -> Optional[ModuleType]:
    """The upstream package as `tomesd_upstream`, or None when it has not been unpacked."""
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    root = upstream_dir()
    if not (root / MODULE_NAME / "__init__.py").exists():
        return None
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(MODULE_NAME)
    finally:
        sys.path.remove(str(root))


if __name__ == "__main__":
    print(install_upstream())
