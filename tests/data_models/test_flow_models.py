"""SD3 / Flux (rectified flow) behind LoadedModel, and the diffusion classifier on them (tiny pipelines)."""
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import bigain.classify as C
from bigain.diffusion import classifier
from bigain.models import FlowLoadedModel, flow_sigmas, load_model
from bigain.storage import load_record, record_path
from bigain.zoo import build_tiny_flux, build_tiny_sd3

pytestmark = pytest.mark.usefixtures("one_thread")

BUILDERS = {"sd3": build_tiny_sd3, "flux": build_tiny_flux, "flux-dev": lambda p: build_tiny_flux(p, guidance=True)}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def models(paths):
    return {name: load_model(model_path=p, dtype="fp32", device="cpu") for name, p in paths.items()}


def test_static_shift_sigmas_are_the_schedulers_training_table():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert torch.allclose(flow_sigmas(sched, 4096), sched.sigmas.flip(0).to(torch.float64), atol=1e-6)


def test_dynamic_shift_sigmas_are_what_the_pipeline_sets_at_that_resolution():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    seq_len = 1024
    mu = calculate_shift(seq_len, sched.config.base_image_seq_len, sched.config.max_image_seq_len,
                         sched.config.base_shift, sched.config.max_shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 1000, 1000), mu=mu)
    assert torch.allclose(flow_sigmas(sched, seq_len), sched.sigmas[:-1].flip(0).to(torch.float64), atol=1e-5)
    assert not torch.allclose(flow_sigmas(sched, seq_len), flow_sigmas(sched, 4096))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_velocity_matches_one_pipeline_euler_step(models, name):
    """One Euler step of the diffusers pipeline from sigma 1 to 0 is x - v: our call (text encoding,
    timestep scale, Flux packing, ids and guidance) must give the same v."""
    model = models[name]
    assert isinstance(model, FlowLoadedModel) and model.kind == name.split("-")[0]
    latents = torch.randn(1, model.in_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    pipe = model.pipe
    kwargs = {"prompt": "a red square", "num_inference_steps": 1, "height": 32, "width": 32, "output_type": "latent",
              "max_sequence_length": model.max_sequence_length}
    if model.kind == "flux":
        packed = pipe._pack_latents(latents, 1, model.in_channels, 16, 16)
        out = pipe(latents=packed, guidance_scale=3.5, **kwargs).images
        stepped = pipe._unpack_latents(out, 32, 32, model.vae_scale_factor)
    else:
        stepped = pipe(latents=latents, guidance_scale=1.0, **kwargs).images
    with torch.no_grad():
        v = model.predict_velocity(latents, torch.ones(1), model.condition(prompts=["a red square"]))
    assert torch.allclose(stepped, latents - v, atol=1e-5)


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_predict_eps_is_implied_by_the_velocity(models, name):
    model = models[name]
    cond = model.condition(prompts=["a", "b"])
    x_t = torch.randn(2, model.in_channels, 16, 16)
    t = torch.tensor([100, 800])
    with torch.no_grad():
        v, eps = model.predict_target(x_t, t, cond), model.predict_eps(x_t, t, cond)
    sigma = model.flow_sigmas(x_t.shape[1:])[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(eps, x_t + (1 - sigma) * v, atol=1e-6)
    with pytest.raises(ValueError, match="rectified-flow"):
        _ = model.alphas_cumprod


class OracleFlow:
    """A flow 'model' that knows one clean latent per class and returns the exact velocity for it."""

    flow_matching = True
    device = torch.device("cpu")

    def __init__(self, templates):
        self.templates = templates  # (K, C, H, W)

    def flow_sigmas(self, shape):
        return flow_sigmas(FlowMatchEulerDiscreteScheduler(shift=3.0), 64)

    @staticmethod
    def select(cond, rows):
        return {k: v[torch.as_tensor(rows)] for k, v in cond.items()}

    def predict_target(self, x_t, t, cond):
        x0 = self.templates[cond["class"]]
        sigma = self.flow_sigmas(None)[t].float().view(-1, 1, 1, 1)
        eps = (x_t - (1 - sigma) * x0) / sigma
        return eps - x0


def test_classifier_scores_the_velocity_target_at_the_rectified_flow_noise_levels():
    templates = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    model = OracleFlow(templates)
    schedule = classifier.StageSchedule((2, 4), (2, 1))
    noise = classifier.make_noise((3, 4, 4), schedule.num_slots, 1, seed=1)
    res = classifier.classify_image(model, templates[2], {"class": torch.arange(4)}, schedule, noise)
    assert res.pred_row == 2
    assert np.nanmax(res.errors[2]) < 1e-8 and np.nanmin(res.errors[[0, 1, 3]]) > 1e-2


@pytest.fixture(scope="module")
def color_folder(tmp_path_factory):
    from PIL import Image

    from bigain.make_prompts import table_from_names, write_csv

    root = tmp_path_factory.mktemp("colors")
    for color in ["red", "green", "blue"]:
        (root / color).mkdir()
        Image.new("RGB", (32, 32), color).save(root / color / "0.png")
    write_csv(table_from_names(["red", "green", "blue"], "a {} square."), root / "prompts.csv")
    return root


@pytest.mark.parametrize("name,reducer", [("sd3", ["--method", "bigain_tm", "--ratio", "0.5"]),
                                          ("flux", ["--method", "bigain_td", "--alpha", "0.5"])])
def test_classify_cli_on_flow_models_records_and_resume(paths, color_folder, tmp_path, name, reducer, monkeypatch):
    args = ["--dataset", "folder", "--data_dir", str(color_folder), "--model_path", str(paths[name]), "--output_dir",
            str(tmp_path / "out"), "--n_samples", "2", "4", "--to_keep", "2", "1", "--dtype", "fp32",
            "--cpu_threads", "1", "--img_size", "32", *reducer]
    row = C.main(args)
    assert row["images"] == 3 and row["complete"] and row["calls_per_image"] == 3 * 2 + 2 * 2
    run_dir = next((tmp_path / "out").rglob("config.json")).parent
    first = load_record(record_path(run_dir, 1))
    assert np.isfinite(first.errors[np.isfinite(first.errors)]).all() and np.isfinite(first.errors).sum() == 10
    record_path(run_dir, 1).unlink()
    again = C.main(args)
    assert again["accuracy"] == row["accuracy"]
    np.testing.assert_array_equal(load_record(record_path(run_dir, 1)).errors, first.errors)


@pytest.mark.parametrize("name,guidance,side", [("sd3", 3.0, 16), ("flux", 1.0, 16), ("flux-dev", 1.0, 128)])
def test_flow_sampler_reproduces_the_pipeline(models, name, guidance, side):
    """Our sampling loop (schedule, guided velocity, Euler steps) equals the diffusers pipeline's latents.

    FLUX.1-dev's shift depends on the token count; our schedule uses the default size's (4096 tokens),
    so that model is compared at its default size (128x128 latents here).
    """
    from bigain.diffusion import SAMPLERS, guided_eps_fn, make_schedule
    from bigain.generate import DEFAULTS_BY_KIND

    model = models[name]
    pipe = model.pipe
    latents = torch.randn(1, model.in_channels, side, side, generator=torch.Generator().manual_seed(0))
    schedule = make_schedule(DEFAULTS_BY_KIND[model.kind][0], model.scheduler.config, 3)
    cond = model.condition(prompts=["a red square"])
    uncond = model.null_condition(1) if guidance != 1.0 else None
    ours = SAMPLERS[schedule.name](guided_eps_fn(model, cond, uncond, guidance), latents.clone(), schedule)
    px = side * model.vae_scale_factor
    kwargs = {"prompt": "a red square", "num_inference_steps": 3, "height": px, "width": px, "output_type": "latent",
              "max_sequence_length": model.max_sequence_length}
    if model.kind == "flux":
        packed = pipe._pack_latents(latents, 1, model.in_channels, side, side)
        theirs = pipe._unpack_latents(pipe(latents=packed, guidance_scale=3.5, **kwargs).images, px, px,
                                      model.vae_scale_factor)
    else:
        theirs = pipe(latents=latents, guidance_scale=guidance, **kwargs).images
    assert torch.allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("name,reducer", [("sd3", ["--method", "tome", "--ratio", "0.5"]),
                                          ("flux", ["--method", "todo", "--df", "2"])])
def test_generate_cli_on_flow_models(paths, tmp_path, name, reducer):
    from bigain import generate

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue circle\na green triangle\n")
    args = ["--prompts_file", str(prompts), "--model_path", str(paths[name]), "--output_dir", str(tmp_path / "out"),
            "--steps", "2", "--batch_size", "2", "--dtype", "fp32", "--device", "cpu", "--cpu_threads", "1",
            "--no_progress", *reducer]
    row = generate.main(args)
    assert row["images_written"] == 3 and row["sampler"] == ("flow" if name == "sd3" else "flow-linear")
    assert row["calls"] == 2 * 2 and float(row["flops_per_image"]) > 0
    again = generate.main(args)
    assert again["images_written"] == 0 and again["images_skipped"] == 3
    with pytest.raises(ValueError, match="does not fit"):
        generate.main(args + ["--sampler", "euler", "--run_dir", str(tmp_path / "bad")])


@pytest.mark.parametrize("version,name,hub_id", [
    ("sd3-medium", "sd3", "stabilityai/stable-diffusion-3-medium-diffusers"),
    ("flux-schnell", "flux", "black-forest-labs/FLUX.1-schnell"),
])
def test_version_names_resolve_through_the_hf_cache_offline(paths, tmp_path, monkeypatch, version, name, hub_id):
    import shutil

    from bigain.models import ModelNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match=hub_id):
        load_model(version, dtype="fp32", device="cpu")
    cache = tmp_path / "hub"
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    shutil.copytree(paths[name], repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    model = load_model(version, dtype="fp32", device="cpu")
    assert isinstance(model, FlowLoadedModel) and model.kind == name and "0123abc" in model.source


def test_image_size_must_fit_the_transformer_patches():
    """SD3 takes sides that are multiples of VAE factor x patch size; Flux of VAE factor x its 2x2 packing."""
    from types import SimpleNamespace

    from bigain.models import check_image_size

    for kind, cfg in (("sd3", SimpleNamespace(patch_size=2)), ("flux", SimpleNamespace(patch_size=1))):
        model = SimpleNamespace(kind=kind, denoiser=SimpleNamespace(config=cfg), vae_scale_factor=8, name=kind,
                                image_size=1024)
        assert check_image_size(model, 512) == 64
        with pytest.raises(ValueError, match="multiple of 16"):
            check_image_size(model, 520)
