"""File-system side of the run store: locks, opening with clear errors, reserving disk space
before a write, naming the cause of a failed write, and the superblock's stored end of file.

Why reserve: HDF5 cannot undo a half-done write. If the disk fills up (or a file-size limit or
quota is hit) in the middle of a commit, HDF5 may already have moved the file's recorded end
past what is on disk ("truncated file: eof < stored_eof"). Reserving the commit's bytes with
``posix_fallocate`` first turns every such failure into a clean error *before* HDF5 writes.
"""
from __future__ import annotations

import errno as _errno
import io
import os
import re
import stat
import struct
import time
from contextlib import contextmanager
from typing import Iterator, Optional

import h5py

from gradscope import GradscopeError
from gradscope.store.preopen import check_before_open

try:  # POSIX advisory locks; absent on Windows (then writers/readers are not serialised)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_TIMEOUT_S = 60.0
RESERVE_SLACK = 64 * 1024  # metadata a commit may add (chunk index nodes, heaps, headers)

_CAUSES = {
    _errno.ENOSPC: "no space left on device",
    _errno.EDQUOT: "disk quota exceeded",
    _errno.EFBIG: "file too large (a file-size limit such as `ulimit -f` was reached)",
    _errno.EACCES: "permission denied",
    _errno.EPERM: "permission denied (operation not permitted)",
    _errno.EROFS: "read-only file system",
    _errno.EIO: "input/output error (failing disk or lost network mount)",
    _errno.EISDIR: "is a directory",
    _errno.ENOENT: "no such file or directory",
    _errno.ENOTDIR: "a parent path is not a directory",
    _errno.ENAMETOOLONG: "file name too long",
    _errno.EMFILE: "too many open files",
}


def error_errno(e: BaseException) -> Optional[int]:
    """The errno of an OSError, or the one HDF5 quotes in its message ("errno = 28")."""
    n = getattr(e, "errno", None)
    if isinstance(n, int) and n in _CAUSES:
        return n
    m = re.search(r"errno = (\d+)", str(e))
    if m:
        return int(m.group(1))
    return n if isinstance(n, int) else None


def error_cause(e: BaseException) -> Optional[str]:
    """Plain words for the cause of a failed file operation, or None if it is not an OS error."""
    n = error_errno(e)
    if n is None:
        return None
    return _CAUSES.get(n, os.strerror(n).lower())


def first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def check_path(path: str) -> None:
    """One clear error for a missing path, a directory, a FIFO/device, or an unreadable file."""
    if os.path.isdir(path):
        raise GradscopeError(f"{path} is a directory, not a run file (give the run.h5 inside a run "
                             "directory, or move the directory away)")
    if not os.path.exists(path):
        raise GradscopeError(f"{path} does not exist")
    check_before_open(path)  # a FIFO, or damage that would make libhdf5 loop for ever
    if not os.access(path, os.R_OK):
        raise GradscopeError(f"cannot read {path}: permission denied")


def check_write_target(path: str) -> None:
    """Refuse to change a run file in place when ``path`` is a symlink to a file outside its own
    folder (a received run directory must not make gradscope write elsewhere)."""
    if not os.path.islink(path):
        return
    home = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    target = os.path.realpath(path)
    if os.path.dirname(target) != home:
        raise GradscopeError(f"{path} is a symbolic link to {target}, outside its run directory; refusing to "
                             "write into it (copy the file into the run directory, or use --no-store to "
                             "only read it)")


@contextmanager
def file_lock(path: str, exclusive: bool, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Advisory flock on ``path`` (shared for readers, exclusive for writers).

    HDF5's own locking is switched off (``locking=False``) so that a reader never blocks the
    recorder for long and a killed process never leaves a stale lock; this lock is released by
    the OS when its holder dies. Where flock is unsupported (some NFS mounts) it is skipped.
    """
    if fcntl is None or not os.path.isfile(path):  # (opening a FIFO to lock it would block)
        yield
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise GradscopeError(f"cannot open {path}: {error_cause(e) or first_line(e)}") from None
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


class PaddedFile(io.RawIOBase):
    """A read-only file that reads as zeros past its real end up to ``size``: lets HDF5 open a
    file whose end was cut off (the cut-off part held only rows past the commit point)."""

    def __init__(self, path: str, size: int):
        super().__init__()
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._real = os.fstat(self._f.fileno()).st_size
        self._size = max(int(size), self._real)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, off: int, whence: int = 0) -> int:
        self._pos = {0: 0, 1: self._pos, 2: self._size}[whence] + int(off)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:
        n = min(len(b), max(self._size - self._pos, 0))
        got = 0
        if self._pos < self._real:
            self._f.seek(self._pos)
            got = self._f.readinto(memoryview(b)[: min(n, self._real - self._pos)]) or 0
        memoryview(b)[got:n] = bytes(n - got)
        self._pos += n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def open_h5(path: str, mode: str) -> h5py.File:
    """h5py.File with HDF5 locking off; any failure becomes one GradscopeError naming the cause.

    A file whose end was cut off by a failed write opens read-only as if zero-padded (every
    committed row lies before the cut); writers restore its length first.
    """
    check_path(path)
    try:
        return h5py.File(path, mode, locking=False)
    except (OSError, ValueError, RuntimeError) as e:
        msg = first_line(e)
        if "truncated file" in msg and mode == "r":
            eof = stored_eof(path)
            if eof is not None and eof - os.path.getsize(path) < (1 << 40):
                try:
                    return h5py.File(PaddedFile(path, eof), "r", locking=False)
                except (OSError, ValueError, RuntimeError):
                    pass
        if "truncated file" in msg:
            raise GradscopeError(f"{path} is truncated (its end is missing, e.g. after a full disk or a "
                                 f"file-size limit); `gradscope repair {path}` recovers the committed "
                                 "data") from None
        cause = error_cause(e)
        if cause and error_errno(e) in (_errno.EACCES, _errno.EPERM, _errno.EROFS, _errno.EISDIR, _errno.ENOENT):
            raise GradscopeError(f"cannot open {path}{' for writing' if mode != 'r' else ''}: {cause}") from None
        if "signature" in msg or "superblock" in msg.lower():
            raise GradscopeError(f"{path} is not an HDF5 file or its header is damaged "
                                 f"(HDF5: {msg})") from None
        raise GradscopeError(f"{path} is not a readable HDF5 file (damaged or not HDF5): {msg}") from None


def write_error(path: str, what: str, e: BaseException) -> GradscopeError:
    """The GradscopeError for a failed write of ``what`` to ``path``: one line with the cause."""
    cause = error_cause(e)
    if cause is None:
        return GradscopeError(f"writing {what} to {path} failed: {first_line(e)}")
    hint = {_errno.ENOSPC: "free some space", _errno.EDQUOT: "free some space or raise the quota",
            _errno.EFBIG: "raise the limit (ulimit -f)", _errno.EACCES: "fix the permissions",
            _errno.EPERM: "fix the permissions", _errno.EROFS: "write somewhere writable"}.get(error_errno(e))
    tail = f"; {hint}, then run the same command again to continue" if hint else \
        "; run the same command again to continue"
    return GradscopeError(f"writing {what} to {path} failed: {cause}{tail} "
                          "(everything committed before is intact)")


@contextmanager
def reserved_space(path: str, nbytes: int) -> Iterator[None]:
    """Reserve ``nbytes`` (+ slack) past the end of ``path`` before HDF5 appends to it.

    Raises OSError (ENOSPC, EDQUOT, EFBIG, EACCES ...) before anything is written when the
    space cannot be had. HDF5 trims the file back to its own end when it closes it. Where the
    file system cannot reserve (EOPNOTSUPP / EINVAL) the write goes ahead unreserved.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        try:
            os.posix_fallocate(fd, size, int(nbytes) + RESERVE_SLACK)
        except OSError as e:
            if e.errno in (_errno.EOPNOTSUPP, _errno.EINVAL, getattr(_errno, "ENOTSUP", -1)):
                pass
            else:
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
                raise
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- superblock
_SIG = b"\x89HDF\r\n\x1a\n"


def stored_eof(path: str) -> Optional[int]:
    """The end-of-file address recorded in the HDF5 superblock (absolute), or None if unreadable."""
    try:
        with open(path, "rb") as fh:
            for base in (0, 512, 1024, 2048, 4096, 8192, 16384):
                fh.seek(base)
                head = fh.read(96)
                if head[:8] != _SIG:
                    continue
                ver = head[8]
                if ver in (0, 1):
                    so = head[13]
                    pos = 24 + (4 if ver == 1 else 0)
                    fmt = {4: "<I", 8: "<Q"}.get(so)
                    if fmt is None:
                        return None
                    base_addr = struct.unpack_from(fmt, head, pos)[0]
                    eof = struct.unpack_from(fmt, head, pos + 2 * so)[0]
                else:
                    so = head[9]
                    fmt = {4: "<I", 8: "<Q"}.get(so)
                    if fmt is None:
                        return None
                    base_addr = struct.unpack_from(fmt, head, 12)[0]
                    eof = struct.unpack_from(fmt, head, 12 + 2 * so)[0]
                return int(base_addr + eof) if base_addr < (1 << 62) and eof < (1 << 50) else None
    except OSError:
        return None
    return None


def extend_to_stored_eof(path: str) -> bool:
    """If ``path`` is shorter than its superblock says, extend it with zeros (a sparse hole).

    The missing tail only ever holds data written after the last commit (a failed append), so
    the committed data is untouched; HDF5 can then open the file again. Returns True if extended.
    """
    eof = stored_eof(path)
    size = os.path.getsize(path)
    if eof is None or eof <= size:
        return False
    if eof - size > (1 << 40):
        return False
    os.truncate(path, eof)
    return True


# ---------------------------------------------------------------------- one writer at a time
_HELD: dict = {}  # lock file -> [WriterLock, holders in this process]


class WriterLock:
    """An advisory ``flock`` on a small lock file holding the writer's PID: one writer per run
    directory (``RUN/.lock``) or per run file (``.NAME.lock`` beside it), for the writer's whole
    life. A second process gets one GradscopeError naming the holder's PID; the OS drops the
    lock when its holder dies, so a stale lock file (dead PID) is simply taken over. Readers
    never take it. Re-entrant within a process (the runner and its recorder share a run).
    """

    def __init__(self, lock_path: str, what: str):
        self.path = os.path.abspath(lock_path)
        self.what = what
        self.fd: Optional[int] = None

    def _open(self) -> Optional[int]:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | \
            getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            if e.errno == _errno.ELOOP:
                raise GradscopeError(f"lock file {self.path} is a symbolic link; remove it (a run's lock file "
                                     "is a plain file)") from None
            if e.errno in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
                return None  # cannot write here at all: the write itself fails with its own message
            raise GradscopeError(f"cannot create lock file {self.path}: {error_cause(e) or first_line(e)}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise GradscopeError(f"lock file {self.path} is not a regular file; remove it")
        return fd

    def _holder(self) -> str:
        try:
            with open(self.path, "rb") as f:
                pid = f.read(32).decode("ascii", "replace").strip()
        except OSError:
            pid = ""
        return f"PID {pid}" if pid.isdigit() else "another process"

    def acquire(self) -> "WriterLock":
        if fcntl is None:  # pragma: no cover - Windows: no advisory locks
            return self
        for _ in range(100):  # retried only when the lock file was replaced under us
            fd = self._open()
            if fd is None:
                return self
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise GradscopeError(f"{self.what} is being written by {self._holder()} (lock {self.path}); "
                                     "wait for it to finish or stop it, then run again") from None
            except OSError:
                pass  # flock unsupported here (some network file systems): go on unlocked
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except OSError:
                same = False
            if not same:  # its holder removed it as we opened it: lock the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self.fd = fd
            return self
        raise GradscopeError(f"cannot take lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        """Remove the lock file (while still holding it) and drop the lock."""
        if self.fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def writer_lock(lock_path: str, what: str):
    """Take (or share, within this process) the writer lock ``lock_path``; returns a release
    callable that is safe to call twice."""
    key = os.path.abspath(lock_path)
    ent = _HELD.get(key)
    if ent is None:
        ent = _HELD[key] = [WriterLock(key, what).acquire(), 0]
    ent[1] += 1
    done = []

    def release() -> None:
        if done:
            return
        done.append(1)
        ent[1] -= 1
        if ent[1] <= 0 and _HELD.get(key) is ent:
            del _HELD[key]
            ent[0].release()

    return release


def run_file_lock_path(path: str) -> str:
    """The lock file of a run file: ``.NAME.lock`` beside it."""
    d, name = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{name}.lock")
