"""Reading image-folder datasets (a folder or a .tar.* archive of JPEGs) into uint8 tensors,
with a decoded-tensor cache keyed by the source's path, size and modification time."""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import os
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from gradscope import GradscopeError
from gradscope.data.cache import load_cache, resolve_cache_dir, save_cache

CACHE_VERSION = 1
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2")
WANTED_SUFFIXES = (".jpg", ".jpeg", ".png", ".txt")


def is_archive(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(ARCHIVE_SUFFIXES)


def source_key(path: str) -> str:
    """A short hash that changes when the source changes.

    Archive: absolute path, size and mtime. Folder: absolute path, plus the mtime of every
    sub-folder and the number of files (adding, removing or renaming files changes it).
    """
    path = os.path.abspath(path)
    parts = [f"v{CACHE_VERSION}", path]
    if os.path.isfile(path):
        st = os.stat(path)
        parts += [str(st.st_size), str(st.st_mtime_ns)]
    else:
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            parts.append(f"{os.path.relpath(dirpath, path)}:{os.stat(dirpath).st_mtime_ns}:{len(filenames)}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def iter_files(path: str) -> Iterator[tuple[str, bytes]]:
    """Yield ``(relative/posix/path, bytes)`` of the image and text files of a folder or archive.

    Archives are read member by member and never unpacked, so nothing is written next to
    (or inside) the read-only source.
    """
    if is_archive(path):
        try:
            with tarfile.open(path, mode="r:*") as tar:
                for m in tar:
                    if m.isfile() and m.name.lower().endswith(WANTED_SUFFIXES):
                        f = tar.extractfile(m)
                        if f is not None:
                            yield m.name.removeprefix("./"), f.read()
        except (tarfile.TarError, EOFError, OSError) as e:
            raise GradscopeError(f"cannot read archive {path}: {e}; check the file or pass another --data-root") from None
    else:
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.lower().endswith(WANTED_SUFFIXES):
                    full = os.path.join(dirpath, fn)
                    with open(full, "rb") as f:
                        yield os.path.relpath(full, path).replace(os.sep, "/"), f.read()


def _decode_one(b: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(b)) as im:
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


_PROGRESS: contextvars.ContextVar = contextvars.ContextVar("gradscope_decode_progress", default=None)


@contextlib.contextmanager
def progress(enabled: Optional[bool]):
    """Within the block, decoding shows a progress bar if ``enabled`` (None: only on a terminal)."""
    token = _PROGRESS.set(enabled)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _show_progress(progress: Optional[bool]) -> bool:
    setting = progress if progress is not None else _PROGRESS.get()
    return bool(setting) if setting is not None else bool(getattr(sys.stderr, "isatty", lambda: False)())


def decode_images(blobs: list[bytes], size: tuple[int, int], desc: str = "decoding",
                  workers: int = 1, progress: Optional[bool] = None) -> torch.Tensor:
    """Decode encoded images to a uint8 tensor ``[N, 3, H, W]`` (greyscale becomes RGB).

    One thread by default: for 32x32 JPEGs a 2-thread pool measured 2x slower (GIL-bound
    Python overhead dominates), and ~8k img/s makes CIFAR-10 a one-off ~8 s.
    """
    from tqdm.auto import tqdm

    from gradscope.progress import bar_size  # noqa: PLC0415

    h, w = size
    out = np.empty((len(blobs), h, w, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        it = pool.map(_decode_one, blobs, chunksize=256) if workers > 1 else map(_decode_one, blobs)
        for i, a in enumerate(tqdm(it, total=len(blobs), desc=desc, unit="img", disable=not _show_progress(progress),
                                   leave=False, **bar_size())):
            if a.shape != (h, w, 3):
                raise GradscopeError(f"image {i} of {desc} has shape {a.shape[:2]}, expected {h}x{w}; the dataset files look wrong")
            out[i] = a
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def cached(cache_dir: Optional[str], name: str, source: str, build: Callable[[], dict]) -> dict:
    """Load ``build()``'s dict of tensors from ``cache_dir`` (None: ``default_cache_dir()``) if a
    cache for this source exists and is sound, else build it and save it atomically.

    The cache is read with ``torch.load(weights_only=True)``: a crafted, damaged or foreign
    file is refused without running anything in it, with a one-line warning, and rebuilt.
    """
    path = os.path.join(resolve_cache_dir(cache_dir), f"{name}-{source_key(source)}.pt")
    data = load_cache(path)
    if data is None:
        # one line each way (stderr, even off a terminal): decoding a large archive takes minutes
        print(f"gradscope: decoding {name} from {source} into the dataset cache {path} (once; later runs "
              f"read the cache)", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        data = build()
        save_cache(data, path)
        print(f"gradscope: decoded {name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return data
