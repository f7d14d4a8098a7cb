"""The decoded-dataset cache: where it lives, and reading/writing it without running code.

A cache file holds only uint8 image tensors, int64 label tensors and a list of class names,
and is read with ``torch.load(weights_only=True)``: a crafted or damaged file is refused
before anything in it runs, reported in one line, and decoded again (the new file replaces
it atomically).
"""
from __future__ import annotations

import errno
import os
import tempfile
import time
import warnings
from typing import Optional

import torch

ENV_VAR = "GRADSCOPE_CACHE"
SPLITS = ("train", "test")
_STALE_TMP_S = 3600.0  # a temp file this old is a killed write, not one in progress


def default_cache_dir() -> str:
    """Where decoded datasets are cached unless ``--cache-dir`` says otherwise.

    ``$GRADSCOPE_CACHE`` if set, else ``$XDG_CACHE_HOME/gradscope`` (when that is an absolute
    path, as the XDG spec requires), else ``~/.cache/gradscope``: one per-user place, so a
    dataset is decoded once whatever the current directory.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return os.path.abspath(os.path.expanduser(env))
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gradscope")


def resolve_cache_dir(cache_dir: Optional[str]) -> str:
    """``cache_dir`` as given (``~`` expanded), or ``default_cache_dir()`` when it is None or empty."""
    return os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()


def _problem(d: object) -> Optional[str]:
    """Why ``d`` is not a decoded-dataset cache, or None when it is one."""
    if not isinstance(d, dict):
        return f"it holds a {type(d).__name__}, not a dict"
    missing = [k for k in ("classes", *(f"{s}_{t}" for s in SPLITS for t in "xy")) if k not in d]
    if missing:
        return f"it lacks {', '.join(missing)}"
    if not isinstance(d["classes"], list) or not all(isinstance(c, str) for c in d["classes"]):
        return "its classes are not a list of names"
    for s in SPLITS:
        x, y = d[f"{s}_x"], d[f"{s}_y"]
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            return f"its {s}_x is not a uint8 [N, 3, H, W] tensor"
        if not (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.dim() == 1 and len(y) == len(x)):
            return f"its {s}_y is not an int64 label per image"
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(d["classes"])):
            return f"its {s}_y holds labels outside 0..{len(d['classes']) - 1}"
    return None


def load_cache(path: str) -> Optional[dict]:
    """The cached dict at ``path``, or None (with a one-line warning) when it cannot be used.

    Missing: None, silently. Refused by the safe loader, truncated, corrupt or the wrong
    structure: None and a warning naming the file; the caller decodes again and overwrites it.
    """
    if not os.path.isfile(path):
        return None
    import pickle

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = ("not a gradscope dataset cache or written by an unsafe tool; refused it"
               if "weights only" in str(e).lower() else "truncated or corrupt")
        warnings.warn(f"ignoring dataset cache {path}: {why}; decoding the dataset again", stacklevel=3)
        return None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/EOFError/OSError/... on bad bytes
        real_os_error = isinstance(e, OSError) and e.errno not in (None, errno.EINVAL)  # EINVAL: a cut-off zip
        reason = e.strerror if real_os_error and e.strerror else "truncated or corrupt"
        warnings.warn(f"ignoring dataset cache {path}: {reason}; decoding the dataset again", stacklevel=3)
        return None
    bad = _problem(d)
    if bad:
        warnings.warn(f"ignoring dataset cache {path}: {bad}; decoding the dataset again", stacklevel=3)
        return None
    return d


def save_cache(data: dict, path: str) -> None:
    """Write ``data`` to ``path`` atomically (temp file beside it, then rename); a failure to
    write is a one-line warning (the next load decodes again), never an error."""
    folder = os.path.dirname(path) or "."
    prefix = "." + os.path.basename(path).rsplit("-", 1)[0] + "-"  # ".cifar10-": any source key
    try:
        os.makedirs(folder, exist_ok=True)
        _clean_stale(folder, prefix)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(data, f)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except (OSError, RuntimeError) as e:  # torch.save wraps a failed write in a RuntimeError
        while not isinstance(e, OSError) and (e.__cause__ or e.__context__) is not None:
            e = e.__cause__ or e.__context__
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        warnings.warn(f"could not write the dataset cache {path} ({reason}); the next load will decode again",
                      stacklevel=3)


def _clean_stale(folder: str, prefix: str) -> None:
    """Remove this dataset's temp files that a killed write left (older than an hour)."""
    now = time.time()
    for ent in os.scandir(folder):
        if ent.name.startswith(prefix) and ent.name.endswith(".tmp"):
            try:
                if ent.is_file(follow_symlinks=False) and now - ent.stat().st_mtime > _STALE_TMP_S:
                    os.unlink(ent.path)
            except OSError:
                pass
