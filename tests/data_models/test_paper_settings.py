"""The paper's six settings agree everywhere they are written: `bigain.reduction.settings.PAPER_SETTINGS`, the method
configs (configs/methods/*.yaml) and the six example blocks of every driver (scripts/*.sh).

Settings are compared after validation with each method's defaults filled in (`tomesd.options.build_options`),
so a config may spell out a default (`mode: nearest-exact`) but no value may differ.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

import tomesd
from bigain.reduction import LABEL_SHORT, PAPER_METHODS, PAPER_SETTINGS, setting_label, setting_tag
from tomesd.options import as_dict, build_options

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "methods").glob("*.yaml"))
SPEED_CONFIGS = sorted((REPO / "configs" / "methods" / "speed").glob("*.yaml"))
# driver -> the line pattern of its example blocks (one uncommented, five commented)
DRIVERS = {
    "sd_classification.sh": re.compile(r'^(# )?"\$\{RUN\[@\]\}" "\$\{COMMON\[@\]\}" (?P<args>--method .*)$'),
    "dit.sh": re.compile(r'^(# )?"\$\{RUN\[@\]\}" "\$\{COMMON\[@\]\}" (?P<args>--method .*)$'),
    "sd_generation.sh": re.compile(r"^(# )?generate_and_score (?P<tag>\S+) (?P<args>--method .*)$"),
    "dit_generation.sh": re.compile(r"^(# )?generate_and_score (?P<tag>\S+) (?P<args>--method .*)$"),
}


def resolved(method: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Canonical method and every option's value (defaults filled in, validated)."""
    name = tomesd.canonical_name(method)
    return name, as_dict(build_options(tomesd.get_reducer(name).Options, name, dict(options)))


PAPER = [resolved(m, o) for m, o in PAPER_SETTINGS]


def flags_to_setting(args: str) -> tuple[str, dict[str, Any]]:
    """`--method tome --ratio 0.7 "${EXTRA[@]}"` -> ("tome", {"ratio": 0.7}) (values read as YAML scalars)."""
    words = [w for w in shlex.split(args) if not w.startswith("${")]
    assert len(words) % 2 == 0 and all(w.startswith("--") for w in words[::2]), f"unexpected flags: {args!r}"
    options = {k[2:]: yaml.safe_load(v) for k, v in zip(words[::2], words[1::2])}
    return options.pop("method"), options


def example_blocks(script: str) -> list[re.Match]:
    lines = (REPO / "scripts" / script).read_text().splitlines()
    return [m for m in map(DRIVERS[script].match, lines) if m]


def test_paper_settings_table():
    assert PAPER_METHODS == ("none", "tome", "bigain_tm", "todo", "bigain_td", "sito")
    assert [setting_label(m, o) for m, o in PAPER_SETTINGS] == [
        "Baseline", "ToMe r=0.7", "BiGain_TM r=0.7", "ToDo df=2", "BiGain_TD a=0.5 df=2", "SiTo r=0.7"]
    assert [setting_tag(m, o) for m, o in PAPER_SETTINGS] == [
        "none", "tome_ratio0.7", "bigain_tm_ratio0.7", "todo_df2", "bigain_td_alpha0.5_df2", "sito_ratio0.7"]


def test_method_configs_are_the_paper_settings():
    configs = {}
    for path in CONFIGS:
        data = yaml.safe_load(path.read_text())
        method, options = resolved(data.pop("method"), data)
        assert method not in configs, f"{path.name}: a second config for {method}"
        configs[method] = (path.name, options)
    assert list(configs) != [] and set(configs) == set(PAPER_METHODS)
    for method, options in PAPER:
        name, config = configs[method]
        assert config == options, f"configs/methods/{name} differs from PAPER_SETTINGS for {method}"


@pytest.mark.parametrize("path", SPEED_CONFIGS, ids=lambda p: p.name)
def test_speed_configs_are_valid_registered_settings(path):
    data = yaml.safe_load(path.read_text())
    method = data.pop("method")
    resolved(method, data)  # unknown method or option, or a bad value, raises
    assert method in tomesd.list_methods()


@pytest.mark.parametrize("script", list(DRIVERS))
def test_driver_example_blocks_are_the_paper_settings(script):
    blocks = example_blocks(script)
    assert len(blocks) == 6, f"{script}: six example blocks expected, found {len(blocks)}"
    assert sum(not b.group(0).startswith("#") for b in blocks) == 1, f"{script}: exactly one active block"
    for block, (method, options) in zip(blocks, PAPER):
        given = flags_to_setting(block.group("args"))
        assert resolved(*given) == (method, options), f"{script}: block {block.group(0)!r} is not {method} {options}"
        if "tag" in block.groupdict():  # the generation drivers' folder name spells the values too
            paper = dict(PAPER_SETTINGS)[method]
            tag = "_".join([method, *(f"{LABEL_SHORT[k]}{v}" for k, v in paper.items())]) if paper else "baseline"
            assert block.group("tag") == tag, f"{script}: folder {block.group('tag')!r} for {method} {paper}"
