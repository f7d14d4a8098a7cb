"""The HDF5 run-file schema: table layouts, constants and small pure helpers.

See docs/hdf5-format.md for the human-readable description; this module is its source of truth.
"""
from __future__ import annotations

import numpy as np
import h5py

FORMAT = "gradscope-run"
SCHEMA_VERSION = 1

_STR = h5py.string_dtype("utf-8")

# Small tables: uncompressed, fixed chunks, so that appending rewrites a partly filled chunk in
# place with the same bytes for the old rows (a kill mid-write cannot damage committed rows).
SMALL_TABLES: dict[str, np.dtype] = {
    "layers": np.dtype([("layer", _STR), ("index", "<i4"), ("kind", _STR), ("shape", _STR),
                        ("numel", "<i8"), ("relu_fed", "?"), ("relu_path", _STR), ("recorded", "?")]),
    "rounds": np.dtype([("round", "<i4"), ("sparsity", "<f8"), ("target_sparsity", "<f8"),
                        ("max_lr", "<f8"), ("schedule", _STR), ("val_acc", "<f8"), ("test_acc", "<f8"),
                        ("train_loss", "<f8"), ("time_s", "<f8")]),
    "layer_rounds": np.dtype([("round", "<i4"), ("layer", "<i4"), ("sparsity", "<f8"),
                              ("numel", "<i8"), ("kept", "<i8")]),
    "epochs": np.dtype([("round", "<i4"), ("epoch", "<i4"), ("train_loss", "<f8"), ("val_acc", "<f8"),
                        ("test_acc", "<f8"), ("lr", "<f8")]),
}
SMALL_CHUNK_ROWS = 256

# Per-window tables: one row per (round, window, recorded layer); compressed; one chunk holds
# exactly one window, so committed chunks are never rewritten.
MOMENTS_DTYPE = np.dtype([("round", "<i4"), ("epoch", "<i4"), ("window", "<i4"), ("step_start", "<i8"),
                          ("step_end", "<i8"), ("layer", "<i4"), ("count", "<i8"), ("sum", "<f8"),
                          ("sumsq", "<f8"), ("sumabs", "<f8"), ("sum3", "<f8"), ("sum4", "<f8"),
                          ("min", "<f8"), ("max", "<f8"), ("under", "<i8"), ("over", "<i8"),
                          ("nonfinite", "<i8")])
KEY_COLUMNS = ["round", "epoch", "window", "step_start", "step_end", "layer"]
MOMENT_COLUMNS = ["count", "sum", "sumsq", "sumabs", "sum3", "sum4", "min", "max", "under", "over",
                  "nonfinite"]

# Committed row counts, in this order, live in the root attribute "committed" (int64 array).
# hist and samples always have as many rows as moments.
COMMIT_ORDER = ["layers", "rounds", "layer_rounds", "epochs", "moments"]
COMPRESSION = dict(compression="gzip", compression_opts=4, shuffle=True)


def empty_row(dtype: np.dtype) -> np.ndarray:
    """One row of ``dtype`` with NaN floats, -1 ints, empty strings and False bools."""
    row = np.zeros(1, dtype=dtype)
    for name in dtype.names:
        kind = dtype[name].kind
        if kind == "f":
            row[name] = np.nan
        elif kind in "iu":
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
