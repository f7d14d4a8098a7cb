"""Fault injection for the crash-resume suite: kill this process right after a named stage
boundary (a checkpoint, a round file, an HDF5 commit, ...), each boundary once.

Inactive unless ``GRADSCOPE_KILL_FILE`` names a file: then ``point(name, *key)`` SIGKILLs the
process the first time the boundary ``name:key`` is reached across all processes that share
the file (the file records the boundaries already killed), so running the same command again
and again until it exits 0 kills it once at every boundary in turn. ``GRADSCOPE_KILL_MATCH``
(a regex) limits the boundaries. Production cost: one module-level check per call.
"""
from __future__ import annotations

import os
import re
import signal

_FILE = os.environ.get("GRADSCOPE_KILL_FILE")
_MATCH = re.compile(os.environ.get("GRADSCOPE_KILL_MATCH", "")) if _FILE else None


def point(name: str, *key) -> None:
    """A stage boundary: what precedes it is on disk. Kills the process here once (see module)."""
    if _FILE is None:
        return
    ident = f"{name}:{':'.join(str(k) for k in key)}"
    if not _MATCH.search(ident):
        return
    try:
        with open(_FILE) as f:
            if ident in f.read().splitlines():
                return
    except FileNotFoundError:
        pass
    with open(_FILE, "a") as f:
        f.write(ident + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
