"""``gradscope export tensorboard RUN.h5 LOGDIR``: a run file as TensorBoard event files.

Histograms keep their exact bucket counts (TensorBoard's raw-histogram API; gradients below
or above the recorded range get a bucket of their own), with the window's exact count, sum,
sum of squares, min and max. Tags say what each series is:

- ``grad/<view>/<layer>``: one histogram per recorded window, x = optimizer steps counted
  across rounds (round k starts where round k-1 ended); views as stored (``survivors``,
  ``all`` = pruned weights counted as zeros, ``relative`` = |g|/(|w|+eps) when recorded);
- ``grad_std/<view>/<layer>``: the window's exact std, same x;
- ``round/<column>``: per-round scalars (sparsity, max_lr, val_acc, test_acc, train_loss), x = round;
- ``epoch/<column>``: per-epoch scalars (train_loss, val_acc, test_acc, lr), x = epochs counted across rounds.

TensorBoard is an optional extra (``pip install "gradscope[tensorboard]"``).
"""
from __future__ import annotations

import math
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from gradscope import GradscopeError

ROUND_SCALARS = ("sparsity", "max_lr", "val_acc", "test_acc", "train_loss")
EPOCH_SCALARS = ("train_loss", "val_acc", "test_acc", "lr")


def _summary_writer(logdir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional extra
    except ImportError as e:
        raise GradscopeError("exporting to TensorBoard needs the tensorboard package: "
                             "pip install \"gradscope[tensorboard]\" (or pip install tensorboard)") from e
    return SummaryWriter(log_dir=logdir)


def step_offsets(moments) -> dict[int, int]:
    """Round -> the global step its first optimizer step gets (rounds laid end to end)."""
    ends = moments.groupby("round")["step_end"].max().sort_index()
    offsets, at = {}, 0
    for rnd, end in ends.items():
        offsets[int(rnd)] = at
        at += int(end) + 1
    return offsets


def raw_buckets(counts: np.ndarray, edges: np.ndarray, under: int, over: int, vmin: float, vmax: float):
    """(bucket_limits, bucket_counts) for TensorBoard: bucket i holds values in
    (limit[i-1], limit[i]]; the range's own bins plus an under/over bucket where non-empty."""
    limits = list(edges[1:].astype(float))
    cnts = [float(c) for c in counts]
    if under:
        limits.insert(0, float(edges[0]))
        cnts.insert(0, float(under))
    if over:
        limits.append(max(float(vmax), float(edges[-1])))
        cnts.append(float(over))
    return limits, cnts


def export_tensorboard(run: str | os.PathLike, logdir: str | os.PathLike,
                       views: Optional[Sequence[str]] = None) -> dict[str, int]:
    """Write ``run``'s histograms and scalars as TensorBoard events into ``logdir``; return the
    number of histograms and scalars written."""
    from gradscope.store import open_run  # noqa: PLC0415

    logdir = Path(logdir)
    try:
        st = os.stat(logdir)
    except FileNotFoundError:
        st = None
    except OSError as e:  # a name too long, a symlink loop, a parent that is a file
        raise GradscopeError(f"cannot write TensorBoard events into {os.fspath(logdir)[:120]}: {_cause(e)}") from None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise GradscopeError(f"{logdir} is a file; give a folder for the TensorBoard event files")
    with open_run(os.fspath(run)) as r:
        stored = r.views()
        wanted = list(views) if views else stored
        unknown = [v for v in wanted if v not in stored]
        if unknown:
            raise GradscopeError(f"view(s) {unknown} not in {run}; it holds {', '.join(stored)}")
        rounds, epochs = r.rounds(), r.epochs()
        per_view = []
        for v in wanted:
            counts, edges, _ = r.histograms(view=v)
            per_view.append((v, counts, edges, r.moments(view=v)))
    n_hist = n_scalar = 0
    staging = _staging_dir(logdir)
    try:
        writer = _summary_writer(os.fspath(staging))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    offsets = step_offsets(per_view[0][3]) if per_view else {}  # every view has the same windows
    try:
        for v, counts, edges, m in per_view:
            for i, row in enumerate(m.itertuples(index=False)):
                if not row.count:
                    continue
                step = offsets[int(row.round)] + int(row.step_end)
                limits, cnts = raw_buckets(counts[i], edges, int(row.under), int(row.over), row.min, row.max)
                writer.add_histogram_raw(f"grad/{v}/{row.layer}", min=float(row.min), max=float(row.max),
                                         num=int(row.count), sum=float(row.sum), sum_squares=float(row.sumsq),
                                         bucket_limits=limits, bucket_counts=cnts, global_step=step)
                mean = row.sum / row.count
                writer.add_scalar(f"grad_std/{v}/{row.layer}",
                                  math.sqrt(max(row.sumsq / row.count - mean * mean, 0.0)), step)
                n_hist += 1
                n_scalar += 1
        for row in rounds.to_dict("records"):
            for col in ROUND_SCALARS:
                val = row.get(col)
                if val is not None and np.isfinite(val):
                    writer.add_scalar(f"round/{col}", float(val), int(row["round"]))
                    n_scalar += 1
        for i, row in enumerate(epochs.sort_values(["round", "epoch"]).to_dict("records")):
            for col in EPOCH_SCALARS:
                val = row.get(col)
                if val is not None and np.isfinite(val):
                    writer.add_scalar(f"epoch/{col}", float(val), i)
                    n_scalar += 1
        writer.close()
        _publish(staging, logdir)
    except OSError as e:
        raise GradscopeError(f"cannot write TensorBoard events into {logdir}: {_cause(e)}") from None
    finally:
        writer.close()
        shutil.rmtree(staging, ignore_errors=True)
    return {"histograms": n_hist, "scalars": n_scalar}


def _cause(e: OSError) -> str:
    from gradscope.atomic import WRITE_CAUSES  # noqa: PLC0415

    return WRITE_CAUSES.get(e.errno) or e.strerror or str(e)


def _staging_dir(logdir: Path) -> Path:
    """A fresh folder (mkdtemp: never an existing name) inside ``logdir`` for the event files,
    which appear in ``logdir`` only when complete (``_publish``)."""
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".gradscope-export.", dir=logdir))
    except OSError as e:
        raise GradscopeError(f"cannot write TensorBoard events into {os.fspath(logdir)[:120]}: {_cause(e)}") from None


def _publish(staging: Path, logdir: Path) -> None:
    """Move the finished event files into ``logdir``: fsynced, renamed, never over an existing name."""
    from gradscope.atomic import check_target  # noqa: PLC0415

    for src in sorted(staging.iterdir()):
        dst = logdir / src.name
        if check_target(dst, "TensorBoard events"):
            raise GradscopeError(f"cannot write TensorBoard events {dst}: the name is taken; export again")
        with open(src, "rb") as f:
            os.fsync(f.fileno())
        os.replace(src, dst)


def _cmd_export(ns) -> int:
    run = ns.run
    if os.path.isdir(run) and os.path.isfile(os.path.join(run, "run.h5")):
        run = os.path.join(run, "run.h5")
    views = [v for v in ns.views.split(",") if v] if ns.views else None
    n = export_tensorboard(run, ns.logdir, views)
    print(f"wrote {n['histograms']} gradient histograms and {n['scalars']} scalars to {ns.logdir} "
          f"(view them with: tensorboard --logdir {ns.logdir})")
    return 0


def register(subparsers) -> None:
    """Add the ``export`` subcommand to the ``gradscope`` parser."""
    s = subparsers.add_parser("export", help="write a run file in another tool's format (TensorBoard)",
                              description="Histograms with their exact bucket counts and per-round/epoch "
                                          "scalars, as TensorBoard event files.")
    s.add_argument("format", choices=("tensorboard",), help="the target format")
    s.add_argument("run", metavar="RUN.h5", help="the run file (or a run directory holding run.h5)")
    s.add_argument("logdir", metavar="LOGDIR", help="folder for the event files (created)")
    s.add_argument("--views", default=None, help="comma-separated views to export (default: every stored view)")
    s.set_defaults(func=_cmd_export)
