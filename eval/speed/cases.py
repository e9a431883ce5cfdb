"""Benchmark cases for `eval.speed`: method settings, models (possibly shrunk), case grids and named presets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from bigain.reduction import PAPER_SETTINGS, declared_order, speed_label
from eval.speed.model_zoo import ModelSpec, get_spec

METHODS = ("tome", "bigain_tm", "todo", "bigain_td", "sito", "upstream")
RATIO_METHODS = ("tome", "bigain_tm", "sito", "upstream")
DF_METHODS = ("todo", "bigain_td")


# ----------------------------------------------------------------------------------------------
# Settings and cases
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One method configuration; `method="upstream"` is upstream tomesd's ToMe."""

    method: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def engine(self) -> str:
        return {"none": "baseline", "upstream": "upstream"}.get(self.method, "bigain")

    @property
    def label(self) -> str:
        return speed_label(self.method, dict(self.options))


BASELINE = Setting("none")


def paper_settings(*placement: tuple[str, Any], **extra: tuple[tuple[str, Any], ...]) -> tuple[Setting, ...]:
    """The paper's five reducing settings (`bigain.reduction.PAPER_SETTINGS`), options in each method's declared
    order, then `extra[method]` options, then `placement` (e.g. `("max_downsample", 1)`)."""
    return tuple(Setting(m, declared_order(m, o) + extra.get(m, ()) + placement)
                 for m, o in PAPER_SETTINGS if m != "none")


def make_settings(family: str, methods: Sequence[str] = METHODS, ratios: Sequence[float] = (0.3, 0.5, 0.7),
                  dfs: Sequence[int] = (2, 4), max_downsamples: Sequence[int] = (1,),
                  block_patterns: Sequence[str] = ("published",), alpha: float = 0.5) -> list[Setting]:
    """The method x setting grid for one model family (U-Net: max_downsample; DiT/PixArt: blocks)."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    placements: list[tuple[tuple[str, Any], ...]]
    if family == "unet":
        placements = [(("max_downsample", md),) for md in max_downsamples]
    else:
        placements = [() if p == "published" else (("blocks", p),) for p in block_patterns]
    settings = []
    for placement in placements:
        for method in methods:
            if method == "upstream" and family != "unet":
                continue  # upstream tomesd only patches SD U-Nets
            if method in RATIO_METHODS:
                settings += [Setting(method, (("ratio", r),) + placement) for r in ratios]
            else:
                extra = (("alpha", alpha),) if method == "bigain_td" else ()
                settings += [Setting(method, (("df", d),) + extra + placement) for d in dfs]
    return settings


@dataclass(frozen=True)
class Case:
    """One model (possibly shrunk) at one resolution and batch, with the settings to time."""

    model: str  # "name[@wX][@LN]", e.g. "sd2@w0.25", "dit-xl-2-256@L4"
    resolution: int
    batch: int
    settings: tuple[Setting, ...]
    attention_backend: str = ""  # a diffusers AttentionBackendName set on the model ("": the default)
    compile: bool = False  # time the model under torch.compile


def parse_model(name: str) -> ModelSpec:
    """`sd2`, `sd2@w0.25` (U-Net widths x0.25), `dit-xl-2-256@L4` (4 blocks), `flux-dev@L1` (1 + 2 blocks),
    `wan2.1-t2v-1.3b@L1@F9` (1 block, 9 frames), `qwen-image@L2@T32` (2 blocks, 32 text tokens)."""
    base, *mods = name.split("@")
    width = layers = frames = text = None
    for mod in mods:
        if mod.startswith("w"):
            width = float(mod[1:])
        elif mod.startswith("L"):
            layers = int(mod[1:])
        elif mod.startswith("F"):
            frames = int(mod[1:])
        elif mod.startswith("T"):
            text = int(mod[1:])
        else:
            raise ValueError(f"bad model modifier {mod!r} in {name!r}: use @wX (U-Net width), @LN (layers), "
                             "@FN (video frames) or @TN (text tokens)")
    return get_spec(base, num_layers=layers, width=width, frames=frames, text_tokens=text)


def grid(models: Sequence[str], resolutions: Sequence[int], batches: Sequence[int], **setting_args: Any) -> list[Case]:
    """Every model x resolution x batch with the same setting grid."""
    cases = []
    for model in models:
        family = parse_model(model).family
        settings = tuple(make_settings(family, **setting_args))
        cases += [Case(model, res, b, settings) for res in resolutions for b in batches]
    return cases


def preset_cases(name: str) -> list[Case]:
    """Named benchmark grids (see docs/benchmarks.md for what each one runs)."""
    if name == "tiny":  # tests: one setting of every method on tiny models
        one = dict(ratios=(0.5,), dfs=(2,))
        return grid(["tiny-sd"], [128], [2], **one) + grid(["tiny-dit"], [128], [2], **one)
    if name == "cpu-small":  # a few minutes per case on 2 shared cores: fewer settings, small sizes
        md1 = (("max_downsample", 1),)
        sd = (Setting("tome", (("ratio", 0.5),) + md1), *paper_settings(*md1),
              paper_settings(*md1, sito=(("graph", "blocks"),))[-1],
              Setting("upstream", (("ratio", 0.5),) + md1), Setting("upstream", (("ratio", 0.7),) + md1))
        dit = paper_settings()
        return [Case("sd2@w0.25", 256, 1, sd), Case("sd2@w0.25", 512, 1, sd), Case("dit-xl-2-256@L4", 256, 2, dit)]
    if name == "cpu-sd2-512":  # the real SD 2 U-Net (865M) at 512 px on one CPU thread, key settings
        md1 = (("max_downsample", 1),)
        sd = (*paper_settings(*md1, sito=(("graph", "blocks"),)), Setting("upstream", (("ratio", 0.7),) + md1))
        return [Case("sd2", 512, 1, sd)]
    if name == "cpu-mmdit":  # full-width SD3-medium / Flux.1-schnell blocks at reduced depth, every block patched
        mmdit = (Setting("tome", (("ratio", 0.5), ("blocks", "all"))), *paper_settings(("blocks", "all"))[1:])
        return [Case("sd3-medium@L2", 512, 1, mmdit), Case("flux-schnell@L1", 512, 1, mmdit)]
    if name == "cpu-2026":  # full-width FLUX.2-dev / Qwen-Image / Wan2.1-1.3B blocks at reduced depth (a proxy)
        every = (*paper_settings(("blocks", "all")),)
        return [Case(model, res, 1, every) for model, res in CPU_2026]
    if name == "cpu-reuse":  # plan_reuse="level" next to per-block planning, smallest sizes that show it
        tm = lambda m, *extra: Setting(m, (("ratio", 0.7),) + extra + (("max_downsample", 1),))  # noqa: E731
        level = ("plan_reuse", "level")
        sd = (tm("tome"), tm("tome", level), tm("bigain_tm"), tm("bigain_tm", level),
              Setting("todo", (("df", 2), level, ("max_downsample", 1))))
        dit = (Setting("tome", (("ratio", 0.7),)), Setting("tome", (("ratio", 0.7), level)),
               Setting("bigain_tm", (("ratio", 0.7),)), Setting("bigain_tm", (("ratio", 0.7), level)))
        return [Case("sd2@w0.25", 512, 1, sd), Case("dit-xl-2-256@L4", 256, 2, dit)]
    if name == "cpu-sd2-512-reuse":  # the done-criterion: full-width SD 2 at 512 px, level reuse
        tm = lambda m, *extra: Setting(m, (("ratio", 0.7),) + extra + (("max_downsample", 1),))  # noqa: E731
        level = ("plan_reuse", "level")
        return [Case("sd2", 512, 1, (tm("tome"), tm("tome", level), tm("bigain_tm"), tm("bigain_tm", level)))]
    if name == "cpu-deeper":  # reduction below the top level (SDXL has no attention there)
        tm = lambda m, *extra: Setting(m, (("ratio", 0.7),) + extra)  # noqa: E731
        level = ("plan_reuse", "level")
        sd2 = (tm("tome", ("max_downsample", 1)), tm("tome", ("max_downsample", 2)),
               tm("tome", ("max_downsample", 2), level), Setting("todo", (("df", 2), ("max_downsample", 2))))
        sdxl = (tm("tome", ("max_downsample", 2)), tm("tome", ("max_downsample", 4)),
                tm("tome", ("max_downsample", 4), level), Setting("todo", (("df", 2), ("max_downsample", 4))))
        dit = (tm("tome"), tm("tome", ("merge_mlp", True)), tm("tome", ("merge_mlp", True), level))
        return [Case("sd2@w0.25", 512, 1, sd2), Case("sdxl@w0.25", 512, 1, sdxl), Case("dit-xl-2-256@L4", 256, 2, dit)]
    if name == "gpu-tiny":  # the gpu preset's kinds of case on CPU with tiny models (scripts/gpu_speed.sh --dry_run)
        one = dict(methods=("bigain_tm", "bigain_td"), ratios=(0.5,), dfs=(2,))
        cases = grid(["tiny-sd"], [128], [2], **one)
        mmdit = tuple(make_settings("mmdit", block_patterns=("all",), **one))
        for model, batch in (("tiny-sd3", 2), ("tiny-flux", 1)):
            cases += [Case(model, 128, batch, mmdit, "native"), Case(model, 128, batch, mmdit, "_flash_3"),
                      Case(model, 128, batch, mmdit, "native", compile=True)]
        return cases
    if name == "gpu":  # fp16 on one H100; sized (estimated, not yet run) for <= 8 minutes
        full = dict(ratios=(0.3, 0.5, 0.7), dfs=(2, 4))
        dit = dict(block_patterns=("published", "all"), **full)
        cases = grid(["sd2"], [512, 768, 1024], [2], max_downsamples=(1, 2), **full)  # the CFG pair
        cases += grid(["sd2"], [512], [1, 16], **full)  # single sample; the classifier's mixed-t batch
        cases += grid(["sd15"], [512], [2], **full)
        cases += grid(["sdxl"], [1024], [2], max_downsamples=(2,), **full)  # SDXL has no attention at ds=1
        cases += grid(["dit-xl-2-256"], [256], [2, 16], **dit) + grid(["dit-xl-2-512"], [512], [2], **dit)
        cases += grid(["pixart-512"], [512], [2], **dit) + grid(["pixart-1024"], [1024], [2], **dit)
        # FLUX.1-dev (guidance-distilled: batch 1) and SD3-medium (CFG pair) at 1024 px, reduced depth, every block
        # patched, under each GPU attention backend (those not installed are skipped at run time), eager then
        # compiled. Stock SD3 processors call SDPA directly: there the backend reaches patched processors only.
        mmdit = tuple(make_settings("mmdit", block_patterns=("all",), ratios=(0.5, 0.7), dfs=(2,)))
        for compiled in (False, True):
            for backend in GPU_ATTENTION_BACKENDS:
                cases += [Case("flux-dev@L4", 1024, 1, mmdit, backend, compiled),
                          Case("sd3-medium@L6", 1024, 2, mmdit, backend, compiled)]
        return cases
    raise ValueError(f"unknown preset {name!r}; choose from {list(PRESETS)}")


# cpu-2026: (model, px). Text tokens scaled with the image tokens, so text keeps about its full-size share of the
# sequence (FLUX.2 at 1024 px: 4096 image + 512 text tokens; here 256 + 32; Qwen-Image 1024 + 32).
CPU_2026 = (("flux2-dev@L1@T32", 256), ("qwen-image@L1@T32", 512), ("wan2.1-t2v-1.3b@L1@F5@T64", 480))

# diffusers attention backends the gpu preset times (FlashAttention 2 / 3 and SageAttention need their packages;
# cases whose backend cannot run are skipped and logged).
GPU_ATTENTION_BACKENDS = ("native", "_native_flash", "_native_cudnn", "flash", "_flash_3", "sage")


def attention_backend_names() -> list[str]:
    """Every diffusers AttentionBackendName value (what --attention_backend accepts)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [b.value for b in AttentionBackendName]


PRESETS = {
    "tiny": "tiny SD U-Net and DiT, one setting per method (tests)",
    "cpu-small": "SD 2 base layout at widths x0.25 (channels 80/160/320/320, head dim 16) at 256 and 512 px, "
                 "batch 1, max_downsample 1: ToMe 0.5/0.7, BiGain_TM 0.7, ToDo df 2, BiGain_TD df 2, SiTo 0.7 "
                 "(and graph=blocks), upstream 0.5/0.7; DiT-XL/2-256 with 4 of 28 blocks at 256 px, batch 2 "
                 "(CFG pair), published pattern (blocks 1-3): ratio 0.7 / df 2",
    "cpu-sd2-512": "the full-width SD 2 base U-Net at 512 px, batch 1, max_downsample 1: ToMe / BiGain_TM / "
                   "SiTo (graph=blocks) at 0.7, ToDo / BiGain_TD at df 2, upstream ToMe 0.7",
    "cpu-mmdit": "full-width SD3-medium with 2 of 24 joint blocks at 512 px and FLUX.1-schnell with 1 double- + "
                 "2 single-stream blocks at 512 px, batch 1, every block patched: ToMe 0.5, BiGain_TM 0.7, "
                 "ToDo df 2, BiGain_TD df 2 a 0.5, SiTo 0.7",
    "cpu-2026": "a proxy of the 2026 families, random weights, batch 1, every block patched, the paper's five "
                "settings: FLUX.2-dev with 1 double- + 1 single-stream block at 256 px (256 image + 32 text tokens; "
                "2.3B parameters, 9 GB in fp32), "
                "Qwen-Image with 1 of its 60 blocks at 512 px (1024 + 32), Wan2.1-T2V-1.3B with 1 of 30 blocks at "
                "480 x 832, 5 frames (2 x 30 x 52 tokens, 64 text tokens)",
    "cpu-reuse": "plan_reuse='level' next to per-block planning: SD 2 at widths x0.25, 512 px, batch 1 (ToMe / "
                 "BiGain_TM 0.7, ToDo df 2 level) and DiT-XL/2-256 with 4 blocks, batch 2 (ToMe / BiGain_TM 0.7)",
    "cpu-sd2-512-reuse": "full-width SD 2 at 512 px, batch 1: ToMe / BiGain_TM 0.7 with per-block and per-level plans",
    "cpu-deeper": "below the top level: SD 2 x0.25 at 512 px with max_downsample 1 / 2 (+ level reuse), SDXL x0.25 "
                  "at 512 px reducing attention levels 2 and 2+4 (max_downsample 2 / 4), DiT-XL/2-256 (4 blocks) "
                  "with merge_mlp; ToMe 0.7, ToDo df 2",
    "gpu": "issue grid, fp16 on CUDA: SD 2 at 512/768/1024 (CFG pair, max_downsample 1 and 2) and at 512 "
           "with batch 1 and 16; SD 1.5 512; SDXL 1024 (max_downsample 2); DiT-XL/2 256 (batch 2, 16) and 512; "
           "PixArt-alpha 512 and 1024 (published and all blocks); ratios 0.3/0.5/0.7, df 2/4, upstream at "
           "every ToMe setting; then FLUX.1-dev (4 + 8 blocks, batch 1) and SD3-medium (6 blocks, CFG pair) at "
           "1024 px, every block patched (ToMe 0.5/0.7, BiGain_TM 0.5/0.7, ToDo df 2, BiGain_TD df 2, SiTo "
           "0.5/0.7), under each attention backend of GPU_ATTENTION_BACKENDS that runs there, eager then compiled",
    "gpu-tiny": "the gpu preset's kinds of case on CPU with tiny models (scripts/gpu_speed.sh --dry_run): tiny SD "
                "U-Net; tiny SD3 and Flux under the native backend eager and compiled (dynamo eager backend) and "
                "under _flash_3 (skipped without FlashAttention 3); BiGain_TM 0.5, BiGain_TD df 2",
}

# Flag values a preset implies unless given on the command line.
# max_seconds caps each case's rounds beyond `repeats` (docs/speed_method.md estimates each preset's wall time).
PRESET_FLAGS: dict[str, dict[str, Any]] = {
    "tiny": {"repeats": 1, "warmup": 0, "threads": 1, "max_seconds": 0.0},
    "cpu-small": {"repeats": 5, "warmup": 1, "threads": 1, "max_seconds": 60.0},
    "cpu-sd2-512": {"repeats": 3, "warmup": 1, "threads": 1, "max_seconds": 300.0},
    "cpu-mmdit": {"repeats": 3, "warmup": 1, "threads": 1, "max_seconds": 120.0},
    "cpu-2026": {"repeats": 3, "warmup": 1, "threads": 1, "upstream": False, "max_seconds": 30.0},
    "cpu-reuse": {"repeats": 5, "warmup": 1, "threads": 1, "upstream": False, "max_seconds": 60.0},
    "cpu-sd2-512-reuse": {"repeats": 3, "warmup": 1, "threads": 1, "upstream": False, "max_seconds": 300.0},
    "cpu-deeper": {"repeats": 3, "warmup": 1, "threads": 1, "upstream": False, "max_seconds": 90.0},
    "gpu": {"device": "cuda", "dtype": "float16", "repeats": 10, "warmup": 3, "max_seconds": 30.0},
    "gpu-tiny": {"repeats": 1, "warmup": 0, "threads": 1, "upstream": False, "breakdown": False,
                 "compile_backend": "eager", "max_seconds": 0.0},
}
