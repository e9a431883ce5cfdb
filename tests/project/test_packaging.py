"""A non-editable install carries the shipped weights, data subset and prompt files."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_contains_every_shipped_asset_and_prompt(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, cwd=tmp_path)
    wheel, = tmp_path.glob("bigain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    folders = ("bigain/assets", "bigain/data/prompts")
    shipped = [p for folder in folders for p in (REPO / folder).rglob("*") if p.is_file()]
    assert len(shipped) > 20
    missing = [str(p.relative_to(REPO)) for p in shipped if str(p.relative_to(REPO)) not in names]
    assert not missing, missing
    for package in ("tomesd/__init__.py", "tomesd/reducers/bigain_tm.py", "bigain/benchmark.py",
                    "eval/speed/__main__.py",
                    "eval/metrics/__main__.py", "eval/report/__main__.py"):
        assert package in names
