"""On-device accumulation of per-layer gradient histograms and exact moments.

Pure helpers (edges, bin indices, per-step statistics) plus ``WindowAccumulator``, which keeps
fixed-size device tensors and is copied to the host once per window. No step synchronises
with the host: no ``.item()``, no boolean indexing, no ``torch.histc``.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from gradscope import GradscopeError


# ----------------------------------------------------------------------------- edges
def log_edges(bins: int = 201, lo: float = 1e-10, hi: float = 10.0) -> np.ndarray:
    """Symmetric edges ``-hi..-lo, lo..hi`` log-spaced in magnitude, plus a central bin [-lo, lo).

    Data-independent, so histograms of every step, round and run share them, and a narrowing
    distribution stays resolved over many decades. ``bins`` must be odd (m per side + 1).
    """
    if bins < 3 or bins % 2 == 0:
        raise GradscopeError(f"bins must be an odd number >= 3 for log-spaced edges, got {bins}")
    if not (0 < lo < hi and math.isfinite(hi)):
        raise GradscopeError(f"log edges need 0 < hist_min < hist_max, got {lo}, {hi}")
    p = np.logspace(math.log10(lo), math.log10(hi), bins // 2 + 1)
    return np.concatenate([-p[::-1], p])


def linear_edges(bins: int, hist_range: float) -> np.ndarray:
    """``bins`` equal-width bins over [-hist_range, hist_range]."""
    if bins < 1:
        raise GradscopeError(f"bins must be >= 1, got {bins}")
    if not (hist_range > 0 and math.isfinite(hist_range)):
        raise GradscopeError(f"hist_range must be a positive number, got {hist_range}")
    return np.linspace(-hist_range, hist_range, bins + 1)


def f32_thresholds(edges: np.ndarray) -> np.ndarray:
    """For each edge e the smallest float32 c >= e, so for float32 x: x >= e  <=>  x >= c."""
    e = np.asarray(edges, dtype=np.float64)
    c = e.astype(np.float32)
    low = c.astype(np.float64) < e
    c[low] = np.nextafter(c[low], np.float32(np.inf))
    return c


LUT_BITS = 14  # a 16384-entry table (128 KiB) stays in cache


def bin_lut(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Lookup table from the top LUT_BITS bits of a float32 to the bin index of its bucket's smallest
    value, the thresholds to correct it with, and how many corrections can be needed.

    Index k in 0..nb+2: 0 = below edges[0], k = bin k-1 ([e_{k-1}, e_k)), nb+1 = at/above
    edges[-1], nb+2 = non-finite. Pure numpy, built once.
    """
    thr = f32_thresholds(edges).astype(np.float64)
    nb = len(thr) - 1
    sh = 32 - LUT_BITS
    q = np.arange(1 << LUT_BITS, dtype=np.uint32)
    neg = q >= (1 << (LUT_BITS - 1))
    low, high = q << sh, (q << sh) | ((1 << sh) - 1)
    lo_bits = np.where(neg, high, low).astype(np.uint32)
    hi_bits = np.where(neg, low, high).astype(np.uint32)
    with np.errstate(invalid="ignore"):
        lo = lo_bits.view(np.float32).astype(np.float64)
        hi = hi_bits.view(np.float32).astype(np.float64)
    finite = np.isfinite(lo) & np.isfinite(hi)
    k_lo = np.searchsorted(thr, np.where(finite, lo, 0), side="right")
    k_hi = np.searchsorted(thr, np.where(finite, hi, 0), side="right")
    expo = (low >> 23) & 0xFF
    nonfinite = expo == 0xFF  # exponent all ones: inf or nan
    lut = np.where(nonfinite, nb + 2, k_lo).astype(np.int64)
    n_corr = int(np.max(np.where(nonfinite | ~finite, 0, k_hi - k_lo)))
    C = np.concatenate([thr, [np.inf, np.nan]]).astype(np.float32)
    return lut, C, n_corr


class Binner:
    """Exact ``np.histogram``-style bin index of float32 values on the device, in a few passes.

    A table indexed by the top LUT_BITS bits of each float gives the bin of its bucket's
    smallest value; ``n_corr`` comparisons against the exact float32 thresholds finish the job
    (usually one). Cheaper than a binary search (torch.bucketize) and data-independent.
    """

    def __init__(self, edges: np.ndarray, kind: str, device):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.kind = kind
        self.nb = len(self.edges) - 1
        lut, C, self.n_corr = bin_lut(self.edges)
        self.lut = torch.as_tensor(lut, device=device)
        self.C = torch.as_tensor(C, device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.bitwise_right_shift(x.view(torch.int32), 32 - LUT_BITS).to(torch.int64)
        q.bitwise_and_((1 << LUT_BITS) - 1)
        k = torch.take(self.lut, q)
        for _ in range(self.n_corr):
            k += torch.ge(x, torch.take(self.C, k))
        return k


# ----------------------------------------------------------------------------- accumulator
class WindowAccumulator:
    """Per-layer histogram counts, moments, min/max and optional reservoir samples of one window.

    Layers are concatenated into one flat vector (``sizes``) so that binning and counting are
    one fused pass; per-layer sums are reductions over contiguous slices of it.
    """

    def __init__(self, sizes: list[int], edges: np.ndarray, kind: str, device, sample_k: int = 0,
                 seed: int = 0):
        self.sizes = [int(s) for s in sizes]
        self.L = len(self.sizes)
        self.N = sum(self.sizes)
        self.device = torch.device(device)
        self.binner = Binner(edges, kind, self.device)
        self.nb = self.binner.nb
        self.stride = self.nb + 3  # per layer: under, nb bins, over, nonfinite
        seg = torch.repeat_interleave(torch.arange(self.L, device=self.device),
                                      torch.tensor(self.sizes, device=self.device))
        self.segoff = seg * self.stride
        self.sample_k = int(sample_k)
        self.gen = None
        if self.sample_k:
            self.gen = torch.Generator(device=self.device)
            self.gen.manual_seed(int(seed))
        self.reset()

    def reset(self) -> None:
        d = self.device
        self.counts = torch.zeros(self.L * self.stride, dtype=torch.int64, device=d)
        self.sums = torch.zeros(self.L, 5, dtype=torch.float64, device=d)  # sum, sumsq, sumabs, sum3, sum4
        self.mins = torch.full((self.L,), math.inf, dtype=torch.float32, device=d)
        self.maxs = torch.full((self.L,), -math.inf, dtype=torch.float32, device=d)
        if self.sample_k:
            self.s_keys = torch.full((self.L, self.sample_k), math.inf, device=d)
            self.s_vals = torch.full((self.L, self.sample_k), math.nan, device=d)
        self.steps = 0

    def _buffers(self) -> None:
        d, N = self.device, self.N
        self.buf = torch.empty(5, N, dtype=torch.float64, device=d)  # x, x^2, |x|, x^3, x^4
        self.xf = torch.empty(N, dtype=torch.float32, device=d)
        self.mm = torch.empty(2, N, dtype=torch.float32, device=d)
        self.pinf = torch.tensor(math.inf, device=d)
        self.zero = torch.tensor(0.0, device=d)
        self.ninf = torch.tensor(-math.inf, device=d)

    def add(self, g: torch.Tensor, mask: torch.Tensor, mask_i64: torch.Tensor) -> None:
        """Add one step: ``g`` float32 [N] flat gradients, ``mask`` bool [N] (True = unpruned)."""
        if not hasattr(self, "buf"):
            self._buffers()
        k = self.binner(g)  # non-finite values get their own slot, nb + 2
        valid = torch.ne(k, self.nb + 2).logical_and_(mask)
        self.counts.scatter_add_(0, k.add_(self.segoff), mask_i64)  # pruned positions add 0
        buf, xf, mm = self.buf, self.xf, self.mm
        torch.where(valid, g, self.zero, out=xf)  # (g * valid would keep NaN)
        x = buf[0]
        x.copy_(xf)
        torch.mul(x, x, out=buf[1])
        torch.abs(x, out=buf[2])
        torch.mul(buf[1], x, out=buf[3])
        torch.mul(buf[1], buf[1], out=buf[4])
        torch.where(valid, g, self.pinf, out=mm[0])
        torch.where(valid, g, self.ninf, out=mm[1])
        if self.L == 1:
            s = buf.sum(1, keepdim=True).T
            lo, hi = mm[0].amin().reshape(1), mm[1].amax().reshape(1)
        else:
            s = torch.stack([v.sum(1) for v in buf.split(self.sizes, 1)])
            lo = torch.stack([v.amin() for v in mm[0].split(self.sizes)])
            hi = torch.stack([v.amax() for v in mm[1].split(self.sizes)])
        self.sums += s
        torch.minimum(self.mins, lo, out=self.mins)
        torch.maximum(self.maxs, hi, out=self.maxs)
        if self.sample_k:
            self._sample(g, valid)
        self.steps += 1

    def _sample(self, g: torch.Tensor, valid: torch.Tensor) -> None:
        """Bottom-K of iid uniform keys = a uniform sample without replacement over the window."""
        keys = torch.rand(self.N, generator=self.gen, device=self.device)
        keys = torch.where(valid, keys, math.inf)
        K = self.sample_k
        for i, (kk, vv) in enumerate(zip(keys.split(self.sizes), g.split(self.sizes))):
            allk = torch.cat([self.s_keys[i], kk])
            allv = torch.cat([self.s_vals[i], vv])
            top, pos = torch.topk(allk, min(K, allk.numel()), largest=False)
            self.s_keys[i, : top.numel()] = top
            self.s_vals[i, : top.numel()] = torch.where(torch.isinf(top), math.nan, allv[pos])

    def to_host(self) -> dict:
        """Copy the window to the host (the one synchronisation per window)."""
        c = self.counts.view(self.L, self.stride).cpu().numpy()
        sums = self.sums.cpu().numpy()
        mins = self.mins.double().cpu().numpy()
        maxs = self.maxs.double().cpu().numpy()
        hist = c[:, 1: self.nb + 1].copy()
        count = c[:, : self.nb + 2].sum(1)
        empty = count == 0
        mins[empty] = np.nan
        maxs[empty] = np.nan
        out = {"hist": hist, "under": c[:, 0].copy(), "over": c[:, self.nb + 1].copy(),
               "nonfinite": c[:, self.nb + 2].copy(), "count": count, "sum": sums[:, 0],
               "sumsq": sums[:, 1], "sumabs": sums[:, 2], "sum3": sums[:, 3], "sum4": sums[:, 4],
               "min": mins, "max": maxs, "steps": self.steps}
        if self.sample_k:
            out["samples"] = self.s_vals.cpu().numpy().astype(np.float32)
        return out


def flat_grads(params: list, masks: list) -> tuple[torch.Tensor, Optional[list[int]]]:
    """Concatenate ``.grad`` of ``params`` as float32; return also the indices with no grad."""
    parts, missing = [], []
    for i, p in enumerate(params):
        g = p.grad
        if g is None:
            missing.append(i)
            g = torch.zeros_like(p)
        parts.append(g.reshape(-1) if g.dtype == torch.float32 else g.reshape(-1).float())
    return torch.cat(parts), (missing or None)
