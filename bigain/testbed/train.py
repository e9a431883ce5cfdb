"""Train the testbed's class-conditional diffusion models on Fashion-MNIST (pixel space, 32x32).

    python -m bigain.testbed.train --model dit  --output_dir bigain/assets/testbed/dit-fmnist  --steps 2600 \
        --batch_size 32 --threads 1
    python -m bigain.testbed.train --model unet --output_dir bigain/assets/testbed/unet-fmnist --steps 1000 \
        --batch_size 32 --threads 1

DDPM training (linear betas 1e-4..0.02, T=1000, epsilon prediction), 10 % condition dropout
to the null class (index 10) for classifier-free guidance, AdamW with warm-up + cosine decay,
an EMA of the weights (the EMA weights are exported).  Timesteps are drawn from a mixture of
the uniform distribution and one concentrated on the mid range, where a diffusion classifier
gets most of its signal.

Resumes from ``OUTPUT_DIR/checkpoints/latest`` (safetensors weights + JSON state; the optimizer state
is a tensors-only ``torch.save`` file read back with ``weights_only=True``).  All files are
written atomically.  When ``--steps`` is reached the EMA model is exported to the layout the
loaders use: ``OUTPUT_DIR/transformer`` or ``OUTPUT_DIR/unet`` (+ ``OUTPUT_DIR/class_embeddings.safetensors``),
``OUTPUT_DIR/scheduler`` and ``OUTPUT_DIR/testbed.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bigain.storage import atomic_save_safetensors, atomic_write_json
from bigain.testbed import architectures as A
from bigain.testbed.sources import TESTBED_DATA, TestbedData, testbed_data

# ----------------------------------------------------------------------------- helpers

def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


class Trainable(torch.nn.Module):
    """Wraps the denoiser (and the U-Net's prompt-embedding table) behind one call
    ``eps = net(x_t, t, labels)`` so both models share the training loop."""

    def __init__(self, kind: str, model_cfg: dict, embed_cfg: dict | None):
        super().__init__()
        self.kind = kind
        if kind == "dit":
            self.denoiser = A.build_dit(model_cfg)
            self.embed = None
        else:
            self.denoiser, self.embed = A.build_unet(model_cfg, embed_cfg)

    def forward(self, x, t, labels):
        if self.kind == "dit":
            return self.denoiser(x, timestep=t, class_labels=labels).sample
        return self.denoiser(x, t, encoder_hidden_states=self.embed(labels)).sample


def sample_timesteps(n: int, T: int, g: torch.Generator, mid_frac: float, mid_center: float,
                     mid_std: float) -> torch.Tensor:
    """Mixture: (1 - mid_frac) uniform on [0, T) + mid_frac ~ N(mid_center*T, (mid_std*T)^2), clipped."""
    u = torch.randint(0, T, (n,), generator=g)
    if mid_frac <= 0:
        return u
    m = (torch.randn(n, generator=g) * mid_std * T + mid_center * T).round().clamp(0, T - 1).long()
    pick = torch.rand(n, generator=g) < mid_frac
    return torch.where(pick, m, u)


def lr_at(step: int, progress: float, base: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay over training progress in [0, 1]."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, max(0.0, progress))
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def progress_of(step: int, steps: int, elapsed_s: float, time_budget_s: float) -> float:
    """Training progress: the step fraction, or the elapsed fraction of ``--time_budget_min`` when
    that is larger (so a run on a busy/slow machine still completes its lr schedule in time)."""
    p = step / max(1, steps)
    if time_budget_s > 0:
        p = max(p, elapsed_s / time_budget_s)
    return p


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(ckdir: str, net: Trainable, ema: Trainable, opt, state: dict) -> None:
    os.makedirs(ckdir, exist_ok=True)
    tmp = os.path.join(ckdir, "latest.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    atomic_save_safetensors(net.state_dict(), os.path.join(tmp, "model.safetensors"))
    atomic_save_safetensors(ema.state_dict(), os.path.join(tmp, "ema.safetensors"))
    # optimizer state: tensors + plain containers only, so torch.load(weights_only=True) reads it
    torch.save(opt.state_dict(), os.path.join(tmp, "optimizer.pt"))
    atomic_write_json(os.path.join(tmp, "state.json"), state)
    final = os.path.join(ckdir, "latest")
    old = os.path.join(ckdir, "latest.old")
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(ckdir: str, net: Trainable, ema: Trainable, opt):
    from safetensors.torch import load_file

    path = os.path.join(ckdir, "latest")
    if not os.path.exists(os.path.join(path, "state.json")):
        old = os.path.join(ckdir, "latest.old")  # crash between the two renames
        if os.path.exists(os.path.join(old, "state.json")):
            path = old
        else:
            return None
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    net.load_state_dict(load_file(os.path.join(path, "model.safetensors")))
    ema.load_state_dict(load_file(os.path.join(path, "ema.safetensors")))
    opt.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), weights_only=True, map_location="cpu"))
    return state


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def eval_loss(net: Trainable, sched, x0: torch.Tensor, y: torch.Tensor, device, seed: int = 0) -> float:
    """Noise-prediction MSE of ``net`` on fixed images / timesteps / noise (comparable across runs)."""
    net.eval()
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(25, 975, len(x0)).round().long()
    noise = torch.randn(x0.shape, generator=g)
    xt = sched.add_noise(x0, noise, t)
    tot = 0.0
    for i in range(0, len(x0), 100):
        eps = net(xt[i:i + 100].to(device), t[i:i + 100].to(device), y[i:i + 100].to(device))
        tot += F.mse_loss(eps.float().cpu(), noise[i:i + 100], reduction="sum").item()
    return tot / noise.numel()


# ----------------------------------------------------------------------------- export

def export(out: str, ema: Trainable, sched, settings: dict, metrics: dict, source: TestbedData) -> None:
    """Write the EMA model in the loader layout (each item replaced atomically)."""
    os.makedirs(out, exist_ok=True)
    stage = os.path.join(out, ".export_tmp")
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    kind = ema.kind
    sub = "transformer" if kind == "dit" else "unet"
    denoiser = copy.deepcopy(ema.denoiser).cpu().float()
    denoiser.save_pretrained(os.path.join(stage, sub), safe_serialization=True)
    sched.save_pretrained(os.path.join(stage, "scheduler"))
    info = {
        "kind": kind,
        "format": "bigain-testbed-v1",
        "dataset": source.description,
        "class_names": list(source.class_names),
        "num_classes": len(source.class_names),
        "null_class_index": A.NULL_CLASS,
        "image_size": 32,
        "in_channels": 1,
        "out_channels": 1,
        "prediction_type": "epsilon",
        "latent_space": False,
        "model_subfolder": sub,
        "parameters": A.count_parameters(ema.denoiser),
    }
    if kind == "unet":
        emb = ema.embed.embeddings.detach().cpu().float().contiguous()
        atomic_save_safetensors({"embeddings": emb}, os.path.join(stage, "class_embeddings.safetensors"),
                                metadata={"null_index": str(A.NULL_CLASS), "shape": json.dumps(list(emb.shape))})
        info.update(embedding_shape=list(emb.shape), embedding_file="class_embeddings.safetensors",
                    embedding_key="embeddings",
                    conditioning="encoder_hidden_states = embeddings[label] (row 10 = null prompt)")
        info["parameters_embeddings"] = emb.numel()
    else:
        info["conditioning"] = "class_labels (0..9; 10 = null class for classifier-free guidance)"
    info["training"] = settings
    info["metrics"] = metrics
    atomic_write_json(os.path.join(stage, "testbed.json"), info)
    for name in sorted(os.listdir(stage)):
        dst = os.path.join(out, name)
        if os.path.isdir(dst):
            shutil.rmtree(dst)
        os.replace(os.path.join(stage, name), dst)
    shutil.rmtree(stage, ignore_errors=True)


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["dit", "unet"], required=True)
    ap.add_argument("--output_dir", "--out", dest="output_dir", required=True,
                    help="output folder (exported model + checkpoints/)")
    ap.add_argument("--steps", type=int, required=True, help="total optimisation steps (resume continues to this)")
    ap.add_argument("--time_budget_min", type=float, default=0.0,
                    help="also stop after this many minutes of training (summed over resumes); the lr "
                         "schedule follows max(step/steps, elapsed/budget). 0 = no time limit")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    ap.add_argument("--size", default="default", help="named model size in architectures.py (default | tiny)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min_lr_ratio", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight_decay", type=float, default=0.0)
    ap.add_argument("--ema_decay", type=float, default=0.998)
    ap.add_argument("--cond_dropout", type=float, default=0.1)
    ap.add_argument("--mid_frac", type=float, default=0.5, help="share of timesteps from the mid-range component")
    ap.add_argument("--mid_center", type=float, default=0.45)
    ap.add_argument("--mid_std", type=float, default=0.2)
    ap.add_argument("--hflip", type=float, default=0.0, help="horizontal flip probability (augmentation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt_every", type=float, default=300, help="checkpoint every N seconds (and at the end)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU with AVX512-BF16 / GPU)")
    ap.add_argument("--dataset", choices=list(TESTBED_DATA), default="fmnist",
                    help="testbed data set: fmnist (Fashion-MNIST) or textures (natural-texture crops)")
    ap.add_argument("--data", choices=["train", "subset"], default="train",
                    help="train: the data set's train split; subset: its shipped 1,000-image test subset "
                         "(smoke tests only; needs no data set install)")
    ap.add_argument("--max_train", type=int, default=0, help="use only N training images (0 = all; tests)")
    ap.add_argument("--eval_images", type=int, default=500, help="test-subset images for the eval loss (0 = none)")
    ap.add_argument("--no_export", action="store_true")
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    out = a.output_dir
    ckdir = os.path.join(out, "checkpoints")
    os.makedirs(out, exist_ok=True)

    model_cfg = copy.deepcopy((A.DIT_CONFIGS if a.model == "dit" else A.UNET_CONFIGS)[a.size])
    embed_cfg = copy.deepcopy(A.EMBED_CONFIGS[a.size]) if a.model == "unet" else None
    sched = A.build_scheduler()

    settings = {k: v for k, v in vars(a).items() if k not in ("output_dir",)}
    settings.update(model_config=model_cfg, embed_config=embed_cfg, scheduler=dict(sched.config),
                    objective="DDPM epsilon-prediction MSE", optimizer="AdamW(betas=(0.9, 0.999))",
                    lr_schedule="linear warm-up then cosine to min_lr_ratio*lr",
                    cond_dropout_target=f"null class {A.NULL_CLASS}",
                    timestep_sampling=(f"(1-mid_frac)*U[0,1000) + mid_frac*N({a.mid_center}*T, ({a.mid_std}*T)^2) "
                                       "clipped"))

    torch.manual_seed(a.seed)
    net = Trainable(a.model, model_cfg, embed_cfg).to(device)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=a.weight_decay, betas=(0.9, 0.999))

    state = load_checkpoint(ckdir, net, ema, opt)
    if state is None:
        state = {"step": 0, "elapsed_s": 0.0, "loss_log": [], "settings": settings}
        print(f"[train] fresh start: {a.model} {a.size}, {A.count_parameters(net)/1e6:.3f}M params, device {device}",
              flush=True)
    else:
        print(f"[train] resumed from {ckdir}/latest at step {state['step']}", flush=True)
        state.setdefault("resumes", []).append({"at_step": state["step"], "settings": settings})
    start_step = state["step"]

    source = testbed_data(a.dataset)
    xtr, ytr = source.load(a.data)
    if a.max_train:
        xtr, ytr = xtr[:a.max_train], ytr[:a.max_train]
    xtr, ytr = torch.from_numpy(xtr), torch.from_numpy(ytr)
    alphas = sched.alphas_cumprod.to(device)
    T = sched.config.num_train_timesteps
    use_amp = a.bf16
    amp_dev = "cuda" if device.type == "cuda" else "cpu"

    losses = []
    t_last_ck = time.time()
    t_run = time.time()
    bar = tqdm(total=a.steps, initial=start_step, desc=f"train {a.model}", mininterval=10,
               dynamic_ncols=True, file=sys.stderr)
    step = start_step
    budget_s = a.time_budget_min * 60.0

    def elapsed_now():
        return state.get("elapsed_s", 0.0) + (time.time() - t_run)

    while progress_of(step, a.steps, elapsed_now(), budget_s) < 1.0:
        net.train()
        # deterministic per-step randomness: resuming gives the same batches as an unbroken run
        g = torch.Generator().manual_seed(a.seed * 1_000_003 + step)
        idx = torch.randint(0, len(xtr), (a.batch_size,), generator=g)
        x0, y = xtr[idx], ytr[idx].clone()
        if a.hflip > 0:
            flip = torch.rand(a.batch_size, generator=g) < a.hflip
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        drop = torch.rand(a.batch_size, generator=g) < a.cond_dropout
        y[drop] = A.NULL_CLASS
        t = sample_timesteps(a.batch_size, T, g, a.mid_frac, a.mid_center, a.mid_std)
        noise = torch.randn(x0.shape, generator=g)
        x0, y, t, noise = x0.to(device), y.to(device), t.to(device), noise.to(device)
        ab = alphas[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise

        lr = lr_at(step, progress_of(step, a.steps, elapsed_now(), budget_s), a.lr, a.warmup, a.min_lr_ratio)
        for pg in opt.param_groups:
            pg["lr"] = lr
        with torch.autocast(amp_dev, dtype=torch.bfloat16, enabled=use_amp):
            eps = net(xt, t, y)
        loss = F.mse_loss(eps.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        d = min(a.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p.detach(), 1 - d)
            for be, b in zip(ema.buffers(), net.buffers()):
                be.copy_(b)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", lr=f"{lr:.2e}", refresh=False)
        finished = progress_of(step, a.steps, elapsed_now(), budget_s) >= 1.0
        if step % 50 == 0 or finished:
            state["loss_log"].append([step, float(np.mean(losses[-50:]))])
        if time.time() - t_last_ck > a.ckpt_every or finished:
            state["step"] = step
            state["elapsed_s"] = state.get("elapsed_s", 0.0) + (time.time() - t_run)
            t_run = time.time()
            save_checkpoint(ckdir, net, ema, opt, state)
            t_last_ck = time.time()
            print(f"\n[train] checkpoint at step {step} (loss {np.mean(losses[-50:]):.4f}, "
                  f"{state['elapsed_s']:.0f}s total)", flush=True)
    bar.close()
    if step != state["step"]:  # e.g. resumed from a finished run with a larger --steps
        state["step"] = step
    state["finished_by"] = "steps" if step >= a.steps else "time_budget"

    if a.no_export:
        return state
    metrics = {"steps": step, "train_seconds": round(state.get("elapsed_s", 0.0), 1),
               "seconds_per_step": round(state.get("elapsed_s", 0.0) / max(1, step), 3),
               "final_train_loss_last50": state["loss_log"][-1][1] if state["loss_log"] else None}
    if a.eval_images:
        xs, ys = source.load("subset")
        n = min(a.eval_images, len(xs))
        xs, ys = torch.from_numpy(xs[:n]), torch.from_numpy(ys[:n])
        metrics["eval_loss_ema_cond"] = eval_loss(ema, sched, xs, ys, device)
        metrics["eval_loss_ema_null"] = eval_loss(ema, sched, xs, torch.full_like(ys, A.NULL_CLASS), device)
        metrics["eval_loss_note"] = (f"eps MSE on the first {n} test-subset images, t = linspace(25, 975), "
                                     "seed-0 noise; cond = true label, null = class 10")
    settings["torch"] = torch.__version__
    import diffusers

    settings["diffusers"] = diffusers.__version__
    settings["platform"] = platform.platform()
    settings["device_used"] = str(device)
    settings["loss_log"] = state["loss_log"]
    export(out, ema, sched, settings, metrics, source)
    print("[train] exported EMA model to", out, json.dumps(metrics), flush=True)
    return state


if __name__ == "__main__":
    main()
