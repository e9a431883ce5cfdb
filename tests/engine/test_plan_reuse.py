"""Plan reuse (`plan_reuse="level"`, `plan_every=k`), the counter-based random stream, SiTo's noise and ties."""
import pytest
import torch

import tomesd
from bigain.zoo import dit_inputs, tiny_dit, tiny_sd_unet, unet_inputs
from tomesd.hooks import BlockHook, RuntimeState
from tomesd.reducers.base import ReductionContext
from tomesd.reducers.bigain_tm import LGTM, LGTMOptions
from tomesd.reducers.sito import SiTo, SiToOptions, base_token_scores
from tomesd.rng import CounterRandom, mix32


class CountingPlans:
    """Counts calls of a reducer's `plan` while active."""

    def __init__(self, monkeypatch, method):
        self.calls = 0
        cls = tomesd.get_reducer(method)
        original = cls.plan

        def plan(ctx, opts):
            self.calls += 1
            return original(ctx, opts)

        monkeypatch.setattr(cls, "plan", staticmethod(plan))


def run(model, x, calls):
    with torch.no_grad():
        return [model(**x).sample for _ in range(calls)]


# --- plan_reuse="level" ------------------------------------------------------------------
def hooks_at_one_level(plan_reuse, n=3):
    runtime = RuntimeState(seed=0, plan_reuse=plan_reuse)
    runtime.latent_size = (8, 8)
    runtime.start_call(torch.device("cpu"))
    return runtime, [BlockHook(LGTM, LGTMOptions(ratio=0.5), runtime, 1, 1, True, stream=i) for i in range(n)]


def test_level_plan_is_made_once_and_equals_a_recomputed_plan_on_equal_inputs():
    metric = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(0))
    runtime, hooks = hooks_at_one_level("level")
    plans = []
    for hook in hooks:
        hook.on_block_start(None, (metric.clone(),), {})
        plans.append(hook.plan_for(metric))
    assert plans[0] is plans[1] is plans[2]  # one plan per level per forward
    fresh = LGTM.plan(ReductionContext(metric, 8, 8, None), LGTMOptions(ratio=0.5))
    probe = torch.randn(2, 64, 5)
    assert torch.equal(plans[0].reduce(probe), fresh.reduce(probe))
    assert torch.equal(plans[0].restore(plans[0].reduce(probe)), fresh.restore(fresh.reduce(probe)))
    runtime.start_call(torch.device("cpu"))  # the next forward plans again
    hooks[0].on_block_start(None, (metric,), {})
    assert hooks[0].plan_for(metric) is not plans[0]


def test_block_mode_plans_every_block():
    _, hooks = hooks_at_one_level("block")
    metric = torch.randn(2, 64, 8)
    plans = []
    for hook in hooks:
        hook.on_block_start(None, (metric,), {})
        plans.append(hook.plan_for(metric))
    assert len({id(p) for p in plans}) == 3


@pytest.mark.parametrize("method", ["tome", "bigain_tm", "sito", "todo"])
def test_level_reuse_plans_once_per_level_per_forward(monkeypatch, method):
    model, x = tiny_sd_unet(), unet_inputs(batch=2)
    counter = CountingPlans(monkeypatch, method)
    report = tomesd.apply_patch(model, method=method, max_downsample=2, plan_reuse="level", seed=0)
    run(model, x, 2)
    tomesd.remove_patch(model)
    assert len(report.levels) == 2 and len(report.blocks) > 2
    assert counter.calls == 2 * len(report.levels)


def test_level_reuse_changes_outputs_only_through_the_shared_plan():
    model, x = tiny_sd_unet(), unet_inputs(batch=2)
    outs = {}
    for reuse in ("block", "level"):
        tomesd.apply_patch(model, method="bigain_tm", ratio=0.5, plan_reuse=reuse)
        outs[reuse] = run(model, x, 1)[0]
        tomesd.remove_patch(model)
    assert torch.isfinite(outs["level"]).all()
    assert not torch.equal(outs["block"], outs["level"])  # later blocks really use the first block's plan


# --- plan_reuse="group<k>" -------------------------------------------------------------------
def test_group_plans_are_shared_by_k_consecutive_blocks_and_equal_recomputed_plans():
    runtime, hooks = hooks_at_one_level("group2", n=5)
    metrics = [torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    plans = []
    for hook, metric in zip(hooks, metrics):
        hook.on_block_start(None, (metric,), {})
        plans.append(hook.plan_for(metric))
    assert plans[0] is plans[1] and plans[2] is plans[3]  # blocks 0-1, 2-3 and 4 of the level
    assert len({id(p) for p in plans}) == 3
    probe = torch.randn(2, 64, 5)
    for first in (0, 2, 4):  # each group's plan is the one its first block makes from its own metric
        fresh = LGTM.plan(ReductionContext(metrics[first], 8, 8, None), LGTMOptions(ratio=0.5))
        assert torch.equal(plans[first].reduce(probe), fresh.reduce(probe))
        assert torch.equal(plans[first].restore(plans[first].reduce(probe)), fresh.restore(fresh.reduce(probe)))


@pytest.mark.parametrize("reuse,plans_per_call",
                         [("group1", 4), ("group2", 2), ("group3", 2), ("group4", 1), ("level", 1)])
def test_group_reuse_plans_once_per_group_of_consecutive_blocks(monkeypatch, reuse, plans_per_call):
    model, x = tiny_dit(num_layers=4), dit_inputs(batch=2)
    counter = CountingPlans(monkeypatch, "bigain_tm")
    report = tomesd.apply_patch(model, method="bigain_tm", ratio=0.5, blocks="all", plan_reuse=reuse)
    outs = run(model, x, 2)
    tomesd.remove_patch(model)
    assert len(report.blocks) == 4 and counter.calls == 2 * plans_per_call
    assert torch.equal(outs[0], outs[1])
    if reuse == "group1":  # one block per group is per-block planning
        tomesd.apply_patch(model, method="bigain_tm", ratio=0.5, blocks="all")
        assert torch.equal(run(model, x, 1)[0], outs[0])
        tomesd.remove_patch(model)


def test_groups_count_blocks_within_each_unet_level(monkeypatch):
    model, x = tiny_sd_unet(), unet_inputs(batch=2)
    counter = CountingPlans(monkeypatch, "tome")
    report = tomesd.apply_patch(model, method="tome", max_downsample=2, plan_reuse="group2", seed=0)
    run(model, x, 1)
    tomesd.remove_patch(model)
    per_level = {}
    for name in report.blocks:  # 3 blocks at ds 1 (down, up x2) and at ds 2: 2 groups each
        per_level.setdefault("down_blocks.0" in name or "up_blocks.2" in name, []).append(name)
    assert sorted(len(v) for v in per_level.values()) == [3, 3]
    assert counter.calls == 4


# --- plan_every=k -------------------------------------------------------------------------
def test_plan_every_reuses_plans_between_replans_and_reseed_restarts(monkeypatch):
    model, x = tiny_dit(), dit_inputs(batch=2)
    counter = CountingPlans(monkeypatch, "tome")
    report = tomesd.apply_patch(model, method="tome", ratio=0.5, plan_every=3, seed=0)
    blocks = len(report.blocks)
    outs = run(model, x, 4)
    assert counter.calls == 2 * blocks  # calls 0 and 3 plan
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])  # reused plan == recomputed on equal input
    assert not torch.equal(outs[2], outs[3])  # call 3 drew new random destinations
    tomesd.reseed(model, 0)
    again = run(model, x, 1)[0]
    assert counter.calls == 3 * blocks and torch.equal(again, outs[0])
    tomesd.remove_patch(model)


def test_plan_every_reused_plan_equals_recomputed_for_deterministic_method():
    model, x = tiny_dit(), dit_inputs(batch=2)
    outs = {}
    for every in (1, 2):
        tomesd.apply_patch(model, method="bigain_tm", ratio=0.5, plan_every=every)
        outs[every] = run(model, x, 2)
        tomesd.remove_patch(model)
    assert torch.equal(outs[1][1], outs[2][1])  # equal inputs: the reused plan gives the recomputed result
    y = dict(x, hidden_states=x["hidden_states"].flip(-1))
    tomesd.apply_patch(model, method="bigain_tm", ratio=0.5, plan_every=2)
    stale, fresh_input = run(model, x, 1)[0], run(model, y, 1)[0]
    tomesd.remove_patch(model)
    tomesd.apply_patch(model, method="bigain_tm", ratio=0.5)
    run(model, x, 1)
    replanned = run(model, y, 1)[0]
    tomesd.remove_patch(model)
    assert torch.isfinite(stale).all() and not torch.equal(fresh_input, replanned)  # the plan was reused


def test_plan_every_replans_when_the_batch_changes(monkeypatch):
    model = tiny_dit()
    counter = CountingPlans(monkeypatch, "bigain_tm")
    report = tomesd.apply_patch(model, method="bigain_tm", ratio=0.5, plan_every=10)
    run(model, dit_inputs(batch=2), 1)
    run(model, dit_inputs(batch=3), 1)  # a cached plan never meets a batch it was not made for
    tomesd.remove_patch(model)
    assert counter.calls == 2 * len(report.blocks)


@pytest.mark.parametrize("bad,match", [(dict(plan_reuse="step"), "plan_reuse"), (dict(plan_every=0), "plan_every"),
                                       (dict(plan_reuse="group0"), "group<k>"), (dict(plan_reuse="group"), "group<k>"),
                                       (dict(plan_reuse="group02"), "group<k>"), (dict(plan_reuse=2), "group<k>"),
                                       (dict(method="todo", plan_every=2), "token methods")])
def test_bad_plan_reuse_options(bad, match):
    kwargs = dict(method="tome")
    kwargs.update(bad)
    with pytest.raises(ValueError, match=match):
        tomesd.apply_patch(tiny_dit(), **kwargs)


# --- the random stream -------------------------------------------------------------------
def test_counter_random_is_seeded_per_call_and_stream():
    counter = torch.zeros((), dtype=torch.int64)
    a = CounterRandom(7, counter, 0).bits(1000, torch.device("cpu"))
    assert torch.equal(a, CounterRandom(7, counter.clone(), 0).bits(1000, torch.device("cpu")))
    assert torch.equal(a, CounterRandom(7, None, 0).bits(1000, torch.device("cpu")))  # None == call 0
    for other in (CounterRandom(8, counter, 0), CounterRandom(7, counter + 1, 0), CounterRandom(7, counter, 1)):
        assert (other.bits(1000, torch.device("cpu")) != a).float().mean() > 0.99
    assert int(mix32(torch.tensor(123456789))) == mix32(123456789)  # same hash on ints and tensors


def test_counter_random_distributions():
    rnd = CounterRandom(3)
    z = rnd.normal((200_000,), torch.device("cpu"))
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01 and (z < -3).float().mean() > 0.001
    u = rnd.uniform((200_000,), torch.device("cpu"))
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
    counts = torch.bincount(rnd.randint(4, (200_000,), torch.device("cpu")), minlength=4).float() / 200_000
    assert (counts - 0.25).abs().max() < 0.005


# --- SiTo: Gaussian noise, deterministic ties ------------------------------------------------
def test_sito_noise_is_standard_gaussian_shared_by_the_batch():
    degrees = torch.zeros(2, 4096)
    score = base_token_scores(None, 1.0, 1.0, CounterRandom(0), degrees=degrees)
    assert torch.equal(score[0], score[1])
    assert abs(score.mean()) < 0.05 and abs(score.std() - 1) < 0.05 and (score < 0).any()


def test_sito_exact_ties_go_to_the_lowest_index():
    """All tokens equal and no noise: base = first token of each block, pruned = lowest-index others,
    recovered from the first retained token."""
    h = w = 6
    metric = torch.ones(1, h * w, 4)
    plan = SiTo.plan(ReductionContext(metric, h, w, None), SiToOptions(ratio=0.5, noise_alpha=0.0))
    ids = torch.arange(h * w, dtype=torch.float32).view(1, -1, 1)
    kept = plan.reduce(ids)[0, :, 0].long().tolist()
    base = [r * w + c for r in range(0, h, 2) for c in range(0, w, 2)]
    others = [i for i in range(h * w) if i not in base]
    pruned = others[:18]
    assert sorted(kept) == sorted(set(range(h * w)) - set(pruned))
    restored = plan.restore(plan.reduce(ids))[0, :, 0].long()
    first_retained = min(i for i in others if i not in pruned)
    assert all(int(restored[i]) == first_retained for i in pruned)
