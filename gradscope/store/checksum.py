"""CRC-32 checksums for what HDF5's fletcher32 filter does not cover: attributes, committed
counts, variable-length strings (table rows) and derived-table columns.

Canonical forms are defined on the *decoded* values, so a checksum is independent of how
HDF5 happens to lay the bytes out, and any change of a value (or of its type) is caught.
"""
from __future__ import annotations

import json
import zlib
from typing import Any, Iterable

import numpy as np


def plain(v: Any) -> Any:
    """A JSON-able Python value from an HDF5 attribute value (bytes, numpy scalars and arrays)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="surrogateescape")
    if isinstance(v, np.ndarray):
        return [plain(x) for x in v.tolist()] if v.dtype.kind != "O" else [plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and v != v:
        return "NaN"
    return v


def value_crc(v: Any) -> int:
    """CRC-32 of an attribute value in canonical JSON (type-sensitive: 1 != 1.0 != "1")."""
    p = plain(v)
    tag = type(p).__name__
    return zlib.crc32(f"{tag}:{json.dumps(p, sort_keys=True, default=str)}".encode("utf-8", "surrogateescape"))


def counts_crc(counts: Iterable[int]) -> int:
    """CRC-32 of the committed row counts (little-endian int64)."""
    return zlib.crc32(np.asarray(list(counts), dtype="<i8").tobytes())


def _as_bytes(x: Any) -> bytes:
    if isinstance(x, bytes):
        return x
    return str(x).encode("utf-8", "surrogateescape")


def row_crcs(arr: np.ndarray) -> np.ndarray:
    """CRC-32 of each row of a structured array over every field except ``crc``.

    Numbers enter as their little-endian bytes, strings as length-prefixed UTF-8.
    """
    names = [n for n in arr.dtype.names if n != "crc"]
    num = [n for n in names if arr.dtype[n].kind != "O"]
    strs = [n for n in names if arr.dtype[n].kind == "O"]
    packed = np.zeros(len(arr), dtype=[(n, arr.dtype[n].newbyteorder("<")) for n in num])
    for n in num:
        packed[n] = arr[n]
    raw = packed.view(np.uint8).reshape(len(arr), -1) if len(arr) and num else None
    out = np.zeros(len(arr), dtype=np.uint32)
    for i in range(len(arr)):
        c = zlib.crc32(raw[i].tobytes()) if raw is not None else 0
        for n in strs:
            b = _as_bytes(arr[n][i])
            c = zlib.crc32(len(b).to_bytes(4, "little") + b, c)
        out[i] = c
    return out


def with_row_crcs(arr: np.ndarray) -> np.ndarray:
    """``arr`` with its ``crc`` column filled in (a copy)."""
    arr = arr.copy()
    if "crc" in arr.dtype.names:
        arr["crc"] = row_crcs(arr)
    return arr


def bad_rows(arr: np.ndarray) -> np.ndarray:
    """Indices of rows whose stored ``crc`` does not match their values."""
    if "crc" not in arr.dtype.names or not len(arr):
        return np.zeros(0, dtype=np.int64)
    return np.nonzero(row_crcs(arr) != arr["crc"])[0]


def column_crc(data: np.ndarray) -> int:
    """CRC-32 of one derived-table column (numbers as bytes, strings length-prefixed)."""
    data = np.asarray(data)
    if data.dtype.kind == "O" or data.dtype.kind in "US":
        c = 0
        for x in data:
            b = _as_bytes(x)
            c = zlib.crc32(len(b).to_bytes(4, "little") + b, c)
        return c
    return zlib.crc32(np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes())


def array_crc(data: np.ndarray) -> int:
    """CRC-32 of a numeric array's little-endian bytes."""
    data = np.asarray(data)
    return zlib.crc32(np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes())


def derived_crc(columns: list, kinds: list, nrows: int, col_crcs: list) -> int:
    """CRC-32 guarding a derived table's description (columns, kinds, rows, column CRCs)."""
    return value_crc(json.dumps([columns, kinds, int(nrows), [int(x) for x in col_crcs]]))
