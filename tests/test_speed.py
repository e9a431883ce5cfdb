"""eval.speed / eval.flops / eval.model_zoo on tiny models: table shape, FLOP relations, hand counts."""
import csv

import pytest
import torch
from diffusers.models.attention_processor import Attention

import tomesd
from eval import speed
from eval.flops import attention_layer_flops, count_flops
from eval.model_zoo import build_model, get_spec, make_inputs, model_class
from eval.upstream import load_upstream

ATTN1 = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops on a busy 2-core machine stall waiting for the second thread; time them on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("speed")
    rows = speed.main(["--preset", "tiny", "--repeats", "1", "--warmup", "0", "--threads", "1", "--out", str(out)])
    return rows, out


@pytest.fixture(scope="module")
def tiny_sd():
    spec = get_spec("tiny-sd")
    return spec, build_model(spec)


def test_benchmark_covers_every_method_with_all_columns(run):
    rows, out = run
    methods = {(r["model"], r["method"]) for r in rows}
    for model in ("tiny-sd", "tiny-dit"):
        for method in ("none", "tome", "bigain_tm", "todo", "bigain_td", "sito"):
            assert (model, method) in methods
    if load_upstream() is not None:
        assert ("tiny-sd", "upstream") in methods
        tome = next(r for r in rows if r["model"] == "tiny-sd" and r["method"] == "tome")
        assert tome["upstream_speedup"] > 0
    for row in rows:
        assert set(speed.COLUMNS) <= set(row)
        assert row["latency_ms"] > 0 and row["speedup"] > 0 and row["flops_g"] > 0
        assert row["measured_over_ideal"] == pytest.approx(row["speedup"] / row["ideal_speedup"])
        if row["engine"] == "baseline":
            assert row["ideal_speedup"] == 1.0
        else:
            assert row["ideal_speedup"] > 1.0 and row["blocks"] > 0 and 0 < row["attn_share"] < 1
        if row["engine"] == "bigain":
            assert row["overhead_ms"] >= row["plan_ms"] >= 0
    with open(out / "speed.csv") as fh:
        assert next(csv.reader(fh)) == speed.COLUMNS
    for name in ("speed.md", "blocks.csv", "blocks.md", "speed.png", "meta.json"):
        assert (out / name).stat().st_size > 0
    table = (out / "speed.md").read_text()
    assert "random weights" in table
    for header in ("speed-up", "FLOP-ideal", "meas/ideal", "upstream x", "attn share", "overhead/attn"):
        assert header in table


def test_flops_fall_as_ratio_rises(tiny_sd):
    spec, model = tiny_sd
    args, kwargs = make_inputs(spec, batch=2)
    base = count_flops(model, args, kwargs).total
    for method, ratios in (("tome", (0.3, 0.5, 0.7)), ("bigain_tm", (0.3, 0.7)), ("sito", (0.3, 0.7))):
        totals = []
        for ratio in ratios:
            with tomesd.patched(model, method=method, ratio=ratio, seed=0):
                totals.append(count_flops(model, args, kwargs).total)
        assert all(a > b for a, b in zip(totals, totals[1:])), (method, totals)
        if method != "sito":  # SiTo's N x N graph costs more than pruning saves on a 16x16 latent
            assert totals[0] < base
    dfs = []
    for df in (2, 4):
        with tomesd.patched(model, method="todo", df=df):
            dfs.append(count_flops(model, args, kwargs).total)
    assert base > dfs[0] > dfs[1]


def test_one_attention_layer_matches_hand_count():
    attn = Attention(64, heads=4, dim_head=16).eval()
    x = torch.randn(2, 100, 64)
    assert count_flops(attn, (x,)).total == 4 * 2 * 2 * 100 * 64**2 + 2 * 2 * 2 * 100 * 100 * 64
    assert count_flops(attn, (x,)).total == attention_layer_flops(100, 100, 64, batch=2)


def test_attn1_in_model_matches_hand_count_plain_merged_and_downsampled(tiny_sd):
    spec, model = tiny_sd
    batch, side = 2, 16  # 16x16 latent: attn1 at level 1 sees N = 256 tokens of C = 16 channels
    args, kwargs = make_inputs(spec, batch=batch, resolution=8 * side)
    n, c = side * side, spec.config["block_out_channels"][0]
    plain = count_flops(model, args, kwargs).by_module[ATTN1]
    assert plain == attention_layer_flops(n, n, c, batch=batch)
    with tomesd.patched(model, method="tome", ratio=0.5, seed=0):
        merged = count_flops(model, args, kwargs).by_module[ATTN1]
    kept, dst = n - int(n * 0.5), n // 4
    matching = batch * 2 * (n - dst) * dst * c  # cosine scores of every source against every destination
    assert merged == attention_layer_flops(kept, kept, c, batch=batch) + matching
    with tomesd.patched(model, method="todo", df=2):
        down = count_flops(model, args, kwargs).by_module[ATTN1]
    assert down == attention_layer_flops(n, n // 4, c, batch=batch)


def test_settings_grid_and_labels():
    unet = speed.make_settings("unet", ratios=(0.5,), dfs=(2,), max_downsamples=(1, 2))
    assert {s.method for s in unet} == set(speed.METHODS)
    assert len(unet) == 2 * len(speed.METHODS)
    assert speed.Setting("tome", (("ratio", 0.5), ("max_downsample", 2))).label == "tome r=0.5 md=2"
    dit = speed.make_settings("transformer", ratios=(0.5,), dfs=(2,), block_patterns=("published", "all"))
    assert "upstream" not in {s.method for s in dit} and any(s.kwargs.get("blocks") == "all" for s in dit)
    with pytest.raises(ValueError, match="unknown method"):
        speed.make_settings("unet", methods=("nope",))


@pytest.mark.parametrize("name,params", [("sd15", 859_520_964), ("sd2", 865_910_724), ("sdxl", 2_567_463_684)])
def test_full_size_configs_have_the_published_parameter_counts(name, params):
    with torch.device("meta"):
        model = model_class(get_spec(name))(**get_spec(name).config)
    assert sum(p.numel() for p in model.parameters()) == params


def test_shrunk_specs_are_named_and_checked():
    assert get_spec("sd2", width=0.25).config["block_out_channels"] == (80, 160, 320, 320)
    assert get_spec("dit-xl-2-256", num_layers=4).name == "dit-xl-2-256-L4"
    with pytest.raises(ValueError, match="unknown model"):
        get_spec("sd3")
    with pytest.raises(ValueError):
        get_spec("sd2", num_layers=4)
