"""Samplers over a noise-prediction callable, k-diffusion style.

Each sampler is a pure loop ``sample_<name>(eps_fn, x, schedule, *, generator=None, callback=None)``
returning the final sample; ``eps_fn(x_t, t) -> eps`` sees the VP-scaled input ``x_t`` and one
timestep per sample. Schedules (timesteps, sigmas, alphas) come from the model's diffusers
scheduler config, so the step positions match diffusers' ``EulerDiscreteScheduler`` and
``DDIMScheduler`` (eta 0). Classifier-free guidance is an ``eps_fn`` wrapper acting on the eps
channels only (``LoadedModel.predict_eps`` already drops DiT's learned-sigma channels).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "EpsFn",
    "Schedule",
    "SAMPLERS",
    "ddim_schedule",
    "euler_schedule",
    "make_schedule",
    "sample_ddim",
    "sample_euler",
    "sample_flow",
    "flow_schedule",
    "CallStats",
    "guided_eps_fn",
    "initial_noise",
]

EpsFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Schedule:
    """Timesteps of a sampler run and the noise levels that go with them.

    ``alphas``: alpha-bar at each timestep plus the final alpha-bar (length steps + 1);
    ``sigmas``: the matching ``sqrt((1 - a) / a)`` (length steps + 1, last 0 for Euler).
    """

    name: str
    timesteps: Tensor
    alphas: Tensor
    sigmas: Tensor
    init_sigma: float = 1.0  # scale of the initial noise (diffusers' init_noise_sigma)

    @property
    def steps(self) -> int:
        """Number of model evaluations per sample (without guidance)."""
        return len(self.timesteps)


def _scheduler_config(config: Any) -> dict:
    """A plain dict of a diffusers scheduler config (FrozenDict, dict or scheduler)."""
    config = getattr(config, "config", config)
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def euler_schedule(config: Any, steps: int) -> Schedule:
    """Timesteps and sigmas of diffusers' ``EulerDiscreteScheduler`` built from the model's config."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler.from_config(_scheduler_config(config))
    sched.set_timesteps(steps, device="cpu")
    sigmas = sched.sigmas.to(torch.float64)
    return Schedule("euler", sched.timesteps.to(torch.float64), 1.0 / (1.0 + sigmas**2), sigmas,
                    float(sched.init_noise_sigma))


def ddim_schedule(config: Any, steps: int) -> Schedule:
    """Timesteps and alpha-bars of diffusers' ``DDIMScheduler`` (eta 0) built from the model's config."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(_scheduler_config(config))
    sched.set_timesteps(steps, device="cpu")
    ac = sched.alphas_cumprod.to(torch.float64)
    ts = sched.timesteps.to(torch.long)
    alphas = torch.cat([ac[ts], torch.tensor([float(sched.final_alpha_cumprod)], dtype=torch.float64)])
    return Schedule("ddim", ts.to(torch.float64), alphas, ((1 - alphas) / alphas).sqrt())


def flow_schedule(config: Any, steps: int, linear_sigmas: bool = False) -> Schedule:
    """Timesteps (sigma * 1000) and sigmas (plus the final 0) of diffusers' ``FlowMatchEulerDiscreteScheduler``
    as the SD3 pipelines set it (``set_timesteps(steps)``), or with ``linear_sigmas`` as the Flux pipelines do
    (``sigmas = linspace(1, 1/steps, steps)``). With dynamic shifting (FLUX.1-dev) the shift is the
    pipeline's for ``max_image_seq_len`` image tokens (4096: 1024 px, the model's default size).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler.from_config(_scheduler_config(config))
    cfg = sched.config
    mu = None
    if cfg.use_dynamic_shifting:
        mu = calculate_shift(cfg.max_image_seq_len, cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift,
                             cfg.max_shift)
    if linear_sigmas:
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu, device="cpu")
    else:
        sched.set_timesteps(steps, mu=mu, device="cpu")
    sigmas = sched.sigmas.to(torch.float64)
    name = "flow-linear" if linear_sigmas else "flow"
    return Schedule(name, sched.timesteps.to(torch.float64), 1 - sigmas, sigmas, 1.0)


SCHEDULES: dict[str, Callable[[Any, int], Schedule]] = {
    "euler": euler_schedule, "ddim": ddim_schedule, "flow": flow_schedule,
    "flow-linear": lambda config, steps: flow_schedule(config, steps, True),
}


def make_schedule(name: str, config: Any, steps: int) -> Schedule:
    """Schedule for sampler ``name``; unknown names and steps < 1 raise ValueError."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SCHEDULES)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    return SCHEDULES[name](config, steps)


def initial_noise(shape: tuple[int, ...], schedule: Schedule, generator: Optional[torch.Generator],
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Seeded starting noise, drawn on CPU (device-independent) and scaled for the sampler."""
    x = torch.randn(shape, generator=generator, dtype=torch.float32)
    return (x * schedule.init_sigma).to(device, dtype)


def _batch_t(t: Tensor, x: Tensor) -> Tensor:
    """One timestep per sample, on x's device."""
    return t.to(x.device).expand(x.shape[0])


@torch.no_grad()
def sample_ddim(eps_fn: EpsFn, x: Tensor, schedule: Schedule, *, generator: Optional[torch.Generator] = None,
                callback: Optional[Callable[[dict], None]] = None) -> Tensor:
    """Deterministic DDIM (Song et al. 2021, eq. 12 with eta = 0); ``x`` starts as unit noise.

    ``generator`` is unused (eta 0 draws no noise) and kept for a uniform signature.
    """
    for i, t in enumerate(schedule.timesteps):
        a_t, a_prev = schedule.alphas[i].item(), schedule.alphas[i + 1].item()
        eps = eps_fn(x, _batch_t(t, x)).to(x.dtype)
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "denoised": x0})
    return x


@torch.no_grad()
def sample_euler(eps_fn: EpsFn, x: Tensor, schedule: Schedule, *, generator: Optional[torch.Generator] = None,
                 callback: Optional[Callable[[dict], None]] = None) -> Tensor:
    """Euler steps on the probability-flow ODE in sigma space (Karras et al. 2022, Alg. 1 without churn).

    ``x`` starts as noise * ``schedule.init_sigma`` (about sigma_max); the model sees ``x / sqrt(sigma^2 + 1)``;
    returns the sigma = 0 sample. ``generator`` is unused (no churn) and kept for a uniform signature.
    """
    for i, t in enumerate(schedule.timesteps):
        sigma, sigma_next = schedule.sigmas[i].item(), schedule.sigmas[i + 1].item()
        eps = eps_fn(x / (sigma**2 + 1) ** 0.5, _batch_t(t, x)).to(x.dtype)
        denoised = x - sigma * eps
        x = x + eps * (sigma_next - sigma)  # d = (x - denoised) / sigma = eps
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "sigma": sigma, "denoised": denoised})
    return x


@torch.no_grad()
def sample_flow(velocity_fn: EpsFn, x: Tensor, schedule: Schedule, *, generator: Optional[torch.Generator] = None,
                callback: Optional[Callable[[dict], None]] = None) -> Tensor:
    """Euler steps of the rectified-flow ODE dx/dsigma = v (diffusers' ``FlowMatchEulerDiscreteScheduler``).

    ``x`` starts as unit noise at sigma 1; ``velocity_fn(x, t)`` (the guided ``predict_target`` of a
    flow model) gets float timesteps sigma * 1000. ``generator`` is unused (no churn).
    """
    for i, t in enumerate(schedule.timesteps):
        sigma, sigma_next = schedule.sigmas[i].item(), schedule.sigmas[i + 1].item()
        v = velocity_fn(x, _batch_t(t.to(torch.float32), x)).to(x.dtype)
        x = x + (sigma_next - sigma) * v
        if callback is not None:
            callback({"x": x, "i": i, "t": t, "sigma": sigma, "denoised": x - sigma * v})
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {"euler": sample_euler, "ddim": sample_ddim, "flow": sample_flow,
                                              "flow-linear": sample_flow}


@dataclass
class CallStats:
    """Denoiser calls and their wall time (CUDA-synchronised)."""

    calls: int = 0
    seconds: float = 0.0
    rows: int = 0
    extra: dict = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work so timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def guided_eps_fn(model: Any, cond: dict[str, Tensor], uncond: Optional[dict[str, Tensor]], guidance: float,
                  stats: Optional[CallStats] = None) -> EpsFn:
    """eps_fn for ``LoadedModel``: one batched call on [uncond, cond] and ``eps_u + g (eps_c - eps_u)``.

    With ``uncond`` None or guidance 1 the model is called on ``cond`` only. For rectified-flow
    models (``model.flow_matching``) it guides the velocity ``predict_target`` instead, as the SD3
    pipeline does (the combination is linear, so the formula is the same). A model with a
    ``guide(uncond, cond, guidance)`` method combines the two predictions itself (Qwen-Image).
    """
    use_cfg = uncond is not None and guidance != 1.0
    both = model.concat(uncond, cond) if use_cfg else cond
    predict = model.predict_target if getattr(model, "flow_matching", False) else model.predict_eps
    guide = getattr(model, "guide", None)  # a pipeline's own combination (Qwen-Image: norm-rescaled true CFG)

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        x_in, t_in = (torch.cat([x, x]), torch.cat([t, t])) if use_cfg else (x, t)
        if stats is not None:
            _sync(model.device)
            start = time.perf_counter()
        eps = predict(x_in, t_in, both)
        if stats is not None:
            _sync(model.device)
            stats.seconds += time.perf_counter() - start
            stats.calls += 1
            stats.rows += x_in.shape[0]
        if not use_cfg:
            return eps
        eps_u, eps_c = eps.chunk(2)
        if guide is not None:
            return guide(eps_u, eps_c, guidance)
        return eps_u + guidance * (eps_c - eps_u)

    return eps_fn
