"""Checks on everything read from a run file: root attributes (and their checksums), committed
counts, table rows and per-window rows. Damage becomes one GradscopeError naming what is wrong,
never a traceback or a silently different number.

The checks are cheap (vectorised over what a query reads anyway) and target what a checksum
cannot see: schema-1 files (no checksums), lost chunks (HDF5 then returns fill values) and
values that are impossible in a real recording (negative counts, NaN sums, steps out of order).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import h5py
import numpy as np

from gradscope import GradscopeError, __version__
from gradscope.store import checksum as C
from gradscope.store import schema as S

# What h5py raises when the bytes under it are damaged (bad checksum, bad type message ...).
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, OverflowError,
             UnicodeDecodeError, AttributeError)


def damaged(path: str, what: str) -> GradscopeError:
    return GradscopeError(f"{path} is damaged: {what}")


@dataclass
class FileMeta:
    """The decoded, checked root of a run file."""

    path: str
    version: int
    config: dict
    versions: dict
    git_commit: str
    created: str
    edge_kind: str
    sample_k: int
    rows_per_window: int
    views: dict  # stored view name -> code
    relative_eps: Optional[float]
    population: bool
    edges: np.ndarray
    layers: np.ndarray  # committed rows of the layers table
    repaired: Optional[dict] = None
    attrs: dict = field(default_factory=dict)

    @property
    def checksums(self) -> bool:
        return self.version >= 2

    @property
    def recorded(self) -> np.ndarray:
        """Indices of the recorded layers, in index order (the order of each window's rows)."""
        return np.sort(self.layers["index"][self.layers["recorded"].astype(bool)]).astype(np.int64)

    @property
    def numel(self) -> np.ndarray:
        return self.layers["numel"].astype(np.int64)


def _attr(f: h5py.File, name: str, path: str) -> Any:
    try:
        return f.attrs[name]
    except H5_ERRORS as e:
        raise damaged(path, f"cannot read root attribute {name!r} ({C.plain(str(e)).splitlines()[0] if str(e) else type(e).__name__})") from None


def _int_attr(v: Any, name: str, path: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise damaged(path, f"root attribute {name!r} is {C.plain(v)!r}, not an integer")
    return int(v)


def _str_attr(v: Any, name: str, path: str) -> str:
    v = C.plain(v)
    if not isinstance(v, str):
        raise damaged(path, f"root attribute {name!r} is not text")
    return v


def _json_attr(v: Any, name: str, path: str, kind: type = dict) -> Any:
    try:
        out = json.loads(_str_attr(v, name, path))
    except ValueError:
        raise damaged(path, f"root attribute {name!r} is not valid JSON") from None
    if not isinstance(out, kind):
        raise damaged(path, f"root attribute {name!r} is not a JSON {kind.__name__}")
    return out


def schema_version(f: h5py.File, path: str) -> int:
    """Check ``format`` and return a readable ``schema_version`` (else one clear error)."""
    try:
        names = set(f.attrs.keys())
    except H5_ERRORS as e:
        raise damaged(path, f"cannot list its attributes ({type(e).__name__})") from None
    if "format" not in names or "schema_version" not in names:
        if not names & {"format", "schema_version", "committed", "config"}:
            raise GradscopeError(f"{path} is an HDF5 file but not a gradscope run file")
        raise damaged(path, "root attribute 'format' or 'schema_version' is missing")
    fmt = C.plain(_attr(f, "format", path))
    if fmt != S.FORMAT:
        raise GradscopeError(f"{path} is an HDF5 file but not a gradscope run file (format {fmt!r})")
    ver = _attr(f, "schema_version", path)
    if isinstance(ver, (bool, np.bool_)) or not isinstance(ver, (int, np.integer)):
        raise damaged(path, f"schema_version is {C.plain(ver)!r}, not an integer")
    ver = int(ver)
    if ver not in S.READABLE_VERSIONS:
        raise GradscopeError(f"{path} has schema version {ver}; this gradscope {__version__} reads versions "
                             f"{', '.join(map(str, S.READABLE_VERSIONS))} (a newer gradscope wrote it?)")
    return ver


def read_meta(f: h5py.File, path: str, lenient: bool = False) -> FileMeta:
    """Root attributes, edges and layers, checked (checksums first for schema 2).
    lenient (repair only): a damaged commit point falls back to the rows stored."""
    ver = schema_version(f, path)
    attrs = {}
    for n in S.PROTECTED_ATTRS + ["committed", "attr_crc32"]:
        if n in f.attrs:
            attrs[n] = _attr(f, n, path)
    if ver >= 2:
        if "attr_crc32" not in attrs:
            raise damaged(path, "root attribute 'attr_crc32' (the attribute checksums) is missing")
        crcs = _json_attr(attrs["attr_crc32"], "attr_crc32", path)
        have = {n for n in S.PROTECTED_ATTRS if n in attrs}
        if set(crcs) != have:
            raise damaged(path, f"root attributes {sorted(set(crcs) ^ have)} are missing or unexpected")
        for n in sorted(have):
            if C.value_crc(attrs[n]) != crcs[n]:
                raise damaged(path, f"root attribute {n!r} fails its checksum")
    needed = ["config", "versions", "edge_kind", "sample_k", "rows_per_window", "committed"]
    missing = [n for n in needed if n not in attrs]
    if missing:
        raise damaged(path, f"root attributes {missing} are missing")
    config = _json_attr(attrs["config"], "config", path)
    versions = _json_attr(attrs["versions"], "versions", path)
    edge_kind = _str_attr(attrs["edge_kind"], "edge_kind", path)
    sample_k = _int_attr(attrs["sample_k"], "sample_k", path)
    rpw = _int_attr(attrs["rows_per_window"], "rows_per_window", path)
    if sample_k < 0 or rpw < 1:
        raise damaged(path, f"sample_k={sample_k} / rows_per_window={rpw} out of range")
    if ver >= 2:
        views = _json_attr(attrs.get("views", "null"), "views", path)
        if not views or any(S.VIEW_CODES.get(k) != v for k, v in views.items()) or "survivors" not in views:
            raise damaged(path, f"root attribute 'views' lists unknown views {views}")
        eps = attrs.get("relative_eps")
        relative_eps = None if eps is None else float(eps)
        if ("relative" in views) != (relative_eps is not None):
            raise damaged(path, "views and relative_eps disagree")
        population = bool(_int_attr(attrs.get("population", 0), "population", path))
        repaired = _json_attr(attrs["repaired"], "repaired", path) if "repaired" in attrs else None
    else:
        views, relative_eps, population, repaired = {"survivors": 0}, None, False, None
    meta = FileMeta(path=path, version=ver, config=config, versions=versions,
                    git_commit=str(C.plain(attrs.get("git_commit", "unknown"))),
                    created=str(C.plain(attrs.get("created", ""))), edge_kind=edge_kind, sample_k=sample_k,
                    rows_per_window=rpw, views=views, relative_eps=relative_eps, population=population,
                    edges=np.zeros(0), layers=np.zeros(0, dtype=S.table_dtype("layers", ver)),
                    repaired=repaired, attrs=attrs)
    needed_ds = ["edges", "moments", "hist", "derived", "layers", "rounds", "layer_rounds", "epochs"]
    if sample_k:
        needed_ds.append("samples")
    if population:
        needed_ds += ["pop_meta", "pop_sumsq", "pop_mask"]
    try:
        have_ds = set(f.keys())
    except H5_ERRORS as e:
        raise damaged(path, f"cannot list its datasets ({type(e).__name__})") from None
    missing = [n for n in needed_ds if n not in have_ds]
    if missing:
        raise damaged(path, f"datasets {missing} are missing")
    check_storage(f, path)
    meta.edges = read_edges(f, meta)
    counts = committed(f, meta, lenient=lenient)
    meta.layers = read_table(f, meta, "layers", counts["layers"])
    return meta


# Dataset layouts whose bytes lie inside the file (external storage uses the contiguous layout
# with an external file list, checked separately; virtual datasets map other files' data).
_INTERNAL_LAYOUTS = (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT)


def check_storage(f: h5py.File, path: str) -> None:
    """Refuse any object whose data lies outside the file: soft or external links, virtual
    datasets and datasets with external storage (a crafted run file could otherwise make a
    reader return the bytes of any file it can read, e.g. /etc/passwd)."""
    def walk(g: h5py.Group, prefix: str) -> None:
        try:
            names = list(g.keys())
        except H5_ERRORS as e:
            raise damaged(path, f"cannot list {prefix or '/'} ({type(e).__name__})") from None
        for n in names:
            full = f"{prefix}/{n}"
            try:
                link = g.get(n, getlink=True)
            except H5_ERRORS as e:
                raise damaged(path, f"the link {full!r} cannot be read ({type(e).__name__})") from None
            if not isinstance(link, h5py.HardLink):
                what = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
                raise GradscopeError(f"{path} is refused: {full!r} is {what}; a run file keeps all its data "
                                     "inside itself")
            try:
                obj = g[n]
            except H5_ERRORS as e:
                raise damaged(path, f"{full!r} cannot be opened ({type(e).__name__})") from None
            if isinstance(obj, h5py.Group):
                walk(obj, full)
                continue
            if not isinstance(obj, h5py.Dataset):
                continue
            try:
                plist = obj.id.get_create_plist()
                layout, external, virtual = plist.get_layout(), plist.get_external_count(), obj.is_virtual
            except H5_ERRORS as e:
                raise damaged(path, f"the storage of {full!r} cannot be read ({type(e).__name__})") from None
            if virtual or external or layout not in _INTERNAL_LAYOUTS:
                how = "a virtual dataset" if virtual or layout == h5py.h5d.VIRTUAL else \
                    "stored in an external file" if external else f"of unknown storage layout {layout}"
                raise GradscopeError(f"{path} is refused: dataset {full!r} is {how}; a run file keeps all its "
                                     "data inside itself")

    walk(f, "")


def _dataset(f: h5py.File, name: str, path: str) -> h5py.Dataset:
    try:
        ds = f[name]
    except H5_ERRORS as e:
        raise damaged(path, f"dataset {name!r} cannot be opened ({C.plain(str(e)).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(ds, h5py.Dataset):
        raise damaged(path, f"{name!r} is not a dataset")
    return ds


def _check_dtype(ds: h5py.Dataset, want: np.dtype, name: str, path: str) -> None:
    try:
        got = ds.dtype
    except H5_ERRORS:
        raise damaged(path, f"the data type of {name!r} cannot be read") from None
    if got != want:
        raise damaged(path, f"dataset {name!r} has data type {got}, expected {want}")


def read_moments(f: h5py.File, meta: FileMeta, sel: Any, first_row: int = 0) -> np.ndarray:
    """Rows ``sel`` of ``moments`` (either schema-2 dtype: with or without row CRCs), checked."""
    ds = _dataset(f, "moments", meta.path)
    try:
        got = ds.dtype
    except H5_ERRORS:
        raise damaged(meta.path, "the data type of 'moments' cannot be read") from None
    if got not in S.moments_dtypes(meta.version):
        raise damaged(meta.path, f"dataset 'moments' has data type {got}, expected {S.moments_dtype(meta.version)}")
    m = read(ds, sel, meta.path, "moments")
    check_moments(meta, m, first_row=first_row)
    return m


def read_edges(f: h5py.File, meta: FileMeta) -> np.ndarray:
    ds = _dataset(f, "edges", meta.path)
    _check_dtype(ds, np.dtype("<f8"), "edges", meta.path)
    if ds.ndim != 1:
        raise damaged(meta.path, "edges are not 1-D")
    e = read(ds, slice(None), meta.path, "edges")
    if len(e) < 2 or not np.all(np.isfinite(e)) or not np.all(np.diff(e) > 0):
        raise damaged(meta.path, "histogram edges are not finite and increasing")
    return e


def read(ds: h5py.Dataset, sel: Any, path: str, what: str) -> np.ndarray:
    """``ds[sel]`` with damage (checksum failure, bad type ...) as one GradscopeError."""
    try:
        return ds[sel]
    except H5_ERRORS as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "filter" in msg or "checksum" in msg.lower() or "fletcher" in msg.lower():
            msg = "checksum mismatch (the stored bytes changed)"
        raise damaged(path, f"reading {what} failed: {msg}") from None


def stored_counts(f: h5py.File, meta: FileMeta) -> dict[str, int]:
    """Rows each table holds on disk (whole windows for moments; hist/samples included)."""
    out = {}
    for name in S.commit_order(meta.version):
        dsn = [S.COMMIT_TABLES.get(name, name)]
        if name == "moments":
            dsn += ["hist"] + (["samples"] if meta.sample_k else [])
        if name == "population":
            dsn += ["pop_sumsq", "pop_mask"]
            if not meta.population:
                out[name] = 0
                continue
        try:
            n = min(f[d].shape[0] for d in dsn)
        except H5_ERRORS:
            n = 0
        if name == "moments":
            n -= n % meta.rows_per_window
        out[name] = int(n)
    return out


def committed(f: h5py.File, meta: FileMeta, lenient: bool = False) -> dict[str, int]:
    """The committed row counts, checked against their checksum and the stored rows.

    lenient (for repair only): damaged or excessive counts fall back to the rows stored.
    """
    if lenient:
        stored = stored_counts(f, meta)
        try:
            strict = committed(f, meta)
        except GradscopeError:
            return stored
        return {k: min(v, stored[k]) for k, v in strict.items()}
    path = meta.path
    order = S.commit_order(meta.version)
    arr = np.asarray(_attr(f, "committed", path))
    want_len = len(order) + (1 if meta.version >= 2 else 0)
    if arr.dtype.kind not in "iu" or arr.shape != (want_len,):
        raise damaged(path, f"'committed' must be {want_len} integers, got {C.plain(arr)!r}")
    arr = arr.astype(np.int64)
    counts = arr[: len(order)]
    if meta.version >= 2 and C.counts_crc(counts) != int(arr[-1]):
        raise damaged(path, "'committed' fails its checksum")
    if (counts < 0).any():
        raise damaged(path, f"'committed' holds negative counts {counts.tolist()}")
    out = dict(zip(order, (int(x) for x in counts)))
    if out["layers"] < 1:
        raise damaged(path, "no layers are committed")
    if out["moments"] % meta.rows_per_window:
        raise damaged(path, f"{out['moments']} committed moments rows are not whole windows of "
                            f"{meta.rows_per_window}")
    for name, n in out.items():
        ds_names = [S.COMMIT_TABLES.get(name, name)]
        if name == "moments":
            ds_names += ["hist"] + (["samples"] if meta.sample_k else [])
        if name == "population":
            ds_names += ["pop_sumsq", "pop_mask"] if meta.population else []
            if not meta.population:
                if n:
                    raise damaged(path, "population rows are committed but no population is recorded")
                continue
        for dn in ds_names:
            try:
                stored = f[dn].shape[0] if dn in f else -1
            except H5_ERRORS:
                raise damaged(path, f"dataset {dn!r} cannot be opened") from None
            if stored < n:
                raise damaged(path, f"{n} {name} rows are committed but {dn!r} stores {max(stored, 0)}")
    return out


def read_table(f: h5py.File, meta: FileMeta, name: str, n: int) -> np.ndarray:
    """The first ``n`` (committed) rows of small table ``name``, type- and checksum-checked."""
    ds = _dataset(f, name, meta.path)
    _check_dtype(ds, S.table_dtype(name, meta.version), name, meta.path)
    if ds.ndim != 1:
        raise damaged(meta.path, f"table {name!r} is not 1-D")
    arr = read(ds, slice(0, n), meta.path, f"table {name!r}")
    bad = C.bad_rows(arr)
    if len(bad):
        raise damaged(meta.path, f"row {int(bad[0])} of table {name!r} fails its checksum")
    check_table(meta, name, arr)
    return arr


MAX_NUMEL = 1 << 40  # weights in one layer: far above any model, far below int64 overflow


def shape_dims(shape: Any) -> Optional[list[int]]:
    """The sizes in a layer's shape string ("64x16x3x3"), or None if it does not parse."""
    text = C.plain(shape)
    if not isinstance(text, str) or not text or len(text) > 200:
        return None
    parts = text.split("x")
    if not all(x.isdigit() and x.isascii() and len(x) <= 12 and int(x) > 0 for x in parts):
        return None
    return [int(x) for x in parts]


def _in_range(p: str, table: str, a: np.ndarray, col: str, lo: float, hi: float, low_open: bool = False) -> None:
    """Column ``col`` is NaN (not measured) or finite within [lo, hi] ((lo, hi] if low_open)."""
    v = a[col].astype(np.float64)
    have = ~np.isnan(v)
    ok = np.isfinite(v) & (v <= hi) & ((v > lo) if low_open else (v >= lo))
    bad = np.nonzero(have & ~ok)[0]
    if len(bad):
        i = int(bad[0])
        rng = f"{'(' if low_open else '['}{lo:g}, {hi:g}]"
        raise damaged(p, f"table {table!r} row {i} holds {col}={float(v[i])!r}, outside {rng}")


def _uniq(keys: np.ndarray) -> bool:
    return len(np.unique(keys, axis=0)) == len(keys)


def check_table(meta: FileMeta, name: str, a: np.ndarray) -> None:
    p = meta.path
    if not len(a):
        return
    if name == "layers":
        if not np.array_equal(a["index"], np.arange(len(a))):
            raise damaged(p, "layer indices are not 0, 1, 2, ...")
        if (a["numel"] < 1).any() or (a["numel"] > MAX_NUMEL).any():
            raise damaged(p, f"a layer has numel < 1 or > {MAX_NUMEL}")
        for row in a:
            dims = shape_dims(row["shape"])
            if dims is None or int(np.prod(dims, dtype=object)) != int(row["numel"]):
                raise damaged(p, f"layer {C.plain(row['layer'])!r} has shape {C.plain(row['shape'])!r}, which is not "
                                 f"'AxBx...' positive sizes whose product is its numel {int(row['numel'])}")
        if not a["recorded"].any():
            raise damaged(p, "no layer is marked as recorded")
        n_rec = int(a["recorded"].sum())
        if n_rec * len(meta.views) != meta.rows_per_window:
            raise damaged(p, f"{n_rec} recorded layers x {len(meta.views)} views do not make "
                             f"rows_per_window={meta.rows_per_window}")
        return
    nl = len(meta.layers)
    if (a["round"] < 0).any():
        raise damaged(p, f"table {name!r} holds a negative round")
    if name == "rounds":
        if not _uniq(a["round"]):
            raise damaged(p, "table 'rounds' holds a round twice")
        _in_range(p, name, a, "max_lr", 0.0, math.inf, low_open=True)
        for c in ("sparsity", "target_sparsity", "val_acc", "test_acc"):
            _in_range(p, name, a, c, 0.0, 1.0)
        _in_range(p, name, a, "train_loss", 0.0, math.inf)
        _in_range(p, name, a, "time_s", 0.0, math.inf)
    if name == "epochs":
        if (a["epoch"] < 0).any() or not _uniq(np.stack([a["round"], a["epoch"]], 1)):
            raise damaged(p, "table 'epochs' holds a negative or repeated epoch")
        for c in ("val_acc", "test_acc"):
            _in_range(p, name, a, c, 0.0, 1.0)
        _in_range(p, name, a, "train_loss", 0.0, math.inf)
        _in_range(p, name, a, "lr", 0.0, math.inf)
    if name == "layer_rounds":
        lay = a["layer"]
        if ((lay < 0) | (lay >= nl)).any():
            raise damaged(p, "table 'layer_rounds' refers to a layer that does not exist")
        if (a["kept"] < 0).any() or (a["kept"] > a["numel"]).any() or \
                (a["numel"] != meta.numel[np.clip(lay, 0, nl - 1)]).any():
            raise damaged(p, "table 'layer_rounds' holds kept/numel counts out of range")
        if not _uniq(np.stack([a["round"], lay], 1)):
            raise damaged(p, "table 'layer_rounds' holds a (round, layer) twice")
        _in_range(p, name, a, "sparsity", 0.0, 1.0)
    if name == "pop_meta":
        if (a["steps"] < 1).any() or not _uniq(a["round"]):
            raise damaged(p, "table 'pop_meta' holds a repeated round or steps < 1")


def check_moments(meta: FileMeta, m: np.ndarray, first_row: int = 0) -> None:
    """Per-window rows: keys in range, windows whole and unique, counts and sums possible."""
    p = meta.path
    if not len(m):
        return
    rpw = meta.rows_per_window
    if first_row % rpw or len(m) % rpw:
        raise damaged(p, "moments rows are not whole windows")
    bad = C.bad_rows(m)  # files written before moment rows had a crc column have none to check
    if len(bad):
        raise damaged(p, f"row {first_row + int(bad[0])} of table 'moments' fails its checksum")
    v2 = meta.version >= 2
    if (m["round"] < 0).any() or (m["epoch"] < 0).any() or (m["window"] < 0).any():
        raise damaged(p, "moments hold a negative round, epoch or window (a lost chunk?)")
    if (m["step_start"] < 0).any() or (m["step_end"] < m["step_start"]).any():
        raise damaged(p, "moments hold steps out of order")
    steps = m["steps"] if v2 else m["step_end"] - m["step_start"] + 1
    if v2 and ((steps < 0).any() or (steps > m["step_end"] - m["step_start"] + 1).any()):
        raise damaged(p, "moments hold a window step count out of range")
    if v2 and ((steps == 0) & ((m["count"] != 0) | (m["nonfinite"] != 0))).any():
        raise damaged(p, "moments hold values for a layer with no recorded step in its window")
    rec = meta.recorded
    if not np.isin(m["layer"], rec).all():
        raise damaged(p, "moments refer to a layer that does not exist or is not recorded")
    codes = np.array(sorted(meta.views.values()), dtype=np.int64)
    view = m["view"].astype(np.int64) if v2 else np.zeros(len(m), np.int64)
    if not np.isin(view, codes).all():
        raise damaged(p, "moments hold an unknown view code")
    cnt = {c: m[c] for c in S.COUNT_COLUMNS}
    if any((v < 0).any() for v in cnt.values()):
        raise damaged(p, "moments hold a negative count")
    if (cnt["under"] + cnt["over"] > cnt["count"]).any():
        raise damaged(p, "moments hold more values out of range than values")
    numel = meta.numel[m["layer"]]
    if (cnt["count"] + cnt["nonfinite"] > numel * steps).any():
        raise damaged(p, "moments count more values than the layer has weights x steps")
    for c in S.SUM_COLUMNS:
        if not np.isfinite(m[c]).all():
            raise damaged(p, f"moments hold a non-finite {c}")
    if (m["sumsq"] < 0).any() or (m["sumabs"] < 0).any() or (m["sum4"] < 0).any():
        raise damaged(p, "moments hold a negative sum of squares / absolute values")
    has = cnt["count"] > 0
    if (~has & ((m["sumsq"] != 0) | (m["sumabs"] != 0))).any():
        raise damaged(p, "moments hold sums for a window without values")
    lo, hi = m["min"][has], m["max"][has]
    if not (lo <= hi).all():
        raise damaged(p, "moments hold min > max (or NaN) where values exist")
    # whole windows: same keys within a block, the expected (view, layer) pairs, unique blocks
    nb = len(m) // rpw
    # steps may differ between layers (a layer without .grad in a step does not count it)
    keys = np.stack([m["round"], m["window"], m["epoch"], m["step_start"], m["step_end"]],
                    1).reshape(nb, rpw, 5)
    if not (keys == keys[:, :1]).all():
        raise damaged(p, "a window's rows disagree on round/window/steps")
    if v2 and not (steps.reshape(nb, rpw) > 0).any(axis=1).all():
        raise damaged(p, "a window holds no recorded step")
    pair = (view * (1 << 32) + m["layer"].astype(np.int64)).reshape(nb, rpw)
    want = np.sort((codes[:, None] * (1 << 32) + rec[None, :]).ravel())
    if len(want) != rpw or not (np.sort(pair, axis=1) == want[None, :]).all():
        raise damaged(p, "a window does not hold one row per recorded layer and view")
    if not _uniq(keys[:, 0, :2]):
        raise damaged(p, "a window (round, window) is stored twice")


def check_window_rounds(meta: FileMeta, m: np.ndarray, known: set) -> None:
    """Every window belongs to a round the file describes (in ``rounds`` or ``layer_rounds``;
    the recorder commits a round's layer_rounds with its first window), except the one round in
    progress of a producer that writes its metadata later: a single round after every described
    one, whose windows are the file's last. ``known`` empty: no round metadata to compare."""
    if not len(m) or not known:
        return
    rounds = m["round"].astype(np.int64)
    stray = sorted(set(np.unique(rounds).tolist()) - known)
    if not stray:
        return
    last = stray[-1]
    first_row = int(np.argmax(rounds == last))
    if len(stray) > 1 or last < max(known) or (rounds[first_row:] != last).any():
        raise damaged(meta.path, f"moments hold round {stray[0]}, which neither 'rounds' nor 'layer_rounds' "
                                 f"describes (they describe rounds {sorted(known)[:10]})")


def check_hist(meta: FileMeta, h: np.ndarray, m: np.ndarray) -> None:
    """Histogram rows: non-negative, and in-range counts + under + over == count (per row)."""
    p = meta.path
    if h.ndim != 2 or h.shape[0] != len(m) or h.shape[1] != len(meta.edges) - 1:
        raise damaged(p, f"histogram rows have shape {h.shape}, expected ({len(m)}, {len(meta.edges) - 1})")
    if (h < 0).any():
        raise damaged(p, "histograms hold negative counts (a lost chunk?)")
    if (h.sum(axis=1) + m["under"] + m["over"] != m["count"]).any():
        raise damaged(p, "histogram counts do not add up to the moments' count")


def check_samples(meta: FileMeta, s: np.ndarray, m: np.ndarray) -> None:
    p = meta.path
    if s.ndim != 2 or s.shape != (len(m), meta.sample_k):
        raise damaged(p, f"sample rows have shape {s.shape}, expected ({len(m)}, {meta.sample_k})")
    if (s.view(np.uint32) == np.uint32(S.SAMPLES_FILL_BITS)).any():
        raise damaged(p, "gradient samples are missing (a lost chunk)")
    have = np.sum(~np.isnan(s), axis=1)
    if (have > m["count"] + m["nonfinite"]).any():
        raise damaged(p, "a window holds more gradient samples than values")
    if meta.sample_k and ((have == 0) & (m["count"] > 0)).any():  # samples are drawn from the finite values
        raise damaged(p, "a window's gradient samples are all NaN although it holds finite values")
