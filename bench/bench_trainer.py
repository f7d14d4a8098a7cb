"""Trainer throughput: gradscope's round trainer vs a minimal hand-written PyTorch loop.

Same model (ResNet-20, channels_last), batch 128, CIFAR-10 (JPEG copy) in memory; the hand
loop gets pre-normalised float data and no augmentation (its best case), gradscope runs its
real path (uint8 cache -> whole-batch augmentation -> masked ResNet-20 -> SGD + schedule).
Repeats are interleaved and the medians compared, so machine noise hits both alike.

    .venv/bin/python bench/bench_trainer.py [--data-root ../shared/data/cifar10-jpeg.tar.xz]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from gradscope.config import RunConfig
from gradscope.callbacks import TrainState
from gradscope.train.loop import train_epoch
from gradscope.train.runner import PruningRun


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default="../shared/data/cifar10-jpeg.tar.xz")
    ap.add_argument("--images", type=int, default=3840, help="images per timed epoch")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    cfg = RunConfig()
    cfg.model.model, cfg.data.dataset, cfg.data.data_root = "resnet20", "cifar10", a.data_root
    cfg.data.train_subset, cfg.data.batch_size, cfg.train.progress = a.images, 128, False
    cfg.schedule.schedule, cfg.schedule.preset = "silo", "resnet20"
    run = PruningRun(cfg, log=lambda s: None)
    run._setup()
    run.results, run.round_extra, run.epochs_log = [], {}, []
    factory = run.schedule_factory()

    torch.manual_seed(0)
    from gradscope.models import get_model
    ref = get_model("resnet20", run.data.input_shape, run.data.num_classes).to(memory_format=torch.channels_last)
    mean = torch.tensor(run.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(run.data.std).view(1, -1, 1, 1)
    xs = ((run.data.train_x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
    ys = run.data.train_y
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def hand_epoch() -> float:
        ref.train()
        t0 = time.perf_counter()
        for i in range(0, len(ys) - 127, 128):
            loss = nn.functional.cross_entropy(ref(xs[i:i + 128]), ys[i:i + 128])
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            ref_opt.step()
        return (len(ys) // 128 * 128) / (time.perf_counter() - t0)

    def gradscope_epoch() -> float:
        out = run.round_info(0)
        info = out["info"]
        opt = torch.optim.SGD(run.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        st = TrainState(model=run.net, optimizer=opt, scheduler=factory.build(opt, info), device=run.device)
        run.train_loader.set_epoch(0)
        t0 = time.perf_counter()
        train_epoch(st, run.train_loader)
        return len(run.train_loader.y if hasattr(run.train_loader, "y") else ys) / (time.perf_counter() - t0)

    hand_epoch(), gradscope_epoch()  # warm-up
    h, g = [], []
    for _ in range(a.repeats):
        h.append(hand_epoch())
        g.append(gradscope_epoch())
    mh, mg = statistics.median(h), statistics.median(g)
    print(f"threads={torch.get_num_threads()} images/epoch={len(ys)} repeats={a.repeats}")
    print(f"hand loop : median {mh:8.1f} img/s  {['%.0f' % v for v in h]}")
    print(f"gradscope : median {mg:8.1f} img/s  {['%.0f' % v for v in g]}")
    print(f"ratio gradscope/hand = {mg / mh:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
