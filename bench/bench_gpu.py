"""The GPU fast path in one run: ResNet-20 on CIFAR-10-sized data, batch 512, against a bare loop.

Both variants use the same data pipeline (gradscope's BatchLoader: uint8 images resident on the
device, crop+flip of the whole batch on the device), bf16 autocast, channels_last, SGD, and
``torch.compile`` of the model (forward + backward). "bare" is a plain ResNet-20 with a
minimal loop; "gradscope" is gradscope's own loop (``gradscope.train.loop.train_epoch``) on a
50 %-pruned ResNet-20 (torch prune masks inside the compiled graph) with the GradientRecorder
attached (every step, HDF5 flush per epoch); "masks only" drops the recorder. One epoch =
50,000 images; repeats are interleaved and medians compared. A compile failure is reported
and the variant runs eagerly. Also: K max_lr candidates as one batched model vs sequential.

On a GPU (about 3-5 minutes, mostly compilation):
    python bench/bench_gpu.py [--cifar PATH/cifar10-jpeg.tar.xz] [--out results.json]
Here, end to end on tiny sizes:
    python bench/bench_gpu.py --quick --device cpu
    python bench/bench_gpu.py --smoke      # CPU, eager, 128 images: seconds, checks that it runs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no decode progress bars in the compact output

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradscope import pruning as P  # noqa: E402
from gradscope.callbacks import TrainState  # noqa: E402
from gradscope.data import BatchLoader, epoch_key  # noqa: E402
from gradscope.models import get_model  # noqa: E402
from gradscope.train.loop import autocast_for, train_epoch  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


def load_data(cifar: str | None, n: int, cache: str):
    """uint8 images [n, 3, 32, 32], labels, mean, std: CIFAR-10's training set or random data."""
    if cifar and os.path.exists(cifar):
        from gradscope.data import load_dataset  # noqa: PLC0415

        t0 = time.perf_counter()
        b = load_dataset("cifar10", cifar, val_fraction=0.0, seed=0, cache_dir=cache)
        log(f"CIFAR-10 from {cifar}: {len(b.train_y)} training images ({time.perf_counter() - t0:.1f} s to load)")
        return b.train_x[:n], b.train_y[:n], b.mean, b.std, "cifar10"
    if cifar:
        log(f"--cifar {cifar} not found: random data of CIFAR-10's shape")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), "random"


def build(masked: bool, device, channels_last: bool):
    torch.manual_seed(0)
    m = get_model("resnet20", (3, 32, 32), 10).to(device)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    if masked:
        layers = P.prunable_layers(m, True, True)
        P.attach_masks(layers)
        P.prune_step(layers, "global", 0.5, seed=0)
    return m


def maybe_compile(model, enabled: bool, mode: str | None, notes: list, label: str):
    if not enabled:
        return model
    try:
        return torch.compile(model, mode=mode)
    except Exception as e:  # noqa: BLE001 - report and go on eagerly
        notes.append(f"{label}: torch.compile failed ({type(e).__name__}: {e}); eager")
        return model


class Variant:
    """One way of training an epoch; ``epoch()`` returns seconds (device synchronised)."""

    def __init__(self, label, model, net, loader, device, amp, recorder=None, use_loop=True):
        self.label, self.model, self.net, self.loader, self.device = label, model, net, loader, device
        self.amp, self.recorder, self.use_loop = amp, recorder, use_loop
        self.opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4,
                                   **({"fused": True} if device.type == "cuda" else {}))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)
        self.state = TrainState(model=net, optimizer=self.opt, scheduler=self.sched, device=device,
                                steps_per_epoch=len(loader), epochs=1)
        self.n_epoch = 0
        self.last_loss = float("nan")

    def _bare(self) -> float:
        self.net.train()
        total = torch.zeros((), device=self.device)
        for x, y in self.loader:
            with autocast_for(self.device, self.amp):
                loss = nn.functional.cross_entropy(self.net(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            total += loss.detach().float()
        return float(total) / len(self.loader)

    def epoch(self) -> float:
        self.loader.set_epoch(epoch_key(0, self.n_epoch))
        cbs = [self.recorder] if self.recorder is not None else []
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if self.use_loop:
            self.state.epoch = self.n_epoch
            self.last_loss = train_epoch(self.state, self.loader, cbs, amp=self.amp)
            if self.recorder is not None:
                self.state.metrics = {"train_loss": self.last_loss}
                self.recorder.on_epoch_end(self.state)  # the window's histograms go to HDF5
        else:
            self.last_loss = self._bare()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.n_epoch += 1
        return time.perf_counter() - t0


def loader_only(loader, device) -> float:
    loader.set_epoch(12345)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    s = torch.zeros((), device=device)
    for x, _ in loader:
        s += x[0, 0, 0, 0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def batched_rows(device, quick: bool, amp: bool, notes: list) -> list[dict]:
    """K max_lr candidates of ResNet-20 as one vmapped model vs K models one after the other."""
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_batched import measure  # noqa: PLC0415
    except Exception as e:  # noqa: BLE001
        notes.append(f"batched: not available ({type(e).__name__}: {e})")
        return []
    rows = []
    for k in ((2,) if quick else (4, 8)):
        try:
            r = measure("resnet20", k, 32 if quick else 512, 2 if quick else 20, device, 1 if quick else 3, amp=amp)
            rows.append({"k": k, **r})
        except Exception as e:  # noqa: BLE001
            notes.append(f"batched K={k}: failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar", default=None, help="CIFAR-10 archive or folder (else random data of its shape)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per variant, interleaved")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default: its default)")
    ap.add_argument("--no-batched", action="store_true")
    ap.add_argument("--skip-masks-only", action="store_true", help="drop the 'masks only' variant (one compile less)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script end to end on a CPU")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--smoke", action="store_true", help="--quick on the CPU, eager, 128 images, no masks-only variant")
    a = ap.parse_args(argv)
    if a.smoke:
        a.quick, a.device, a.no_compile, a.skip_masks_only, a.images, a.batch = True, "cpu", True, True, 128, 64
    if a.quick:
        a.images, a.batch, a.repeats = min(a.images, 512), min(a.batch, 128), min(a.repeats, 1)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --quick to check the script here")
    torch.backends.cudnn.benchmark = True
    amp = device.type == "cuda"
    cl = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    log(f"device: {name}; torch {torch.__version__}; batch {a.batch}; bf16 autocast {amp}; channels_last; "
        f"compile {not a.no_compile}")
    work = tempfile.mkdtemp(prefix="bench-gpu-")
    x, y, mean, std, source = load_data(a.cifar, a.images, os.path.join(work, "cache"))
    loader = BatchLoader(x, y, a.batch, shuffle=True, augment="cifar", mean=mean, std=std, device=device, seed=0,
                         drop_last=True, channels_last=cl)
    n_img = len(loader) * a.batch
    notes: list[str] = []

    from gradscope.record import GradientRecorder  # noqa: PLC0415

    variants = []
    bare_m = build(False, device, cl)
    variants.append(Variant("bare loop", bare_m, maybe_compile(bare_m, not a.no_compile, a.compile_mode, notes, "bare"),
                            loader, device, amp, use_loop=False))
    if not a.skip_masks_only:
        mo = build(True, device, cl)
        variants.append(Variant("masks only", mo, maybe_compile(mo, not a.no_compile, a.compile_mode, notes, "masks"),
                                loader, device, amp))
    gm = build(True, device, cl)
    ex = next(iter(loader))[0][:2]
    rec = GradientRecorder(gm, os.path.join(work, "run.h5"), example_input=ex)
    rec.on_run_start(TrainState(model=gm, config={"bench": "gpu"}))
    rec.start_round(0)
    variants.append(Variant("gradscope", gm, maybe_compile(gm, not a.no_compile, a.compile_mode, notes, "gradscope"),
                            loader, device, amp, recorder=rec))

    times: dict[str, list[float]] = {v.label: [] for v in variants}
    warm: dict[str, float] = {}
    for v in variants:  # first epoch: compilation, autotuning
        try:
            warm[v.label] = v.epoch()
        except Exception as e:  # noqa: BLE001 - a compiled variant that fails at run time: eager
            notes.append(f"{v.label}: compiled run failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); eager")
            traceback.print_exc(limit=3)
            v.net = v.model
            v.state.model = v.model
            warm[v.label] = v.epoch()
        log(f"warm-up epoch {v.label}: {warm[v.label]:.1f} s (loss {v.last_loss:.3f})")
    for r in range(a.repeats):
        for v in variants:
            times[v.label].append(v.epoch())
        log(f"repeat {r}: " + ", ".join(f"{v.label} {times[v.label][-1]:.3f} s" for v in variants))
    data_t = statistics.median(loader_only(loader, device) for _ in range(max(1, a.repeats)))
    rec.close()

    bare = statistics.median(times["bare loop"])
    log(f"\nResNet-20, {source} data, {n_img} images per epoch (batch {a.batch}), {name}; median of {a.repeats} "
        f"interleaved epochs after a warm-up epoch; 50 %-pruned masks in 'masks only' and 'gradscope'")
    log(f"{'variant':<14}{'epoch s':>9}{'images/s':>11}{'vs bare':>9}")
    rows = []
    for v in variants:
        t = statistics.median(times[v.label])
        rows.append({"variant": v.label, "epoch_s": t, "images_per_s": n_img / t, "vs_bare": bare / t,
                     "warmup_s": warm[v.label]})
        log(f"{v.label:<14}{t:9.3f}{n_img / t:11.0f}{bare / t:9.3f}")
    log(f"{'data only':<14}{data_t:9.3f}{n_img / data_t:11.0f}{'':>9}   (loader: gather + crop/flip + normalise)")
    scale = 50_000 / n_img
    g = next(r for r in rows if r["variant"] == "gradscope")
    log(f"gradscope epoch scaled to 50,000 images: {g['epoch_s'] * scale:.2f} s (target <= 2 s on an H100-class GPU); "
        f"gradscope/bare throughput {g['vs_bare']:.3f} (target >= 0.97)")

    brows = [] if a.no_batched else batched_rows(device, a.quick, amp, notes)
    if brows:
        log("\nK max_lr candidates of ResNet-20 (50 % pruned), one batched vmapped model vs K models in turn "
            "(candidate-images/s; median of interleaved repeats)")
        log(f"{'K':>3}{'sequential':>12}{'batched':>10}{'batched/seq':>13}")
        for r in brows:
            log(f"{r['k']:>3}{r['sequential']:12.0f}{r['batched']:10.0f}{r['speedup']:13.2f}")
    for n in notes:
        log(f"note: {n}")
    if a.out:
        Path(a.out).write_text(json.dumps({"device": name, "torch": torch.__version__, "source": source,
                                           "images": n_img, "batch": a.batch, "rows": rows,
                                           "data_only_s": data_t, "batched": brows, "notes": notes}, indent=2))
        log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
