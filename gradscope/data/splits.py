"""Pure functions on uint8 image tensors: seeded splits, subsets and channel statistics."""
from __future__ import annotations

import numpy as np
import torch

from gradscope import GradscopeError


def split_indices(y: torch.Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(y))`` into sorted (keep, held_out) index arrays, ``fraction`` held out.

    Seeded and stratified: each class gives its share (largest-remainder rounding so the
    total is ``round(n * fraction)``), its members chosen at random. (Own code rather than
    sklearn's ``train_test_split``, whose import alone costs about a second per load.)
    """
    n = len(y)
    if not 0.0 <= fraction < 1.0:
        raise GradscopeError(f"the held-out fraction must be in [0, 1), got {fraction}")
    n_out = int(round(n * fraction))
    if n_out == 0:
        return np.arange(n), np.arange(0)
    labels = np.asarray(y.cpu().numpy() if isinstance(y, torch.Tensor) else y)
    rng = np.random.default_rng([int(seed), 0x5E1])
    perm = rng.permutation(n)
    perm = perm[np.argsort(labels[perm], kind="stable")]  # grouped by class, random within each
    classes, starts, counts = np.unique(labels[perm], return_index=True, return_counts=True)
    share = counts * (n_out / n)
    k = np.floor(share).astype(np.int64)
    extra = n_out - int(k.sum())
    if extra > 0:  # largest remainders first, ties broken at random
        order = np.lexsort((rng.random(len(k)), -(share - k)))
        k[order[:extra]] += 1
    held = np.concatenate([perm[s : s + c] for s, c in zip(starts, k)])
    mask = np.zeros(n, dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def subset_indices(n: int, size: int | None, seed: int, what: str) -> np.ndarray:
    """Seeded random subset of ``size`` indices out of ``n`` (all of them when size is None), sorted."""
    if size is None:
        return np.arange(n)
    if int(size) != size or size <= 0:
        raise GradscopeError(f"{what} must be a positive integer, got {size!r}")
    if size > n:
        raise GradscopeError(f"{what}={size} is larger than the {n} images available; pass at most {n}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n)[: int(size)])


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images ``[N, C, H, W]`` in [0, 1] pixel units.

    Exact and fast: from a 256-bin histogram of each channel (no float copy of the data).
    """
    if x.dim() != 4 or x.shape[0] == 0 or x.dtype != torch.uint8:
        raise GradscopeError(f"need a non-empty uint8 [N, C, H, W] image tensor to compute mean/std, got {x.dtype} {tuple(x.shape)}")
    v = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        h = torch.bincount(x[:, c].reshape(-1).cpu(), minlength=256).to(torch.float64)
        p = h / h.sum()
        m = float((p * v).sum())
        var = float((p * (v - m) ** 2).sum())
        means.append(m)
        stds.append(max(var, 0.0) ** 0.5 or 1e-8)
    return tuple(means), tuple(stds)
