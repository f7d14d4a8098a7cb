"""The HDF5 run-file schema: table layouts, constants and small pure helpers.

See docs/hdf5-format.md for the human-readable description; this module is its source of truth.
Schema 2 is written; schemas 1 and 2 are read (1 = survivors only, no checksums).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import h5py
import numpy as np

from gradscope import InternalError

FORMAT = "gradscope-run"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)

_STR = h5py.string_dtype("utf-8")

# ---------------------------------------------------------------------- views
# Stored views and their codes in the moments `view` column (mapping also in root attr `views`).
VIEW_CODES: dict[str, int] = {"survivors": 0, "relative": 1}
# Derived at read time from the survivors rows (never stored).
DERIVED_VIEWS = ("all",)
ALL_VIEWS = ("survivors", "all", "relative")

# ---------------------------------------------------------------------- small tables
# Every small table row carries `crc`: CRC-32 of the row's values (strings included), so damage
# to the variable-length string heap or a lost chunk is caught (see gradscope.store.checksum).
SMALL_TABLES: dict[str, np.dtype] = {
    "layers": np.dtype([("layer", _STR), ("index", "<i4"), ("kind", _STR), ("shape", _STR),
                        ("numel", "<i8"), ("relu_fed", "?"), ("relu_path", _STR), ("recorded", "?"),
                        ("activation", _STR), ("rule", _STR), ("crc", "<u4")]),
    "rounds": np.dtype([("round", "<i4"), ("sparsity", "<f8"), ("target_sparsity", "<f8"),
                        ("max_lr", "<f8"), ("schedule", _STR), ("val_acc", "<f8"), ("test_acc", "<f8"),
                        ("train_loss", "<f8"), ("time_s", "<f8"), ("crc", "<u4")]),
    "layer_rounds": np.dtype([("round", "<i4"), ("layer", "<i4"), ("sparsity", "<f8"),
                              ("numel", "<i8"), ("kept", "<i8"), ("crc", "<u4")]),
    "epochs": np.dtype([("round", "<i4"), ("epoch", "<i4"), ("train_loss", "<f8"), ("val_acc", "<f8"),
                        ("test_acc", "<f8"), ("lr", "<f8"), ("crc", "<u4")]),
    "pop_meta": np.dtype([("round", "<i4"), ("steps", "<i8"), ("n", "<i8"), ("crc_sumsq", "<u4"),
                          ("crc_mask", "<u4"), ("crc", "<u4")]),
}
# Schema 1 tables (read only).
SMALL_TABLES_V1: dict[str, np.dtype] = {
    "layers": np.dtype([("layer", _STR), ("index", "<i4"), ("kind", _STR), ("shape", _STR),
                        ("numel", "<i8"), ("relu_fed", "?"), ("relu_path", _STR), ("recorded", "?")]),
    "rounds": np.dtype([(n, SMALL_TABLES["rounds"][n]) for n in SMALL_TABLES["rounds"].names if n != "crc"]),
    "layer_rounds": np.dtype([(n, SMALL_TABLES["layer_rounds"][n]) for n in SMALL_TABLES["layer_rounds"].names
                              if n != "crc"]),
    "epochs": np.dtype([(n, SMALL_TABLES["epochs"][n]) for n in SMALL_TABLES["epochs"].names if n != "crc"]),
}
# Chunk rows of the small tables: a chunk holds what one commit appends (one round / epoch row,
# one round's layer rows), so a committed chunk is never rewritten (a torn rewrite would break
# its fletcher32 checksum and lose committed rows). `layers` and `layer_rounds` use the layer count.
SMALL_CHUNK_ROWS = {"rounds": 1, "epochs": 1, "pop_meta": 1}

# ---------------------------------------------------------------------- per-window tables
# One row per (round, window, view, recorded layer); one chunk holds exactly one window
# (rows_per_window = recorded layers x stored views), so committed chunks are never rewritten.
MOMENTS_DTYPE = np.dtype([("round", "<i4"), ("epoch", "<i4"), ("window", "<i4"), ("step_start", "<i8"),
                          ("step_end", "<i8"), ("steps", "<i8"), ("view", "i1"), ("layer", "<i4"),
                          ("count", "<i8"), ("sum", "<f8"), ("sumsq", "<f8"), ("sumabs", "<f8"),
                          ("sum3", "<f8"), ("sum4", "<f8"), ("min", "<f8"), ("max", "<f8"), ("under", "<i8"),
                          ("over", "<i8"), ("nonfinite", "<i8"), ("crc", "<u4")])
# Schema-2 files written before moment rows carried `crc` (read; `gradscope repair` adds the CRCs).
MOMENTS_DTYPE_NOCRC = np.dtype([(n, MOMENTS_DTYPE[n]) for n in MOMENTS_DTYPE.names if n != "crc"])
MOMENTS_DTYPE_V1 = np.dtype([(n, MOMENTS_DTYPE[n]) for n in MOMENTS_DTYPE_NOCRC.names if n not in ("steps", "view")])
KEY_COLUMNS = ["round", "epoch", "window", "step_start", "step_end", "steps", "view", "layer"]
MOMENT_COLUMNS = ["count", "sum", "sumsq", "sumabs", "sum3", "sum4", "min", "max", "under", "over",
                  "nonfinite"]
SUM_COLUMNS = ["sum", "sumsq", "sumabs", "sum3", "sum4"]
COUNT_COLUMNS = ["count", "under", "over", "nonfinite"]

# Fill values: what HDF5 returns for a chunk it cannot find (e.g. a damaged chunk index). Each
# is impossible in real data, so validation turns a lost chunk into an error, never into zeros.
MOMENTS_FILL_ROUND = -1
HIST_FILL = -1
SAMPLES_FILL_BITS = 0x7FC0FADE  # a quiet NaN with a payload no computation produces
POP_SUMSQ_FILL = -1.0

# Committed row counts, in this order, live in the root attribute "committed" (int64 array);
# schema 2 appends the CRC-32 of the counts as one more element (one attribute = one write).
# hist and samples always have as many rows as moments; pop_sumsq/pop_mask as pop_meta.
COMMIT_ORDER = ["layers", "rounds", "layer_rounds", "epochs", "moments", "population"]
COMMIT_ORDER_V1 = COMMIT_ORDER[:5]
COMMIT_TABLES = {"population": "pop_meta"}  # committed name -> dataset name where they differ
COMPRESSION = dict(compression="gzip", compression_opts=4, shuffle=True)
POP_CHUNK_COLS = 1 << 20

# Root attributes protected by the `attr_crc32` attribute (schema 2); `committed` has its own CRC.
PROTECTED_ATTRS = ["format", "schema_version", "config", "versions", "git_commit", "created", "edge_kind",
                   "sample_k", "rows_per_window", "views", "relative_eps", "population", "repaired"]


def table_dtype(name: str, version: int) -> np.dtype:
    """The compound dtype of small table ``name`` in a file of schema ``version``."""
    return (SMALL_TABLES_V1 if version == 1 else SMALL_TABLES)[name]


def moments_dtype(version: int) -> np.dtype:
    """The moments dtype gradscope writes for schema ``version`` (see ``moments_dtypes``)."""
    return MOMENTS_DTYPE_V1 if version == 1 else MOMENTS_DTYPE


def moments_dtypes(version: int) -> tuple[np.dtype, ...]:
    """Every moments dtype a readable file of schema ``version`` may hold."""
    return (MOMENTS_DTYPE_V1,) if version == 1 else (MOMENTS_DTYPE, MOMENTS_DTYPE_NOCRC)


def commit_order(version: int) -> list[str]:
    return COMMIT_ORDER_V1 if version == 1 else COMMIT_ORDER


def empty_row(dtype: np.dtype) -> np.ndarray:
    """One row of ``dtype`` with NaN floats, -1 ints, empty strings and False bools."""
    row = np.zeros(1, dtype=dtype)
    for name in dtype.names:
        kind = dtype[name].kind
        if kind == "f":
            row[name] = np.nan
        elif kind == "i":
            row[name] = -1
        elif kind == "O":
            row[name] = ""
    return row


def make_rows(dtype: np.dtype, rows: list[dict]) -> np.ndarray:
    """Structured array from dicts; missing fields get ``empty_row`` defaults, None -> default."""
    out = np.repeat(empty_row(dtype), len(rows))
    for i, r in enumerate(rows):
        for k, v in r.items():
            if k in dtype.names and v is not None:
                out[i][k] = v
    return out


def moments_fill() -> np.ndarray:
    """The moments fill row (round -1, count -1): never valid, so a lost chunk is detected."""
    row = np.zeros(1, dtype=MOMENTS_DTYPE)
    row["round"] = MOMENTS_FILL_ROUND
    row["count"] = -1
    return row[0]


def window_rows(round: int, epoch: int, window: int, step_start: int, step_end: int,
                layer_indices: Sequence[int], view: str, stats: Mapping[str, np.ndarray],
                steps: Optional[int] = None) -> np.ndarray:
    """Moments rows of one view of one window (one row per recorded layer), ready for
    ``RunWriter.add_window`` (concatenate the views of a window, survivors first).

    ``stats`` maps each of MOMENT_COLUMNS to a per-layer array; ``steps`` is how many steps the
    window accumulated (default ``step_end - step_start + 1``, i.e. every step recorded).
    """
    if view not in VIEW_CODES:
        raise InternalError(f"view {view!r} is not stored; stored views are {sorted(VIEW_CODES)}")
    n = len(layer_indices)
    rows = np.zeros(n, dtype=MOMENTS_DTYPE)
    rows["round"], rows["epoch"], rows["window"] = round, epoch, window
    rows["step_start"], rows["step_end"] = step_start, step_end
    rows["steps"] = (step_end - step_start + 1) if steps is None else steps
    rows["view"] = VIEW_CODES[view]
    rows["layer"] = np.asarray(layer_indices, dtype=np.int64)
    missing = [c for c in MOMENT_COLUMNS if c not in stats]
    if missing:
        raise InternalError(f"stats lack {missing}")
    for c in MOMENT_COLUMNS:
        v = np.asarray(stats[c])
        if v.shape != (n,):
            raise InternalError(f"stats[{c!r}] has shape {v.shape}, expected ({n},)")
        rows[c] = v
    return rows
