"""Views derived at read time: "all" (whole layer, pruned positions as exact zeros) from the
survivors rows, and the fixed-population RMS from the per-weight sums of squares.

"all" needs no stored zeros: a window of ``steps`` steps over a layer of ``numel`` weights
holds ``numel * steps`` values; those not among the survivors' finite (``count``) and
non-finite values are pruned zeros. Zeros change no power sum, so only the count, the bin
holding 0.0 (or under/over when 0 is outside the edges) and min/max change. Exact.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd


def zero_slot(edges: np.ndarray) -> tuple[str, int]:
    """Where a value of exactly 0.0 is counted: ("bin", i), ("under", -1) or ("over", -1)."""
    if 0.0 < edges[0]:
        return "under", -1
    if 0.0 >= edges[-1]:
        return "over", -1
    return "bin", int(np.searchsorted(edges, 0.0, side="right") - 1)


def pruned_zeros(m: np.ndarray, numel: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Per survivors row: how many pruned (exactly zero) gradient values the window adds."""
    return numel.astype(np.int64) * steps.astype(np.int64) - m["count"] - m["nonfinite"]


def derive_all(m: np.ndarray, zeros: np.ndarray, edges: np.ndarray,
               hist: Optional[np.ndarray] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The "all" view of survivors rows ``m`` (and their histograms) given the pruned zeros."""
    out = m.copy()
    out["count"] = m["count"] + zeros
    some = zeros > 0
    with np.errstate(invalid="ignore"):
        out["min"] = np.where(some, np.fmin(m["min"], 0.0), m["min"])
        out["max"] = np.where(some, np.fmax(m["max"], 0.0), m["max"])
    slot, i = zero_slot(edges)
    h = None
    if slot == "under":
        out["under"] = m["under"] + zeros
    elif slot == "over":
        out["over"] = m["over"] + zeros
    if hist is not None:
        h = np.array(hist, dtype=np.int64, copy=True)
        if slot == "bin":
            h[:, i] += zeros
    return out, h


def population_table(pop_rounds: np.ndarray, steps: np.ndarray, read_sumsq, read_mask, n: int,
                     offsets: np.ndarray, names: list[str], references: list[int]) -> pd.DataFrame:
    """RMS gradient of the reference rounds' surviving weights in every earlier round.

    ``read_sumsq(i)`` / ``read_mask(i)`` return row i (float32 sums of g^2 / bool mask of
    length ``n``); ``offsets`` are the layers' first positions in the recorded vector;
    ``steps`` the steps summed, per row (one number) or per row and layer (``[rows, layers]``).
    """
    rows = []
    order = np.argsort(pop_rounds)
    masks = {}
    for K in references:
        ki = int(np.nonzero(pop_rounds == K)[0][0])
        masks[K] = read_mask(ki)
    for i in order:
        j = int(pop_rounds[i])
        refs = [K for K in references if j <= K]
        if not refs:
            continue
        s = read_sumsq(i).astype(np.float64)
        for K in refs:
            mk = masks[K]
            tot = np.add.reduceat(np.where(mk, s, 0.0), offsets)
            cnt = np.add.reduceat(mk.astype(np.int64), offsets)
            st = np.broadcast_to(np.asarray(steps[i], dtype=np.int64), (len(names),))
            for name, t, c, sl in zip(names, tot, cnt, st):
                rows.append((K, j, name, int(c), int(sl), float(np.sqrt(t / (c * sl))) if c and sl else float("nan")))
            T, NS = float(tot.sum()), int((cnt * st).sum())  # pooled: every (weight, step) value once
            rows.append((K, j, "pooled", int(cnt.sum()), int(st.max()), float(np.sqrt(T / NS)) if NS else float("nan")))
    df = pd.DataFrame(rows, columns=["reference_round", "round", "layer", "count", "steps", "rms"])
    return df.sort_values(["reference_round", "round"], kind="stable").reset_index(drop=True)
