"""Recorder overhead on CPU: ResNet-20, batch 128, CIFAR-sized random input, channels_last.

Prints median step times with / without recording (interleaved repeats, same run), the ratio
(target <= 1.05), the usual host-copy + np.histogram approach side by side, and file size and
write time per window, extrapolated to a 25-round run.
Usage: python bench/bench_recorder.py [--steps 6] [--repeats 5] [--epochs 50] [--steps-per-epoch 391]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gradscope.record import GradientRecorder, log_edges  # noqa: E402


def resnet20(num_classes: int = 10) -> nn.Module:
    try:
        from gradscope.models import get_model
        return get_model("resnet20", (3, 32, 32), num_classes)
    except Exception:  # noqa: BLE001 - models not ready: a local CIFAR ResNet-20
        pass

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = F.relu(self.b1(self.c1(x)), inplace=True)
            out = self.b2(self.c2(out))
            out = out + (x if self.short is None else self.short(x))
            return F.relu(out)

    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
    cin = 16
    for cout, stride in [(16, 1), (32, 2), (64, 2)]:
        for i in range(3):
            layers.append(Block(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--steps-per-epoch", type=int, default=391)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = resnet20().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    tmp = tempfile.mkdtemp()
    rec = GradientRecorder(model, os.path.join(tmp, "bench.h5"), example_input=x[:2])
    params = [i.module.weight for i in rec.recorded]
    edges = log_edges(201)
    nw = sum(p.numel() for p in params)

    def train_step(mode: str) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if mode == "rec":
            rec.step()
        elif mode == "host":
            for p in params:
                np.histogram(p.grad.detach().cpu().numpy(), edges)
        opt.step()
        return time.perf_counter() - t0

    for m in ("none", "rec", "host"):
        train_step(m)
    times = {"none": [], "rec": [], "host": []}
    for _ in range(args.repeats):
        for m in ("none", "rec", "host"):
            times[m].extend(train_step(m) for _ in range(args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    # recording cost alone (no training step around it)
    g = [p.grad for p in params]
    rec_only = []
    for _ in range(30):
        t0 = time.perf_counter()
        rec.step()
        rec_only.append(time.perf_counter() - t0)
    host_only = []
    for _ in range(10):
        t0 = time.perf_counter()
        for t in g:
            np.histogram(t.detach().cpu().numpy(), edges)
        host_only.append(time.perf_counter() - t0)
    # file size and write time per window
    path = os.path.join(tmp, "size.h5")
    r2 = GradientRecorder(model, path, example_input=x[:2])
    wt = []
    n_windows = 20
    for _ in range(n_windows):
        r2.step()
        t0 = time.perf_counter()
        r2.flush()
        wt.append(time.perf_counter() - t0)
    r2.close()
    size0 = os.path.getsize(path)
    per_window = (size0 - os.path.getsize(os.path.join(tmp, "bench.h5"))) / n_windows
    total_windows = 25 * args.epochs
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, recorded layers {len(params)}, weights {nw}")
    print(f"step median: none {med['none'] * 1e3:.1f} ms | recorder {med['rec'] * 1e3:.1f} ms | "
          f"host+np.histogram {med['host'] * 1e3:.1f} ms")
    print(f"ratio recorder/none {med['rec'] / med['none']:.3f} (target <= 1.05) | "
          f"host-copy approach/none {med['host'] / med['none']:.3f}")
    print(f"recorder step() alone: median {statistics.median(rec_only) * 1e3:.2f} ms; "
          f"host copy + np.histogram alone: {statistics.median(host_only) * 1e3:.2f} ms")
    print(f"per window (1 step of data, {len(params)} layers): file +{per_window / 1024:.1f} KiB, "
          f"flush+write median {statistics.median(wt) * 1e3:.1f} ms")
    print(f"25 rounds x {args.epochs} epochs = {total_windows} epoch windows: ~{per_window * total_windows / 2**20:.1f} MiB, "
          f"~{statistics.median(wt) * total_windows:.1f} s writing; recording over "
          f"{total_windows * args.steps_per_epoch} steps ~{statistics.median(rec_only) * total_windows * args.steps_per_epoch / 60:.1f} min")


if __name__ == "__main__":
    main()
