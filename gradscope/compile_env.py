"""Before gradscope's first ``torch.compile``: where Inductor caches, and one notice dropped.

- Inductor writes compiled kernels to ``$TORCHINDUCTOR_CACHE_DIR``, by default a folder in the
  system temp directory; gradscope points it into its own cache folder
  (``gradscope.data.cache.default_cache_dir()/inductor``), where the decoded datasets are,
  unless the variable is already set (then it is left alone).
- Importing ``torch.utils.cpp_extension`` (Inductor does, on CPU too) logs "No CUDA runtime is
  found, using CUDA_HOME=..." when a CUDA toolkit folder exists but no GPU does: nothing a CPU
  run can act on. That one message is filtered out while no CUDA device is available; every
  other warning still shows.
"""
from __future__ import annotations

import logging
import os

INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"
_NOTICE = "No CUDA runtime is found"
_done = False


class _DropNoCudaNotice(logging.Filter):
    """Drops only cpp_extension's "No CUDA runtime is found" record, and only without CUDA."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_NOTICE):
            return True
        import torch  # noqa: PLC0415

        return torch.cuda.is_available()


def inductor_cache_dir() -> str:
    """The folder Inductor caches into under gradscope (``$TORCHINDUCTOR_CACHE_DIR`` when set)."""
    from gradscope.data.cache import default_cache_dir  # noqa: PLC0415

    return os.environ.get(INDUCTOR_ENV) or os.path.join(default_cache_dir(), "inductor")


def prepare_compile() -> None:
    """Set Inductor's cache folder (unless the user set it) and filter the no-CUDA notice; idempotent."""
    global _done
    if _done:
        return
    os.environ.setdefault(INDUCTOR_ENV, inductor_cache_dir())
    logging.getLogger("torch.utils.cpp_extension").addFilter(_DropNoCudaNotice())
    _done = True
