"""eval.speed / eval.flops / eval.speed.model_zoo on tiny models: table shape, FLOP relations, hand counts."""
import csv

import pytest
import torch
from diffusers.models.attention_processor import Attention

import bigain.storage.records
import tomesd
from eval import speed
from eval.flops import attention_layer_flops, count_flops
from eval.speed.__main__ import main as speed_main
from eval.speed.model_zoo import build_model, get_spec, make_inputs, model_class
from eval.speed.upstream import load_upstream

ATTN1 = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("speed")
    rows = speed_main(["--preset", "tiny", "--repeats", "1", "--warmup", "0", "--threads", "1", "--out", str(out)])
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
            assert row["overhead_flop_share"] >= 0 and row["overhead_flops_g"] >= 0
            assert row["ops_per_block"] >= row["kernels_per_block"] >= 1
    with open(out / "speed.csv") as fh:
        assert next(csv.reader(fh)) == speed.COLUMNS
    for name in ("speed.md", "blocks.csv", "blocks.md", "speed.png", "meta.json"):
        assert (out / name).stat().st_size > 0
    table = (out / "speed.md").read_text()
    assert "random weights" in table and "Allocator: " in table
    for header in ("speed-up", "FLOP-ideal", "meas/ideal", "upstream x", "attn share", "overhead/attn",
                   "its FLOPs/attn", "ops/block"):
        assert header in table


def test_op_count_of_a_reducer_equals_a_dispatch_trace(tiny_sd):
    """`count_reducer_ops` counts exactly the ATen ops of plan + reduce/restore (here ToDo's K/V source)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from eval.speed.op_count import count_reducer_ops
    from tomesd.reducers.todo import downsample_tokens

    class Trace(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Trace.ops += 1
            return func(*args, **(kwargs or {}))

    spec, model = tiny_sd
    args, kwargs = make_inputs(spec, 2, 128)
    counts = count_reducer_ops(model, "todo", {}, args, kwargs)
    tokens = torch.randn(2, 256, 8)
    with Trace():
        downsample_tokens(tokens, 16, 16, 2, "nearest-exact")
    assert counts["ops"] == Trace.ops and counts["kernels"] == 1  # one interpolation kernel, the rest views


def test_cuda_graphs_flag_needs_cuda(capsys):
    with pytest.raises(SystemExit) as exc:
        speed_main(["--preset", "tiny", "--cuda-graphs"])
    assert exc.value.code == 2 and "--cuda_graphs needs a CUDA device" in capsys.readouterr().err


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


def test_reducer_own_flops_match_hand_count(tiny_sd):
    """The 'its FLOPs/attn' floor: ToMe = the S x D matching scores, BiGain_TM adds its 3x3 Laplacian."""
    spec, model = tiny_sd
    batch, side = 2, 16
    args, kwargs = make_inputs(spec, batch=batch, resolution=8 * side)
    n, c = side * side, spec.config["block_out_channels"][0]
    dst = n // 4
    blocks = len(tomesd.apply_patch(model, method="tome", ratio=0.5).blocks)
    tomesd.remove_patch(model)
    assert blocks > 0
    matching = batch * 2 * (n - dst) * dst * c
    laplacian = batch * 2 * n * c * 9  # depthwise 3x3 conv, counted like any conv
    tome = speed.Setting("tome", (("ratio", 0.5),))
    lgtm = speed.Setting("bigain_tm", (("ratio", 0.5),))
    todo = speed.Setting("todo", (("df", 2),))
    assert speed.count_reducer_flops(model, tome, args, kwargs, seed=0) == blocks * matching
    assert speed.count_reducer_flops(model, lgtm, args, kwargs, seed=0) == blocks * (matching + laplacian)
    assert speed.count_reducer_flops(model, todo, args, kwargs, seed=0) == 0  # pooling is not counted
    assert tomesd.get_patch(model) is None  # the count leaves the model unpatched


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


# --- the engine's fast paths keep outputs bit-identical -----------

def reference_merge(metric, dst_idx, ratio):
    """The engine's merge/unmerge before optimisation: element-wise gathers + scatter_reduce(mean)."""
    import torch.nn.functional as F

    from tomesd.reducers.grid import complement_indices
    from tomesd.reducers.matching import merge_count

    def gather(x, index):
        return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

    batch, n, _ = metric.shape
    d = dst_idx.shape[1]
    r = merge_count(n, ratio, d)
    src_idx = complement_indices(dst_idx, n)
    unit = F.normalize(metric, dim=-1)
    best_score, best_dst = (gather(unit, src_idx) @ gather(unit, dst_idx).transpose(1, 2)).max(dim=-1)
    merged_local = torch.sort(best_score, dim=-1, descending=True, stable=True).indices[:, :r]  # ties: lower index
    kept_idx = src_idx.gather(1, complement_indices(merged_local, src_idx.shape[1]))
    merged_idx, into = src_idx.gather(1, merged_local), best_dst.gather(1, merged_local)
    k = kept_idx.shape[1]
    index_map = torch.empty(batch, n, dtype=torch.long)
    index_map.scatter_(1, kept_idx, torch.arange(k).expand(batch, -1))
    index_map.scatter_(1, dst_idx, k + torch.arange(d).expand(batch, -1))
    index_map.scatter_(1, merged_idx, k + into)

    def merge(x):
        dst = gather(x, dst_idx).scatter_reduce(1, into.unsqueeze(-1).expand(-1, -1, x.shape[-1]),
                                                gather(x, merged_idx), reduce="mean", include_self=True)
        return torch.cat([gather(x, kept_idx), dst], dim=1)

    return merge, lambda z: gather(z, index_map)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fast_merge_and_unmerge_are_bit_identical_to_scatter_reduce(dtype):
    from tomesd.reducers.grid import block_positions
    from tomesd.reducers.matching import bipartite_merge_plan

    g = torch.Generator().manual_seed(0)
    h, w = 12, 10  # ragged-free; destinations at random offsets per block, per sample
    metric = torch.randn(3, h * w, 16, generator=g).to(dtype)
    pos = block_positions(h, w, 2, 2, torch.device("cpu"))
    dst_idx = pos.gather(1, torch.randint(4, (3, pos.shape[0]), generator=g).T).T.contiguous()
    plan = bipartite_merge_plan(metric, dst_idx, 0.6)
    merge, unmerge = reference_merge(metric, dst_idx, 0.6)
    y = metric * 3 - 1
    assert torch.equal(plan.reduce(y), merge(y))
    z = plan.reduce(y) * 2 + 1
    assert torch.equal(plan.restore(z), unmerge(z))


def test_sito_blocks_graph_option_matches_full_graph_on_random_tokens():
    from tomesd.reducers.base import ReductionContext
    from tomesd.reducers.sito import SiTo, SiToOptions
    from tomesd.rng import CounterRandom

    x = torch.randn(2, 16 * 16, 32, generator=torch.Generator().manual_seed(1))
    outs = []
    for graph in ("full", "blocks"):
        ctx = ReductionContext(metric=x, height=16, width=16, timesteps=None, random=CounterRandom(0))
        plan = SiTo.plan(ctx, SiToOptions(ratio=0.7, graph=graph))
        outs.append((plan.reduce(x), plan.restore(plan.reduce(x) * 2)))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    with pytest.raises(ValueError, match="graph"):
        SiToOptions(graph="sparse")


def _interrupted_rename(src, dst):
    raise KeyboardInterrupt("killed before the rename")


def test_speed_csv_write_is_atomic(tmp_path, monkeypatch):
    """A speed-table write killed mid-way leaves the previous speed.csv intact and no partial temp file."""
    path = tmp_path / "speed.csv"
    speed.tables.write_csv(path, [{"model": "sd2", "latency_ms": 1.5}], speed.COLUMNS)
    before = path.read_bytes()
    monkeypatch.setattr(bigain.storage.records.os, "replace", _interrupted_rename)
    with pytest.raises(KeyboardInterrupt):
        speed.tables.write_csv(path, [{"model": "sd15", "latency_ms": 2.5}], speed.COLUMNS)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speed.csv"]


def test_speed_csv_rows_that_fail_mid_table_leave_the_previous_file(tmp_path):
    """A row that fails to format (after others were formatted) must not truncate the previous table."""
    class Exploding(dict):
        def items(self):
            raise RuntimeError("bad row")

    path = tmp_path / "blocks.csv"
    speed.tables.write_csv(path, [{"model": "sd2", "block": "b0"}], speed.BLOCK_COLUMNS)
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        speed.tables.write_csv(path, [{"model": "sd15", "block": "b1"}, Exploding()], speed.BLOCK_COLUMNS)
    assert path.read_bytes() == before
    rows = list(csv.DictReader(path.open(newline="")))
    assert [(r["model"], r["block"]) for r in rows] == [("sd2", "b0")]
