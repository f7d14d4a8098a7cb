"""Synthetic runs with known gradient scales: a RunReader-like object for tests, benches and
docs. Samples per (round, window, layer) are drawn from a chosen family with a chosen
scale, histogrammed on fixed symmetric log-spaced edges with under/overflow and summarised
by exact power sums, exactly what the recorder stores.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd


def log_edges(max_abs: float, n_half: int = 100, min_abs: Optional[float] = None) -> np.ndarray:
    """Symmetric edges: log-spaced magnitudes from min_abs to max_abs on each side, and one
    central bin (-min_abs, min_abs) around 0. 2*n_half edges, 2*n_half - 1 bins."""
    min_abs = max_abs * 1e-4 if min_abs is None else min_abs
    mag = np.geomspace(min_abs, max_abs, n_half)
    return np.concatenate([-mag[::-1], mag])


def draw(rng, family: str, scale: float, n: int, shape: Optional[float] = None) -> np.ndarray:
    """n values from a zero-centred family with the given scale (shape: t df / gennorm beta)."""
    if family == "normal":
        return rng.normal(0.0, scale, n)
    if family == "laplace":
        return rng.laplace(0.0, scale, n)
    if family == "t":
        return scale * rng.standard_t(3.0 if shape is None else shape, n)
    if family == "gennorm":
        from scipy import stats  # noqa: PLC0415

        return stats.gennorm.rvs(2.0 if shape is None else shape, scale=scale, size=n, random_state=rng)
    raise ValueError(family)


def summarize(x: np.ndarray, edges: np.ndarray) -> dict:
    """Histogram (with under/over/nonfinite) and exact power sums of one batch of values."""
    fin = np.isfinite(x)
    xf = x[fin]
    j = np.searchsorted(edges, xf, side="right") - 1
    nb = len(edges) - 1
    inside = (j >= 0) & (j < nb) | (xf == edges[-1])
    j = np.where(xf == edges[-1], nb - 1, j)
    counts = np.bincount(j[inside], minlength=nb)
    return {"counts": counts, "under": int((xf < edges[0]).sum()), "over": int((xf > edges[-1]).sum()),
            "nonfinite": int((~fin).sum()), "count": xf.size, "sum": xf.sum(), "sumsq": (xf**2).sum(),
            "sumabs": np.abs(xf).sum(), "sum3": (xf**3).sum(), "sum4": (xf**4).sum(),
            "min": xf.min() if xf.size else np.nan, "max": xf.max() if xf.size else np.nan}


class SyntheticRun:
    """A RunReader-like object held in memory (histograms, moments, rounds, layers, samples).

    Rows may carry a ``view`` (default "survivors"); ``moments``/``histograms`` take
    ``view=`` as the schema-v2 reader does, and an unrecorded view is one clear error.
    """

    def __init__(self, edges, rows: list, rounds: pd.DataFrame, layers: pd.DataFrame,
                 config: Optional[dict] = None, samples: Optional[list] = None):
        self.edges = np.asarray(edges, float)
        self._rows = rows
        self._rounds = rounds
        self._layers = layers
        self.config = config or {}
        self._samples = samples or []
        self.derived_tables: dict = {}

    def views(self) -> list:
        return sorted({r.get("view", "survivors") for r in self._rows}) or ["survivors"]

    def _view_rows(self, view: str) -> list:
        if view not in self.views():
            from gradscope import GradscopeError  # noqa: PLC0415

            raise GradscopeError(f"view {view!r} is not recorded in this run; it has {', '.join(self.views())}")
        return [r for r in self._rows if r.get("view", "survivors") == view]

    def _index(self, rows, extra=()):
        """One row per histogram: its keys, relu_fed, then the ``extra`` fields of the rows
        (one DataFrame from column lists: the frame the record-wise construction gave, cheaper)."""
        keys = ["round", "epoch", "window", "step_start", "step_end", "layer"]
        if not rows:
            idx = pd.DataFrame([], columns=keys)
            idx["relu_fed"] = []
            for c in extra:
                idx[c] = []
            return idx
        cols = {k: [r[k] for r in rows] for k in keys}
        relu = dict(zip(self._layers["layer"], self._layers["relu_fed"]))
        cols["relu_fed"] = pd.Series(cols["layer"]).map(relu).astype(bool)
        cols.update({c: [r[c] for r in rows] for c in extra})
        return pd.DataFrame(cols)

    def _select(self, df, layer=None, round=None, window=None):
        m = np.ones(len(df), bool)
        for col, v in (("layer", layer), ("round", round), ("window", window)):
            if v is not None:
                m &= df[col].isin(np.atleast_1d(v)).to_numpy()
        return m

    def layers(self):
        return self._layers.copy()

    def rounds(self):
        return self._rounds.copy()

    def moments(self, layer=None, round=None, view: str = "survivors"):
        rows = self._view_rows(view)
        idx = self._index(rows, ("count", "sum", "sumsq", "sumabs", "sum3", "sum4", "min", "max", "under", "over",
                                 "nonfinite"))
        m = self._select(idx, layer, round)
        return idx if m.all() else idx[m].reset_index(drop=True)

    def histograms(self, layer=None, round=None, window=None, view: str = "survivors"):
        rows = self._view_rows(view)
        idx = self._index(rows, ("under", "over", "nonfinite"))
        m = self._select(idx, layer, round, window)
        nb = len(self.edges) - 1
        counts = np.array([r["counts"] for r in rows]).reshape(-1, nb)
        if m.all():
            return counts, self.edges.copy(), idx
        return counts[m], self.edges.copy(), idx[m].reset_index(drop=True)

    def samples(self, layer=None, round=None, window=None):
        if not self._samples:
            return np.zeros((0, 0)), pd.DataFrame(columns=["round", "epoch", "window", "layer"])
        idx = pd.DataFrame([{k: s[k] for k in ("round", "epoch", "window", "layer")} for s in self._samples])
        vals = np.array([s["values"] for s in self._samples], float)
        m = self._select(idx, layer, round, window)
        return vals[m], idx[m].reset_index(drop=True)

    def write_derived(self, name, df):
        self.derived_tables[name] = df.copy()

    def derived(self, name):
        return self.derived_tables[name].copy()

    def derived_names(self):
        return sorted(self.derived_tables)


def _all_view_row(r: dict, zeros: int, edges: np.ndarray) -> dict:
    """The "all" view of one survivors row: ``zeros`` pruned positions added as exact zeros."""
    from gradscope.store.views import zero_slot  # noqa: PLC0415

    out = dict(r, view="all", counts=np.array(r["counts"], copy=True), count=r["count"] + zeros)
    slot, i = zero_slot(edges)
    if slot == "bin":
        out["counts"][i] += zeros
    else:
        out[slot] += zeros
    if zeros:
        out["min"], out["max"] = min(r["min"], 0.0), max(r["max"], 0.0)
    return out


def make_synthetic_run(scales: dict, *, family: str = "laplace", shape: Optional[float] = None,
                       n: int = 100_000, windows: int = 1, epochs: int = 1,
                       epoch_factor: Optional[list] = None, prune_rate: float = 0.2, max_lr0: float = 0.03,
                       edges: Optional[np.ndarray] = None, sample_k: int = 0, relu_fed: Optional[dict] = None,
                       views: Optional[dict] = None, density: Optional[dict] = None,
                       seed: int = 0) -> SyntheticRun:
    """A run whose layer L in round k, epoch e has values ~ family(scale=scales[L][k] * epoch_factor[e]).

    Round k has planned sparsity 1-(1-prune_rate)^k; each of ``epochs`` epochs has
    ``windows`` windows, each drawing ``n`` values. ``views``: extra views {name: scales}
    stored beside "survivors" (rows tagged with their view). ``density``: {layer: per-round
    kept fraction}; then round k draws round(n * density) survivors per window and the "all"
    view is derived exactly as the run-file reader derives it (the pruned positions as exact
    zeros: gradscope.store.views.derive_all), so pruning-only nulls can be simulated.
    """
    rng = np.random.default_rng(seed)
    names = list(scales)
    K = len(next(iter(scales.values())))
    ef = list(epoch_factor) if epoch_factor is not None else [1.0] * epochs
    if len(ef) != epochs:
        raise ValueError("epoch_factor needs one factor per epoch")
    all_views = {"survivors": scales, **(views or {})}
    if edges is None:
        edges = log_edges(8.0 * max(max(v) for sc in all_views.values() for v in sc.values()) * max(ef))
    rows, samples = [], []
    for k in range(K):
        for e in range(epochs):
            for w in range(windows):
                win = e * windows + w
                for vname, sc in all_views.items():
                    for name in names:
                        kept = n if density is None else int(round(n * float(density[name][k])))
                        x = draw(rng, family, float(sc[name][k]) * ef[e], kept, shape)
                        r = summarize(x, edges)
                        r.update(round=k, epoch=e, window=win, step_start=win * 10, step_end=win * 10 + 10,
                                 layer=name, view=vname)
                        rows.append(r)
                        if density is not None and vname == "survivors":
                            rows.append(_all_view_row(r, n - kept, edges))
                        if sample_k and vname == "survivors":
                            samples.append({"round": k, "epoch": e, "window": win, "layer": name,
                                            "values": x[:sample_k]})
    sp = 1 - (1 - prune_rate) ** np.arange(K)
    if density is not None:  # measured: the kept fraction over all layers (each drawing n per window)
        sp = 1 - np.mean([np.asarray(density[name], float) for name in names], axis=0)
    rounds = pd.DataFrame({"round": np.arange(K), "sparsity": sp, "target_sparsity": sp,
                           "max_lr": np.full(K, max_lr0)})
    relu_fed = relu_fed or {}
    layers = pd.DataFrame({"layer": names, "relu_fed": [relu_fed.get(n_, True) for n_ in names]})
    cfg = {"prune": {"prune_rate": prune_rate}, "schedule": {"lag": 1, "shape": "warmup-step"}}
    return SyntheticRun(edges, rows, rounds, layers, cfg, samples)
