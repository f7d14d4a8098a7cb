"""Trainer throughput: gradscope's round trainer vs a minimal hand-written PyTorch loop.

Same model (ResNet-20, channels_last), batch 128, CIFAR-10 (JPEG copy) in memory; the hand
loop gets pre-normalised float data and no augmentation (its best case), gradscope runs its
real path: ``build_context`` (uint8 cache -> whole-batch augmentation -> ResNet-20 with torch
prune masks) and ``RoundTrainer.train`` (optimizer, the round's per-batch schedule, callbacks,
divergence check), timed from the epoch's start to its last step's end (the evaluation that
follows is not training). Repeats are interleaved and the medians compared, so machine
noise hits both alike.

    .venv/bin/python bench/bench_trainer.py [--data-root ../shared/data/cifar10-jpeg.tar.xz]
    .venv/bin/python bench/bench_trainer.py --smoke      # digits, small_cnn, seconds: checks it runs
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradscope.callbacks import Callback  # noqa: E402
from gradscope.config import RunConfig  # noqa: E402
from gradscope.models import get_model  # noqa: E402
from gradscope.schedules import schedule_from_config  # noqa: E402
from gradscope.train.context import build_context  # noqa: E402
from gradscope.train.trainer import RoundTrainer  # noqa: E402

DEFAULT_ROOT = "../shared/data/cifar10-jpeg.tar.xz"  # relative to the working directory, as before


class _EpochClock(Callback):
    """Times the training epoch alone: from on_epoch_start to the end of its last step (the
    evaluation after it is not part of training)."""

    def __init__(self):
        self.t0 = self.t1 = 0.0

    def on_epoch_start(self, state):
        self.t0 = time.perf_counter()

    def on_step_end(self, state):
        if state.batch == state.steps_per_epoch - 1 and torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t1 = time.perf_counter()

    @property
    def dt(self) -> float:
        return self.t1 - self.t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default=DEFAULT_ROOT)
    ap.add_argument("--images", type=int, default=3840, help="images per timed epoch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (gradscope on CUDA: bf16 autocast, as the hand loop)")
    ap.add_argument("--smoke", action="store_true", help="digits + small_cnn, 1 repeat: checks that it runs")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    cfg = RunConfig()
    if a.smoke:
        cfg.model.model, cfg.data.dataset, a.images, a.repeats = "small_cnn", "digits", 256, 1
    else:
        cfg.model.model, cfg.data.dataset, cfg.data.data_root = "resnet20", "cifar10", a.data_root
    cfg.data.train_subset, cfg.data.batch_size, cfg.train.progress = a.images, 128, False
    cfg.data.val_fraction, cfg.data.test_subset = 0.0, 128  # no validation; a small test set (not timed)
    cfg.data.cache_dir = os.path.join(tempfile.gettempdir(), "gradscope-bench-cache") if a.smoke else None
    cfg.train.epochs, cfg.train.threads, cfg.train.device = 1, a.threads, a.device
    cfg.schedule.schedule, cfg.schedule.max_lr = "lth", 0.05
    cfg = cfg.validate()
    ctx = build_context(cfg)
    trainer = RoundTrainer(ctx, cfg.train, cfg.to_dict())
    factory = schedule_from_config(cfg.schedule)
    info = trainer.round_info(0, sparsity=0.0, prev_sparsity=0.0, prune_rate=cfg.prune.prune_rate)
    clock = _EpochClock()
    n_img = ctx.steps_per_epoch * cfg.data.batch_size

    torch.manual_seed(0)
    d = ctx.data
    dev = ctx.device
    ref = get_model(cfg.model.model, d.input_shape, d.num_classes).to(dev)
    cl = ctx.channels_last
    if cl:
        ref = ref.to(memory_format=torch.channels_last)
    mean = torch.tensor(d.mean).view(1, -1, *([1] * (d.train_x.dim() - 2)))
    std = torch.tensor(d.std).view(1, -1, *([1] * (d.train_x.dim() - 2)))
    xs = ((d.train_x.float() / 255 - mean) / std).to(dev)
    if cl:
        xs = xs.contiguous(memory_format=torch.channels_last)
    ys = d.train_y.to(dev)
    use_amp = dev.type == "cuda" and cfg.train.amp
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    bs = cfg.data.batch_size

    def hand_epoch() -> float:
        ref.train()
        sync()
        t0 = time.perf_counter()
        for i in range(0, len(ys) - bs + 1, bs):
            with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext():
                loss = nn.functional.cross_entropy(ref(xs[i:i + bs]), ys[i:i + bs])
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            ref_opt.step()
        sync()
        return (len(ys) // bs * bs) / (time.perf_counter() - t0)

    def gradscope_epoch() -> float:
        trainer.train(info, factory, [clock])
        return n_img / clock.dt

    hand_epoch(), gradscope_epoch()  # warm-up
    h, g = [], []
    for _ in range(a.repeats):
        h.append(hand_epoch())
        g.append(gradscope_epoch())
    mh, mg = statistics.median(h), statistics.median(g)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{cfg.model.model} on {cfg.data.dataset}, batch {bs}, threads={torch.get_num_threads()}, "
          f"images/epoch={n_img}, repeats={a.repeats} (interleaved), load average {load:.1f}")
    print(f"hand loop : median {mh:8.1f} img/s  {['%.0f' % v for v in h]}")
    print(f"gradscope : median {mg:8.1f} img/s  {['%.0f' % v for v in g]}  (RoundTrainer.train, training epoch)")
    print(f"ratio gradscope/hand throughput = {mg / mh:.3f}  (target >= 0.97)")


if __name__ == "__main__":
    main()
