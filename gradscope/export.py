"""``gradscope export tensorboard RUN.h5 LOGDIR``: a run file as TensorBoard event files.

TensorBoard draws a histogram on a linear axis from its first non-empty bucket to its last
and resamples the buckets linearly into ~30 display bins. gradscope's bins are log-spaced
over ±[1e-10, 10], so each window is written with only the buckets from its first occupied
one to its last (exact counts; gradients below or above the recorded range get a bucket of
their own), and, for log-spaced bins, a second histogram of log10|g| in which a narrowing
distribution moves left. One x axis for every series: the optimizer step counted across
rounds (round k starts where round k-1 ended). Tags:

- ``grad/<view>/<layer>``: the gradients of one recorded window, exact count, sum, sum of
  squares, min and max; views as stored (``survivors``, ``all`` = pruned weights counted as
  zeros, ``relative`` = |g|/(|w|+eps) when recorded);
- ``grad_log10abs/<view>/<layer>``: the same window as a histogram of log10|g| (exact counts
  folded from the signed bins; |g| below the smallest edge, zeros included, sit in one bucket
  just below it; the sum fields are not computed and are 0);
- ``grad_std/<view>/<layer>``: the window's exact std;
- ``round/<column>``: per-round scalars (round, sparsity, max_lr, val_acc, test_acc,
  train_loss) at the round's last step;
- ``epoch/<column>``: per-epoch scalars (round, epoch, train_loss, val_acc, test_acc, lr) at
  the epoch's last step.
Windows with no recorded value (count 0) are skipped and counted.

TensorBoard is an optional extra (``pip install "gradscope[tensorboard]"``).
"""
from __future__ import annotations

import math
import os
import time
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from gradscope import GradscopeError

ROUND_SCALARS = ("sparsity", "max_lr", "val_acc", "test_acc", "train_loss")
EPOCH_SCALARS = ("train_loss", "val_acc", "test_acc", "lr")

VIEW_WORDS = {"survivors": "unpruned weights only", "all": "pruned weights counted as zeros",
              "relative": "|g| / (|w| + eps) of the unpruned weights"}
ROUND_WORDS = {"round": "pruning round index", "sparsity": "fraction of prunable weights pruned",
               "max_lr": "peak learning rate of the round", "val_acc": "validation accuracy at the round's end",
               "test_acc": "test accuracy at the round's end", "train_loss": "training loss of the round's last epoch"}
EPOCH_WORDS = {"round": "pruning round of this epoch", "epoch": "epoch index within its round",
               "train_loss": "mean training loss of the epoch", "val_acc": "validation accuracy after the epoch",
               "test_acc": "test accuracy after the epoch (only where evaluated)",
               "lr": "learning rate at the epoch's end"}
X_AXIS = "x = optimizer steps counted across rounds (round k starts where round k-1 ended)."


def _tb():
    try:
        from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: PLC0415 - optional extra
        from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: PLC0415
    except ImportError as e:
        raise GradscopeError("exporting to TensorBoard needs the tensorboard package: "
                             "pip install \"gradscope[tensorboard]\" (or pip install tensorboard)") from e
    return event_pb2, summary_pb2, EventFileWriter


def round_lengths(moments) -> dict[int, int]:
    """Round -> optimizer steps it took (its last window's step_end + 1; step_end is the last step a
    window covers, so this holds when only every k-th step was recorded; in files written before
    the recorder stored that span, step_end is the last recorded step and a round may come out up
    to k-1 steps short)."""
    ends = moments.groupby("round")["step_end"].max().sort_index()
    return {int(k): int(e) + 1 for k, e in ends.items()}


def step_offsets(moments) -> dict[int, int]:
    """Round -> the global step its first optimizer step gets (rounds laid end to end)."""
    offsets, at = {}, 0
    for rnd, n in round_lengths(moments).items():
        offsets[rnd] = at
        at += n
    return offsets


def occupied(counts: np.ndarray, edges: np.ndarray, under: int, over: int, vmax: float):
    """(bucket_limits, bucket_counts) for TensorBoard, from the first occupied bucket to the last:
    bucket i holds values up to limit[i] (above limit[i-1]); under/over range get their own
    bucket. Every value is counted once (the counts sum to under + sum(counts) + over)."""
    limits = list(edges[1:].astype(float))
    cnts = [int(c) for c in counts]
    if under:
        limits.insert(0, float(edges[0]))
        cnts.insert(0, int(under))
    if over:
        limits.append(max(float(vmax), float(edges[-1])))
        cnts.append(int(over))
    nz = np.flatnonzero(cnts)
    if not len(nz):
        return [], []
    a, b = int(nz[0]), int(nz[-1]) + 1
    return limits[a:b], [float(c) for c in cnts[a:b]]


def symmetric_log(edges: np.ndarray) -> bool:
    """True for gradscope's log edges: -p[::-1] then p, p log-spaced and positive."""
    n = len(edges)
    if n < 4 or n % 2:
        return False
    p = edges[n // 2:]
    return bool(p[0] > 0 and np.allclose(edges[: n // 2], -p[::-1], rtol=1e-12, atol=0))


def log10abs(counts: np.ndarray, edges: np.ndarray, under: int, over: int, absmax: float):
    """(min, max, bucket_limits, bucket_counts) of log10|g| from signed log-spaced bins: |g|-bucket j
    = negative bin (m-1-j) + positive bin (m+1+j); |g| below p[0] (zeros included) in one bucket
    of one bin width below log10 p[0]; |g| above p[-1] in one bucket up to log10 max|g|."""
    m = len(edges) // 2 - 1  # bins per sign; bin m is the central one
    lp = np.log10(edges[m + 1:])  # log10 p, m+1 values
    width = float(lp[1] - lp[0])
    folded = counts[m - 1::-1].astype(np.int64) + counts[m + 1:].astype(np.int64)
    limits = [float(lp[0])] + [float(x) for x in lp[1:]]
    cnts = [int(counts[m])] + [int(c) for c in folded]
    top = math.log10(absmax) if absmax > 0 else float(lp[0])
    if under or over:
        limits.append(max(top, float(lp[-1])))
        cnts.append(int(under) + int(over))
    nz = np.flatnonzero(cnts)
    if not len(nz):
        return None
    a, b = int(nz[0]), int(nz[-1]) + 1
    lo = float(lp[0]) - width if a == 0 else limits[a - 1]
    hi = top if b > 1 else float(lp[0])  # only the lowest bucket occupied: its own upper limit
    return lo, hi, limits[a:b], [float(c) for c in cnts[a:b]]


class _Events:
    """Summaries into one event file; each tag's first event carries its description."""

    def __init__(self, logdir: str):
        self.event_pb2, self.summary_pb2, EventFileWriter = _tb()
        self.w = EventFileWriter(logdir)
        self.described: set[str] = set()

    def _meta(self, tag: str, description: str, plugin: str):
        if tag in self.described:
            return None
        self.described.add(tag)
        meta = self.summary_pb2.SummaryMetadata(summary_description=description)
        meta.plugin_data.plugin_name = plugin  # readers file the tag under its dashboard
        return meta

    def _add(self, value, step: int) -> None:
        s = self.summary_pb2.Summary(value=[value])
        self.w.add_event(self.event_pb2.Event(wall_time=time.time(), step=int(step), summary=s))

    def scalar(self, tag: str, value: float, step: int, description: str) -> None:
        v = self.summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        meta = self._meta(tag, description, "scalars")
        if meta is not None:
            v.metadata.CopyFrom(meta)
        self._add(v, step)

    def histogram(self, tag: str, step: int, description: str, *, vmin: float, vmax: float, num: int,
                  total: float, sumsq: float, limits: list, counts: list) -> None:
        h = self.summary_pb2.HistogramProto(min=float(vmin), max=float(vmax), num=float(num), sum=float(total),
                                            sum_squares=float(sumsq), bucket_limit=limits, bucket=counts)
        v = self.summary_pb2.Summary.Value(tag=tag, histo=h)
        meta = self._meta(tag, description, "histograms")
        if meta is not None:
            v.metadata.CopyFrom(meta)
        self._add(v, step)

    def close(self) -> None:
        self.w.close()


def _epoch_ends(epochs, moments, offsets: dict, lengths: dict) -> list[int]:
    """Global step of each epoch row's last step: a round's steps split evenly over its epochs
    (every epoch of a round has the same number of steps), else the epoch's last window."""
    n_ep = epochs.groupby("round")["epoch"].max() + 1
    last_win = moments.groupby(["round", "epoch"])["step_end"].max()
    out = []
    for row in epochs.itertuples(index=False):
        k, e = int(row.round), int(row.epoch)
        if k not in offsets:
            out.append(None)
            continue
        n, spe = lengths[k], None
        if n % int(n_ep[k]) == 0:
            spe = n // int(n_ep[k])
        if spe is not None:
            out.append(offsets[k] + (e + 1) * spe - 1)
        elif (k, e) in last_win.index:
            out.append(offsets[k] + int(last_win[(k, e)]))
        else:
            out.append(None)
    return out


def export_tensorboard(run: str | os.PathLike, logdir: str | os.PathLike,
                       views: Optional[Sequence[str]] = None) -> dict[str, int]:
    """Write ``run``'s histograms and scalars as TensorBoard events into ``logdir``; return counts
    of what was written (histograms, log10|g| histograms, scalars) and of the windows skipped
    because they held no recorded value."""
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
    _tb()  # a missing extra fails before the folder is made
    staging = _staging_dir(logdir)  # a fresh folder inside logdir; its files appear in logdir only when complete
    try:
        ev = _Events(os.fspath(staging))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    n = {"histograms": 0, "log_histograms": 0, "scalars": 0, "empty_windows": 0}
    first = per_view[0][3] if per_view else None  # every view has the same windows
    lengths = round_lengths(first) if first is not None else {}
    offsets = step_offsets(first) if first is not None else {}
    try:
        for v, counts, edges, m in per_view:
            log_ok = symmetric_log(edges)
            words = VIEW_WORDS.get(v, v)
            for i, row in enumerate(m.itertuples(index=False)):
                if not row.count:
                    n["empty_windows"] += 1
                    continue
                step = offsets[int(row.round)] + int(row.step_end)
                limits, cnts = occupied(counts[i], edges, int(row.under), int(row.over), row.max)
                ev.histogram(f"grad/{v}/{row.layer}", step,
                             f"Weight gradients of layer {row.layer} ({v}: {words}), one recording window "
                             f"each; exact bucket counts, only the occupied buckets. {X_AXIS}",
                             vmin=row.min, vmax=row.max, num=int(row.count), total=row.sum, sumsq=row.sumsq,
                             limits=limits, counts=cnts)
                n["histograms"] += 1
                if log_ok:
                    lg = log10abs(counts[i], edges, int(row.under), int(row.over),
                                  max(abs(float(row.min)), abs(float(row.max))))
                    if lg is not None:
                        lo, hi, ll, lc = lg
                        ev.histogram(f"grad_log10abs/{v}/{row.layer}", step,
                                     f"log10 |g| of layer {row.layer}'s weight gradients ({v}: {words}): a "
                                     f"narrowing distribution moves left. Exact counts folded from the signed "
                                     f"bins; |g| < {edges[len(edges) // 2]:.0e} (zeros included) in the lowest "
                                     f"bucket; sum fields not computed (0). {X_AXIS}",
                                     vmin=lo, vmax=hi, num=int(row.count), total=0.0, sumsq=0.0,
                                     limits=ll, counts=lc)
                        n["log_histograms"] += 1
                mean = row.sum / row.count
                ev.scalar(f"grad_std/{v}/{row.layer}", math.sqrt(max(row.sumsq / row.count - mean * mean, 0.0)),
                          step, f"Exact std of layer {row.layer}'s weight gradients ({v}: {words}) in one "
                                f"window. {X_AXIS}")
                n["scalars"] += 1
        for row in rounds.to_dict("records"):
            k = int(row["round"])
            if k not in offsets:
                continue  # a round with no recorded window has no place on the step axis
            step = offsets[k] + lengths[k] - 1
            for col in ("round", *ROUND_SCALARS):
                val = row.get(col)
                if val is not None and np.isfinite(val):
                    ev.scalar(f"round/{col}", float(val), step, f"{ROUND_WORDS[col]}, at the round's last step. "
                                                                 f"{X_AXIS}")
                    n["scalars"] += 1
        ep = epochs.sort_values(["round", "epoch"]).reset_index(drop=True)
        ends = _epoch_ends(ep, first, offsets, lengths) if first is not None and len(ep) else []
        for step, row in zip(ends, ep.to_dict("records")):
            if step is None:
                continue
            for col in ("round", "epoch", *EPOCH_SCALARS):
                val = row.get(col)
                if val is not None and np.isfinite(val):
                    ev.scalar(f"epoch/{col}", float(val), step, f"{EPOCH_WORDS[col]}, at the epoch's last step. "
                                                                 f"{X_AXIS}")
                    n["scalars"] += 1
        ev.close()
        _publish(staging, logdir)
    except OSError as e:
        raise GradscopeError(f"cannot write TensorBoard events into {logdir}: {_cause(e)}") from None
    finally:
        ev.close()
        shutil.rmtree(staging, ignore_errors=True)
    return n


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
    empty = f"; skipped {n['empty_windows']} windows with no recorded value" if n["empty_windows"] else ""
    print(f"wrote {n['histograms']} gradient histograms, {n['log_histograms']} log10|g| histograms and "
          f"{n['scalars']} scalars to {ns.logdir}{empty} (x axis: optimizer steps across rounds; "
          f"view them with: tensorboard --logdir {ns.logdir} --host 127.0.0.1)")
    return 0


def register(subparsers) -> None:
    """Add the ``export`` subcommand to the ``gradscope`` parser."""
    s = subparsers.add_parser("export", help="write a run file in another tool's format (TensorBoard)",
                              description="Gradient histograms (exact counts of the occupied buckets, and "
                                          "log10|g|) and per-round/epoch scalars as TensorBoard event files, "
                                          "every series on one x axis: optimizer steps counted across rounds.")
    s.add_argument("format", choices=("tensorboard",), help="the target format")
    s.add_argument("run", metavar="RUN.h5", help="the run file (or a run directory holding run.h5)")
    s.add_argument("logdir", metavar="LOGDIR", help="folder for the event files (created)")
    s.add_argument("--views", default=None, metavar="LIST",
                   help="comma-separated views to export: survivors, all, relative (default: every stored view)")
    s.set_defaults(func=_cmd_export)
