"""Training throughput (images/s) of registry models, measured the way the trainer runs them.

Each model gets all-ones pruning masks (as every run has from round 0) and, if it has a conv,
the channels_last layout (the trainer's default); one step is forward, cross-entropy,
backward, SGD step on random inputs (bf16 autocast on CUDA, as the trainer's default --amp).
Models are timed in interleaved repeats (A B A B ...) so that load from other processes hits
them alike; the median over repeats is reported.

    python analysis/model_throughput.py --models vit_tiny,resnet20 --batch 128 --threads 2
    python analysis/model_throughput.py --models deit_tiny,resnet20 --batch 256 --device cuda   # a GPU
(run from the repository root with PYTHONPATH=. so that the checkout's gradscope is imported)
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from gradscope.models import get_model
from gradscope.pruning import attach_masks, prunable_layers
from gradscope.train.loop import autocast_for


def build(name: str, shape: tuple[int, int, int], classes: int, channels_last: bool, device: str):
    torch.manual_seed(0)
    m = get_model(name, shape, classes).to(device)
    attach_masks(prunable_layers(m))
    cl = channels_last and any(isinstance(x, nn.Conv2d) for x in m.modules())
    if cl:
        m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    return m.train(), opt, cl


def time_steps(m, opt, x, y, steps: int) -> float:
    """Seconds per training step, averaged over ``steps`` steps."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with autocast_for(x.device, True):  # bf16 on CUDA, as the trainer's default --amp; no-op on CPU
            loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
    sync()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vit_tiny,resnet20")
    ap.add_argument("--shape", default="3,32,32", help="C,H,W")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="training steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    shape = tuple(int(v) for v in a.shape.split(","))
    names = a.models.split(",")
    runs = {}
    for n in names:
        m, opt, cl = build(n, shape, a.classes, not a.no_channels_last, a.device)
        x = torch.randn(a.batch, *shape, device=a.device)
        x = x.to(memory_format=torch.channels_last) if cl else x
        y = torch.randint(0, a.classes, (a.batch,), device=a.device)
        time_steps(m, opt, x, y, 1)  # warm-up
        runs[n] = (m, opt, x, y)
    secs: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(a.repeats):
        for n in names:
            secs[n].append(time_steps(*runs[n], a.steps))
    out = {n: a.batch / statistics.median(s) for n, s in secs.items()}
    print(f"training images/s (median of {a.repeats} interleaved repeats of {a.steps} steps; batch {a.batch}, "
          f"input {a.shape}, {a.device}, threads {a.threads}, masks attached)")
    for n in names:
        per = ", ".join(f"{a.batch / s:.0f}" for s in secs[n])
        print(f"  {n:12s} {out[n]:8.1f} img/s   [repeats: {per}]")
    if len(names) > 1:
        base = names[-1]
        for n in names[:-1]:
            print(f"  ratio {n}/{base}: {out[n] / out[base]:.3f}")
    return out


if __name__ == "__main__":
    main()
