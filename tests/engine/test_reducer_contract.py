"""The engine contract: the `Reducer` protocol checked at registration, display labels, shared option
bases, and the reducer-phase tracing hook (`tomesd.trace_reducers`)."""
import contextlib
import importlib
import sys
from dataclasses import dataclass, fields

import pytest
import torch

import tomesd
from bigain.zoo import METHODS, dit_inputs, flux_inputs, tiny_dit, tiny_flux, tiny_sd_unet, unet_inputs
from tomesd import registry
from tomesd.options import DownsampleOptions, MergeOptions, TokenPlacementOptions
from tomesd.reducers.base import PHASES, check_reducer

LABELS = {"none": "Baseline", "tome": "ToMe", "bigain_tm": "BiGain_TM", "todo": "ToDo", "bigain_td": "BiGain_TD",
          "sito": "SiTo"}


@dataclass(frozen=True)
class GoodOptions(TokenPlacementOptions):
    pass


class Good:
    Options = GoodOptions
    plan_kind = "token"
    default_blocks = "all"

    @staticmethod
    def needs_host_timesteps(opts):
        return False

    @staticmethod
    def plan(ctx, opts):
        return None

    @staticmethod
    def kept_tokens(height, width, opts, level=1):
        return height * width


@pytest.mark.parametrize("method", tomesd.list_methods())
def test_every_registered_reducer_satisfies_the_protocol_and_has_its_label(method):
    cls = tomesd.get_reducer(method)
    check_reducer(cls)
    assert tomesd.method_label(method) == LABELS[method]


def test_label_of_an_alias_and_unknown_method():
    assert tomesd.method_label("lgtm") == "BiGain_TM" and tomesd.method_label("baseline") == "Baseline"
    with pytest.raises(ValueError, match="unknown method"):
        tomesd.method_label("nope")


@pytest.mark.parametrize("change, message", [
    ({"plan_kind": "tokens"}, r"plan_kind must be one of \['token', 'kv', 'none'\] \(got 'tokens'\)"),
    ({"default_blocks": None}, r"default_blocks must be one of \['published', 'all'\]"),
    ({"Options": dict}, "Options must be a frozen dataclass type"),
    ({"needs_host_timesteps": None}, r"needs_host_timesteps\(\.\.\.\) must be a static method"),
    ({"plan": None}, r"plan\(\.\.\.\) must be a static method"),
])
def test_registering_a_nonconforming_class_fails_clearly(change, message):
    bad = type("Bad", (Good,), change)
    with pytest.raises(TypeError, match=r"Bad is not a tomesd Reducer: .*" + message):
        registry.register_reducer("bad_test")(bad)
    assert "bad_test" not in tomesd.list_methods()


def test_a_conforming_class_registers_with_a_default_label():
    cls = type("GoodCopy", (Good,), {})
    registry.register_reducer("good_test")(cls)
    try:
        assert tomesd.method_label("good_test") == "good_test" and tomesd.get_reducer("good_test") is cls
    finally:
        registry._REDUCERS.pop("good_test", None)


def test_option_bases_keep_the_published_option_order():
    names = {m: [f.name for f in fields(tomesd.get_reducer(m).Options)] for m in ("tome", "bigain_td", "todo")}
    placement = ["max_downsample", "blocks", "plan_reuse", "plan_every"]
    token = placement + ["merge_attn", "merge_crossattn", "merge_mlp"]
    assert names["tome"] == token + ["ratio", "sx", "sy", "use_rand"]
    assert names["todo"] == placement + ["df", "df_level2", "mode", "stop_threshold"]
    assert names["bigain_td"] == placement + ["df", "df_level2", "alpha", "alpha_schedule", "alpha_start",
                                              "alpha_end", "stop_threshold"]
    for method in ("tome", "bigain_tm", "sito"):
        assert issubclass(tomesd.get_reducer(method).Options, MergeOptions)
    for method in ("todo", "bigain_td"):
        assert issubclass(tomesd.get_reducer(method).Options, DownsampleOptions)
        with pytest.raises(ValueError, match=r"stop_threshold=1.5 must be in \[0, 1\] or None"):
            tomesd.apply_patch(tiny_dit(), method=method, stop_threshold=1.5)


class PhaseLog:
    """A tracer recording entered phases and their nesting depth."""

    def __init__(self):
        self.entered, self.depth = [], 0

    @contextlib.contextmanager
    def __call__(self, phase):
        self.entered.append((phase, self.depth))
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


EXPECTED_PHASES = {
    "tome": {"plan", "match", "reduce", "restore"},
    "bigain_tm": {"plan", "score", "match", "reduce", "restore"},
    "sito": {"plan", "score", "reduce", "restore"},
    "todo": {"plan", "kv"},
    "bigain_td": {"plan", "kv"},
}


BACKBONES = {"sd": (tiny_sd_unet, unet_inputs, {}), "flux": (tiny_flux, flux_inputs, {"blocks": "all"})}


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("method", list(METHODS))
def test_tracer_sees_each_phase_and_changes_nothing(method, backbone):
    build, make_inputs, placement = BACKBONES[backbone]
    model, x = build(), make_inputs(batch=2)
    with torch.no_grad(), tomesd.patched(model, method=method, seed=0, **METHODS[method], **placement) as report:
        tomesd.reseed(model, 0)
        plain = model(**x).sample
        tomesd.reseed(model, 0)
        log = PhaseLog()
        with tomesd.trace_reducers(model, log):
            traced = model(**x).sample
        assert tomesd.get_patch(model).runtime.trace is None  # detached on exit
    assert torch.equal(plain, traced)
    assert {p for p, _ in log.entered} == EXPECTED_PHASES[method] and set(EXPECTED_PHASES[method]) <= set(PHASES)
    assert sum(p == "plan" for p, _ in log.entered) == len(report.blocks)  # one plan per block per call
    # score and match run inside plan; the closures outside it
    assert all(depth == (1 if p in ("score", "match") else 0) for p, depth in log.entered)


def test_tracer_wraps_plans_reused_from_an_earlier_call():
    model, x = tiny_dit(), dit_inputs(batch=2)
    with torch.no_grad(), tomesd.patched(model, method="tome", ratio=0.5, plan_every=2):
        model(**x)  # plans made untraced, reused by the next call
        log = PhaseLog()
        with tomesd.trace_reducers(model, log):
            model(**x)
    assert "plan" not in {p for p, _ in log.entered} and {"reduce", "restore"} <= {p for p, _ in log.entered}


def test_trace_reducers_without_a_patch_is_a_no_op():
    model, log = tiny_dit(), PhaseLog()
    with torch.no_grad(), tomesd.trace_reducers(model, log):
        model(**dit_inputs(batch=1))
    assert log.entered == []


@pytest.mark.parametrize("old, new", [("lgtm", "bigain_tm"), ("iekvd", "bigain_td")])
def test_former_reducer_module_names_import_with_a_warning(old, new):
    """Reducer files are named after their registered names; the former module names still import, and warn."""
    sys.modules.pop(f"tomesd.reducers.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"tomesd.reducers.{new}"):
        former = importlib.import_module(f"tomesd.reducers.{old}")
    current = importlib.import_module(f"tomesd.reducers.{new}")
    assert former.__all__ and all(getattr(former, name) is getattr(current, name) for name in former.__all__)


def test_methods_list_in_registration_order():
    """tomesd/reducers/__init__.py imports the reducers in listing order (kept out of import sorting)."""
    assert tomesd.list_methods() == ["none", "tome", "bigain_tm", "todo", "bigain_td", "sito"]
