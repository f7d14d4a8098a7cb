"""``repair``: recover the committed data of a damaged or truncated run file (and convert a
schema-1 file to schema 2), keeping the original as a backup.

What it can recover: a file cut short by a failed write (full disk, file-size limit, quota;
older gradscope versions left these "truncated file: eof < stored_eof"), a torn tail past the
commit point, and a file whose later windows or rows are damaged (it keeps the longest
readable, checked prefix of each table). What it cannot: a file whose header (root
attributes, edges, layers) is damaged, since then no row can be trusted.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Optional

import h5py
import numpy as np

from gradscope import GradscopeError, __version__
from gradscope.store import checksum as C
from gradscope.store import schema as S
from gradscope.store import validate as V
from gradscope.store.preopen import check_before_open
from gradscope.store.diskio import (check_path, extend_to_stored_eof, file_lock, first_line, run_file_lock_path,
                                    stored_eof, writer_lock)
from gradscope.store.reader import RunReader, _read_derived
from gradscope.store.writer import append_blocks, create_file, write_derived


@dataclass
class RepairResult:
    """What ``repair`` did: action is "healthy" (nothing to do) or "repaired"."""

    path: str
    action: str
    from_schema: int
    backup: Optional[str] = None
    extended: bool = False
    kept: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)
    derived_dropped: list = field(default_factory=list)

    def summary(self) -> str:
        if self.action == "healthy":
            return f"{self.path}: healthy (schema {self.from_schema}); nothing to repair"
        kept = ", ".join(f"{v} {k}" for k, v in self.kept.items())
        lost = {k: v for k, v in self.dropped.items() if v}
        parts = [f"repaired {self.path}: kept {kept}"]
        parts.append("dropped " + ", ".join(f"{v} unreadable {k}" for k, v in lost.items()) if lost
                     else "nothing committed was lost")
        if self.derived_dropped:
            parts.append(f"dropped derived tables {self.derived_dropped} (re-run `gradscope fit`)")
        if self.extended:
            parts.append("restored its cut-off end")
        if self.from_schema < S.SCHEMA_VERSION:
            parts.append(f"converted schema {self.from_schema} -> {S.SCHEMA_VERSION}")
        if self.backup:
            parts.append(f"original kept as {self.backup}")
        return "; ".join(parts)


def check(path: str) -> dict:
    """Read and check every committed row (``gradscope repair --check``); damage raises."""
    return RunReader(path).verify()


def _backup_name(path: str) -> str:
    name = f"{path}.bak"
    i = 1
    while os.path.lexists(name):
        name = f"{path}.bak{i}"
        i += 1
    return name


def _prefix(n: int, read_ok: Callable[[int, int], bool], block: int) -> int:
    """Largest k <= n such that rows [0, k) read and check fine, given read_ok(lo, hi)."""
    good = 0
    lo = 0
    while lo < n:
        hi = min(n, lo + block)
        if read_ok(lo, hi):
            good = hi
            lo = hi
            continue
        if hi - lo == 1:
            break
        block = max(1, (hi - lo) // 2)
    return good


def _salvage_table(f: h5py.File, meta: V.FileMeta, name: str, n: int) -> np.ndarray:
    def ok(lo: int, hi: int) -> bool:
        try:
            V.read_table(f, meta, name, hi)
            return True
        except GradscopeError:
            return False
    k = _prefix(n, ok, max(n, 1))
    return V.read_table(f, meta, name, k) if k else np.zeros(0, dtype=S.table_dtype(name, meta.version))


def _salvage_windows(f: h5py.File, meta: V.FileMeta, n_rows: int):
    rpw = meta.rows_per_window
    mdts = S.moments_dtypes(meta.version)
    out_m, out_h, out_s = [], [], []
    seen = set()
    for lo in range(0, n_rows, rpw):
        hi = lo + rpw
        try:
            m = V.read(f["moments"], slice(lo, hi), meta.path, "moments")
            if m.dtype not in mdts:
                break
            V.check_moments(meta, m, first_row=lo)
            h = V.read(f["hist"], slice(lo, hi), meta.path, "histograms")
            V.check_hist(meta, h, m)
            s = None
            if meta.sample_k:
                s = V.read(f["samples"], slice(lo, hi), meta.path, "samples")
                V.check_samples(meta, s, m)
        except GradscopeError:
            break
        key = (int(m["round"][0]), int(m["window"][0]))
        if key in seen:
            break
        seen.add(key)
        out_m.append(m)
        out_h.append(h)
        out_s.append(s)
    return out_m, out_h, out_s


def _to_v2(arr: np.ndarray, dtype: np.dtype, **fill) -> np.ndarray:
    out = np.zeros(len(arr), dtype=dtype)
    for n in dtype.names:
        if n in arr.dtype.names:
            out[n] = arr[n]
    for n, v in fill.items():
        out[n] = v(arr) if callable(v) else v
    return C.with_row_crcs(out)


def repair(path: str, *, backup: bool = True) -> RepairResult:
    """Rewrite ``path`` from its committed, readable rows (original kept as ``path.bak``)."""
    path = os.fspath(path)
    check_path(path)
    try:
        r = RunReader(path)
        info = r.verify()
        if r.schema_version == S.SCHEMA_VERSION:
            if not info["truncated"]:
                return RepairResult(path, "healthy", r.schema_version)
            with file_lock(path, exclusive=True):  # only zeros past the old end: no backup needed
                extend_to_stored_eof(path)
            kept = {"windows": info["windows"], **{k: info[k] for k in ("rounds", "layer_rounds", "epochs")}}
            return RepairResult(path, "repaired", r.schema_version, extended=True, kept=kept,
                                dropped={k: 0 for k in kept})
    except GradscopeError:
        pass
    except OSError as e:
        raise GradscopeError(f"cannot repair {path}: {first_line(e)}") from None
    d = os.path.dirname(os.path.abspath(path))
    tmp_in = tmp_out = None
    unlock = writer_lock(run_file_lock_path(path), f"run file {path}")  # no recorder may append meanwhile
    try:
        with file_lock(path, exclusive=True):
            try:  # fresh names (mkstemp, O_EXCL): a planted "run.h5.repair-in-PID" symlink is never followed
                tmp_in, tmp_out = (_fresh_temp(d, path, part) for part in ("repair-in", "repair-out"))
                shutil.copyfile(path, tmp_in)
                extended = (stored_eof(tmp_in) or 0) > os.path.getsize(tmp_in) and extend_to_stored_eof(tmp_in)
            except OSError as e:
                raise GradscopeError(f"cannot repair {path}: copying it into {d} failed: {first_line(e)}") from None
            res = _rebuild(path, tmp_in, tmp_out)
            res.extended = bool(extended)
            try:
                RunReader(tmp_out).verify()
            except GradscopeError as e:
                raise GradscopeError(f"cannot repair {path}: the rebuilt file does not check out ({e})") from None
            if backup:
                res.backup = _backup_name(path)
                try:
                    os.link(path, res.backup)
                except OSError:
                    shutil.copy2(path, res.backup)
            os.replace(tmp_out, path)
            return res
    finally:
        unlock()
        for t in (tmp_in, tmp_out):
            try:
                if t is not None:
                    os.unlink(t)
            except OSError:
                pass


def _fresh_temp(folder: str, path: str, part: str) -> str:
    """A new empty file beside ``path`` made with mkstemp (never an existing name)."""
    from pathlib import Path  # noqa: PLC0415

    from gradscope.atomic import file_mode  # noqa: PLC0415

    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)[:200]}.{part}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, file_mode(Path(path)))  # the repaired file keeps the original's mode
    finally:
        os.close(fd)
    return tmp


def _rebuild(path: str, tmp_in: str, tmp_out: str) -> RepairResult:
    try:
        check_before_open(tmp_in)
    except GradscopeError as e:
        raise GradscopeError(f"cannot repair {path}: {str(e).replace(tmp_in, 'it')}") from None
    try:
        f = h5py.File(tmp_in, "r", locking=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise GradscopeError(f"cannot repair {path}: HDF5 cannot open it ({first_line(e)}); restore it from a "
                             "copy") from None
    try:
        try:
            meta = V.read_meta(f, path, lenient=True)
        except GradscopeError as e:
            raise GradscopeError(f"cannot repair {path}: its header is damaged, so no row can be trusted ({e})") \
                from None
        counts = V.committed(f, meta, lenient=True)
        tables = {n: _salvage_table(f, meta, n, counts[n]) for n in ("rounds", "layer_rounds", "epochs")}
        wm, wh, ws = _salvage_windows(f, meta, counts["moments"])
        pop = _salvage_population(f, meta, counts.get("population", 0))
        derived, derived_dropped = {}, []
        try:
            names = sorted(f["derived"])
        except V.H5_ERRORS:
            names = []
        for k in names:
            try:
                if "current" in f["derived"][k].attrs:
                    derived[k] = _read_derived(path, k, f["derived"][k])
            except (GradscopeError, *V.H5_ERRORS):
                derived_dropped.append(k)
    finally:
        try:
            f.close()
        except Exception:  # noqa: BLE001 - a damaged file may not close cleanly; we are done with it
            pass
    v1 = meta.version == 1
    layers = meta.layers if not v1 else _to_v2(
        meta.layers, S.SMALL_TABLES["layers"], activation=lambda a: np.where(a["relu_fed"], "relu", ""), rule="")
    n_win = counts["moments"] // meta.rows_per_window
    dropped = {"windows": n_win - len(wm), **{k: counts[k] - len(v) for k, v in tables.items()},
               "population rounds": counts.get("population", 0) - len(pop[0])}
    repaired = {"at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "by": __version__,
                "from_schema": meta.version, "dropped": dropped, "derived_dropped": derived_dropped}
    attrs = {"format": S.FORMAT, "schema_version": S.SCHEMA_VERSION,
             "config": json.dumps(meta.config, sort_keys=True, default=str),
             "versions": json.dumps(meta.versions, sort_keys=True), "git_commit": meta.git_commit,
             "created": meta.created, "edge_kind": meta.edge_kind, "sample_k": meta.sample_k,
             "views": json.dumps(meta.views, sort_keys=True), "population": int(meta.population),
             "repaired": json.dumps(repaired, sort_keys=True)}
    if meta.relative_eps is not None:
        attrs["relative_eps"] = float(meta.relative_eps)
    pop_n = int(meta.numel[meta.recorded].sum()) if meta.population else 0
    create_file(tmp_out, attrs=attrs, edges=meta.edges, layers=layers, sample_k=meta.sample_k,
                rows_per_window=meta.rows_per_window, population_n=pop_n)
    blocks = {}
    for k, v in tables.items():
        if len(v):
            blocks[k] = _to_v2(v, S.SMALL_TABLES[k]) if v1 else v
    if wm:
        m = np.concatenate(wm)
        if v1:
            m = _to_v2(m, S.MOMENTS_DTYPE, steps=lambda a: a["step_end"] - a["step_start"] + 1, view=0)
        elif m.dtype != S.MOMENTS_DTYPE:  # schema 2 from before moment row CRCs: add them
            m = _to_v2(m, S.MOMENTS_DTYPE)
        blocks["moments"] = m
        blocks["hist"] = np.concatenate(wh)
        if meta.sample_k:
            blocks["samples"] = np.concatenate(ws)
    if len(pop[0]):
        blocks["pop_meta"], blocks["pop_sumsq"], blocks["pop_mask"] = pop
    if blocks:
        append_blocks(tmp_out, blocks, what="the recovered data")
    for k, df in derived.items():
        write_derived(tmp_out, k, df)
    kept = {"windows": len(wm), **{k: len(v) for k, v in tables.items()}}
    if meta.population:
        kept["population rounds"] = len(pop[0])
    return RepairResult(path, "repaired", meta.version, kept=kept, dropped=dropped, derived_dropped=derived_dropped)


def _salvage_population(f: h5py.File, meta: V.FileMeta, n: int):
    if not meta.population or not n:
        return np.zeros(0, dtype=S.SMALL_TABLES["pop_meta"]), None, None
    pm = _salvage_table(f, meta, "pop_meta", n)
    sums, masks = [], []
    for i in range(len(pm)):
        try:
            s = V.read(f["pop_sumsq"], i, meta.path, "population sums")
            b = V.read(f["pop_mask"], i, meta.path, "population masks")
        except GradscopeError:
            break
        if C.array_crc(s.astype("<f4")) != int(pm["crc_sumsq"][i]) or C.array_crc(b) != int(pm["crc_mask"][i]):
            break
        sums.append(s)
        masks.append(b)
    k = len(sums)
    if not k:
        return np.zeros(0, dtype=S.SMALL_TABLES["pop_meta"]), None, None
    return pm[:k], np.stack(sums), np.stack(masks)
