"""On-device accumulation of per-layer gradient histograms and exact moments.

One step = one pass of copying plus two row kernels:

1. Each layer's recorded values (the survivors of its mask) are copied into one padded
   float32 buffer of rows of ``B`` values. Every row belongs to one layer; padding is NaN.
2. ``bin_rows`` gives every value its exact ``np.histogram`` bin from the float's top 12-16
   bits (a table lookup) and at most one comparison with an exact float32 threshold.
3. ``moment_rows`` gives every row its five float64 power sums and its float32 min and max,
   in one fused pass when compiled.

Per-layer results are reductions of rows (``bincount`` / ``index_add_``). The kernels are
plain torch ops, run eagerly or through ``torch.compile`` (Inductor: C++/OpenMP on CPU,
Triton on GPU); compiling is tried for buffers of at least ``COMPILE_MIN`` values (the first
step then compiles, ~10-60 s, cached on disk afterwards) and falls back to eager with one
warning; GRADSCOPE_COMPILE=0/1 forces eager/compiled. Nothing synchronises with the host per
step on a GPU.

Exactness (tested in tests/test_accumulate.py):

- counts, under, over, nonfinite, min and max are exact: identical to numpy on the float64
  values of the same float32 gradients, including values on an edge, ±0, denormals, ±inf
  and NaN (NaN/±inf count as nonfinite and enter no other statistic).
- the power sums Σx, Σx², Σ|x|, Σx³, Σx⁴ are float64 sums of float64 powers of the float32
  values (x² is exact, x³ and x⁴ are rounded once), as numpy computes them. Only the order
  of the float64 additions differs, so for a window of ``s`` steps
  ``|sum - numpy| <= (B/8 + rows per layer + s + log2 n) * 2**-53 * Σ|x|**p``; the tests use
  ``RTOL = 1e-12`` times ``Σ|x|**p`` (for Σx² and Σx⁴ that is a relative error of 1e-12).
"""
from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from gradscope import GradscopeError, InternalError
from gradscope.compile_env import prepare_compile

RTOL = 1e-12  # documented bound on |power sum - numpy float64 sum| / Σ|x|**p (see module docstring)
COMPILE_MIN = 1 << 18  # compile the row kernels for buffers of at least this many values (ResNet-20 and up)
_PARALLEL_BINCOUNT = 1 << 20  # count slots in two threads for buffers of at least this many values
_COPIES = 32  # copies of the counts in the scatter (GPU) histogram
_EAGER_BLOCK = 1 << 19  # values per eager block: temporaries stay in cache, few ops per step


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


def bin_tables(edges: np.ndarray, bits: int = 16) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per bucket of float32 bit patterns sharing their top ``bits`` bits: the bin slot of the
    bucket's smallest value and the one threshold that may split the bucket.

    Slot k in 0..nb+2: 0 = below edges[0], k = bin k-1 ([e_{k-1}, e_k)), nb+1 = at/above
    edges[-1], nb+2 = non-finite. For float32 x in bucket q: slot = lut[q] + (x >= thr[q]),
    unless ``multi`` (some bucket holds two thresholds: more bits, or very many narrow bins).
    """
    c32 = f32_thresholds(edges)
    c = c32.astype(np.float64)
    nb = len(c) - 1
    sh = 32 - bits
    q = np.arange(1 << bits, dtype=np.uint32)
    neg = q >= (1 << (bits - 1))
    low, high = q << sh, (q << sh) | np.uint32((1 << sh) - 1)
    smallest = np.where(neg, high, low).astype(np.uint32)
    largest = np.where(neg, low, high).astype(np.uint32)
    nonfinite = ((low >> 23) & 0xFF) == 0xFF  # exponent all ones: inf or nan
    with np.errstate(invalid="ignore"):
        lo = np.where(nonfinite, 0.0, smallest.view(np.float32).astype(np.float64))
        hi = np.where(nonfinite, 0.0, largest.view(np.float32).astype(np.float64))
    k_lo = np.searchsorted(c, lo, side="right")
    k_hi = np.searchsorted(c, hi, side="right")
    multi = bool(np.any(np.where(nonfinite, 0, k_hi - k_lo) > 1))
    nxt = np.concatenate([c32, [np.inf]]).astype(np.float32)[np.minimum(k_lo, nb + 1)]
    lut = np.where(nonfinite, nb + 2, k_lo)
    thr = np.where(nonfinite, np.float32(np.nan), nxt).astype(np.float32)
    return lut, thr, multi


def slot_dtype(nb: int) -> torch.dtype:
    """Smallest integer dtype holding slots 0..nb+2."""
    return torch.uint8 if nb + 2 <= 255 else torch.int16 if nb + 2 <= 32767 else torch.int32


class Binner:
    """Exact ``np.histogram``-style slot of float32 values (see ``bin_tables``), any device.

    Two table lookups and one comparison per value, with the smallest table (12, 14 or 16
    bits: smaller stays in cache) in which no bucket holds two thresholds; failing that
    (hundreds of narrow linear bins) an exact but slower binary search (``torch.bucketize``).
    """

    def __init__(self, edges: np.ndarray, device):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.nb = len(self.edges) - 1
        self.dtype = slot_dtype(self.nb)
        for self.bits in (12, 14, 16):
            lut, thr, self.multi = bin_tables(self.edges, self.bits)
            if not self.multi:
                break
        self.lut = torch.as_tensor(lut, device=device).to(self.dtype)
        self.lut32 = self.lut.to(torch.int32)
        self.thr = torch.as_tensor(thr, device=device)
        self.c = torch.as_tensor(f32_thresholds(self.edges), device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """int64 slots of float32 ``x`` (any shape)."""
        if self.multi:
            k = torch.bucketize(x, self.c, right=True)
            return torch.where(torch.isfinite(x), k, self.nb + 2)
        return bin_rows(x.view(torch.int32), x, self.lut32, self.thr, self.bits, torch.int64)


# ----------------------------------------------------------------------------- row kernels
def bin_rows(xi: torch.Tensor, x: torch.Tensor, lut: torch.Tensor, thr: torch.Tensor, bits: int,
             dtype: torch.dtype = torch.int16) -> torch.Tensor:
    """Slots of float32 ``x`` (``xi`` = ``x.view(torch.int32)``) as ``dtype``; ``lut`` int32
    and ``thr`` tables of ``bin_tables(edges, bits)``."""
    return _bin(xi, x, lut, thr, 32 - bits, (1 << bits) - 1, dtype)


def _bin(xi: torch.Tensor, x: torch.Tensor, lut: torch.Tensor, thr: torch.Tensor, shift: int, m: int,
         dtype: torch.dtype) -> torch.Tensor:
    """``bin_rows`` with the shift and the bucket mask precomputed (no ``<<`` inside a compiled
    graph: torch 2.11 cannot evaluate it on a symbolic int). The clamp is a no-op that tells the
    compiler the index is in range; int32 arithmetic and an int16 result vectorise well under
    Inductor, uint8 does not."""
    q = torch.clamp(torch.bitwise_and(torch.bitwise_right_shift(xi, shift), m), 0, m)
    return (lut[q] + torch.ge(x, thr[q]).to(torch.int32)).to(dtype)


def moment_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of float32 ``x`` [R, B]: float64 [R, 5] sums of x, x², |x|, x³, x⁴ and float32
    min and max, over finite values only (one fused pass when compiled)."""
    fin = torch.isfinite(x)
    xd = torch.where(fin, x, 0.0).to(torch.float64)
    x2 = xd * xd
    s = torch.stack([xd.sum(1), x2.sum(1), xd.abs().sum(1), (x2 * xd).sum(1), (x2 * x2).sum(1)], 1)
    return s, torch.where(fin, x, math.inf).amin(1), torch.where(fin, x, -math.inf).amax(1)


_COMPILED: dict = {}


def compile_cache_dir() -> str:
    """Where the recorder's compiled kernels are cached on disk: ``$TORCHINDUCTOR_CACHE_DIR``
    when set, else ``inductor`` in gradscope's cache folder (``gradscope.data.cache``: one
    per-user place, not torch's /tmp default that a reboot or a tmp cleaner empties, which
    would make the next run pay the 10-60 s compile again). Sets the variable for Inductor."""
    d = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "").strip()
    if not d:
        from gradscope.data.cache import default_cache_dir  # noqa: PLC0415

        d = os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default_cache_dir(), "inductor")
    return d


def _torch_compile(fn):
    compile_cache_dir()
    return torch.compile(fn, dynamic=True, fullgraph=True, options={"assert_indirect_indexing": False})


def _compiled(fn):
    c = _COMPILED.get(fn)
    if c is None:
        c = _COMPILED[fn] = _torch_compile(fn)
    return c


def _compiled_bin(bits: int, dtype: torch.dtype):
    """``bin_rows`` compiled for one ``bits``/``dtype`` (torch 2.11 failed on ``1 << bits`` with
    ``bits`` a symbolic int under ``dynamic=True``; the shift and mask now come in ready-made)."""
    key = ("bin_rows", bits, dtype)
    c = _COMPILED.get(key)
    if c is None:
        shift, m = 32 - bits, (1 << bits) - 1  # computed here, outside the traced code

        def kernel(xi, x, lut, thr):
            return _bin(xi, x, lut, thr, shift, m, dtype)
        c = _COMPILED[key] = _torch_compile(kernel)
    return c


def _compile_wanted(setting: Union[str, bool, None], n: int) -> bool:
    """``setting`` True/False, or "auto"/None: the GRADSCOPE_COMPILE environment variable
    ("0" never, "1" always), else compile for buffers of at least COMPILE_MIN values."""
    if isinstance(setting, bool):
        return setting
    env = os.environ.get("GRADSCOPE_COMPILE", "auto").strip().lower()
    if setting not in (None, "auto"):
        raise GradscopeError(f"compile must be True, False or 'auto', got {setting!r}")
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    return n >= COMPILE_MIN


def _memory_flat(t: torch.Tensor) -> Optional[torch.Tensor]:
    """A 1-D view of ``t`` in memory order if ``t`` is dense (contiguous, channels_last, ...)."""
    if t.is_contiguous():
        return t.view(-1)
    expect = 1
    for st, n in sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1):
        if st != expect:
            return None
        expect *= n
    return t.as_strided((t.numel(),), (1,))


@dataclass
class _Layout:
    """Where each layer's survivors sit in the padded buffer (rebuilt when a mask changes)."""
    kept: list[int]  # survivors per layer
    B: int  # values per row
    rows: list[tuple[int, int]]  # row range of each layer
    row_layer: torch.Tensor  # int64 [R]
    row_table: torch.Tensor  # int64 [L, max rows]: each layer's rows, padded with R (a +-inf row)
    pad: torch.Tensor  # int64 [L]: NaN padding per layer (counted as non-finite, subtracted)
    masks: list  # per layer: flat bool mask in logical order, or None (all kept)
    idx: list  # per layer: {(shape, strides): int64 positions of survivors}

    @property
    def R(self) -> int:
        return self.rows[-1][1] if self.rows else 0


_POOL: Optional[ThreadPoolExecutor] = None


def _bincount_rows(k: torch.Tensor, jobs: list[tuple[int, int, int]], L: int, S: int) -> torch.Tensor:
    """[L, S] counts of the slots in row ranges ``jobs`` = (layer, first row, end row)."""
    out = torch.zeros(L, S, dtype=torch.int64, device=k.device)
    for l, a, b in jobs:
        out[l] += torch.bincount(k[a:b].view(-1), minlength=S)
    return out


def _split_jobs(rows: list[tuple[int, int]], parts: int) -> list[list[tuple[int, int, int]]]:
    """Row ranges of all layers cut into ``parts`` groups of about equal size (bincount runs
    serially, so two threads halve its time; torch releases the GIL inside it)."""
    R = rows[-1][1] if rows else 0
    cuts = [R * (i + 1) // parts for i in range(parts)]
    out: list[list[tuple[int, int, int]]] = [[] for _ in range(parts)]
    p = 0
    for l, (a, b) in enumerate(rows):
        while a < b:
            while cuts[p] <= a:
                p += 1
            e = min(b, cuts[p])
            out[p].append((l, a, e))
            a = e
    return out


def _row_size(kept: Sequence[int]) -> int:
    """Largest power of two <= 8192 whose padding stays within 3% of the values (>= 32)."""
    total = max(1, sum(kept))
    for B in (8192, 4096, 2048, 1024, 512, 256, 128, 64):
        if sum(-(-k // B) * B - k for k in kept) <= 0.03 * total:
            return B
    return 32


# ----------------------------------------------------------------------------- accumulator
class WindowAccumulator:
    """Per-layer histogram counts, moments, min/max and optional reservoir samples of one window.

    ``add`` takes one step's values (a list of per-layer tensors, or one flat tensor with the
    layers concatenated) and an optional mask of the same layout (True = record). ``to_host``
    copies the window once (the only synchronisation).
    """

    def __init__(self, sizes: list[int], edges: np.ndarray, device, sample_k: int = 0, seed: int = 0,
                 compile: Union[str, bool, None] = "auto"):
        self.sizes = [int(s) for s in sizes]
        if not self.sizes or min(self.sizes) < 1:
            raise InternalError(f"WindowAccumulator needs layers of size >= 1, got {self.sizes}")
        self.L = len(self.sizes)
        self.N = sum(self.sizes)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()
        self.device = torch.device(device)
        self.binner = Binner(edges, self.device)
        self.nb = self.binner.nb
        self.S = self.nb + 3  # per layer: under, nb bins, over, nonfinite
        self.compile_setting = compile
        self.sample_k = int(sample_k)
        self.gen = None
        if self.sample_k:
            self.gen = torch.Generator(device=self.device)
            self.gen.manual_seed(int(seed))
        self._lay: Optional[_Layout] = None
        self._scatter_hist = self.device.type != "cpu"  # one index_add_ (no host sync) instead of bincounts
        self._mask_ref = (None, None)  # (objects and versions, copy) of the mask the layout was built from
        self._use_compile = False
        self._compile_failed = False
        self.reset()

    def reseed(self, seed: int) -> None:
        """Restart the sampling generator (the recorder seeds each window from its key)."""
        if self.gen is not None:
            self.gen.manual_seed(int(seed))

    def reset(self) -> None:
        d = self.device
        self.counts = torch.zeros(self.L, self.S, dtype=torch.int64, device=d)
        self.sums = torch.zeros(self.L, 5, dtype=torch.float64, device=d)  # sum, sumsq, sumabs, sum3, sum4
        self.mins = torch.full((self.L,), math.inf, dtype=torch.float32, device=d)
        self.maxs = torch.full((self.L,), -math.inf, dtype=torch.float32, device=d)
        if self.sample_k:
            self.s_keys = torch.full((self.L, self.sample_k), math.inf, device=d)
            self.s_vals = torch.full((self.L, self.sample_k), math.nan, device=d)
        self.steps = 0
        self.layer_steps = np.zeros(self.L, dtype=np.int64)  # steps in which each layer had values

    # ------------------------------------------------------------------ layout
    def _split(self, t: torch.Tensor) -> list[torch.Tensor]:
        if t.numel() != self.N:
            raise GradscopeError(f"expected {self.N} values (the recorded layers), got {t.numel()}")
        t = t.reshape(-1)
        return [t[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def _masks_changed(self, mask) -> bool:
        """Whether ``mask`` differs from the one the layout was built from (same unmodified
        objects: no; new objects: compared by value, one pass)."""
        state, copy = self._mask_ref
        if _same_objects(_mask_state(mask), state):
            return False
        same = _mask_list(mask) is None and copy is None
        if not same and _mask_list(mask) is not None and copy is not None and len(_mask_list(mask)) == len(copy):
            same = all((a is None and b is None) or (a is not None and b is not None and a.shape == b.shape
                                                      and torch.equal(a.to(b.device), b))
                       for a, b in zip(_mask_list(mask), copy))
        if same:
            self._mask_ref = (_mask_state(mask), copy)
        return not same

    def _layout(self, mask) -> _Layout:
        if self._lay is not None and not self._masks_changed(mask):
            return self._lay
        if mask is None:
            masks = [None] * self.L
        elif isinstance(mask, torch.Tensor):
            masks = self._split(mask)
        else:
            if len(mask) != self.L:
                raise GradscopeError(f"expected {self.L} layer masks, got {len(mask)}")
            masks = list(mask)
        flat = []
        for m, n in zip(masks, self.sizes):
            if m is None:
                flat.append(None)
                continue
            if m.numel() != n:
                raise GradscopeError(f"a layer mask has {m.numel()} entries, its layer {n}")
            m = m.to(self.device).reshape(-1)
            m = m if m.dtype == torch.bool else m != 0
            flat.append(None if bool(m.all()) else m)
        kept = [n if m is None else int(m.sum()) for m, n in zip(flat, self.sizes)]
        B = _row_size(kept)
        rows, r = [], 0
        for k in kept:
            rows.append((r, r + -(-k // B)))
            r = rows[-1][1]
        row_layer = torch.tensor([l for l, (a, b) in enumerate(rows) for _ in range(a, b)],
                                 dtype=torch.int64, device=self.device)
        pad = torch.tensor([(b - a) * B - k for (a, b), k in zip(rows, kept)], dtype=torch.int64, device=self.device)
        width = max(1, max(b - a for a, b in rows))
        table = torch.tensor([list(range(a, b)) + [r] * (width - (b - a)) for a, b in rows], dtype=torch.int64)
        self._lay = _Layout(kept, B, rows, row_layer, table.to(self.device), pad, flat, [{} for _ in flat])
        self.x = torch.full((r * B,), math.nan, dtype=torch.float32, device=self.device)
        self._small = r * B < _PARALLEL_BINCOUNT and not self._scatter_hist
        self._row_base = (row_layer * self.S).unsqueeze(1).to(torch.int32 if self._small else torch.int64)
        if self._small:
            self._key32 = torch.empty(r, B, dtype=torch.int32, device=self.device)
        if self._scatter_hist:  # key = slot + S * (layer + L * (column % _COPIES)): neighbouring
            # values add into different copies of the counts (GPU atomics on one address serialise)
            self._col_base = (torch.arange(B, device=self.device) % _COPIES * (self.L * self.S)).unsqueeze(0)
            self._ones = torch.ones(1, dtype=torch.int64, device=self.device).expand(r * B)
        self._eager_bufs = None
        self._k_small = torch.empty(r, B, dtype=self.binner.dtype, device=self.device)
        self._jobs = _split_jobs(rows, 2 if r * B >= _PARALLEL_BINCOUNT and torch.get_num_threads() > 1 else 1)
        ml = _mask_list(mask)
        copy = None if ml is None else [None if m is None else m.detach().clone() for m in ml]
        self._mask_ref = (_mask_state(mask), copy)
        self._use_compile = (not self._compile_failed and not self.binner.multi and r >= 2
                             and _compile_wanted(self.compile_setting, r * B))
        return self._lay

    def _source(self, lay: _Layout, l: int, v: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Layer ``l``'s values as a 1-D tensor (memory order when dense) and its survivors' positions."""
        if v.numel() != self.sizes[l]:
            raise GradscopeError(f"layer {l} has {self.sizes[l]} values, got a tensor of {v.numel()}")
        flat = _memory_flat(v)
        m = lay.masks[l]
        if m is None:
            return (flat if flat is not None else v.reshape(-1)), None
        key = (tuple(v.shape), tuple(v.stride()) if flat is not None else None)
        idx = lay.idx[l].get(key)
        if idx is None:
            mm = m
            if flat is not None and not v.is_contiguous():
                like = torch.empty_like(v, dtype=torch.bool)
                if like.stride() == v.stride():
                    like.copy_(m.view(v.shape))
                    mm = _memory_flat(like)
                else:
                    flat, key = None, (tuple(v.shape), None)
            idx = lay.idx[l][key] = mm.nonzero().squeeze(1)
        return (flat if flat is not None else v.reshape(-1)), idx

    # ------------------------------------------------------------------ per step
    def add(self, values: Union[torch.Tensor, Sequence[Optional[torch.Tensor]]], mask=None,
            scale: Optional[torch.Tensor] = None) -> None:
        """Add one step.

        values: per-layer tensors (any shape; ``None`` = the layer got no value this step and is
            left out of it) or one flat tensor of all layers; any float dtype.
        mask: None (record everything), one flat bool tensor, or per-layer masks (bool or 0/1,
            None = all); True = record. Pass the same tensor while it is unchanged: a new one is
            compared with the last.
        scale: optional multiplier applied first (e.g. 1 / AMP loss scale, a 0-dim tensor).
        """
        with torch.no_grad():
            vals = self._split(values) if isinstance(values, torch.Tensor) else list(values)
            if len(vals) != self.L:
                raise GradscopeError(f"expected values for {self.L} layers, got {len(vals)}")
            lay = self._layout(mask)
            B, x = lay.B, self.x
            skip = []
            for l, v in enumerate(vals):
                a = lay.rows[l][0] * B
                dst = x[a: a + lay.kept[l]]
                if v is None:
                    dst.fill_(math.nan)
                    skip.append(l)
                    continue
                src, idx = self._source(lay, l, v.detach())
                if src.dtype != torch.float32:
                    src = src.float()
                if idx is not None:
                    torch.index_select(src, 0, idx, out=dst)
                    if scale is not None:
                        dst.mul_(scale)
                elif scale is not None:
                    torch.mul(src, scale, out=dst)
                else:
                    dst.copy_(src)
            self._accumulate(lay, skip)
            if self.sample_k:
                self._sample(lay)
            self.steps += 1
            self.layer_steps += 1
            self.layer_steps[skip] -= 1

    def _kernels(self, lay: _Layout) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        x2 = self.x.view(-1, lay.B)
        if self._use_compile:
            try:
                prepare_compile()  # Inductor's cache under gradscope's folder; no "No CUDA runtime" notice on CPU
                k = _compiled_bin(self.binner.bits, torch.int16 if self.nb + 2 <= 32767 else torch.int32)(
                    x2.view(torch.int32), x2, self.binner.lut32, self.binner.thr)
                return k, _compiled(moment_rows)(x2)
            except Exception as e:  # noqa: BLE001 - no compiler, unsupported platform, ...: eager is exact too
                warnings.warn(f"gradscope: torch.compile of the recorder kernels failed, using eager ops "
                              f"(slower, same results): {type(e).__name__}: {str(e)[:200]}", RuntimeWarning)
                self._use_compile, self._compile_failed = False, True
        return self._eager(x2)

    def _eager(self, x2: torch.Tensor):
        """The row kernels in eager ops, a cache-sized block of rows at a time."""
        R, B = x2.shape
        rb = max(1, _EAGER_BLOCK // B) if self.device.type == "cpu" else R  # GPU: few large launches
        d = self.device
        if self._eager_bufs is None:
            n = min(R, rb) * B
            self._eager_bufs = (self._k_small, torch.empty(n, dtype=torch.int32, device=d), torch.empty(n, device=d),
                                torch.empty(n, dtype=torch.bool, device=d),
                                torch.empty(5, n, dtype=torch.float64, device=d))
        k, q, f, b, dd = self._eager_bufs
        s = torch.empty(5, R, dtype=torch.float64, device=d)
        mn = torch.empty(R, device=d)
        mx = torch.empty(R, device=d)
        lut, thr = self.binner.lut, self.binner.thr
        for r0 in range(0, R, rb):
            r1 = min(R, r0 + rb)
            n = (r1 - r0) * B
            xb = x2[r0:r1].reshape(-1)
            kb, qb, fb, bb = k[r0:r1].view(-1), q[:n], f[:n], b[:n]
            if self.binner.multi:
                kb.copy_(self.binner(xb))
            else:
                torch.bitwise_right_shift(xb.view(torch.int32), 32 - self.binner.bits, out=qb)
                qb.bitwise_and_((1 << self.binner.bits) - 1)
                torch.index_select(lut, 0, qb, out=kb)
                torch.index_select(thr, 0, qb, out=fb)
                torch.ge(xb, fb, out=bb)
                kb.add_(bb)
            p = dd[:, :n]  # x, x², |x|, x³, x⁴ of the finite values (others 0), summed per row at once
            p[0].copy_(torch.nan_to_num(xb, 0.0, 0.0, 0.0, out=fb))
            torch.mul(p[0], p[0], out=p[1])
            torch.abs(p[0], out=p[2])
            torch.mul(p[1], p[0], out=p[3])
            torch.mul(p[1], p[1], out=p[4])
            torch.sum(p.view(5, -1, B), 2, out=s[:, r0:r1])
            mn[r0:r1] = torch.nan_to_num(xb, math.inf, math.inf, math.inf, out=fb).view(-1, B).amin(1)
            mx[r0:r1] = torch.nan_to_num(xb, -math.inf, -math.inf, -math.inf, out=fb).view(-1, B).amax(1)
        return k, (s.T, mn, mx)

    def _accumulate(self, lay: _Layout, skip: list[int]) -> None:
        if lay.R == 0:
            return
        k, (s, mn, mx) = self._kernels(lay)
        nf = self.nb + 2
        if not self._scatter_hist:
            if k.dtype != self.binner.dtype:  # bincount is twice as fast on uint8 as on int16
                k = self._k_small.copy_(k)
            if self._small:  # one bincount over slot + S * layer: few ops for small models
                key = torch.add(self._row_base, k, out=self._key32)
                self.counts += torch.bincount(key.view(-1), minlength=self.L * self.S).view(self.L, self.S)
            elif len(self._jobs) > 1:
                global _POOL
                if _POOL is None:
                    _POOL = ThreadPoolExecutor(1, thread_name_prefix="gradscope-bincount")
                fut = _POOL.submit(_bincount_rows, k, self._jobs[1], self.L, self.S)
                self.counts += _bincount_rows(k, self._jobs[0], self.L, self.S)
                self.counts += fut.result()
            else:
                self.counts += _bincount_rows(k, self._jobs[0], self.L, self.S)
        else:  # one scatter, no host sync
            copies = torch.zeros(_COPIES * self.L * self.S, dtype=torch.int64, device=self.device)
            key = k.long().add_(self._row_base).add_(self._col_base)
            copies.index_add_(0, key.view(-1), self._ones)
            self.counts += copies.view(_COPIES, self.L, self.S).sum(0)
        self.counts[:, nf] -= lay.pad
        for l in skip:  # NaN-filled this step: its values are not part of the window
            self.counts[l, nf] -= lay.kept[l]
        self.sums.index_add_(0, lay.row_layer, s)
        inf = torch.full((1,), math.inf, device=self.device)
        torch.minimum(self.mins, torch.cat([mn, inf])[lay.row_table].amin(1), out=self.mins)
        torch.maximum(self.maxs, torch.cat([mx, -inf])[lay.row_table].amax(1), out=self.maxs)

    def _sample(self, lay: _Layout) -> None:
        """Bottom-K of iid uniform keys = a uniform sample without replacement over the window."""
        keys = torch.rand(self.x.numel(), generator=self.gen, device=self.device)
        keys = torch.where(torch.isfinite(self.x), keys, math.inf)
        K = self.sample_k
        for i, (a, b) in enumerate(lay.rows):
            lo, hi = a * lay.B, b * lay.B
            allk = torch.cat([self.s_keys[i], keys[lo:hi]])
            allv = torch.cat([self.s_vals[i], self.x[lo:hi]])
            top, pos = torch.topk(allk, min(K, allk.numel()), largest=False)
            self.s_keys[i, : top.numel()] = top
            self.s_vals[i, : top.numel()] = torch.where(torch.isinf(top), math.nan, allv[pos])

    def to_host(self) -> dict:
        """Copy the window to the host (the one synchronisation per window)."""
        c = self.counts.cpu().numpy()
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
               "min": mins, "max": maxs, "steps": self.steps, "layer_steps": self.layer_steps.copy()}
        if self.sample_k:
            out["samples"] = self.s_vals.cpu().numpy().astype(np.float32)
        return out


def _mask_list(mask) -> Optional[list]:
    return None if mask is None else [mask] if isinstance(mask, torch.Tensor) else list(mask)


def _mask_state(mask) -> Optional[list]:
    ml = _mask_list(mask)
    return None if ml is None else [None if m is None else (m, m._version) for m in ml]


def _same_objects(a: Optional[list], b: Optional[list]) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all((x is None and y is None) or (x is not None and y is not None and x[0] is y[0]
                                                                  and x[1] == y[1]) for x, y in zip(a, b))

