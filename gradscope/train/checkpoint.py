"""Run-directory files: written atomically, read back without ever running code from them.

Writes go to a temp file beside the target (``.NAME.XXXXXXXX.tmp``), are fsynced and renamed
over it, so a file is either the old one or the complete new one; a failed write (disk full,
quota, file-size limit, permission) is one ``GradscopeError`` naming the cause and the file.
Reads use ``torch.load(weights_only=True)``: torch's restricted unpickler, which only rebuilds
tensors and plain containers and refuses any other global, so a crafted file is refused before
anything in it runs. Nothing extra is allow-listed: gradscope stores only dicts, lists, tuples,
str, int, float, bool, None and tensors, and ``save_torch`` checks that before writing.
docs/run-directory.md lists the files and what survives what.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import pickle
import re
import stat
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from gradscope import GradscopeError, InternalError
from gradscope.atomic import atomic_write, kind_of

# What torch's weights_only unpickler rebuilds without any allow-listing (torch >= 2.6).
_SCALARS = (str, int, float, bool, type(None), bytes, complex, torch.dtype, torch.device, torch.Size)

# Temp files of our atomic writes: ".<target>.<mkstemp's 8 random chars>.tmp".
_TMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
_RUN_TARGETS = re.compile(r"^(checkpoint\.pt|round_\d+\.pt|rounds\.json|config\.json|versions\.json|probes\.json)$")
_ORACLE_TARGETS = re.compile(r"^(start\.pt|lr_[^/]+\.pt|candidates\.json)$")


# ----------------------------------------------------------------------------- writing
def _atomic(path: Path, write: Callable[[Any], None], what: str) -> None:
    """Write via ``write(f)`` through the one atomic writer (``gradscope.atomic``), creating the
    run directory if needed: temp file beside ``path``, fsync, rename; a symlink or other
    non-regular file at ``path`` is refused, a failed write is one GradscopeError."""
    atomic_write(path, write, what, make_parent=True)


def _plain(obj: Any, where: str) -> Any:
    """``obj`` with numpy scalars made Python numbers; InternalError for anything that
    ``torch.load(weights_only=True)`` would refuse (so every file we write can be read back)."""
    if isinstance(obj, torch.Tensor):
        if type(obj) not in (torch.Tensor, torch.nn.Parameter):
            raise InternalError(f"save_torch: {where} is a {type(obj).__name__} (a tensor subclass); save a plain tensor")
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if type(obj) in _SCALARS:
        return obj
    if type(obj) in (dict, OrderedDict):
        for k in obj:
            if type(k) not in _SCALARS:
                raise InternalError(f"save_torch: {where} has a key of type {type(k).__name__}; use str or int keys")
        vals = {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        if all(vals[k] is v for k, v in obj.items()):
            return obj  # unchanged: keep it as is (a state_dict's _metadata included)
        out = type(obj)(vals)
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if type(obj) in (list, tuple, set):
        if type(obj) is set:
            return {_plain(v, f"{where}{{...}}") for v in obj}
        vals = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return obj if all(a is b for a, b in zip(vals, obj)) else type(obj)(vals)
    hint = " (use dataclasses.asdict)" if dataclasses.is_dataclass(obj) else ""
    raise InternalError(f"save_torch: {where} is a {type(obj).__module__}.{type(obj).__qualname__}, which "
                        f"torch.load(weights_only=True) refuses; save plain types{hint}")


def save_torch(obj: Any, path: Path, *, what: str = "file") -> None:
    """Save ``obj`` (plain containers, numbers, str, None, tensors) atomically to ``path``.

    Numpy scalars become Python numbers; any other type is an InternalError before anything
    is written, because ``load_torch`` would refuse it.
    """
    obj = _plain(obj, "obj")
    _atomic(path, lambda f: torch.save(obj, f), what)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    return str(o)


def save_json(obj: Any, path: Path, *, what: str = "file") -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically to ``path``."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
    _atomic(path, lambda f: f.write(text.encode()), what)


# ----------------------------------------------------------------------------- reading
def _first_sentence(s: str, limit: int = 90) -> str:
    s = (s.strip().splitlines() or [""])[0]
    s = s.split(". ")[0].rstrip(".")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _corrupt_reason(e: BaseException) -> str:
    if isinstance(e, EOFError):
        return "it ends early"
    msg = str(e)
    if "central directory" in msg or "zip archive" in msg or getattr(e, "errno", None) == errno.EINVAL:
        return "its zip archive is incomplete"
    return f"{e.__class__.__name__}: {_first_sentence(msg)}" if msg else e.__class__.__name__


def load_torch(path: Path, *, what: str, required: Sequence[str] = (), hint: str = "") -> Any:
    """Load a file written by ``save_torch`` without running anything stored in it.

    ``what`` names the file in messages ("checkpoint", "round file", "Oracle candidate
    result"); ``required`` are top-level keys the loaded dict must have; ``hint`` (a sentence)
    is appended to error messages. Every failure is one GradscopeError naming the file:
    missing, unreadable, truncated or corrupt, refused by the safe loader (a global that is
    not a plain type: nothing of it runs), or the wrong structure.
    """
    path = Path(path)
    tail = f". {hint}" if hint else ""
    try:  # a FIFO or device would block or stream forever inside torch.load: refuse it unopened
        kind = kind_of(os.stat(path).st_mode)
    except OSError:
        kind = None  # missing or unreadable: torch.load below names it
    if kind is not None and kind != "a directory":
        raise GradscopeError(f"{path} is {kind}, not a gradscope {what}; refusing to open it{tail}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": we refuse or load, nothing else
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GradscopeError(f"{path} does not exist (expected a gradscope {what}){tail}") from None
    except IsADirectoryError:
        raise GradscopeError(f"{path} is a folder, not a gradscope {what}{tail}") from None
    except PermissionError:
        raise GradscopeError(f"cannot read {what} {path}: permission denied{tail}") from None
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():  # the restricted unpickler refused it: nothing ran
            m = re.search(r"GLOBAL ([\w.]+)", str(e))
            asks = f" (it asks for {m.group(1)}, which is not a plain type)" if m else ""
            raise GradscopeError(f"{path} is not a gradscope {what} or was written by an unsafe tool; "
                                 f"refusing to load it{asks}{tail}") from None
        raise GradscopeError(f"{path} is not a readable gradscope {what}: it is truncated or corrupt "
                             f"({_corrupt_reason(e)}){tail}") from None
    except OSError as e:
        if e.errno not in (None, errno.EINVAL):  # EINVAL: torch's zip reader on a cut-off file
            raise GradscopeError(f"cannot read {what} {path}: {e.strerror or e}{tail}") from None
        raise GradscopeError(f"{path} is not a readable gradscope {what}: it is truncated or corrupt "
                             f"({_corrupt_reason(e)}){tail}") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/EOFError/KeyError/UnicodeError on bad bytes
        raise GradscopeError(f"{path} is not a readable gradscope {what}: it is truncated or corrupt "
                             f"({_corrupt_reason(e)}){tail}") from None
    if required:
        if not isinstance(obj, dict):
            raise GradscopeError(f"{path} is not a gradscope {what}: it holds a {type(obj).__name__}, not a dict "
                                 f"with {', '.join(map(repr, required))}{tail}")
        missing = [k for k in required if k not in obj]
        if missing:
            raise GradscopeError(f"{path} is not a complete gradscope {what}: it lacks "
                                 f"{', '.join(map(repr, missing))}{tail}")
    return obj


# ----------------------------------------------------------------------------- temp files
def clean_stale_temps(run_dir: Path, *, oracle_min_age_s: float = 3600.0) -> list[Path]:
    """Remove temp files that killed writes left in ``run_dir``; return what was removed.

    Call it when a run directory is opened for writing (its only writer is starting). Only
    names of our own pattern are touched: ``.checkpoint.pt.XXXXXXXX.tmp``,
    ``.round_K.pt.XXXXXXXX.tmp``, ``.rounds.json...``, ``.config.json...``,
    ``.versions.json...`` at the top level, and under ``oracle/round_K/`` the temps of
    ``start.pt``, ``lr_*.pt`` and ``candidates.json`` older than ``oracle_min_age_s`` (Oracle
    candidates may be running as separate jobs and writing there right now). A symlinked
    ``oracle`` or ``round_K`` folder is not entered: nothing outside the run is removed.
    """
    run_dir = Path(run_dir)
    removed: list[Path] = []

    def sweep(folder: Path, targets: re.Pattern, min_age: float) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        now = time.time()
        for ent in entries:
            m = _TMP_RE.match(ent.name)
            if not m or not targets.match(m.group("target")):
                continue
            try:
                if not ent.is_file(follow_symlinks=False) or now - ent.stat(follow_symlinks=False).st_mtime < min_age:
                    continue
                os.unlink(ent.path)
                removed.append(Path(ent.path))
            except OSError:
                pass  # gone meanwhile, or not ours to remove: leave it

    def real_dir(p: Path) -> bool:  # a folder of the run itself, not a symlink to one elsewhere
        try:
            return stat.S_ISDIR(os.lstat(p).st_mode)
        except OSError:
            return False

    sweep(run_dir, _RUN_TARGETS, 0.0)
    oracle = run_dir / "oracle"
    if real_dir(oracle):  # cleaning never follows a symlink out of the run
        for rd in sorted(oracle.glob("round_*")):
            if real_dir(rd):
                sweep(rd, _ORACLE_TARGETS, oracle_min_age_s)
    return removed
