"""Writing run files: create (atomically), append windows and metadata rows, resume safely.

Design (docs/hdf5-format.md): the file is opened, appended to, flushed and closed once per
window, so it is closed (and consistent) between windows; a kill leaves every committed window
readable, and reopening needs no SWMR flag clearing. Rows count only once the root attribute
``committed`` says so; a torn tail past it is cut off when the writer reopens the file.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import h5py
import numpy as np

from gradscope import GradscopeError, __version__
from gradscope.store import schema as S

try:  # POSIX advisory locks; absent on Windows (then writers/readers are not serialised)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_TIMEOUT_S = 60.0


@contextmanager
def file_lock(path: str, exclusive: bool, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Advisory flock on ``path`` (shared for readers, exclusive for writers).

    HDF5's own locking is switched off (``locking=False``) so that a reader never blocks the
    recorder for long and a killed process never leaves a stale lock; this lock is released by
    the OS when its holder dies. Where flock is unsupported (some NFS mounts) it is skipped.
    """
    if fcntl is None or not os.path.exists(path):
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GradscopeError(f"{path} stays locked by another process; is another run "
                                         "writing to it?") from None
                time.sleep(0.01)
            except OSError:  # lock not supported on this filesystem
                break
        yield
    finally:
        os.close(fd)  # releases the lock


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


def open_h5(path: str, mode: str) -> h5py.File:
    """h5py.File with HDF5 locking off; any failure becomes one GradscopeError."""
    if not os.path.exists(path):
        raise GradscopeError(f"{path} does not exist")
    try:
        return h5py.File(path, mode, locking=False)
    except OSError as e:
        raise GradscopeError(f"{path} is not a readable HDF5 file (truncated, corrupt or not HDF5): "
                             f"{str(e).splitlines()[0]}") from None


def check_format(f: h5py.File, path: str) -> int:
    """Validate the root attributes of a gradscope run file; return its schema version."""
    try:
        fmt = f.attrs.get("format")
        ver = f.attrs.get("schema_version")
    except (OSError, KeyError, RuntimeError) as e:
        raise GradscopeError(f"{path} is damaged: cannot read its attributes ({e})") from None
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != S.FORMAT or ver is None:
        raise GradscopeError(f"{path} is an HDF5 file but not a gradscope run file")
    if int(ver) != S.SCHEMA_VERSION:
        raise GradscopeError(f"{path} has schema version {int(ver)}; this gradscope {__version__} "
                             f"reads version {S.SCHEMA_VERSION} only")
    needed = ["edges", "moments", "hist", "derived", *S.SMALL_TABLES]
    missing = [n for n in needed if n not in f]
    if missing or "committed" not in f.attrs:
        raise GradscopeError(f"{path} is damaged: missing {missing or ['committed']}")
    return int(ver)


def committed_counts(f: h5py.File) -> dict[str, int]:
    c = np.asarray(f.attrs["committed"], dtype=np.int64)
    return dict(zip(S.COMMIT_ORDER, (int(x) for x in c)))


def _create(path: str, *, config: dict, edges: np.ndarray, edge_kind: str, layers: np.ndarray,
            rows_per_window: int, sample_k: int) -> None:
    """Create a complete empty run file at a temporary name, then rename it into place."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    nb = len(edges) - 1
    rpw = max(1, int(rows_per_window))
    with h5py.File(tmp, "w", locking=False) as f:
        f.attrs["format"] = S.FORMAT
        f.attrs["schema_version"] = S.SCHEMA_VERSION
        f.attrs["config"] = json.dumps(config, sort_keys=True, default=str)
        f.attrs["versions"] = json.dumps(package_versions(), sort_keys=True)
        f.attrs["git_commit"] = git_commit()
        f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        f.attrs["edge_kind"] = edge_kind
        f.attrs["sample_k"] = int(sample_k)
        f.attrs["rows_per_window"] = rpw
        f.create_dataset("edges", data=np.asarray(edges, dtype=np.float64))
        for name, dt in S.SMALL_TABLES.items():
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(S.SMALL_CHUNK_ROWS,))
        f.create_dataset("moments", shape=(0,), maxshape=(None,), dtype=S.MOMENTS_DTYPE, chunks=(rpw,),
                         **S.COMPRESSION)
        f.create_dataset("hist", shape=(0, nb), maxshape=(None, nb), dtype=np.int64, chunks=(rpw, nb),
                         **S.COMPRESSION)
        if sample_k > 0:
            f.create_dataset("samples", shape=(0, sample_k), maxshape=(None, sample_k), dtype=np.float32,
                             chunks=(rpw, sample_k), **S.COMPRESSION)
        f.create_group("derived")
        f["layers"].resize((len(layers),))
        f["layers"][:] = layers
        f.attrs["committed"] = np.array([len(layers), 0, 0, 0, 0], dtype=np.int64)
    os.replace(tmp, path)


def _append(ds: h5py.Dataset, start: int, data: np.ndarray) -> int:
    end = start + len(data)
    if ds.shape[0] != end:
        ds.resize((end,) + ds.shape[1:])
    if len(data):
        ds[start:end] = data
    return end


class RunWriter:
    """Appends to one run file. Pending rows are buffered and written by ``commit()``.

    Keys make appends idempotent: windows by (round, window), epochs by (round, epoch),
    rounds and layer_rounds by round. A row whose key is already in the file is skipped, so a
    resumed run never duplicates (nor rewrites) what an earlier process committed.
    """

    def __init__(self, path: str, *, config: dict, edges: np.ndarray, edge_kind: str,
                 layers: list[dict], sample_k: int = 0):
        self.path = os.fspath(path)
        self.edges = np.asarray(edges, dtype=np.float64)
        self.sample_k = int(sample_k)
        self.layer_rows = S.make_rows(S.SMALL_TABLES["layers"], layers)
        self.rows_per_window = int(self.layer_rows["recorded"].sum())
        self._pending: dict[str, list] = {"rounds": [], "layer_rounds": [], "epochs": [], "windows": []}
        if os.path.exists(self.path):
            self._keys = self._check_existing()
        else:
            _create(self.path, config=config, edges=self.edges, edge_kind=edge_kind,
                    layers=self.layer_rows, rows_per_window=self.rows_per_window, sample_k=self.sample_k)
            self._keys = {"windows": set(), "epochs": set(), "rounds": set(), "layer_rounds": set()}

    # ------------------------------------------------------------------ opening an existing file
    def _check_existing(self) -> dict[str, set]:
        with file_lock(self.path, exclusive=True), open_h5(self.path, "r+") as f:
            check_format(f, self.path)
            c = committed_counts(f)
            if not np.array_equal(f["edges"][:], self.edges):
                raise GradscopeError(f"{self.path} was recorded with other histogram edges (bins / "
                                     "hist_range); use a new file to record with these settings")
            old = f["layers"][: c["layers"]]
            names = [_s(x) for x in old["layer"]]
            if names != [_s(x) for x in self.layer_rows["layer"]] or \
                    not np.array_equal(old["recorded"], self.layer_rows["recorded"]):
                raise GradscopeError(f"{self.path} holds a run of another model or layer selection; "
                                     "use a new file")
            if int(f.attrs["sample_k"]) != self.sample_k:
                raise GradscopeError(f"{self.path} was recorded with sample_k={int(f.attrs['sample_k'])}; "
                                     f"cannot append with sample_k={self.sample_k}")
            # cut off a torn tail written after the last commit
            for name in S.COMMIT_ORDER:
                ds = f[name]
                if ds.shape[0] > c[name]:
                    ds.resize((c[name],) + ds.shape[1:])
            for name in ("hist", "samples"):
                if name in f and f[name].shape[0] > c["moments"]:
                    f[name].resize((c["moments"],) + f[name].shape[1:])
            m = f["moments"][: c["moments"]]
            e = f["epochs"][: c["epochs"]]
            return {"windows": set(zip(m["round"].tolist(), m["window"].tolist())),
                    "epochs": set(zip(e["round"].tolist(), e["epoch"].tolist())),
                    "rounds": set(f["rounds"][: c["rounds"]]["round"].tolist()),
                    "layer_rounds": set(f["layer_rounds"][: c["layer_rounds"]]["round"].tolist())}

    # ------------------------------------------------------------------ buffering
    def has_window(self, round: int, window: int) -> bool:
        return (int(round), int(window)) in self._keys["windows"]

    def add_window(self, moments: np.ndarray, hist: np.ndarray, samples: Optional[np.ndarray] = None) -> bool:
        """Queue one window (``moments`` rows of one (round, window), hist rows alike).

        Returns False (and queues nothing) if that window is already in the file or queued.
        """
        key = (int(moments["round"][0]), int(moments["window"][0]))
        queued = {(int(w[0]["round"][0]), int(w[0]["window"][0])) for w in self._pending["windows"]}
        if key in self._keys["windows"] or key in queued:
            return False
        if len(moments) != self.rows_per_window or hist.shape != (len(moments), len(self.edges) - 1):
            raise GradscopeError("internal: window shape does not match the file's layout")
        if self.sample_k and (samples is None or samples.shape != (len(moments), self.sample_k)):
            raise GradscopeError("internal: samples missing or of the wrong shape")
        self._pending["windows"].append((moments, hist, samples))
        return True

    def add_epoch(self, **row: Any) -> None:
        self._pending["epochs"].append(row)

    def add_round(self, **row: Any) -> None:
        self._pending["rounds"].append(row)

    def add_layer_rounds(self, rows: list[dict]) -> None:
        self._pending["layer_rounds"].append(rows)

    # ------------------------------------------------------------------ writing
    def commit(self) -> None:
        """Write everything queued, flush, then advance the committed counts (the commit point)."""
        p = self._pending
        if not any(p.values()):
            return
        epochs = [r for r in p["epochs"] if (r["round"], r["epoch"]) not in self._keys["epochs"]]
        rounds = [r for r in p["rounds"] if r["round"] not in self._keys["rounds"]]
        lrs = [rows for rows in p["layer_rounds"] if rows and rows[0]["round"] not in self._keys["layer_rounds"]]
        wins = [w for w in p["windows"]
                if (int(w[0]["round"][0]), int(w[0]["window"][0])) not in self._keys["windows"]]
        with file_lock(self.path, exclusive=True), open_h5(self.path, "r+") as f:
            c = committed_counts(f)
            new = dict(c)
            if epochs:
                new["epochs"] = _append(f["epochs"], c["epochs"], S.make_rows(S.SMALL_TABLES["epochs"], epochs))
            if rounds:
                new["rounds"] = _append(f["rounds"], c["rounds"], S.make_rows(S.SMALL_TABLES["rounds"], rounds))
            if lrs:
                flat = [r for rows in lrs for r in rows]
                new["layer_rounds"] = _append(f["layer_rounds"], c["layer_rounds"],
                                              S.make_rows(S.SMALL_TABLES["layer_rounds"], flat))
            if wins:
                mom = np.concatenate([w[0] for w in wins])
                new["moments"] = _append(f["moments"], c["moments"], mom)
                _append(f["hist"], c["moments"], np.concatenate([w[1] for w in wins]))
                if self.sample_k:
                    _append(f["samples"], c["moments"], np.concatenate([w[2] for w in wins]))
            f.flush()  # data and metadata on disk before the commit point moves
            f.attrs.modify("committed", np.array([new[n] for n in S.COMMIT_ORDER], dtype=np.int64))
        self._keys["epochs"].update((r["round"], r["epoch"]) for r in epochs)
        self._keys["rounds"].update(r["round"] for r in rounds)
        self._keys["layer_rounds"].update(rows[0]["round"] for rows in lrs)
        self._keys["windows"].update((int(w[0]["round"][0]), int(w[0]["window"][0])) for w in wins)
        for v in p.values():
            v.clear()


def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


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
    with file_lock(path, exclusive=True), open_h5(path, "r+") as f:
        check_format(f, path)
        grp = f["derived"].require_group(name)
        versions = [int(k[1:]) for k in grp if k.startswith("v")]
        ver = max(versions, default=-1) + 1
        g = grp.create_group(f"v{ver}")
        g.attrs["columns"] = json.dumps([str(c) for c in df.columns])
        g.attrs["kinds"] = json.dumps([k for _, k in cols])
        g.attrs["nrows"] = len(df)
        for i, (data, kind) in enumerate(cols):
            dt = h5py.string_dtype("utf-8") if kind == "str" else None
            g.create_dataset(f"c{i}", data=data, dtype=dt)
        f.flush()
        if "current" in grp.attrs:
            grp.attrs.modify("current", np.int64(ver))
        else:
            grp.attrs.create("current", np.int64(ver))
        f.flush()
        for k in list(grp):
            if k != f"v{ver}":
                del grp[k]
