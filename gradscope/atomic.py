"""The one atomic output writer: every file gradscope writes goes through ``atomic_write``.

A fresh temp file is made with ``mkstemp`` in the target's folder (``O_CREAT|O_EXCL``, so a
planted name or symlink is never opened or followed), written, fsynced and renamed over the
target; the folder is fsynced after. An existing target that is not a regular file (a symlink,
a directory, a device node such as /dev/full, a FIFO, a socket) is refused before anything is
written, so the rename never replaces what is not ours. A failed write leaves the target as it
was, removes the temp file and raises one GradscopeError naming the cause.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from gradscope import GradscopeError

WRITE_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (the process's file-size limit, e.g. `ulimit -f`, or the file system's)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "the folder does not exist",
    errno.ENOTDIR: "a path component is not a folder",
    errno.EISDIR: "the name is taken by a folder",
    errno.EIO: "input/output error (failing disk or network file system)",
    errno.ENAMETOOLONG: "the path or a name in it is too long",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop)",
    errno.EXDEV: "the temp file and the target are on different file systems",
}

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def find_oserror(e: BaseException) -> OSError | None:
    """The OSError behind ``e`` (torch.save wraps a failed write in a RuntimeError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def show(path: os.PathLike | str, limit: int = 160) -> str:
    """A path for a message: a very long one shortened (its length said), so the line stays readable."""
    s = os.fspath(path)
    return s if len(s) <= limit else f"{s[:limit // 2]}...{s[-limit // 4:]} ({len(s)} characters)"


def write_error(e: OSError, path: Path, what: str, existed: bool) -> GradscopeError:
    """One line: what could not be written where, why, and that the previous file is intact."""
    cause = WRITE_CAUSES.get(e.errno) or (e.strerror or str(e) or e.__class__.__name__)
    kept = f"the previous {show(path.name, 60)} is unchanged" if existed else f"no {show(path.name, 60)} was written"
    return GradscopeError(f"cannot write {what} {show(path)}: {cause}; {kept}. Fix that and run the same command "
                          f"again to continue")


def kind_of(mode: int) -> str | None:
    """Words for a non-regular file type (None for a regular file)."""
    return next((w for test, w in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "not a regular file")


def check_target(path: os.PathLike | str, what: str = "file") -> bool:
    """Refuse an existing ``path`` that is not a regular file (not following a symlink); return
    whether a regular file exists there."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise write_error(e, path, what, False) from None
    kind = kind_of(st.st_mode)
    if kind is not None:
        raise GradscopeError(f"refusing to write {what} {path}: it is {kind}, not a regular file; "
                             "give the path of a (new or existing) regular file")
    return True


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (a crash right after it keeps the new file); best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for every thread, for a moment)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would give (mkstemp's files are 0600): the old
    file's mode when replacing one, else 0666 less the umask, so shared run folders stay shared."""
    try:
        return os.lstat(path).st_mode & 0o7777 if os.path.isfile(path) else 0o666 & ~_umask()
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: os.PathLike | str, write: Callable[[BinaryIO], Any], what: str = "file", *,
                 make_parent: bool = False) -> Path:
    """Write via ``write(f)`` (``f`` a binary file) to a fresh temp file beside ``path``, fsync,
    rename over ``path``; return ``path``.

    ``make_parent`` creates a missing folder (run directories); otherwise a missing folder is
    one error. Any OS failure (no space, quota, size limit, permission, read-only file system,
    name too long) leaves ``path`` as it was, removes the temp file and raises one GradscopeError.
    """
    path = Path(path)
    parent = path.parent
    try:
        if make_parent:
            parent.mkdir(parents=True, exist_ok=True)
        elif not parent.is_dir():
            raise GradscopeError(f"cannot write {what} {show(path)}: folder {show(parent)} does not exist"
                                 + (" (it is a file)" if parent.exists() else ""))
    except OSError as e:
        raise write_error(e, path, what, False) from None
    existed = check_target(path, what)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise write_error(e, path, what, existed) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), file_mode(path))
            write(f)
            f.flush()
            os.fsync(f.fileno())
        check_target(path, what)  # replaced by something else while we wrote: still refuse it
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        oe = find_oserror(e)
        if oe is not None and not isinstance(e, (KeyboardInterrupt, SystemExit, GradscopeError)):
            raise write_error(oe, path, what, existed) from None
        raise
    _fsync_dir(parent)
    return path


def atomic_text(path: os.PathLike | str, text: str, what: str = "file") -> Path:
    """``atomic_write`` of UTF-8 text into an existing folder."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data), what)
