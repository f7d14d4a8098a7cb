"""Recorder cost: ``GradientRecorder.step()`` per recorded weight, and training-step time with
recording every step / without, for ResNet-20, ResNet-18 and ResNet-50 (gradscope.models) at
32x32 / 64x64 inputs and batch 16 / 128, channels_last, random data.

Per row, in one run, interleaved repeats, medians:
- ``step ns/w``: ``rec.step()`` alone (gradients of one backward), ns per recorded weight;
- ``floor ns/w``: one plain pass over the same gradients (copy of the flat gradients into a
  preallocated buffer), the memory-speed floor;
- ``old ns/w`` / ``speedup``: the previous implementation (kept below, for this comparison only);
- ``ratio``: training step (zero_grad, forward, backward, [rec.step()], optimizer step) with
  recording / without. The issue's GPU target is ratio <= 1.03 for ResNet-50, batch 128.
Prints a markdown table and writes JSON to bench/results/ (git-ignored).

    python bench/bench_recorder.py                       # CPU default set (a few minutes)
    python bench/bench_recorder.py --quick               # ResNet-20/18, 32x32 only
    python bench/bench_recorder.py --models resnet18 --batch 128 --res 32
    python bench/bench_recorder.py --device cuda --amp bf16 --models resnet50 --batch 128   # GPU target row
    python bench/bench_recorder.py --smoke               # ResNet-20 16x16 batch 4, eager, 1 repeat: checks it runs
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gradscope.models import get_model  # noqa: E402
from gradscope.record import GradientRecorder, log_edges  # noqa: E402
from gradscope.pruning import weight_param  # noqa: E402
from gradscope.record.recorder import RecorderWarning  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ----------------------------------------------------------------------------- previous implementation
# The accumulator as it was before issue 10 (one float64 pass per power sum, int64 scatter_add),
# kept only to measure the speedup in the same run.
def _old_bin_lut(edges: np.ndarray, bits: int = 14):
    e = np.asarray(edges, dtype=np.float64)
    c = e.astype(np.float32)
    low = c.astype(np.float64) < e
    c[low] = np.nextafter(c[low], np.float32(np.inf))
    thr = c.astype(np.float64)
    nb = len(thr) - 1
    sh = 32 - bits
    q = np.arange(1 << bits, dtype=np.uint32)
    neg = q >= (1 << (bits - 1))
    lo_b, hi_b = q << sh, (q << sh) | ((1 << sh) - 1)
    with np.errstate(invalid="ignore"):
        lo = np.where(neg, hi_b, lo_b).astype(np.uint32).view(np.float32).astype(np.float64)
        hi = np.where(neg, lo_b, hi_b).astype(np.uint32).view(np.float32).astype(np.float64)
    finite = np.isfinite(lo) & np.isfinite(hi)
    k_lo = np.searchsorted(thr, np.where(finite, lo, 0), side="right")
    k_hi = np.searchsorted(thr, np.where(finite, hi, 0), side="right")
    nonfinite = ((lo_b >> 23) & 0xFF) == 0xFF
    lut = np.where(nonfinite, nb + 2, k_lo).astype(np.int64)
    n_corr = int(np.max(np.where(nonfinite | ~finite, 0, k_hi - k_lo)))
    return lut, np.concatenate([thr, [np.inf, np.nan]]).astype(np.float32), n_corr


class OldAccumulator:
    def __init__(self, sizes, edges, device):
        self.sizes, self.L, self.N = list(sizes), len(sizes), sum(sizes)
        lut, C, self.n_corr = _old_bin_lut(edges)
        self.nb = len(edges) - 1
        self.lut, self.C = torch.as_tensor(lut, device=device), torch.as_tensor(C, device=device)
        self.stride = self.nb + 3
        seg = torch.repeat_interleave(torch.arange(self.L, device=device), torch.tensor(self.sizes, device=device))
        self.segoff = seg * self.stride
        self.counts = torch.zeros(self.L * self.stride, dtype=torch.int64, device=device)
        self.sums = torch.zeros(self.L, 5, dtype=torch.float64, device=device)
        self.mins = torch.full((self.L,), math.inf, device=device)
        self.maxs = torch.full((self.L,), -math.inf, device=device)
        self.buf = torch.empty(5, self.N, dtype=torch.float64, device=device)
        self.xf = torch.empty(self.N, device=device)
        self.mm = torch.empty(2, self.N, device=device)
        self.pinf, self.zero, self.ninf = (torch.tensor(v, device=device) for v in (math.inf, 0.0, -math.inf))

    def add(self, g, mask, mask_i64):
        q = torch.bitwise_right_shift(g.view(torch.int32), 18).to(torch.int64)
        q.bitwise_and_((1 << 14) - 1)
        k = torch.take(self.lut, q)
        for _ in range(self.n_corr):
            k += torch.ge(g, torch.take(self.C, k))
        valid = torch.ne(k, self.nb + 2).logical_and_(mask)
        self.counts.scatter_add_(0, k.add_(self.segoff), mask_i64)
        buf, xf, mm = self.buf, self.xf, self.mm
        torch.where(valid, g, self.zero, out=xf)
        x = buf[0]
        x.copy_(xf)
        torch.mul(x, x, out=buf[1])
        torch.abs(x, out=buf[2])
        torch.mul(buf[1], x, out=buf[3])
        torch.mul(buf[1], buf[1], out=buf[4])
        torch.where(valid, g, self.pinf, out=mm[0])
        torch.where(valid, g, self.ninf, out=mm[1])
        s = torch.stack([v.sum(1) for v in buf.split(self.sizes, 1)])
        lo = torch.stack([v.amin() for v in mm[0].split(self.sizes)])
        hi = torch.stack([v.amax() for v in mm[1].split(self.sizes)])
        self.sums += s
        torch.minimum(self.mins, lo, out=self.mins)
        torch.maximum(self.maxs, hi, out=self.maxs)


def old_step(acc: OldAccumulator, params, mask, mask_i64) -> None:
    """What GradientRecorder.step() did before: concatenate the gradients, then add."""
    g = torch.cat([p.grad.reshape(-1) for p in params])
    acc.add(g, mask, mask_i64)


# ----------------------------------------------------------------------------- timing
def timer(device: torch.device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(fn) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0
    return run


def bench_row(name: str, res: int, batch: int, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = get_model(name, (3, res, res), 10).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, res, res, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    tmp = tempfile.mkdtemp()
    rec = GradientRecorder(model, os.path.join(tmp, "bench.h5"), example_input=x[:2])
    params = [weight_param(i.module) for i in rec.recorded]
    nw = sum(p.numel() for p in params)
    amp = args.amp == "bf16"
    run = timer(device)

    def train_step(record: bool) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        if record:
            rec.step()
        opt.step()

    heavy = name == "resnet50" or (res >= 64 and batch >= 128)
    reps = args.repeats or (3 if heavy and device.type == "cpu" else 5 if device.type == "cpu" else 10)
    if device.type == "cpu":
        steps = args.steps or (3 if name == "resnet20" and not heavy else 1)
    else:
        steps = args.steps or 5
    first = run(lambda: train_step(True))  # includes compiling the recorder kernels when they compile
    run(lambda: train_step(False))
    t = {"none": [], "rec": []}
    for _ in range(reps):
        for mode in ("none", "rec"):
            t[mode].append(run(lambda: [train_step(mode == "rec") for _ in range(steps)]) / steps)
    # step() alone, the old implementation and the one-pass floor, on the last gradients
    rec._masks()
    mask = rec._mask
    mask_i64 = mask.to(torch.int64)
    old = OldAccumulator([p.numel() for p in params], log_edges(201), device) if not args.no_old else None
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dst = torch.empty_like(flat)
    s = {"step": [], "old": [], "floor": []}
    n_alone = max(reps, 5)
    for i in range(n_alone):
        s["step"].append(run(rec.step))
        if old is not None and i < max(3, reps):
            s["old"].append(run(lambda: old_step(old, params, mask, mask_i64)))
        s["floor"].append(run(lambda: dst.copy_(flat)))
    med = {k: statistics.median(v) for k, v in {**t, **s}.items() if v}
    rec.close()
    row = {"model": name, "input": f"{res}x{res}", "batch": batch, "weights": nw,
           "step_none_ms": med["none"] * 1e3, "step_rec_ms": med["rec"] * 1e3, "ratio": med["rec"] / med["none"],
           "step_fn_ms": med["step"] * 1e3, "ns_per_weight": med["step"] / nw * 1e9,
           "floor_ns_per_weight": med["floor"] / nw * 1e9,
           "old_ns_per_weight": med["old"] / nw * 1e9 if "old" in med else None,
           "speedup_vs_old": med["old"] / med["step"] if "old" in med else None,
           "compiled": bool(rec.acc._use_compile), "first_step_s": first,
           "first_step_extra_s": first - med["rec"], "repeats": reps, "steps_per_repeat": steps}
    del model, opt, rec
    return row


def table(rows: list[dict]) -> str:
    head = ("| model | input | batch | weights | step ns/w | floor ns/w | old ns/w | speedup | "
            "step ms none / rec | ratio | kernels |")
    lines = [head, "|" + "|".join(["---"] * 11) + "|"]
    for r in rows:
        old = f"{r['old_ns_per_weight']:.1f}" if r["old_ns_per_weight"] is not None else "-"
        sp = f"{r['speedup_vs_old']:.1f}x" if r["speedup_vs_old"] is not None else "-"
        lines.append(f"| {r['model']} | {r['input']} | {r['batch']} | {r['weights'] / 1e6:.2f} M | "
                     f"{r['ns_per_weight']:.2f} | {r['floor_ns_per_weight']:.2f} | {old} | {sp} | "
                     f"{r['step_none_ms']:.0f} / {r['step_rec_ms']:.0f} | {r['ratio']:.3f} | "
                     f"{'compiled' if r['compiled'] else 'eager'} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--models", nargs="+", default=None, help="default resnet20 resnet18 resnet50 "
                    "(--quick: resnet20 resnet18)")
    ap.add_argument("--res", nargs="+", type=int, default=None, help="input sizes (default 32 64)")
    ap.add_argument("--batch", nargs="+", type=int, default=[16, 128])
    ap.add_argument("--quick", action="store_true", help="fewer rows: unless --models / --res are given, "
                    "ResNet-20 and ResNet-18 at 32x32")
    ap.add_argument("--full", action="store_true", help="on CPU also the slow rows (64x64 at batch 128, "
                                                        "ResNet-50 at batch 128): tens of minutes")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default by model/device)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per repeat")
    ap.add_argument("--amp", choices=["none", "bf16"], default="none", help="bf16 autocast for the training step")
    ap.add_argument("--compile", choices=["auto", "0", "1"], default=None,
                    help="recorder kernels: GRADSCOPE_COMPILE (auto: compiled for >= 2^18 recorded weights)")
    ap.add_argument("--no-old", action="store_true", help="skip the previous implementation")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/recorder-<device>-<time>.json)")
    ap.add_argument("--smoke", action="store_true", help="ResNet-20 16x16 batch 4, eager kernels, 1 step x 1 "
                    "repeat, JSON to a temporary folder: seconds, measures nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        args.models, args.res, args.batch, args.repeats, args.steps = ["resnet20"], [16], [4], 1, 1
        args.compile, args.no_old = args.compile or "0", True
        args.out = args.out or os.path.join(tempfile.mkdtemp(prefix="bench-recorder-"), "smoke.json")
    if args.compile is not None:
        os.environ["GRADSCOPE_COMPILE"] = args.compile
    # step() alone is timed by calling it repeatedly without an optimizer step, which the recorder
    # (rightly) reports as gradient accumulation
    warnings.simplefilter("ignore", RecorderWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    models = args.models or (["resnet20", "resnet18"] if args.quick else ["resnet20", "resnet18", "resnet50"])
    res_list = args.res or ([32] if args.quick else [32, 64])
    rows = []
    for name in models:
        for res in res_list:
            for batch in args.batch:
                slow = device.type == "cpu" and ((res >= 64 and batch >= 128 and name != "resnet20")
                                                 or (name == "resnet50" and (batch >= 128 or res >= 64)))
                if slow and not args.full:
                    continue
                r = bench_row(name, res, batch, args, device)
                rows.append(r)
                print(f"{name} {res}x{res} b{batch}: step {r['ns_per_weight']:.2f} ns/w "
                      f"(floor {r['floor_ns_per_weight']:.2f}, old {r['old_ns_per_weight'] or float('nan'):.1f}), "
                      f"ratio {r['ratio']:.3f}, "
                      f"first step +{r['first_step_extra_s']:.1f} s (compiling)", flush=True)
    if device.type == "cuda":
        dev = torch.cuda.get_device_name(device)
    else:
        dev = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    meta = {"torch": torch.__version__, "device": dev, "amp": args.amp, "channels_last": True,
            "compile_env": os.environ.get("GRADSCOPE_COMPILE", "auto"), "load_avg": os.getloadavg(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"\ntorch {meta['torch']}, {dev}, amp {args.amp}, channels_last, load average {meta['load_avg'][0]:.1f}")
    print(table(rows))
    out = args.out or os.path.join(RESULTS, f"recorder-{device.type}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
