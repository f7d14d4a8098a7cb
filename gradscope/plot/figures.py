"""Figures drawn from plain tables and arrays (no file access): ``ax=`` in, Axes out.

The ``gradscope.plot.runs`` wrappers read run files/directories and call these; tests and
notebooks can call them directly with DataFrames. Every axis names its quantity (and unit
where it has one); every shaded band says what it is in the legend; series that coincide
stay visible (wider lines underneath, distinct line styles and markers, and "= X" in the
label of a series identical to an earlier one).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from gradscope import GradscopeError

GRAD_UNIT = "∂loss/∂w"  # a weight gradient: loss per unit weight
MANY_LAYERS = 8  # above this many layers, colour by depth with a colour bar instead of a legend
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def new_axes(ax=None, figsize=(8.5, 4.2)):
    """``ax`` itself, or a fresh Axes on a pyplot-free Figure (safe without a display)."""
    if ax is not None:
        return ax
    from matplotlib.figure import Figure  # noqa: PLC0415

    return Figure(figsize=figsize, layout="constrained").add_subplot()


def _need(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise GradscopeError(f"{what} must be a table (pandas DataFrame), got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise GradscopeError(f"{what} lacks column(s) {', '.join(missing)}")


def place_legend(ax, width: int = 30, **kw):
    """Legend beside the axes (never over the data), its labels wrapped at ``width`` characters."""
    import textwrap  # noqa: PLC0415

    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    labels = ["\n".join(textwrap.wrap(lab, width)) or lab for lab in labels]
    opts = {"fontsize": "small", "loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0}
    opts.update(kw)
    return ax.legend(handles, labels, **opts)


def integer_ticks(axis) -> None:
    """Ticks only at whole numbers (rounds): never a tick at round 2.5."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    axis.set_major_locator(MaxNLocator(integer=True))


def series_styles(n: int) -> list:
    """Line styles for n series that may coincide: distinct colour, line style and marker, and
    line width falling with the index (an earlier, wider line shows around a later one)."""
    return [{"color": f"C{i % 10}", "ls": _LINESTYLES[i % len(_LINESTYLES)], "marker": _MARKERS[i % len(_MARKERS)],
             "lw": 1.2 + 2.0 * (n - 1 - i) / max(n - 1, 1), "ms": 3 + 4.0 * (n - 1 - i) / max(n - 1, 1),
             "zorder": 2 + i} for i in range(n)]


def label_identical(labels: Sequence[str], series: Sequence) -> list:
    """Labels with " (= X)" appended where a series equals an earlier one X (same x and y):
    a reader then knows why only one line shows there."""
    out = []
    for i, (lab, s) in enumerate(zip(labels, series)):
        same = next((labels[j] for j in range(i) if _same(series[j], s)), None)
        out.append(f"{lab} (= {same})" if same is not None else str(lab))
    return out


def _same(a, b) -> bool:
    a = [np.asarray(v, float) for v in a]
    b = [np.asarray(v, float) for v in b]
    return all(x.shape == y.shape and np.allclose(x, y, rtol=1e-9, atol=0, equal_nan=True) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- histograms
def round_histograms(counts, edges, index: pd.DataFrame, layer: Optional[str] = None):
    """Per-round probability mass per bin of one layer, or of the pooled layers (``layer`` None
    or "pooled": rows flagged in the index's ``pooled`` column, else its ReLU-fed ones). Returns (rounds [R], mass [R, nbins]), each row summing to 1
    (0 where a round has no counts)."""
    counts = np.asarray(counts, float)
    edges = np.asarray(edges, float)
    _need(index, ["round", "layer"], "histogram index")
    if counts.ndim != 2 or counts.shape[0] != len(index) or counts.shape[1] != len(edges) - 1:
        raise GradscopeError(f"histogram shapes disagree: counts {counts.shape}, edges {edges.shape}, "
                             f"index {len(index)} rows")
    if layer is None or layer == "pooled":
        col = "pooled" if "pooled" in index else "relu_fed" if "relu_fed" in index else None
        keep = index[col].to_numpy(bool) if col else np.ones(len(index), bool)
    else:
        keep = (index["layer"] == layer).to_numpy()
        if not keep.any():
            raise GradscopeError(f"no histograms of layer {layer!r}; layers: "
                                 f"{', '.join(map(str, pd.unique(index['layer'])))}")
    rnd = index["round"].to_numpy(int)[keep]
    rounds = np.unique(rnd)
    mass = np.zeros((len(rounds), counts.shape[1]))
    for i, r in enumerate(rounds):
        mass[i] = counts[keep][rnd == r].sum(axis=0)
    tot = mass.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mass = np.where(tot > 0, mass / np.where(tot > 0, tot, 1), 0.0)
    return rounds, mass


def _log_spaced(edges: np.ndarray) -> bool:
    pos = edges[edges > 0]
    if len(pos) < 3:
        return False
    r = pos[1:] / pos[:-1]
    return bool(np.allclose(r, r[0], rtol=1e-3) and r[0] > 1.0 + 1e-6)


def draw_histograms(rounds, mass, edges, sparsity: Optional[Mapping[int, float]] = None, ax=None,
                    title: Optional[str] = None, overlap: float = 1.6, cmap: str = "viridis",
                    quantity: str = "weight gradient of unpruned weights"):
    """Ridgeline of per-round gradient distributions (one ridge per round, round 0 at the
    bottom), on a symmetric log x axis when the edges are log-spaced magnitudes, coloured by
    sparsity. ``mass`` rows are per-bin probability masses (see ``round_histograms``).

    Shapes at a glance; for how much the spread changes, see ``draw_spread``."""
    import matplotlib as mpl  # noqa: PLC0415

    rounds = np.asarray(rounds)
    mass = np.asarray(mass, float)
    edges = np.asarray(edges, float)
    if mass.ndim != 2 or mass.shape != (len(rounds), len(edges) - 1):
        raise GradscopeError(f"mass must be [rounds, bins] = [{len(rounds)}, {len(edges) - 1}], got {mass.shape}")
    if len(rounds) == 0:
        raise GradscopeError("no recorded rounds to plot")
    ax = new_axes(ax, (7.5, max(3.6, 1.2 + 0.55 * len(rounds))))  # tall enough for the axis labels
    sp = np.array([float((sparsity or {}).get(int(r), np.nan)) for r in rounds])
    has_sp = np.isfinite(sp).any()
    top = np.nanmax(sp) if has_sp else 1.0
    norm = mpl.colors.Normalize(0.0, max(top, 1e-9))
    cm = mpl.colormaps[cmap]
    peak = mass.max(axis=1, keepdims=True)
    h = np.divide(mass, peak, out=np.zeros_like(mass), where=peak > 0) * overlap
    for i in range(len(rounds)):
        c = cm(norm(sp[i])) if np.isfinite(sp[i]) else cm(i / max(len(rounds) - 1, 1))
        ax.stairs(h[i] + i, edges, baseline=i, fill=True, color=c, alpha=0.75, zorder=len(rounds) - i)
        ax.stairs(h[i] + i, edges, baseline=i, color="k", lw=0.5, zorder=len(rounds) - i)
    tot = mass.sum(axis=0)
    if tot.sum() > 0:
        centres = 0.5 * (edges[:-1] + edges[1:])
        order = np.argsort(np.abs(centres))
        cum = np.cumsum(tot[order]) / tot.sum()
        mag = np.abs(edges[1:])[order]
        span = float(max(np.abs(edges[:-1])[order][np.searchsorted(cum, 0.9995)], mag[np.searchsorted(cum, 0.9995)]))
        if _log_spaced(edges):
            # linear core = the magnitude below which 0.5% of the mass lies (at most 4 decades shown)
            thresh = max(float(mag[np.searchsorted(cum, 0.005)]), span * 1e-4, float(edges[edges > 0].min()))
            ax.set_xscale("symlog", linthresh=thresh, linscale=0.5)
            dec = 10.0 ** np.arange(np.ceil(np.log10(thresh)), np.floor(np.log10(span)) + 1)
            ax.set_xticks(np.concatenate([-dec[::-1], [0.0], dec]))
            ax.set_xlabel(f"{quantity}, {GRAD_UNIT} (symmetric log scale, linear within ±{thresh:.1g})")
        else:
            ax.set_xlabel(f"{quantity}, {GRAD_UNIT}")
        ax.set_xlim(-span, span)
    ax.set_yticks(np.arange(len(rounds)))
    ax.set_yticklabels([f"round {int(r)}" + (f"\n{100 * s:.0f}% pruned" if np.isfinite(s) else "")
                        for r, s in zip(rounds, sp)], fontsize="small")
    ax.set_ylabel("round (ridge height: fraction of values\nper bin, each round scaled to its tallest bin)",
                  fontsize="small")
    ax.set_ylim(-0.1, len(rounds) - 1 + overlap + 0.2)
    if has_sp:
        sm = mpl.cm.ScalarMappable(norm=norm, cmap=cm)
        cb = ax.figure.colorbar(sm, ax=ax, pad=0.01)
        cb.set_label("sparsity (fraction pruned)", fontsize="small")
    if title:
        ax.set_title(title)
    return ax


# ----------------------------------------------------------------------------- spread per round
def draw_spread(table: pd.DataFrame, relative: bool = True, ax=None, title: Optional[str] = None,
                quantity: str = "|weight gradient| of unpruned weights"):
    """Spread of |g| per round at a glance, from a ``spread_table`` (round, q05..q95 of |g|,
    std). ``relative``: each quantile and the std divided by its round-0 value, on a linear
    axis (a 20 % narrowing reads as 0.8); else the quantile bands themselves on a log axis."""
    _need(table, ["round", "q25", "q50", "q75"], "spread table")
    t = table.sort_values("round")
    if t.empty:
        raise GradscopeError("no recorded rounds to plot")
    ax = new_axes(ax)
    r = t["round"].to_numpy(int)
    cols = {"q05": "5th", "q25": "25th", "q50": "50th (median)", "q75": "75th", "q95": "95th"}
    if relative:
        styles = series_styles(len([c for c in cols if c in t]) + ("std" in t))
        i = 0
        for c, name in cols.items():
            if c not in t:
                continue
            v = t[c].to_numpy(float)
            st = styles[i]
            i += 1
            ax.plot(r, v / v[0], color=st["color"], ls=st["ls"], marker=st["marker"], ms=4, lw=1.3,
                    label=f"{name} percentile of |g|", zorder=st["zorder"])
        if "std" in t:
            s = t["std"].to_numpy(float)
            ax.plot(r, s / s[0], color="k", lw=2.4, marker="D", ms=5, label="std (exact, from the moments)",
                    zorder=10)
        ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
        ax.set_ylabel("spread relative to round 0 (ratio; < 1: narrower)")
    else:
        if {"q05", "q95"} <= set(t.columns):
            ax.fill_between(r, t["q05"], t["q95"], color="C0", alpha=0.18, lw=0,
                            label="middle 90 % of |g| (5th–95th percentile)")
        ax.fill_between(r, t["q25"], t["q75"], color="C0", alpha=0.4, lw=0,
                        label="middle 50 % of |g| (25th–75th percentile)")
        ax.plot(r, t["q50"], color="C0", marker="o", ms=4, lw=1.5, label="median |g|")
        if "std" in t:
            ax.plot(r, t["std"], color="k", marker="D", ms=4, lw=0, label="std (exact, from the moments)")
        ax.set_yscale("log")
        ax.set_ylabel(f"|weight gradient|, {GRAD_UNIT} (log scale)")
    ax.set_xlabel("pruning round")
    integer_ticks(ax.xaxis)
    if "sparsity" in t and np.isfinite(t["sparsity"]).any():
        labels = {int(k): s for k, s in zip(r, t["sparsity"])}
        top = ax.secondary_xaxis("top")
        integer_ticks(top.xaxis)
        top.set_xticks(r)
        top.set_xticklabels([f"{100 * labels[int(k)]:.0f}%" if np.isfinite(labels[int(k)]) else "" for k in r],
                            fontsize="x-small")
        top.set_xlabel("sparsity (% of weights pruned)", fontsize="small")
    place_legend(ax)
    if title:
        ax.set_title(title, fontsize="medium")
    return ax


# ----------------------------------------------------------------------------- narrowing
def draw_narrowing(narrowing: pd.DataFrame, statistic: str = "std", layers: Optional[Sequence[str]] = None,
                   ax=None, title: Optional[str] = None, depth: Optional[Mapping[str, int]] = None,
                   band_label: str = "pooled: 95 % CI (values treated as independent, so too narrow)"):
    """Scale relative to round 0 (``ratio``) vs sparsity: pooled (black, thick, with its
    confidence band) and each layer. Up to MANY_LAYERS layers get a legend beside the axes
    (distinct colours, line styles and markers); more are coloured by depth (``depth``:
    layer -> position in the network) with a colour bar, so nothing covers the data."""
    import matplotlib as mpl  # noqa: PLC0415

    _need(narrowing, ["sparsity", "layer", "statistic", "ratio"], "narrowing table")
    n = narrowing[narrowing["statistic"] == statistic]
    if n.empty:
        raise GradscopeError(f"no narrowing of statistic {statistic!r}; have "
                             f"{', '.join(map(str, pd.unique(narrowing['statistic'])))}")
    names = list(pd.unique(n["layer"]))
    if layers is not None:
        unknown = [x for x in layers if x not in names]
        if unknown:
            raise GradscopeError(f"unknown layer(s) {', '.join(unknown)}; have {', '.join(map(str, names))}")
        names = [x for x in names if x in layers or x == "pooled"]
    per = [x for x in names if x != "pooled"]
    if depth:
        per.sort(key=lambda x: (depth.get(x, len(depth)), str(x)))
    names = per + (["pooled"] if "pooled" in names else [])
    ax = new_axes(ax)
    many = len(per) > MANY_LAYERS
    cm = mpl.colormaps["viridis"]
    styles = series_styles(len(per))
    for i, name in enumerate(names):
        g = n[n["layer"] == name].sort_values("sparsity")
        x = 100 * g["sparsity"].to_numpy(float)
        if name == "pooled":
            ax.plot(x, g["ratio"], marker="o", ms=5, lw=2.6, color="k", label="pooled (ReLU-fed layers)", zorder=20)
            if {"ratio_lo", "ratio_hi"} <= set(g.columns) and np.isfinite(g["ratio_lo"]).any():
                ax.fill_between(x, g["ratio_lo"], g["ratio_hi"], color="k", alpha=0.2, lw=0, label=band_label,
                                zorder=19)
        elif many:
            ax.plot(x, g["ratio"], color=cm(i / max(len(per) - 1, 1)), lw=1.0, marker=".", ms=3, alpha=0.9, zorder=2)
        else:
            st = styles[i]
            ax.plot(x, g["ratio"], color=st["color"], ls=st["ls"], marker=st["marker"], ms=4, lw=1.3,
                    label=str(name), zorder=st["zorder"])
    ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("sparsity (% of prunable weights pruned)")
    ax.set_ylabel(f"{statistic} relative to round 0 (ratio; < 1: narrower)")
    ax.set_title(title or f"Narrowing of the weight-gradient distribution ({statistic})", fontsize="medium")
    if many:  # the depth colour bar goes under the axes, so the legend beside them covers nothing
        sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(1, len(per)), cmap=cm)
        cb = ax.figure.colorbar(sm, ax=ax, location="bottom", pad=0.02, fraction=0.06, aspect=40)
        cb.set_label(f"layer depth (1 = first of {len(per)} layers, thin lines)", fontsize="small")
        integer_ticks(cb.ax.xaxis)
    place_legend(ax)
    return ax


# ----------------------------------------------------------------------------- calibration
def draw_calibration(points: pd.DataFrame, curve: Optional[pd.DataFrame] = None,
                     presets: Optional[Mapping[str, Sequence[float]]] = None,
                     oracle: Optional[pd.DataFrame] = None, used: Optional[pd.DataFrame] = None,
                     ax=None, title: Optional[str] = None, note: Optional[str] = None,
                     band_label: str = "fit: 95 % band"):
    """max_lr per round: measured-implied points (with error bars from ``implied_lo``/
    ``implied_hi`` when present), the fitted S-curve with its band (``curve``: round, max_lr,
    max_lr_lo, max_lr_hi), released presets (name -> max_lr of rounds 0..n-1), the Oracle's
    optimal interval and best candidate per round (``oracle``: round, lo, hi, best), and the
    max_lr the run used (``used``: round, max_lr)."""
    _need(points, ["round", "implied_max_lr"], "calibration points")
    ax = new_axes(ax)
    if curve is not None and len(curve):
        _need(curve, ["round", "max_lr"], "fitted curve")
        ax.plot(curve["round"], curve["max_lr"], color="C0", lw=2, label="fitted S-curve", zorder=3)
        if {"max_lr_lo", "max_lr_hi"} <= set(curve.columns) and np.isfinite(curve["max_lr_lo"]).any():
            ax.fill_between(curve["round"], curve["max_lr_lo"], curve["max_lr_hi"], color="C0", alpha=0.15,
                            lw=0, label=band_label)
    series = list((presets or {}).items())
    used_ok = used is not None and len(used)
    if used_ok:
        _need(used, ["round", "max_lr"], "used max_lr table")
    labels = [f"preset {k}" for k, _ in series] + (["max_lr used by the run"] if used_ok else [])
    xy = [(np.arange(len(v)), np.asarray(v, float)) for _, v in series] + \
        ([(used["round"].to_numpy(float), used["max_lr"].to_numpy(float))] if used_ok else [])
    labels = label_identical(labels, xy)
    styles = series_styles(len(xy))
    for i, ((x, y), lab) in enumerate(zip(xy, labels)):
        st = styles[i]
        color = "0.45" if used_ok and i == len(xy) - 1 else f"C{i + 1}"
        ax.plot(x, y, color=color, ls=_LINESTYLES[(i + 1) % 4], marker=st["marker"], ms=st["ms"] * 0.8,
                lw=st["lw"] * 0.8, label=lab, zorder=st["zorder"])
    if oracle is not None and len(oracle):
        _need(oracle, ["round", "lo", "hi"], "oracle intervals")
        ax.vlines(oracle["round"], oracle["lo"], oracle["hi"], color="C3", lw=6, alpha=0.35,
                  label="Oracle optimal interval")
        if "best" in oracle:
            ax.scatter(oracle["round"], oracle["best"], marker="*", s=80, color="C3", zorder=4,
                       label="Oracle best")
    p = points[np.isfinite(points["implied_max_lr"])]
    if {"implied_lo", "implied_hi"} <= set(p.columns):
        y = p["implied_max_lr"].to_numpy(float)
        err = np.abs(np.vstack([y - p["implied_lo"].to_numpy(float), p["implied_hi"].to_numpy(float) - y]))
        ax.errorbar(p["round"], y, yerr=np.nan_to_num(err), fmt="o", color="k", ms=5, capsize=2,
                    label="implied by measured narrowing (95 % CI)", zorder=5)
    else:
        ax.plot(p["round"], p["implied_max_lr"], "o", color="k", ms=5, label="implied by measured narrowing",
                zorder=5)
    ax.set_xlabel("pruning round")
    integer_ticks(ax.xaxis)
    ax.set_ylabel("max_lr (peak learning rate of the round)")
    ax.set_title(title or "SILO calibration: max_lr over rounds", fontsize="medium")
    if note:
        import textwrap  # noqa: PLC0415

        # under the axes, never over a data point
        ax.annotate("\n".join(textwrap.wrap(note, 95)), xy=(0, 0), xycoords="axes fraction", xytext=(0, -34),
                    textcoords="offset points", va="top", ha="left", fontsize="small", color="C3")
    place_legend(ax)
    return ax


# ----------------------------------------------------------------------------- accuracy
def wilson_interval(p, n, level: float = 0.95):
    """(lo, hi) arrays: the Wilson score interval of each accuracy ``p`` measured on ``n`` images
    (scipy.stats.binomtest on the correct count round(p * n))."""
    from scipy.stats import binomtest  # noqa: PLC0415

    lo, hi = [], []
    for pi, ni in zip(np.asarray(p, float), np.asarray(n, float)):
        ci = binomtest(int(round(pi * ni)), int(ni)).proportion_ci(confidence_level=level, method="wilson")
        lo.append(ci.low)
        hi.append(ci.high)
    return np.array(lo), np.array(hi)


def draw_accuracy(runs: Mapping[str, pd.DataFrame], metric: str = "test_acc", ax=None,
                  title: Optional[str] = None):
    """Accuracy (%) vs sparsity (%), one line per run (label -> per-round table with
    ``sparsity`` and ``metric`` as fractions). Runs with identical results stay visible. Where a
    table says how many images the accuracy was measured on (``n_test`` / ``n_val``, as
    rounds.json does), each point gets its 95 % Wilson interval as an error bar."""
    if not runs:
        raise GradscopeError("accuracy plot needs at least one run")
    ax = new_axes(ax)
    xy, names, bars = [], [], []
    size_col = {"test_acc": "n_test", "val_acc": "n_val"}.get(metric)
    for label, t in runs.items():
        _need(t, ["sparsity", metric], f"round table of {label}")
        t = t.sort_values("sparsity")
        xy.append((100 * t["sparsity"].to_numpy(float), 100 * t[metric].to_numpy(float)))
        names.append(str(label))
        n = t[size_col].to_numpy(float) if size_col in t else None
        bars.append(None if n is None or not np.isfinite(n).all() else
                    wilson_interval(t[metric].to_numpy(float), n))
    names = label_identical(names, xy)
    shown = [n for n, b in zip(names, bars) if b is not None]
    for (x, y), name, st, b in zip(xy, names, series_styles(len(xy)), bars):
        ax.plot(x, y, label=name, **st)
        if b is not None:
            lo, hi = 100 * b[0], 100 * b[1]
            # bars only (a LineCollection, no cap lines): the data lines stay the axes' only lines
            ax.errorbar(x, y, yerr=np.vstack([y - lo, hi - y]), fmt="none", ecolor=st.get("color"), capsize=0,
                        lw=1.5, alpha=0.6, zorder=st.get("zorder", 2))
    what = {"test_acc": "test accuracy", "val_acc": "validation accuracy"}.get(metric, metric.replace("_", " "))
    ax.set_xlabel("sparsity (% of prunable weights pruned)")
    ax.set_ylabel(f"{what} (%)" + ("\nbars: 95 % Wilson interval (binomial)" if shown else ""))
    ax.set_title(title or f"{what.capitalize()} vs sparsity", fontsize="medium")
    ax.grid(alpha=0.3)
    place_legend(ax)
    return ax
