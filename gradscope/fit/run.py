"""``fit_run``: read a run file, fit every histogram, and derive narrowing and trends.

Glue only: aggregation of histograms/moments to the requested granularity, then the pure
table functions of ``gradscope.fit.core``.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from gradscope import GradscopeError
from gradscope.fit.core import (BINNED_STATS, MODELS, MOMENT_STATS, check_bootstrap, check_statistic,
                                fit_histograms, fit_samples, narrowing_table, trend_table, trend_verdict)
from gradscope.fit.families import get_family

_SUMS = ["count", "sum", "sumsq", "sumabs", "sum3", "sum4"]
_KEYS = {"window": ["round", "epoch", "window"], "round": ["round"]}

from gradscope.views import DEFAULT_VIEW, DEFAULT_WINDOW, VIEWS, WINDOWS  # noqa: F401 - re-exported
_VIEW_WORDS = {"survivors": "unpruned weights", "all": "all weights, pruned ones as exact zeros",
               "relative": "|g|/(|w|+eps) of unpruned weights"}
_WINDOW_WORDS = {"all": "all epochs of each round", "last": "last epoch of each round"}


def check_view(view: str) -> str:
    """``view`` if it is a known view name, else one clear GradscopeError."""
    if view not in VIEWS:
        raise GradscopeError(f"unknown view {view!r}; choose from {', '.join(VIEWS)} "
                             "(survivors: unpruned weights; all: pruned weights counted as zeros; "
                             "relative: |g|/|w|)")
    return view


def check_window(window: str) -> str:
    """``window`` if it is "all" or "last", else one clear GradscopeError."""
    if window not in WINDOWS:
        raise GradscopeError(f"unknown window {window!r}; choose from {', '.join(WINDOWS)} "
                             "(all: every epoch of a round; last: the round's last epoch only)")
    return window


def describe_view(view: str = DEFAULT_VIEW, window: str = DEFAULT_WINDOW) -> str:
    """Words for a label: 'view survivors (unpruned weights), all epochs of each round'."""
    return f"view {view} ({_VIEW_WORDS.get(view, view)}), {_WINDOW_WORDS.get(window, window)}"


@dataclass
class FitResult:
    """Tables of one fit. NaN appears only in rows whose ``status`` is not "ok"."""

    per_layer: pd.DataFrame
    pooled: pd.DataFrame
    narrowing: pd.DataFrame
    trend: pd.DataFrame
    exact: Optional[pd.DataFrame] = None
    per: str = "round"
    meta: dict = field(default_factory=dict)


def open_source(source):
    """A RunReader from a path, or ``source`` itself when it already is a reader-like object."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise GradscopeError(f"run file {source} does not exist")
        from gradscope.store import open_run  # noqa: PLC0415

        return open_run(source)
    for m in ("histograms", "moments", "rounds"):
        if not hasattr(source, m):
            raise GradscopeError(f"expected a run file path or RunReader, got {type(source).__name__}")
    return source


def _relu_flags(reader, idx: pd.DataFrame) -> pd.Series:
    if "relu_fed" in idx:
        return idx["relu_fed"].astype(bool)
    lay = reader.layers()
    flags = dict(zip(lay["layer"], lay["relu_fed"].astype(bool)))
    return idx["layer"].map(flags).fillna(False).astype(bool)


def _pooled_flags(reader, idx: pd.DataFrame) -> pd.Series:
    """Which rows enter "pooled": the recorded activation-fed layers (``store.pooled_flags``),
    i.e. ReLU-fed ones under the default rule and GELU-fed ones under ``layers="gelu"``."""
    from gradscope.store import pooled_flags  # noqa: PLC0415

    lay = reader.layers() if hasattr(reader, "layers") else None
    if lay is None or "layer" not in lay:
        return _relu_flags(reader, idx)
    return idx["layer"].map(pooled_flags(lay)).fillna(False).astype(bool)


def _accepts_view(method) -> bool:
    try:
        return "view" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def read_view(reader, what: str, view: str = DEFAULT_VIEW, **kw):
    """``reader.<what>(view=view, **kw)``; a reader without views (schema v1) serves only
    "survivors", and asking it for another view is one clear error."""
    method = getattr(reader, what)
    if _accepts_view(method):
        return method(view=view, **kw)
    if view != "survivors":
        raise GradscopeError(f"view {view!r} is not available: this run file (or reader) holds only the "
                             "'survivors' view (gradients of unpruned weights)")
    return method(**kw)


def select_window(idx: pd.DataFrame, window: str = DEFAULT_WINDOW) -> np.ndarray:
    """Boolean mask of the rows of ``idx`` in ``window``: "all", or "last" = rows of each
    round's last recorded epoch (needs the epoch column)."""
    check_window(window)
    if window == "all" or len(idx) == 0:
        return np.ones(len(idx), bool)
    if "epoch" not in idx:
        raise GradscopeError("window 'last' needs the epoch of each window, which this run file does not hold")
    last = idx.groupby("round")["epoch"].transform("max")
    return (idx["epoch"] == last).to_numpy()


def load_windows(reader, view: str = DEFAULT_VIEW, window: str = DEFAULT_WINDOW):
    """Histogram counts, edges and one index row per histogram with its exact moments
    (only the rows of ``window``)."""
    counts, edges, idx = read_view(reader, "histograms", view)
    counts = np.asarray(counts)
    idx = idx.reset_index(drop=True).copy()
    if len(idx) != counts.shape[0]:
        raise GradscopeError("run file is inconsistent: histogram index and counts differ in length")
    idx["relu_fed"] = _relu_flags(reader, idx).to_numpy()
    idx["pooled"] = _pooled_flags(reader, idx).to_numpy()
    mom = read_view(reader, "moments", view)
    keys = [k for k in ("round", "epoch", "window", "layer") if k in idx and k in mom]
    cols = [c for c in _SUMS if c in mom] + [c for c in ("under", "over", "nonfinite")
                                               if c in mom and c not in idx]
    missing = [c for c in ("under", "over", "nonfinite") if c not in idx and c not in mom]
    merged = idx.drop(columns=[c for c in _SUMS if c in idx]).merge(
        mom[keys + cols].drop_duplicates(keys), on=keys, how="left", validate="many_to_one")
    for c in missing:
        merged[c] = 0
    keep = select_window(merged, window)
    return counts[keep], np.asarray(edges, float), merged[keep].reset_index(drop=True)


def aggregate(counts, idx: pd.DataFrame, keys: Sequence[str]):
    """Sum histograms and power sums over rows sharing ``keys`` (windows -> rounds, layers -> pooled)."""
    if len(idx) == 0:
        return np.zeros((0, counts.shape[1])), idx.iloc[:0][list(keys)]
    gid = idx.groupby(list(keys), sort=True, dropna=False).ngroup().to_numpy()
    order = np.argsort(gid, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(gid[order]) != 0])
    c = np.asarray(counts, float)[order]
    num = [k for k in _SUMS + ["under", "over", "nonfinite"] if k in idx]
    vals = idx[num].to_numpy(float)[order]
    if len(starts) == len(gid):  # every group is one row (windows fitted per window): the sums are the rows
        summed, s = c, vals
    else:
        summed = np.add.reduceat(c, starts, axis=0)
        with np.errstate(invalid="ignore"):
            s = np.add.reduceat(vals, starts, axis=0)
    out = idx.iloc[order[starts]][list(keys)].reset_index(drop=True)
    out[num] = s
    return summed, out


def _fit_table(counts, edges, idx, models, bootstrap, seed, resample):
    mom = {k: idx[k].to_numpy(float) for k in _SUMS if k in idx}
    if "count" not in mom:
        mom = None
    res = fit_histograms(counts, edges, idx["under"].to_numpy(float), idx["over"].to_numpy(float),
                         nonfinite=idx["nonfinite"].to_numpy(float), moments=mom, models=models,
                         bootstrap=bootstrap, seed=seed, resample=resample)
    res = res.drop(columns=["count"])
    key = idx.drop(columns=[c for c in _SUMS + ["under", "over", "nonfinite"] if c in idx]).reset_index(drop=True)
    return pd.concat([key, idx[["count", "under", "over", "nonfinite"]].reset_index(drop=True), res], axis=1)


_ACT_WORDS = {"relu": "ReLU", "relu6": "ReLU6", "gelu": "GELU", "silu": "SiLU", "elu": "ELU"}


def pooled_activations(reader) -> list[str]:
    """The activations the pooled layers feed (e.g. ["gelu"]); ["relu"] for a reader that
    does not say (schema 1, synthetic)."""
    from gradscope.store import pooled_flags  # noqa: PLC0415

    lay = reader.layers() if hasattr(reader, "layers") else None
    if lay is None or "activation" not in lay:
        return ["relu"]
    flags = pooled_flags(lay)
    return sorted({str(a) for n, a in zip(lay["layer"], lay["activation"]) if flags.get(n)})


def fed_words(activations) -> str:
    """"ReLU-fed", "GELU-fed", "ReLU/GELU-fed": words for the pooled layers in labels."""
    acts = [_ACT_WORDS.get(a, a) for a in activations] or ["activation"]
    return "/".join(acts) + "-fed"


def _pooled_column(idx: pd.DataFrame) -> np.ndarray:
    """The rows that enter "pooled" (column ``pooled`` from ``load_windows``; ReLU-fed otherwise)."""
    return idx["pooled" if "pooled" in idx else "relu_fed"].to_numpy(bool)


SPREAD_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def spread_table(path, *, layer: Optional[str] = None, view: str = DEFAULT_VIEW, window: str = DEFAULT_WINDOW,
                 quantiles: Sequence[float] = SPREAD_QUANTILES) -> pd.DataFrame:
    """Per round: quantiles of |g| from the histograms (``q05`` ... ``q95``), their binning
    resolution (``res_q50``: bin width / value), the exact std and mean |g|, and sparsity, of
    one layer or of the pooled layers (``layer`` None or "pooled": the recorded activation-fed
    layers, e.g. ReLU-fed or GELU-fed)."""
    from gradscope.fit.binned import abs_quantiles  # noqa: PLC0415
    from gradscope.fit.core import moment_spreads  # noqa: PLC0415

    check_view(view)
    check_window(window)
    reader = open_source(path)
    counts, edges, idx = load_windows(reader, view, window)
    if len(idx) == 0:
        raise GradscopeError("the run file holds no histograms yet (record a round first)")
    if layer is None or layer == "pooled":
        keep = _pooled_column(idx)
        if not keep.any():
            raise GradscopeError("no activation-fed (e.g. ReLU-fed) layers are recorded in this run; give a layer")
    else:
        keep = (idx["layer"] == layer).to_numpy()
        if not keep.any():
            raise GradscopeError(f"no histograms of layer {layer!r}; layers: "
                                 f"{', '.join(map(str, pd.unique(idx['layer'])))}")
    c, t = aggregate(counts[keep], idx[keep], ["round"])
    aq = abs_quantiles(c, t["under"].to_numpy(float), t["over"].to_numpy(float), edges, quantiles)
    out = pd.DataFrame({"round": t["round"].to_numpy(int)})
    spars = sparsity_by_round(reader)
    out["sparsity"] = [spars.get(int(r), np.nan) for r in out["round"]]
    for q in quantiles:
        out[f"q{round(100 * q):02d}"] = aq[q]
    out["res_q50"] = aq[("res", 0.5)] if 0.5 in quantiles else np.nan
    if "sumsq" in t:
        ms = moment_spreads(t["count"].to_numpy(float), t["sum"].to_numpy(float), t["sumsq"].to_numpy(float),
                            sabs=t["sumabs"].to_numpy(float) if "sumabs" in t else None)
        out["std"] = ms["std"]
        out["meanabs"] = ms.get("meanabs", np.nan)
    out["count"] = t["count"].to_numpy(float) if "count" in t else np.nan
    out.attrs.update(view=view, window=window, layer=layer or "pooled")
    return out


def sparsity_by_round(reader) -> dict:
    """Measured global sparsity per round (target sparsity where the measurement is missing)."""
    r = reader.rounds()
    if r is None or len(r) == 0:
        return {}
    s = r["sparsity"].astype(float) if "sparsity" in r else pd.Series(np.nan, index=r.index)
    if "target_sparsity" in r:
        s = s.fillna(r["target_sparsity"].astype(float))
    return {int(k): float(v) for k, v in zip(r["round"], s) if np.isfinite(v)}


def fit_tables(counts, edges, idx, *, per="round", models=MODELS, bootstrap=200, seed=0,
               resample="auto"):
    """Per-layer and pooled (sum over the recorded activation-fed layers: ReLU-fed, or GELU-fed,
    ... as the recorder's rule chose) fit tables at ``per`` granularity."""
    if per not in _KEYS:
        raise GradscopeError(f"per must be 'round' or 'window', got {per!r}")
    keys = [k for k in _KEYS[per] if k in idx]
    c_l, i_l = aggregate(counts, idx, keys + ["layer", "relu_fed"])
    pooled = _pooled_column(idx)
    if not pooled.any():
        raise GradscopeError("no recorded layer feeds an elementwise activation, so there is nothing to pool "
                             "(record with --layers relu, gelu, ...)")
    c_p, i_p = aggregate(counts[pooled], idx[pooled], keys)
    i_p.insert(len(keys), "layer", "pooled")
    per_layer = _fit_table(c_l, edges, i_l, models, bootstrap, seed, resample)
    pooled = _fit_table(c_p, edges, i_p, models, bootstrap, seed + 1, resample)
    return per_layer, pooled


def check_fit_options(*, per: str = "round", models: Sequence[str] = MODELS, bootstrap: int = 200,
                      seed: int = 0, view: str = DEFAULT_VIEW, window: str = DEFAULT_WINDOW,
                      statistic: Optional[str] = None) -> None:
    """Validate fit options (the CLI's flags) with one clear GradscopeError each; ``statistic``
    (what will be printed) must be available with ``models``."""
    if per not in _KEYS:
        raise GradscopeError(f"per must be 'round' or 'window', got {per!r}")
    models = tuple(models)  # empty: moment statistics only (the CLI asks for at least one family)
    dup = sorted({m for m in models if models.count(m) > 1})
    if dup:
        raise GradscopeError(f"models lists {', '.join(dup)} more than once; name each family once")
    for m in models:
        get_family(m)
    check_bootstrap(bootstrap)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= 2 ** 32 - 1:
        raise GradscopeError(f"seed must be a whole number in [0, 2^32 - 1], got {seed!r}")
    check_view(view)
    check_window(window)
    if statistic is not None:
        check_statistic(statistic, models)


def fit_run(path, *, per: str = "round", models: Sequence[str] = MODELS, bootstrap: int = 200,
            seed: int = 0, store: bool = True, resample: str = "auto", view: str = DEFAULT_VIEW,
            window: str = DEFAULT_WINDOW) -> FitResult:
    """Fit every histogram of a run (per layer and pooled), then narrowing and trends.

    ``path``: a run file or a RunReader-like object. ``per``: "round" sums each round's
    windows; "window" fits every window (narrowing still uses round sums). ``view``: which
    population of gradients (VIEWS; the reader derives it). ``window``: "all" windows of a
    round or only its "last" epoch's. ``store`` writes fit_per_layer, fit_pooled,
    fit_narrowing, fit_trend (and fit_exact) as derived tables of the run file, each with
    view and window columns.
    """
    models = tuple(models)
    check_fit_options(per=per, models=models, bootstrap=bootstrap, seed=seed, view=view, window=window)
    reader = open_source(path)
    counts, edges, idx = load_windows(reader, view, window)
    if counts.shape[0] == 0:
        raise GradscopeError("the run file holds no histograms yet (record a round first)")
    per_layer, pooled = fit_tables(counts, edges, idx, per=per, models=models,
                                   bootstrap=bootstrap, seed=seed, resample=resample)
    if per == "round":
        rl, rp = per_layer, pooled
    else:
        rl, rp = fit_tables(counts, edges, idx, per="round", models=models,
                            bootstrap=bootstrap, seed=seed, resample=resample)
    spars = sparsity_by_round(reader)
    stats_ = list(MOMENT_STATS + BINNED_STATS + models)
    narrowing = narrowing_table(pd.concat([rp, rl], ignore_index=True), spars, stats_)
    trend = trend_table(narrowing)
    exact = _exact(reader, per, models, window) if view == "survivors" else None
    res = FitResult(per_layer, pooled, narrowing, trend, exact, per,
                    {"models": list(models), "bootstrap": bootstrap, "seed": seed, "view": view,
                     "window": window, "pooled_activations": pooled_activations(reader)})
    if store:
        _store(path, reader, res)
    return res


def _exact(reader, per, models, window="all"):
    """Exact-likelihood fits of the raw samples (when recorded; survivors only), at the same
    granularity and window."""
    if not hasattr(reader, "samples"):
        return None
    try:
        values, sidx = reader.samples()
    except (GradscopeError, KeyError):  # samples not recorded in this run
        return None
    values = np.asarray(values, float)
    if values.size == 0 or not np.isfinite(values).any():
        return None
    sidx = sidx.reset_index(drop=True)
    keep = select_window(sidx, window)
    values, sidx = values[keep], sidx[keep].reset_index(drop=True)
    if values.size == 0:
        return None
    keys = [k for k in _KEYS[per] if k in sidx] + ["layer"]
    groups = sidx.groupby(keys, sort=True).indices
    K = max(values.shape[1] * len(ix) for ix in groups.values())
    rows = np.full((len(groups), K), np.nan)
    key_rows = []
    for i, (k, ix) in enumerate(groups.items()):
        v = values[ix].ravel()
        v = v[np.isfinite(v)]
        rows[i, : len(v)] = v
        key_rows.append(k if isinstance(k, tuple) else (k,))
    key_df = pd.DataFrame(key_rows, columns=keys)
    return pd.concat([key_df, fit_samples(rows, models=models)], axis=1)


def _store(path, reader, res: FitResult) -> None:
    tables = {"fit_per_layer": res.per_layer, "fit_pooled": res.pooled,
              "fit_narrowing": res.narrowing, "fit_trend": res.trend}
    if res.exact is not None:
        tables["fit_exact"] = res.exact
    if hasattr(reader, "write_derived"):
        writer = reader.write_derived
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise GradscopeError("store=True needs a run file path (or a reader with write_derived)")
        from gradscope.store import write_derived  # noqa: PLC0415

        writer = lambda name, df: write_derived(path, name, df)  # noqa: E731
    for name, df in tables.items():
        df = df.copy()
        df["view"], df["window"] = res.meta.get("view", "survivors"), res.meta.get("window", "all")
        writer(name, df)


# ----------------------------------------------------------------------------- formatting
def format_summary(res: FitResult, models: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Compact pooled table for printing: status, std, iqr, mad, each model's scale and the
    best model by AIC."""
    t = res.pooled
    models = models or res.meta.get("models", MODELS)
    keys = [c for c in ("round", "epoch", "window", "layer") if c in t]
    cols = keys + ["status", "count", "std", "iqr", "mad"] + \
        [f"{m}_scale" for m in models if f"{m}_scale" in t] + ["best"]
    out = t[[c for c in cols if c in t]].copy()
    if "count" in out:
        out["count"] = out["count"].astype("int64")
    return out


def format_narrowing(res: FitResult, statistic: str = "std", layer: Optional[str] = "pooled") -> pd.DataFrame:
    """Narrowing ratios of one statistic (one layer, or all with layer=None) for printing.
    An unknown statistic, or a model that was not fitted, is one clear GradscopeError."""
    check_statistic(statistic, res.meta.get("models", MODELS))
    n = res.narrowing
    n = n[n["statistic"] == statistic]
    if layer is not None:
        n = n[n["layer"] == layer]
    return n.reset_index(drop=True)


def format_trend(res: FitResult, statistic: Optional[str] = None) -> pd.DataFrame:
    """Trend slopes (all statistics, or one) for printing, with the verdict in words (narrows /
    widens / cannot tell) in place of the ``narrows`` bool."""
    t = res.trend
    if statistic is not None:
        check_statistic(statistic, res.meta.get("models", MODELS))
    t = (t if statistic is None else t[t["statistic"] == statistic]).reset_index(drop=True)
    if "verdict" not in t:  # a trend table stored by an older gradscope
        t.insert(len(t.columns), "verdict", [trend_verdict(lo, hi) for lo, hi in zip(t["slope_lo"], t["slope_hi"])])
    return t.drop(columns=["narrows"], errors="ignore")


def narrowing_heading(res: FitResult, statistic: str = "std") -> str:
    """The line printed above a narrowing table: statistic, view, window and CI meaning."""
    how = {"std": "exact std from the moments, 95 % delta-method CI",
           "meanabs": "exact mean |g| from the moments, 95 % delta-method CI",
           "iqr": "IQR from the binned cdf, 95 % asymptotic CI; resolution = bin width / value",
           "mad": "MAD from the binned cdf, 95 % asymptotic CI; resolution = bin width / value"}
    what = how.get(statistic, f"fitted {statistic} scale, 95 % bootstrap CI")
    fed = fed_words(res.meta.get("pooled_activations", ["relu"]))
    return (f"Pooled narrowing of {fed} layers: {statistic} ({what}); ratio = scale(round k) / scale(round 0); "
            f"{describe_view(res.meta.get('view', 'survivors'), res.meta.get('window', 'all'))}")
