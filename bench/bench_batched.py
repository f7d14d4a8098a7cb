"""K max_lr candidates trained as one vmapped model (gradscope.train.batched) vs one after the other.

Throughput in candidate-images per second (K x batch x steps / time) of SGD steps with masks
(50 % pruned), for small models; repeats interleaved, medians compared. Also run on a GPU by
bench/bench_gpu.py.

    python bench/bench_batched.py [--device cpu] [--threads 1] [--ks 4,8] [--models small_cnn,resnet20]
    python bench/bench_batched.py --smoke     # small_cnn, K = 2, one step: checks that it runs
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gradscope import pruning as P  # noqa: E402
from gradscope.models import get_model  # noqa: E402
from gradscope.train.batched import BatchedCandidates  # noqa: E402

SHAPES = {"small_cnn": (1, 8, 8), "lenet_300_100": (1, 28, 28), "resnet20": (3, 32, 32)}


def masked_model(name: str, device, channels_last: bool):
    torch.manual_seed(0)
    m = get_model(name, SHAPES[name], 10).to(device)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    layers = P.prunable_layers(m, True, True)
    P.attach_masks(layers)
    P.prune_step(layers, "global", 0.5, seed=0)
    return m


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name: str, k: int, batch: int, steps: int, device, repeats: int, amp: bool = False,
            compile_: bool = False) -> dict:
    """Candidate-images/s of K sequential models and of one batched model (medians of interleaved repeats)."""
    cl = device.type == "cuda" and SHAPES[name][0] == 3
    m = masked_model(name, device, cl)
    lrs = torch.linspace(0.01, 0.1, k)
    seq = []
    for lr in lrs:
        r = copy.deepcopy(m)
        seq.append((torch.compile(r) if compile_ else r, torch.optim.SGD(r.parameters(), lr=float(lr), momentum=0.9,
                                                                          weight_decay=5e-4)))
    bc = BatchedCandidates(m, k)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *SHAPES[name], generator=g).to(device)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    dt = torch.bfloat16 if amp and device.type == "cuda" else None

    def run_seq():
        for net, opt in seq:
            with torch.autocast(device.type, dtype=dt) if dt else torch.autocast("cpu", enabled=False):
                loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def run_batched():
        bc.step(x, y, lrs, amp_dtype=dt)

    out = {}
    for label, fn in (("sequential", run_seq), ("batched", run_batched)):
        fn()  # warm-up (allocations, autotuning)
        fn()
    times = {"sequential": [], "batched": []}
    for _ in range(repeats):
        for label, fn in (("sequential", run_seq), ("batched", run_batched)):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(device)
            times[label].append(time.perf_counter() - t0)
    for label, ts in times.items():
        out[label] = k * batch * steps / statistics.median(ts)
    out["speedup"] = out["batched"] / out["sequential"]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ks", default="4,8")
    ap.add_argument("--models", default="small_cnn,resnet20")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="small_cnn, K = 2, batch 8, one step, one repeat")
    a = ap.parse_args(argv)
    if a.smoke:
        a.models, a.ks, a.batch, a.steps, a.repeats = "small_cnn", "2", 8, 1, 1
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    print(f"device {device}, {a.threads} threads, batch {a.batch}, {a.steps} steps x {a.repeats} interleaved "
          f"repeats (medians); throughput = candidate-images/s")
    print(f"{'model':<14}{'K':>3} {'sequential':>11} {'batched':>9} {'batched/seq':>12}")
    for name in a.models.split(","):
        for k in (int(v) for v in a.ks.split(",")):
            r = measure(name, k, a.batch, a.steps, device, a.repeats)
            print(f"{name:<14}{k:>3} {r['sequential']:11.0f} {r['batched']:9.0f} {r['speedup']:12.2f}", flush=True)


if __name__ == "__main__":
    main()
