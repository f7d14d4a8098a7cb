"""Checks made before libhdf5 ever sees a file, for damage that would make it hang, not fail.

- A FIFO, device or socket given as a run file blocks (or streams for ever) in ``open()``: only
  regular files are opened.
- A global heap collection (``GCOL``: where HDF5 keeps variable-length strings such as the run
  file's ``config`` attribute) whose object header was zeroed has object index 0 and size 0.
  libhdf5 (1.14, ``H5HG__cache_heap_deserialize``) advances by the object's size to the next
  one, so it never moves and loops for ever in the first attribute read. ``check_global_heaps``
  walks every collection the same way and refuses a file where the walk would not advance.
"""
from __future__ import annotations

import os
import stat
import struct

from gradscope import GradscopeError

_GCOL = b"GCOL"
_MIN_COLLECTION = 4096  # H5HG_MINSIZE: libhdf5 never writes a smaller collection
_HDR = 16  # "GCOL", version, 3 reserved, 8-byte collection size
_OBJ_HDR = 16  # index (2), reference count (2), reserved (4), size (8)
_seen: dict = {}  # (dev, ino, size, mtime_ns) -> None: files already checked in this process


def check_regular(path: str, what: str = "run file") -> None:
    """Refuse a path that is not a regular file (following symlinks) before anything opens it."""
    try:
        st = os.stat(path)
    except OSError:
        return  # missing or unreadable: the caller's own check names it
    if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
        return
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device" if
            stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
            else "not a regular file")
    raise GradscopeError(f"{path} is {kind}, not a {what}; refusing to open it")


def _walk_collection(buf, start: int, end: int) -> str | None:
    """Walk one collection's objects as libhdf5 does; the reason it would loop, or None."""
    p = start + _HDR
    while p < end:
        if p + _OBJ_HDR > end:
            return None  # too small for an object header: free space, as libhdf5 assumes
        idx, _nrefs = struct.unpack_from("<HH", buf, p)
        (size,) = struct.unpack_from("<Q", buf, p + 8)
        need = size if idx == 0 else _OBJ_HDR + ((size + 7) & ~7)
        if need == 0:
            return f"object at byte {p} has index 0 and size 0"
        if need > end - p:
            return None  # runs past the end: libhdf5 stops there (and the read fails cleanly)
        p += need
    return None


def _check_collection(path: str, fd: int, at: int, n: int) -> None:
    head = os.pread(fd, _HDR, at)
    if len(head) < _HDR or head[4] != 1:
        return
    (size,) = struct.unpack_from("<Q", head, 8)
    if not _MIN_COLLECTION <= size <= n - at:
        return  # not a collection libhdf5 would load (it fails cleanly on it)
    buf = os.pread(fd, size, at)
    why = _walk_collection(buf, 0, len(buf))
    if why is not None:
        raise GradscopeError(f"{path} is damaged: its global heap at byte {at} is corrupt ({why.replace('byte ', 'offset ')}), "
                             "which would make HDF5 hang; restore the file from a copy")


def check_global_heaps(path: str) -> None:
    """Refuse a file whose global heap collections would make libhdf5 loop for ever."""
    try:
        st = os.stat(path)
    except OSError:
        return
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _seen or not stat.S_ISREG(st.st_mode) or st.st_size < _HDR:
        return
    try:  # plain reads, not mmap: a mapped hole on a full tmpfs is a SIGBUS, not an error
        with open(path, "rb") as f:
            fd, n = f.fileno(), st.st_size
            pos, tail = 0, b""
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                buf, base = tail + chunk, pos - len(tail)
                i = buf.find(_GCOL)
                while i != -1:
                    _check_collection(path, fd, base + i, n)
                    i = buf.find(_GCOL, i + 1)
                tail, pos = buf[-(len(_GCOL) - 1):], pos + len(chunk)
    except OSError:
        return  # unreadable: opening it reports that
    if len(_seen) > 1024:
        _seen.clear()
    _seen[key] = None


def check_before_open(path: str, what: str = "run file") -> None:
    """Everything to check before h5py opens ``path``: a regular file, no hang-inducing heap."""
    check_regular(path, what)
    check_global_heaps(path)
