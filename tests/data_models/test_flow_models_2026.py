"""FLUX.2, Qwen-Image and Wan (rectified flow) behind LoadedModel, their version ids, and the classify / generate
commands on tiny pipelines saved in the real hub layout (bigain.zoo.flow_pipelines_2026)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import bigain.classify as C
from bigain.models import MODEL_VERSIONS, Flux2LoadedModel, QwenImageLoadedModel, load_model
from bigain.storage import load_record, record_path
from bigain.zoo import build_tiny_flux2, build_tiny_qwen_image, build_tiny_wan

pytestmark = pytest.mark.usefixtures("one_thread")

BUILDERS = {"flux2": build_tiny_flux2, "qwen_image": build_tiny_qwen_image}
CLASSES = {"flux2": Flux2LoadedModel, "qwen_image": QwenImageLoadedModel}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow2026")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def models(paths):
    return {name: load_model(model_path=p, dtype="fp32", device="cpu") for name, p in paths.items()}


def test_version_ids_are_the_diffusers_repositories():
    assert MODEL_VERSIONS["flux2-dev"] == "black-forest-labs/FLUX.2-dev"
    assert MODEL_VERSIONS["qwen-image"] == "Qwen/Qwen-Image"
    assert MODEL_VERSIONS["wan2.1-t2v-1.3b"] == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


@pytest.mark.parametrize("name,pipeline", [("flux2", "Flux2Pipeline"), ("qwen_image", "QwenImagePipeline")])
def test_tiny_pipelines_are_saved_in_the_hub_layout_and_load(paths, models, name, pipeline):
    index = json.loads((paths[name] / "model_index.json").read_text())
    assert index["_class_name"] == pipeline
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (paths[name] / sub).is_dir()
    model = models[name]
    assert isinstance(model, CLASSES[name]) and model.kind == name and model.flow_matching


@pytest.mark.parametrize("name", list(BUILDERS))
def test_velocity_matches_one_pipeline_euler_step(models, name):
    """One Euler step of the diffusers pipeline from sigma 1 to 0 is x - v: our call (text encoding, latent
    layout, ids / img_shapes, timestep scale, guidance) must give the same v; decoding must match the pipeline's."""
    model = models[name]
    pipe = model.pipe
    latents = torch.randn(1, model.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    kwargs = {"prompt": "a red square", "num_inference_steps": 1, "height": 32, "width": 32,
              "max_sequence_length": model.max_sequence_length}
    if name == "flux2":
        packed = pipe(latents=latents, guidance_scale=4.0, output_type="latent", **kwargs).images
        stepped = packed.permute(0, 2, 1).reshape(latents.shape)
        image = pipe(latents=latents, guidance_scale=4.0, output_type="pt", **kwargs).images
    else:  # one step: the terminal stretch (shift_terminal) would divide by zero in the pipeline
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, shift_terminal=None)
        packed_in = pipe._pack_latents(latents, 1, model.in_channels, 8, 8)
        out = pipe(latents=packed_in, output_type="latent", **kwargs).images
        stepped = pipe._unpack_latents(out, 32, 32, model.vae_scale_factor)[:, :, 0]
        image = pipe(latents=packed_in, output_type="pt", **kwargs).images
    with torch.no_grad():
        v = model.predict_velocity(latents, torch.ones(1), model.condition(prompts=["a red square"]))
    assert torch.allclose(stepped, latents - v, atol=1e-5)
    ours = (model.decode_latents(latents - v) / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(ours, image, atol=1e-4)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_encode_then_decode_keeps_the_latent_normalisation(models, name):
    """encode_images inverts decode's normalisation: the latent statistics are the pipeline's (not identity)."""
    model = models[name]
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = model.encode_images(images)
    assert latents.shape == (2, model.in_channels, 8, 8)
    assert model.image_tokens(latents.shape[1:]) == (64 if name == "flux2" else 16)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_text_conditions_batch_and_select(models, name):
    model = models[name]
    cond = model.condition(prompts=["a", "a much longer prompt than the first"])
    one = model.select(cond, [1])
    assert all(v.shape[0] == 2 for v in cond.values()) and all(v.shape[0] == 1 for v in one.values())
    with torch.no_grad():
        both = model.predict_target(torch.zeros(2, model.in_channels, 8, 8), torch.tensor([10, 500]), cond)
        alone = model.predict_target(torch.zeros(1, model.in_channels, 8, 8), torch.tensor([500]), one)
    assert torch.allclose(both[1:], alone, atol=1e-5)


@pytest.fixture(scope="module")
def color_folder(tmp_path_factory):
    from PIL import Image

    from bigain.make_prompts import table_from_names, write_csv

    root = tmp_path_factory.mktemp("colors")
    for color in ["red", "blue"]:
        (root / color).mkdir()
        Image.new("RGB", (32, 32), color).save(root / color / "0.png")
    write_csv(table_from_names(["red", "blue"], "a {} square."), root / "prompts.csv")
    return root


@pytest.mark.parametrize("name,reducer", [("flux2", ["--method", "tome", "--ratio", "0.5"]),
                                          ("qwen_image", ["--method", "bigain_td", "--alpha", "0.5"])])
def test_classify_cli_scores_the_velocity_error_and_resumes(paths, color_folder, tmp_path, name, reducer):
    args = ["--dataset", "folder", "--data_dir", str(color_folder), "--model_path", str(paths[name]), "--output_dir",
            str(tmp_path / "out"), "--n_samples", "2", "--to_keep", "1", "--dtype", "fp32",
            "--cpu_threads", "1", "--img_size", "32", *reducer]
    row = C.main(args)
    assert row["images"] == 2 and row["complete"] and row["calls_per_image"] == 2 * 2
    run_dir = next((tmp_path / "out").rglob("config.json")).parent
    first = load_record(record_path(run_dir, 1))
    assert np.isfinite(first.errors).sum() == 4
    record_path(run_dir, 1).unlink()
    again = C.main(args)
    assert again["accuracy"] == row["accuracy"]
    np.testing.assert_array_equal(load_record(record_path(run_dir, 1)).errors, first.errors)


@pytest.mark.parametrize("name,extra,size", [("flux2", ["--method", "todo", "--df", "2"], (32, 32)),
                                             ("qwen_image", ["--method", "bigain_td", "--height", "32", "--width",
                                                             "48"], (32, 48))])
def test_generate_cli_writes_reduced_images_and_resumes(paths, tmp_path, name, extra, size):
    """FLUX.2 at its native size, Qwen-Image (true CFG: prompt and negative prompt of different lengths) at a small
    --height x --width: PNGs of that size, a rerun skips them."""
    from PIL import Image

    from bigain import generate

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n")
    args = ["--prompts_file", str(prompts), "--model_path", str(paths[name]), "--output_dir", str(tmp_path / "out"),
            "--steps", "2", "--batch_size", "2", "--dtype", "fp32", "--device", "cpu", "--cpu_threads", "1",
            "--no_progress", *extra]
    row = generate.main(args)
    assert row["images_written"] == 2 and row["sampler"] == "flow-linear" and float(row["flops_per_image"]) > 0
    assert row["calls"] == 2 and row["output_size"] == ("32px" if size == (32, 32) else "32x48px")
    pngs = sorted(Path(row["run_dir"], "images").glob("*.png"))
    assert [Image.open(p).size for p in pngs] == [(size[1], size[0])] * 2
    again = generate.main(args)
    assert again["images_written"] == 0 and again["images_skipped"] == 2


def test_qwen_image_true_cfg_matches_one_pipeline_step(models):
    """Qwen-Image's guidance is the pipeline's true CFG against the (empty) negative prompt, rescaled per token to
    the conditional prediction's norm; prompt and negative prompt are padded to one length in one batched call."""
    from bigain.diffusion import guided_eps_fn

    model = models["qwen_image"]
    pipe = model.pipe
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, shift_terminal=None)
    latents = torch.randn(1, model.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    packed = pipe._pack_latents(latents, 1, model.in_channels, 8, 8)
    out = pipe(prompt="a red square", negative_prompt="", true_cfg_scale=4.0, latents=packed, num_inference_steps=1,
               height=32, width=32, output_type="latent", max_sequence_length=model.max_sequence_length).images
    stepped = pipe._unpack_latents(out, 32, 32, model.vae_scale_factor)[:, :, 0]
    v = guided_eps_fn(model, model.condition(prompts=["a red square"]), model.null_condition(1), 4.0)(
        latents, torch.tensor([1000.0]))
    assert torch.allclose(stepped, latents - v, atol=1e-5)


# ----------------------------------------------------------------------------------------- Wan 2.x text-to-video


@pytest.fixture(scope="module")
def wan_path(tmp_path_factory):
    return build_tiny_wan(tmp_path_factory.mktemp("wan") / "wan")


@pytest.fixture(scope="module")
def wan(wan_path):
    return load_model(model_path=wan_path, dtype="fp32", device="cpu")


def test_wan_loads_in_the_hub_layout_with_an_euler_scheduler_at_its_shift(wan_path, wan):
    from diffusers import FlowMatchEulerDiscreteScheduler

    from bigain.models import OutputSize, WanLoadedModel

    index = json.loads((wan_path / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["scheduler"][1] == "UniPCMultistepScheduler"
    assert isinstance(wan, WanLoadedModel) and wan.kind == "wan" and wan.video and wan.flow_matching
    assert isinstance(wan.scheduler, FlowMatchEulerDiscreteScheduler) and wan.scheduler.config.shift == 3.0
    assert wan.native_output == OutputSize(480, 832, 81)  # WanPipeline.__call__'s defaults
    assert wan.latent_shape(OutputSize(32, 48, 5)) == (4, 3, 8, 12)  # tiny VAE: 2 frames, 4 px per latent cell
    with pytest.raises(ValueError, match="2k \\+ 1 frames"):
        wan.latent_shape(OutputSize(32, 32, 4))


def test_wan_guided_euler_steps_match_the_pipeline(wan):
    """Two Euler steps of WanPipeline (CFG 5 against the empty negative prompt, the scheduler's shift, timestep
    sigma * 1000, latents (B, C, T, H, W)) equal our sampler's; decoding (latents_mean / std) equals its frames."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from bigain.diffusion import SAMPLERS, guided_eps_fn, make_schedule
    from bigain.models import OutputSize

    pipe = wan.pipe
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(wan.scheduler.config)
    latents = torch.randn(1, *wan.latent_shape(OutputSize(32, 32, 5)), generator=torch.Generator().manual_seed(0))
    kwargs = {"prompt": "a red square", "negative_prompt": "", "height": 32, "width": 32, "num_frames": 5,
              "num_inference_steps": 2, "guidance_scale": 5.0, "latents": latents}
    stepped = pipe(output_type="latent", **kwargs).frames
    frames = pipe(output_type="pt", **kwargs).frames  # (B, F, C, H, W) in [0, 1]
    eps_fn = guided_eps_fn(wan, wan.condition(prompts=["a red square"]), wan.null_condition(1), 5.0)
    ours = SAMPLERS["flow"](eps_fn, latents.clone(), make_schedule("flow", wan.scheduler.config, 2))
    assert torch.allclose(stepped, ours, atol=1e-5)
    video = (wan.decode_latents(ours) / 2 + 0.5).clamp(0, 1)
    assert video.shape == (1, 3, 5, 32, 32)
    assert torch.allclose(video.permute(0, 2, 1, 3, 4), frames, atol=1e-4)


def _wan_args(wan_path, tmp_path, *extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue circle\n")
    return ["--prompts_file", str(prompts), "--model_path", str(wan_path), "--output_dir", str(tmp_path / "out"),
            "--steps", "2", "--batch_size", "2", "--dtype", "fp32", "--device", "cpu", "--cpu_threads", "1",
            "--no_progress", "--height", "32", "--width", "48", "--num_frames", "5", *extra]


def test_generate_cli_writes_videos_and_resumes(wan_path, tmp_path):
    """Each video: <index>/frame*.png + video.gif, then <index>.json listing their sizes and digests; a rerun skips
    finished videos; a damaged or half-written one is redone whole, to the same bytes; --st is taken on Wan."""
    from PIL import Image

    from bigain import generate

    args = _wan_args(wan_path, tmp_path, "--method", "tome", "--ratio", "0.5", "--st", "3", "--negative_prompt",
                     "static")
    row = generate.main(args)
    assert row["images_written"] == 2 and row["sampler"] == "flow" and row["guidance"] == 5.0
    assert row["output_size"] == "32x48px_5f" and row["calls"] == 2 and row["rows_per_call_per_image"] == 2
    images = Path(row["run_dir"], "images")
    record = json.loads((images / "000001.json").read_text())
    assert record["num_frames"] == 5 and record["fps"] == 16.0 and record["prompt"] == "a blue circle"
    assert sorted(record["files"]) == [f"frame{i:04d}.png" for i in range(5)] + ["video.gif"]
    assert [Image.open(images / "000001" / f"frame{i:04d}.png").size for i in range(5)] == [(48, 32)] * 5
    gif = Image.open(images / "000001" / "video.gif")
    assert gif.n_frames == 5 and gif.size == (48, 32)
    config = json.loads((Path(row["run_dir"]) / "config.json").read_text())
    assert config["num_frames"] == 5 and config["output_size"] == [32, 48] and config["reduction_options"]["st"] == 3
    assert config["negative_prompt"] == "static"

    again = generate.main(args)
    assert again["images_written"] == 0 and again["images_skipped"] == 2 and again["calls"] == 0

    before = {p.name: p.read_bytes() for p in (images / "000001").iterdir()}
    (images / "000001" / "frame0002.png").write_bytes(b"cut")  # damaged frame
    (images / "000000.json").unlink()  # interrupted before its record
    third = generate.main(args)
    assert third["images_written"] == 2
    assert {p.name: p.read_bytes() for p in (images / "000001").iterdir()} == before
    assert not list(images.glob(".*.tmp"))


def test_negative_prompt_is_the_unconditional_row(wan, paths, tmp_path):
    """--negative_prompt replaces the empty prompt in the guidance rows; without guidance (FLUX.2) it is an error."""
    from bigain import generate
    from bigain.data import Item
    from bigain.runs.sampling import conditions

    item = Item(index=0, prompt="a red square", label=None)
    cond, uncond = conditions(wan, [item, item], 5.0, "blurry, static")
    expected = wan.condition(prompts=["blurry, static"] * 2)["encoder_hidden_states"]
    assert torch.equal(uncond["encoder_hidden_states"], expected)
    assert not torch.equal(conditions(wan, [item], 5.0)[1]["encoder_hidden_states"], expected[:1])
    with pytest.raises(ValueError, match="--negative_prompt needs a text-conditioned model with classifier-free"):
        generate.main(["--prompts_file", __file__, "--model_path", str(paths["flux2"]), "--output_dir",
                       str(tmp_path / "out"), "--negative_prompt", "blurry", "--dtype", "fp32", "--device", "cpu"])


def test_video_item_folder_appears_whole(tmp_path, monkeypatch):
    """A write that dies midway leaves the previous folder (or none) and no record: never a half-kept video."""
    from bigain.storage import media

    frames = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    folder, record = tmp_path / "000000", tmp_path / "000000.json"
    media.write_video_item(folder, media.video_files(frames, 8.0), record, {"fingerprint": "a"})
    assert media.video_finished(folder, record, "a") and not media.video_finished(folder, record, "b")
    real_fsync = media.os.fsync
    calls = []

    def dying_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError("disk gone")
        real_fsync(fd)

    monkeypatch.setattr(media.os, "fsync", dying_fsync)
    with pytest.raises(OSError, match="disk gone"):
        media.write_video_item(folder, media.video_files(frames + 255, 8.0), record, {"fingerprint": "b"})
    assert media.video_finished(folder, record, "a")  # the old item, untouched
    assert not list(tmp_path.glob(".*.tmp"))


def test_wan_classification_is_refused_naming_the_supported_families(wan_path, color_folder, tmp_path, capsys,
                                                                     monkeypatch):
    import bigain.runs.classification
    from bigain import classify
    from bigain.cli import run_cli

    monkeypatch.setattr(bigain.runs.classification, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(SystemExit) as info:
        run_cli(classify.main, ["--dataset", "folder", "--data_dir", str(color_folder), "--model_path", str(wan_path),
                                "--output_dir", str(tmp_path / "out"), "--n_samples", "2", "--to_keep", "1"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "wan text-to-video model" in err and "bigain.generate only" in err
    supported = err.split("supported transformer families:")[1]
    assert "qwen_image (QwenImagePipeline)" in supported and "WanPipeline" not in supported


@pytest.mark.parametrize("target,extra,needle", [
    ("wan", ["--num_frames", "6"], "--num_frames 6: wan makes 2k + 1 frames"),
    ("wan", ["--num_frames", "5", "--method", "tome", "--st", "2"], "--st 2 does not divide the 3 latent frames"),
    ("wan", ["--num_frames", "0"], "--num_frames: expected an integer >= 1"),
    ("wan", ["--fps", "0"], "--fps: expected a finite number > 0"),
    ("qwen_image", ["--num_frames", "5"], "--num_frames (frames per video) applies to video families (wan) only; "
                                          "qwen_image is an image family"),
    ("dit", ["--height", "64"], "--height applies to the families that generate at any size"),
    ("qwen_image", ["--width", "-8"], "--width: expected an integer >= 1"),
    ("qwen_image", ["--guidance", "1", "--negative_prompt", "x"], "--negative_prompt needs classifier-free guidance"),
])
def test_bad_output_options_exit_2_before_loading(paths, wan_path, tmp_path, capsys, monkeypatch, target, extra,
                                                  needle):
    import bigain.runs.generation
    from bigain import generate
    from bigain.cli import run_cli

    folders = {**paths, "wan": wan_path, "dit": "bigain/assets/testbed/dit-fmnist"}
    monkeypatch.setattr(bigain.runs.generation, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    argv = ["--classes" if target == "dit" else "--prompts_file", "0" if target == "dit" else __file__,
            "--model_path", str(folders[target]), "--output_dir", str(tmp_path / "out"), *extra]
    with pytest.raises(SystemExit) as info:
        run_cli(generate.main, argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and needle in err, err


def test_size_not_a_multiple_of_the_token_side_names_the_allowed_sizes(paths, tmp_path):
    """Tiny Qwen-Image: 4 px per latent cell x 2x2 packing = 8 px per token side (checked once the model is known)."""
    from bigain import generate

    with pytest.raises(ValueError, match=r"--height 36 does not fit .*multiple of 8.*nearest allowed: 32 or 40"):
        generate.main(["--prompts_file", __file__, "--model_path", str(paths["qwen_image"]), "--output_dir",
                       str(tmp_path / "out"), "--height", "36", "--dtype", "fp32", "--device", "cpu"])


def test_unsupported_family_names_the_supported_ones_before_loading(tmp_path, monkeypatch):
    from bigain.models import loading

    folder = tmp_path / "cog"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "CogVideoXPipeline",
                                                         "transformer": ["d", "C"]}))
    monkeypatch.setattr(loading, "_load_folder", lambda *a, **k: pytest.fail("a model loaded"))
    from bigain.models.run_families import check_run_family

    with pytest.raises(ValueError, match=r"CogVideoX.*flux2 \(Flux2Pipeline\).*qwen_image.*wan \(WanPipeline\)"):
        check_run_family("2-0", folder, {})


def test_st_on_an_image_family_names_the_option_and_the_family(paths):
    from bigain.models.run_families import check_run_family
    from bigain.reduction import validate_reduction

    assert validate_reduction("tome", {"ratio": 0.5, "st": 2}) == {"ratio": 0.5, "st": 2}
    with pytest.raises(ValueError, match=r"--st .*video families \(wan\).*qwen_image is an image family"):
        check_run_family("2-0", paths["qwen_image"], {"st": 2})
