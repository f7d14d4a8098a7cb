"""Writing run files: create (atomically), append windows and metadata rows, resume safely.

Design (docs/hdf5-format.md): the file is opened, appended to, flushed and closed once per
commit, so it is closed (and consistent) between windows; a kill leaves every committed window
readable, and reopening needs no SWMR flag clearing. Rows count only once the root attribute
``committed`` says so; a torn tail past it is cut off when the writer reopens the file. Disk
space is reserved before each commit, so a full disk / quota / file-size limit ends in one
clear error before anything is written (gradscope.store.diskio).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import tempfile
import weakref
from typing import Any, Callable, Optional, Sequence

import h5py
import numpy as np

from gradscope import GradscopeError, InternalError, __version__, faults
from gradscope.atomic import check_target
from gradscope.store import checksum as C
from gradscope.store import schema as S
from gradscope.store import validate as V
from gradscope.store.diskio import (check_path, check_write_target, error_errno, extend_to_stored_eof,
                                    file_lock, open_h5, reserved_space, run_file_lock_path, stored_eof,
                                    write_error, writer_lock)
from gradscope.store.reader import RunReader  # one way: the reader imports nothing of the writer

__all__ = ["RunWriter", "write_derived", "package_versions", "git_commit", "file_lock", "open_h5", "LIBVER"]

# Superblock v2 and object headers v2 carry HDF5's own metadata checksums; "v108" (not v110+)
# keeps the superblock free of the SWMR "file is open for write" flag a killed writer would leave.
LIBVER = ("v108", "v108")
MODES = ("x", "a", "w")


def package_versions() -> dict:
    """Versions of the packages that shape the numbers in a run file."""
    import torch  # noqa: PLC0415 - only for its version string

    return {"gradscope": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
            "python": platform.python_version()}


def git_commit(cwd: Optional[str] = None) -> str:
    """The commit of the git checkout at ``cwd`` (dirty marked with '+'), else "unknown"."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def open_rw(path: str) -> h5py.File:
    """Open an existing run file for appending (new objects get checksummed headers)."""
    check_path(path)
    try:
        return h5py.File(path, "r+", locking=False, libver=LIBVER)
    except (OSError, ValueError, RuntimeError):
        return open_h5(path, "r+")  # re-raises with a clear message


def _close(f: h5py.File) -> Optional[BaseException]:
    try:
        f.close()
        return None
    except Exception as e:  # noqa: BLE001 - reported by the caller
        return e


_ABANDONED: list = []  # HDF5 objects of a failed file that could not be closed: never freed


def _abandon(f: h5py.File, err: BaseException, *held: Any) -> None:
    """Close a file whose write failed without touching it again.

    HDF5 keeps the failed file's dirty metadata and retries the flush at every close, down to
    the library's exit handler (where a second failure used to crash the process). Pointing
    its descriptor at a scratch target lets those flushes succeed without writing to the real
    file, which keeps exactly what was on disk before the failure (nothing past the commit
    point counts): an anonymous in-memory file, or /dev/null under a file-size limit (which
    applies to in-memory files too). Objects that still cannot be closed are kept, never freed.
    """
    import errno as _errno  # noqa: PLC0415

    efbig = error_errno(err) == _errno.EFBIG
    if efbig:
        try:
            import resource  # noqa: PLC0415 - POSIX only

            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            if soft != hard:
                resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
                efbig = hard != resource.RLIM_INFINITY
        except (ImportError, OSError, ValueError):
            pass
    try:
        fd = f.id.get_vfd_handle()
    except Exception:  # noqa: BLE001 - not the sec2 driver: nothing to redirect
        fd = None
    if isinstance(fd, int) and fd > 2:
        try:
            if efbig or not hasattr(os, "memfd_create"):
                spare = os.open(os.devnull, os.O_RDWR)
            else:
                spare = os.memfd_create("gradscope-abandoned")
            os.dup2(spare, fd)
            os.close(spare)
        except OSError:
            pass
    if _close(f) is not None:
        # never freed, not even at interpreter exit (freeing them makes HDF5 flush again and crash)
        import ctypes  # noqa: PLC0415

        for obj in (f, f.id, *held, *[x for h in held if isinstance(h, (list, dict))
                                      for x in (h.values() if isinstance(h, dict) else h)]):
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
        _ABANDONED.append((f, held))


def _set_attrs(f: h5py.File, attrs: dict) -> None:
    """Write root attributes and the `attr_crc32` checksums of the protected ones."""
    for k, v in attrs.items():
        f.attrs[k] = v
    crcs = {k: C.value_crc(f.attrs[k]) for k in S.PROTECTED_ATTRS if k in f.attrs}
    f.attrs["attr_crc32"] = json.dumps(crcs, sort_keys=True)


def committed_array(counts: dict) -> np.ndarray:
    vals = [int(counts.get(n, 0)) for n in S.COMMIT_ORDER]
    return np.array(vals + [C.counts_crc(vals)], dtype=np.int64)


def _fletcher(**kw) -> dict:
    return dict(fletcher32=True, **kw)


def build_file(path: str, *, attrs: dict, edges: np.ndarray, layers: np.ndarray, sample_k: int,
               rows_per_window: int, population_n: int) -> None:
    """Write a complete empty schema-2 run file at ``path`` (caller renames it into place).

    The file is built in memory and written with plain file I/O, so a failing disk raises an
    ordinary OSError and never leaves HDF5 holding a half-written file."""
    with h5py.File(f"{os.path.basename(path)}-{id(attrs)}", "w", driver="core", backing_store=False,
                   libver=LIBVER) as f:
        _build(f, [], attrs=attrs, edges=edges, layers=layers, sample_k=sample_k,
               rows_per_window=rows_per_window, population_n=population_n)
        f.flush()
        image = f.id.get_file_image()
    with open(path, "xb") as fh:
        fh.write(image)
        fh.flush()
        os.fsync(fh.fileno())


def _build(f: h5py.File, held: list, *, attrs: dict, edges: np.ndarray, layers: np.ndarray, sample_k: int,
           rows_per_window: int, population_n: int) -> None:
    nb = len(edges) - 1
    rpw = int(rows_per_window)
    nl = len(layers)

    def ds(name, **kw):
        held.append(f.create_dataset(name, **kw))
        return held[-1]

    _set_attrs(f, {**attrs, "rows_per_window": rpw})
    ds("edges", data=np.asarray(edges, dtype="<f8"), chunks=(len(edges),), fillvalue=np.nan, **_fletcher())
    for name, dt in S.SMALL_TABLES.items():
        if name == "pop_meta" and not population_n:
            continue
        ds(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(S.SMALL_CHUNK_ROWS.get(name, nl),), **_fletcher())
    ds("moments", shape=(0,), maxshape=(None,), dtype=S.MOMENTS_DTYPE, chunks=(rpw,), fillvalue=S.moments_fill(),
       **_fletcher(**S.COMPRESSION))
    ds("hist", shape=(0, nb), maxshape=(None, nb), dtype="<i8", chunks=(rpw, nb), fillvalue=S.HIST_FILL,
       **_fletcher(**S.COMPRESSION))
    if sample_k > 0:
        fill = np.array([S.SAMPLES_FILL_BITS], dtype=np.uint32).view(np.float32)[0]
        ds("samples", shape=(0, sample_k), maxshape=(None, sample_k), dtype="<f4", chunks=(rpw, sample_k),
           fillvalue=fill, **_fletcher(**S.COMPRESSION))
    if population_n:
        n, nbytes = int(population_n), (int(population_n) + 7) // 8
        ds("pop_sumsq", shape=(0, n), maxshape=(None, n), dtype="<f4", chunks=(1, min(n, S.POP_CHUNK_COLS)),
           fillvalue=S.POP_SUMSQ_FILL, **_fletcher())
        ds("pop_mask", shape=(0, nbytes), maxshape=(None, nbytes), dtype="u1",
           chunks=(1, min(nbytes, S.POP_CHUNK_COLS)), **_fletcher(**S.COMPRESSION))
    held.append(f.create_group("derived"))
    lay = f["layers"]
    held.append(lay)
    lay.resize((nl,))
    lay[:] = C.with_row_crcs(layers)
    f.attrs["committed"] = committed_array({"layers": nl})


def _append(ds: h5py.Dataset, start: int, data: np.ndarray) -> int:
    end = start + len(data)
    if ds.shape[0] != end:
        ds.resize((end,) + ds.shape[1:])
    if len(data):
        ds[start:end] = data
    return end


def _nbytes(a: Any) -> int:
    if a is None:
        return 0
    a = np.asarray(a)
    extra = 0
    if a.dtype.names:
        for n in a.dtype.names:
            if a.dtype[n].kind == "O":
                extra += sum(len(str(x)) + 16 for x in a[n])
    return int(a.nbytes) + extra


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _recorded_n(layer_rows: np.ndarray) -> int:
    rec = layer_rows["recorded"].astype(bool)
    return int(layer_rows["numel"][rec].sum())


class RunWriter:
    """Appends to one run file. Pending rows are buffered and written by ``commit()``.

    mode: "x" (default) creates the file; an existing file that holds any committed data is
    refused with an error naming the choices (nothing is ever silently dropped or mixed).
    "a" continues the run in the file (created if missing): the layout (edges, layers, views,
    sample_k, population) must match; rows whose key is already in the file are skipped, so a
    resumed run never duplicates nor rewrites what an earlier process committed. The config
    stored at creation is kept (the caller vouches that it is the same run). "w" replaces the
    file: a new empty file is built under a temporary name and renamed over the old one.

    Keys: windows by (round, window), epochs by (round, epoch), rounds and layer_rounds and
    population by round.
    """

    def __init__(self, path: str, *, config: dict, edges: np.ndarray, edge_kind: str,
                 layers: list[dict], sample_k: int = 0, views: Sequence[str] = ("survivors",),
                 relative_eps: Optional[float] = None, population: bool = False, mode: str = "x"):
        self.path = os.fspath(path)
        if mode not in MODES:
            raise GradscopeError(f"mode must be 'x' (create), 'a' (continue) or 'w' (replace), got {mode!r}")
        self.edges = np.asarray(edges, dtype=np.float64)
        if self.edges.ndim != 1 or len(self.edges) < 2 or not np.isfinite(self.edges).all() or \
                not (np.diff(self.edges) > 0).all():
            raise GradscopeError("histogram edges must be finite and increasing (check bins / hist_range)")
        self.sample_k = int(sample_k)
        if self.sample_k < 0:
            raise GradscopeError(f"sample_k must be >= 0, got {sample_k}")
        views = list(dict.fromkeys(views))
        bad = [v for v in views if v not in S.VIEW_CODES]
        if bad or "survivors" not in views:
            raise GradscopeError(f"stored views must include 'survivors' and be among {sorted(S.VIEW_CODES)} "
                                 f"('all' is derived at read time), got {list(views)}")
        self.views = {v: S.VIEW_CODES[v] for v in sorted(views, key=S.VIEW_CODES.get)}
        if "relative" in self.views:
            if relative_eps is None or not np.isfinite(relative_eps) or relative_eps <= 0:
                raise GradscopeError(f"the 'relative' view needs relative_eps > 0, got {relative_eps!r}")
            self.relative_eps: Optional[float] = float(relative_eps)
        else:
            self.relative_eps = None
        rows = []
        for r in layers:
            r = dict(r)
            r.setdefault("activation", "relu" if r.get("relu_fed") else "")
            r.setdefault("rule", "")
            rows.append(r)
        self.layer_rows = S.make_rows(S.SMALL_TABLES["layers"], rows)
        lr = self.layer_rows
        if not len(lr) or not np.array_equal(lr["index"], np.arange(len(lr))) or (lr["numel"] < 1).any():
            raise InternalError("layer rows must be indexed 0, 1, ... with numel >= 1")
        if not lr["recorded"].any():
            raise GradscopeError("no layer is selected for recording")
        self.recorded = np.sort(lr["index"][lr["recorded"].astype(bool)]).astype(np.int64)
        self.population_n = _recorded_n(lr) if population else 0
        self.rows_per_window = len(self.recorded) * len(self.views)
        self.config = config
        self.edge_kind = edge_kind
        self._pending: dict[str, list] = {"rounds": [], "layer_rounds": [], "epochs": [], "windows": [],
                                          "population": []}
        self._keys = {"windows": set(), "epochs": set(), "rounds": set(), "layer_rounds": set(),
                      "population": set()}
        if os.path.isdir(self.path):
            raise GradscopeError(f"{self.path} is a directory, not a run file; move it away or record "
                                 "to another path")
        # one writer per run file, held while this writer lives (readers never take it)
        self._unlock = writer_lock(run_file_lock_path(self.path), f"run file {self.path}")
        self._finalizer = weakref.finalize(self, self._unlock)
        try:
            exists = os.path.lexists(self.path)
            if not exists or mode == "w":
                self._create()
            elif mode == "x":
                self._refuse_or_replace()
            else:
                self._keys = self._open_existing()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run file's writer lock (also done when the writer is garbage-collected
        or the process ends); pending rows are not written: commit() first."""
        self._finalizer()

    # ------------------------------------------------------------------ creating
    def _attrs(self) -> dict:
        attrs = {"format": S.FORMAT, "schema_version": S.SCHEMA_VERSION,
                 "config": json.dumps(self.config, sort_keys=True, default=str),
                 "versions": json.dumps(package_versions(), sort_keys=True), "git_commit": git_commit(),
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "edge_kind": str(self.edge_kind), "sample_k": int(self.sample_k),
                 "views": json.dumps(self.views, sort_keys=True), "population": int(bool(self.population_n))}
        if self.relative_eps is not None:
            attrs["relative_eps"] = float(self.relative_eps)
        return attrs

    def _create(self) -> None:
        """Build the empty file under a temporary name, then rename it into place (atomic)."""
        create_file(self.path, attrs=self._attrs(), edges=self.edges, layers=self.layer_rows,
                    sample_k=self.sample_k, rows_per_window=self.rows_per_window, population_n=self.population_n)

    def _refuse_or_replace(self) -> None:
        """mode="x" on an existing path: replace an empty run file, refuse anything else."""
        try:
            with file_lock(self.path, exclusive=True), open_h5(self.path, "r") as f:
                meta = V.read_meta(f, self.path)
                counts = V.committed(f, meta)
        except GradscopeError as e:
            raise GradscopeError(f"{self.path} already exists and is not a readable gradscope run ({e}); "
                                 "refusing to overwrite it: record to another path, or pass mode='w' to "
                                 "replace it") from None
        data = {k: v for k, v in counts.items() if k != "layers" and v}
        if not data:
            self._create()  # nothing was ever committed: nothing to lose
            return
        n_win = counts["moments"] // meta.rows_per_window
        same = "the same settings" if meta.config == json.loads(json.dumps(self.config, sort_keys=True,
                                                                           default=str)) else "other settings"
        raise GradscopeError(
            f"{self.path} already holds a run ({n_win} windows, {counts['rounds']} rounds, {counts['epochs']} "
            f"epochs; created {meta.created or 'earlier'} with {same}); pass mode='a' to continue that run, "
            "mode='w' to replace it (its data is lost), or record to a new path")

    # ------------------------------------------------------------------ opening an existing file
    def _open_existing(self) -> dict[str, set]:
        check_path(self.path)
        check_write_target(self.path)
        eof = stored_eof(self.path)
        if eof is not None and eof > os.path.getsize(self.path):
            self._recover_truncated()
        with file_lock(self.path, exclusive=True):
            f = open_rw(self.path)
            try:
                return self._check_layout(f)
            except V.H5_ERRORS as e:
                raise write_error(self.path, "the resumed file's tail cut", e) from None
            finally:
                _close(f)

    def _recover_truncated(self) -> None:
        """A file cut short by a failed write (full disk, size limit): the missing tail held only
        rows past the commit point, so restore its length and check every committed row."""
        try:
            with file_lock(self.path, exclusive=True):
                extend_to_stored_eof(self.path)
        except OSError as e:
            raise write_error(self.path, "the recovery of its truncated end", e) from None
        try:
            RunReader(self.path).verify()
        except GradscopeError as e:
            raise GradscopeError(f"{self.path} was truncated and its committed data does not read back ({e}); "
                                 f"run `gradscope repair {self.path}` to keep the readable part") from None

    def _check_layout(self, f: h5py.File) -> dict[str, set]:
        p = self.path
        try:
            meta = V.read_meta(f, p)
        except GradscopeError as e:
            raise GradscopeError(f"cannot continue the run in {p}: {e}") from None
        if meta.version < S.SCHEMA_VERSION:
            raise GradscopeError(f"{p} was written by an older gradscope (schema {meta.version}); run "
                                 f"`gradscope repair {p}` once to convert it (a backup is kept), then continue")
        if not np.array_equal(meta.edges, self.edges) or meta.edge_kind != self.edge_kind:
            raise GradscopeError(f"{p} was recorded with other histogram edges (bins / hist_range); use a new "
                                 "file (or mode='w') to record with these settings")
        old = meta.layers
        if [_s(x) for x in old["layer"]] != [_s(x) for x in self.layer_rows["layer"]] or \
                not np.array_equal(old["recorded"], self.layer_rows["recorded"]) or \
                not np.array_equal(old["numel"], self.layer_rows["numel"]):
            raise GradscopeError(f"{p} holds a run of another model or layer selection; use a new file "
                                 "(or mode='w')")
        if meta.sample_k != self.sample_k:
            raise GradscopeError(f"{p} was recorded with sample_k={meta.sample_k}; cannot continue with "
                                 f"sample_k={self.sample_k}")
        if meta.views != self.views or meta.relative_eps != self.relative_eps:
            raise GradscopeError(f"{p} stores views {sorted(meta.views)} (eps {meta.relative_eps}); cannot continue "
                                 f"with views {sorted(self.views)} (eps {self.relative_eps})")
        if meta.population != bool(self.population_n):
            raise GradscopeError(f"{p} was recorded {'with' if meta.population else 'without'} the fixed "
                                 "population; cannot continue with another setting")
        c = V.committed(f, meta)
        # cut off a torn tail written after the last commit
        for name in S.COMMIT_ORDER:
            dsn = [S.COMMIT_TABLES.get(name, name)]
            if name == "moments":
                dsn += ["hist", "samples"]
            if name == "population":
                dsn += ["pop_sumsq", "pop_mask"]
            for d in dsn:
                if d in f and f[d].shape[0] > c[name]:
                    f[d].resize((c[name],) + f[d].shape[1:])
        m = V.read_moments(f, meta, slice(0, c["moments"]))
        e = V.read_table(f, meta, "epochs", c["epochs"])
        keys = {"windows": set(zip(m["round"].tolist(), m["window"].tolist())),
                "epochs": set(zip(e["round"].tolist(), e["epoch"].tolist())),
                "rounds": set(V.read_table(f, meta, "rounds", c["rounds"])["round"].tolist()),
                "layer_rounds": set(V.read_table(f, meta, "layer_rounds", c["layer_rounds"])["round"].tolist()),
                "population": set()}
        if meta.population:
            keys["population"] = set(V.read_table(f, meta, "pop_meta", c["population"])["round"].tolist())
        return keys

    # ------------------------------------------------------------------ buffering
    def has_window(self, round: int, window: int) -> bool:
        return (int(round), int(window)) in self._keys["windows"]

    def add_window(self, moments: np.ndarray, hist: np.ndarray, samples: Optional[np.ndarray] = None) -> bool:
        """Queue one window: ``moments`` rows of one (round, window), one per recorded layer and
        stored view (build them with ``schema.window_rows``), hist (and samples) rows alike.

        Returns False (and queues nothing) if that window is already in the file or queued.
        """
        if moments.dtype != S.MOMENTS_DTYPE:
            raise InternalError(f"moments rows must have dtype schema.MOMENTS_DTYPE, got {moments.dtype}")
        key = (int(moments["round"][0]), int(moments["window"][0]))
        queued = {(int(w[0]["round"][0]), int(w[0]["window"][0])) for w in self._pending["windows"]}
        if key in self._keys["windows"] or key in queued:
            return False
        nb = len(self.edges) - 1
        if len(moments) != self.rows_per_window or np.shape(hist) != (len(moments), nb):
            raise InternalError(f"window has {len(moments)} rows and hist {np.shape(hist)}; the file's layout "
                                f"is {self.rows_per_window} rows x {nb} bins")
        if self.sample_k and (samples is None or np.shape(samples) != (len(moments), self.sample_k)):
            raise InternalError("samples missing or of the wrong shape")
        pairs = sorted(zip(moments["view"].tolist(), moments["layer"].tolist()))
        want = sorted((c, int(i)) for c in self.views.values() for i in self.recorded)
        if pairs != want:
            raise InternalError("a window must hold one row per recorded layer and stored view")
        moments = moments.copy()
        if (moments["steps"] <= 0).all():  # producers that do not count steps recorded every step
            moments["steps"] = moments["step_end"] - moments["step_start"] + 1
        if self.sample_k:
            samples = np.asarray(samples, dtype=np.float32)
        self._pending["windows"].append((moments, np.asarray(hist, dtype=np.int64), samples))
        return True

    def add_epoch(self, **row: Any) -> None:
        self._pending["epochs"].append(row)

    def add_round(self, **row: Any) -> None:
        self._pending["rounds"].append(row)

    def add_layer_rounds(self, rows: list[dict]) -> None:
        self._pending["layer_rounds"].append(rows)

    def add_population(self, round: int, sumsq: np.ndarray, mask_bits: np.ndarray, steps: int) -> None:
        """Queue one round of the fixed population: per recorded weight (recorded layers in index
        order, each flattened) the round's sum of g^2, its mask (packed bits, numpy's
        ``packbits`` order, or a bool vector), and how many steps were summed."""
        if not self.population_n:
            raise InternalError("this file records no population (RunWriter(population=True))")
        n = self.population_n
        sumsq = np.asarray(sumsq, dtype=np.float32).ravel()
        mask_bits = np.asarray(mask_bits)
        if mask_bits.dtype == bool:
            mask_bits = np.packbits(mask_bits.ravel())
        mask_bits = mask_bits.astype(np.uint8).ravel()
        if sumsq.shape != (n,) or mask_bits.shape != ((n + 7) // 8,) or int(steps) < 1:
            raise InternalError(f"population row needs {n} sums, {(n + 7) // 8} mask bytes and steps >= 1")
        self._pending["population"].append((int(round), sumsq, mask_bits, int(steps)))

    # ------------------------------------------------------------------ writing
    def commit(self) -> None:
        """Write everything queued, flush, then advance the committed counts (the commit point).

        A failed write (no space, quota, file-size limit, permission) raises one GradscopeError
        naming the cause; the file keeps every earlier commit and a rerun continues it.
        """
        p = self._pending
        if not any(p.values()):
            return
        epochs = [r for r in p["epochs"] if (r["round"], r["epoch"]) not in self._keys["epochs"]]
        rounds = [r for r in p["rounds"] if r["round"] not in self._keys["rounds"]]
        lrs = [rows for rows in p["layer_rounds"] if rows and rows[0]["round"] not in self._keys["layer_rounds"]]
        wins = [w for w in p["windows"]
                if (int(w[0]["round"][0]), int(w[0]["window"][0])) not in self._keys["windows"]]
        pops = [x for x in p["population"] if x[0] not in self._keys["population"]]
        blocks: dict[str, Any] = {}
        if epochs:
            blocks["epochs"] = C.with_row_crcs(S.make_rows(S.SMALL_TABLES["epochs"], epochs))
        if rounds:
            blocks["rounds"] = C.with_row_crcs(S.make_rows(S.SMALL_TABLES["rounds"], rounds))
        if lrs:
            blocks["layer_rounds"] = C.with_row_crcs(S.make_rows(S.SMALL_TABLES["layer_rounds"],
                                                                 [r for rows in lrs for r in rows]))
        if wins:
            blocks["moments"] = C.with_row_crcs(np.concatenate([w[0] for w in wins]))
            blocks["hist"] = np.concatenate([w[1] for w in wins])
            if self.sample_k:
                blocks["samples"] = np.concatenate([w[2] for w in wins])
        if pops:
            meta_rows = [{"round": r, "steps": st, "n": self.population_n, "crc_sumsq": C.array_crc(s),
                          "crc_mask": C.array_crc(mb)} for r, s, mb, st in pops]
            blocks["pop_meta"] = C.with_row_crcs(S.make_rows(S.SMALL_TABLES["pop_meta"], meta_rows))
            blocks["pop_sumsq"] = np.stack([x[1] for x in pops])
            blocks["pop_mask"] = np.stack([x[2] for x in pops])
        if blocks:
            append_blocks(self.path, blocks, what="the recorded data")
            faults.point("h5-commit", ",".join(  # what this commit added, for the crash-resume suite
                [f"w{int(w[0]['round'][0])}.{int(w[0]['window'][0])}" for w in wins]
                + [f"e{r['round']}.{r['epoch']}" for r in epochs] + [f"r{r['round']}" for r in rounds]
                + [f"l{rows[0]['round']}" for rows in lrs] + [f"p{x[0]}" for x in pops]))
        self._keys["epochs"].update((r["round"], r["epoch"]) for r in epochs)
        self._keys["rounds"].update(r["round"] for r in rounds)
        self._keys["layer_rounds"].update(rows[0]["round"] for rows in lrs)
        self._keys["windows"].update((int(w[0]["round"][0]), int(w[0]["window"][0])) for w in wins)
        self._keys["population"].update(x[0] for x in pops)
        for v in p.values():
            v.clear()


def create_file(path: str, *, attrs: dict, edges: np.ndarray, layers: np.ndarray, sample_k: int,
                rows_per_window: int, population_n: int) -> None:
    """Create a complete empty run file under a temporary name and rename it over ``path``."""
    d = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(d, exist_ok=True)
        check_target(path, "a new run file")  # never rename over a symlink, device or FIFO
        # an unpredictable name, created exclusively by build_file ("xb"): nothing planted is followed
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)[:200]}.", suffix=".tmp", dir=d)
        os.close(fd)
        os.unlink(tmp)
        build_file(tmp, attrs=attrs, edges=edges, layers=layers, sample_k=sample_k,
                   rows_per_window=rows_per_window, population_n=population_n)
        os.replace(tmp, path)
    except (OSError, RuntimeError, ValueError) as e:
        try:
            if tmp is not None:
                os.unlink(tmp)
        except OSError:
            pass
        raise write_error(path, "a new run file", e) from None


# dataset that each block appends to, and the committed count it advances
_BLOCK_COUNT = {"epochs": "epochs", "rounds": "rounds", "layer_rounds": "layer_rounds", "moments": "moments",
                "hist": "moments", "samples": "moments", "pop_meta": "population", "pop_sumsq": "population",
                "pop_mask": "population"}
_LEADERS = {"epochs", "rounds", "layer_rounds", "moments", "pop_meta"}


_META: dict = {}  # path -> (identity, FileMeta): a file's header is checked once, not at every commit


def _file_meta(f: h5py.File, path: str) -> V.FileMeta:
    try:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, str(C.plain(f.attrs.get("attr_crc32", ""))))
    except V.H5_ERRORS:
        key = None
    hit = _META.get(path)
    if key is not None and hit is not None and hit[0] == key:
        return hit[1]
    meta = V.read_meta(f, path)
    _META[path] = (key, meta)
    return meta


def append_blocks(path: str, blocks: dict[str, np.ndarray], what: str) -> None:
    """Append row blocks (dataset name -> rows) in one commit: reserve space, write, flush,
    then move the commit point. Any failure -> one GradscopeError; earlier commits intact."""
    need = int(sum(_nbytes(b) for b in blocks.values()) * 1.5)  # generous: HDF5 must never run out

    def append(f: h5py.File, held: dict) -> None:
        meta = _file_meta(f, path)
        c = V.committed(f, meta)
        new = dict(c)
        for name, rows in blocks.items():
            cnt = _BLOCK_COUNT[name]
            held[name] = f[name]  # held until the file is closed: a failed dataset must not flush on its own
            if rows.dtype.names and held[name].dtype != rows.dtype:  # a file from before moment row CRCs
                rows = _fields_of(rows, held[name].dtype)
            end = _append(held[name], c[cnt], rows)
            if name in _LEADERS:
                new[cnt] = end
        f.flush()  # data and metadata on disk before the commit point moves
        f.attrs.modify("committed", committed_array(new))

    _write_in_place(path, need, what, append)


def _fields_of(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``rows`` in a file's older compound ``dtype`` (its fields a subset of the rows')."""
    missing = [n for n in dtype.names if n not in rows.dtype.names]
    if missing:
        raise InternalError(f"rows lack the file's columns {missing}")
    out = np.zeros(len(rows), dtype=dtype)
    for n in dtype.names:
        out[n] = rows[n]
    return out


def _write_in_place(path: str, need: int, what: str, body: Callable[[h5py.File, dict], None]) -> None:
    """The one way an existing run file is changed: exclusive lock, ``need`` bytes reserved,
    ``body(f, held)`` (``held``: HDF5 objects it opened, kept alive if the file must be
    abandoned), close. A failed write -> one GradscopeError naming ``what``; the file keeps its
    earlier commits and stays openable."""
    with file_lock(path, exclusive=True):
        check_path(path)
        check_write_target(path)
        try:
            with reserved_space(path, need):
                f = open_rw(path)
                err = None
                held: dict = {}
                try:
                    body(f, held)
                except GradscopeError:
                    _close(f)
                    raise
                except V.H5_ERRORS as e:
                    err = e
                    _abandon(f, e, held)
                else:
                    err = _close(f)
                    if err is not None:
                        _abandon(f, err, held)
                held = {}
                if err is not None:
                    raise err
        except GradscopeError:
            raise
        except V.H5_ERRORS as e:
            _after_failed_write(path)
            raise write_error(path, what, e) from None


def _after_failed_write(path: str) -> None:
    """Leave the file openable after a failed write: restore a cut-off end (zeros past the
    commit point are never read)."""
    try:
        extend_to_stored_eof(path)
    except OSError:
        pass  # the next writer (mode "a") or `gradscope repair` retries


# ---------------------------------------------------------------------- derived tables
def _column_data(s) -> tuple[np.ndarray, str]:
    import pandas as pd  # noqa: PLC0415

    if pd.api.types.is_bool_dtype(s.dtype):
        return s.to_numpy(dtype=bool), "bool"
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return s.astype("datetime64[ns]").astype("int64").to_numpy(), "datetime"
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_complex_dtype(s.dtype):
        if s.isna().any() and pd.api.types.is_integer_dtype(s.dtype):
            return s.to_numpy(dtype=np.float64, na_value=np.nan), "float"
        return s.to_numpy(), "num"
    return np.array(["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in s],
                    dtype=object), "str"


derived_crc = C.derived_crc  # moved to gradscope.store.checksum (kept importable here)


def write_derived(path: str, name: str, df) -> None:
    """Store ``df`` as /derived/<name>, replacing an earlier table of that name.

    The new version is written in full before a one-number pointer (``current``) switches to
    it, so a kill leaves either the old or the new table; raw data is never touched.
    """
    import pandas as pd  # noqa: PLC0415

    path = os.fspath(path)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise GradscopeError(f"derived table name {name!r} must be a non-empty name without '/'")
    if not isinstance(df, pd.DataFrame):
        raise GradscopeError(f"write_derived needs a pandas DataFrame, got {type(df).__name__}")
    cols = [_column_data(df[c]) for c in df.columns] if df.columns.is_unique else None
    if cols is None:
        raise GradscopeError(f"derived table {name!r} has duplicate column names")
    need = int(sum(_nbytes(d) for d, _ in cols) * 1.05) + 4096

    def write(f: h5py.File, held: dict) -> None:
        V.read_meta(f, path)
        _write_derived(f, name, df, cols)

    _write_in_place(path, need, f"derived table {name!r}", write)


def _write_derived(f: h5py.File, name: str, df, cols: list) -> None:
    grp = f["derived"].require_group(name)
    versions = [int(k[1:]) for k in grp if k.startswith("v") and k[1:].isdigit()]
    ver = max(versions, default=-1) + 1
    g = grp.create_group(f"v{ver}")
    columns = [str(c) for c in df.columns]
    kinds = [k for _, k in cols]
    col_crcs = []
    for i, (data, kind) in enumerate(cols):
        dt = h5py.string_dtype("utf-8") if kind == "str" else None
        n = len(data)
        ds = g.create_dataset(f"c{i}", shape=(n,), maxshape=(None,), dtype=dt or np.asarray(data).dtype,
                              chunks=(max(n, 1),), fletcher32=kind != "str")  # HDF5 filters no vlen data
        if n:
            ds[:] = data
        col_crcs.append(C.column_crc(ds[:] if kind == "str" else np.asarray(data)))
    g.attrs["columns"] = json.dumps(columns)
    g.attrs["kinds"] = json.dumps(kinds)
    g.attrs["nrows"] = len(df)
    g.attrs["col_crc32"] = json.dumps(col_crcs)
    g.attrs["crc32"] = C.derived_crc(columns, kinds, len(df), col_crcs)
    f.flush()
    if "current" in grp.attrs:
        grp.attrs.modify("current", np.int64(ver))
    else:
        grp.attrs.create("current", np.int64(ver))
    f.flush()
    for k in list(grp):
        if k != f"v{ver}":
            del grp[k]
