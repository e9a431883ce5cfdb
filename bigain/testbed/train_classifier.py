"""Train the reference CNN classifier on a testbed train split (Fashion-MNIST or natural textures).

    python -m bigain.testbed.train_classifier --output_dir bigain/assets/testbed/classifier --epochs 4 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from bigain.storage import atomic_save_safetensors, atomic_write_text
from bigain.testbed import classifier_dir
from bigain.testbed.reference_classifier import DEFAULT_CONFIG, ReferenceCNN
from bigain.testbed.sources import TESTBED_DATA, testbed_data


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flip + random shift of up to 2 px (inside the 32x32 canvas)."""
    b = x.shape[0]
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
    return pad[:, :, dy:dy + 32, dx:dx + 32]


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, bs: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        correct += (model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum().item()
    return correct / len(x)


def parse_args(argv=None) -> argparse.Namespace:
    """The trainer's command line (`--output_dir`, alias `--out`, as every other CLI)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output_dir", "--out", dest="output_dir", default=None,
                    help="output folder (model.safetensors, config.json); default: the data set's shipped "
                         "classifier folder (classifier/ for fmnist, classifier-<dataset>/ otherwise)")
    ap.add_argument("--dataset", choices=list(TESTBED_DATA), default="fmnist", help="testbed data set")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max_train", type=int, default=0, help="use only the first N training images (0 = all)")
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    a.output_dir = a.output_dir or classifier_dir(a.dataset)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    source = testbed_data(a.dataset)
    xtr, ytr = source.load("train")
    if a.max_train:
        xtr, ytr = xtr[:a.max_train], ytr[:a.max_train]
    xte, yte = source.load("test")
    xtr, ytr = torch.from_numpy(xtr), torch.from_numpy(ytr)
    xte, yte = torch.from_numpy(xte), torch.from_numpy(yte)
    model = ReferenceCNN(**DEFAULT_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=5e-4)
    steps_per_epoch = len(xtr) // a.batch_size
    total = steps_per_epoch * a.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=total, pct_start=0.15)
    t0 = time.time()
    bar = tqdm(total=total, desc="classifier", mininterval=5)
    for ep in range(a.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * a.batch_size:(i + 1) * a.batch_size]
            xb = _augment(xtr[idx], g)
            loss = F.cross_entropy(model(xb), ytr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", ep=ep)
    bar.close()
    wall = time.time() - t0
    test_acc = evaluate(model, xte, yte)
    xs, ys = source.load("subset")
    subset_acc = evaluate(model, torch.from_numpy(xs), torch.from_numpy(ys))
    print(f"test accuracy {test_acc:.4f}  subset accuracy {subset_acc:.4f}  wall {wall:.0f}s")
    atomic_save_safetensors(model.state_dict(), os.path.join(a.output_dir, "model.safetensors"))
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(architecture="ReferenceCNN", input_range=[-1, 1], dataset=a.dataset, test_accuracy=test_acc,
               subset_accuracy=subset_acc,
               parameters=sum(p.numel() for p in model.parameters()),
               training=dict(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, optimizer="AdamW",
                             weight_decay=5e-4, schedule="OneCycle", label_smoothing=0.05,
                             augmentation="hflip + shift<=2px", seed=a.seed, threads=a.threads,
                             train_images=len(xtr), wall_seconds=round(wall, 1),
                             torch=torch.__version__))
    atomic_write_text(os.path.join(a.output_dir, "config.json"), json.dumps(cfg, indent=1) + "\n")
    return test_acc


if __name__ == "__main__":
    main()
