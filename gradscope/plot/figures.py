"""Figures drawn from plain tables and arrays (no file access): ``ax=`` in, Axes out.

The ``gradscope.plot.runs`` wrappers read run files/directories and call these; tests and
notebooks can call them directly with DataFrames.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from gradscope import GradscopeError


def new_axes(ax=None, figsize=(7.5, 4.0)):
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


# ----------------------------------------------------------------------------- histograms
def round_histograms(counts, edges, index: pd.DataFrame, layer: Optional[str] = None):
    """Per-round probability mass per bin of one layer, or of all ReLU-fed layers pooled
    (``layer`` None or "pooled"). Returns (rounds [R], mass [R, nbins]), each row summing to 1
    (0 where a round has no counts)."""
    counts = np.asarray(counts, float)
    edges = np.asarray(edges, float)
    _need(index, ["round", "layer"], "histogram index")
    if counts.ndim != 2 or counts.shape[0] != len(index) or counts.shape[1] != len(edges) - 1:
        raise GradscopeError(f"histogram shapes disagree: counts {counts.shape}, edges {edges.shape}, "
                             f"index {len(index)} rows")
    if layer is None or layer == "pooled":
        keep = index["relu_fed"].to_numpy(bool) if "relu_fed" in index else np.ones(len(index), bool)
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
                    title: Optional[str] = None, overlap: float = 1.6, cmap: str = "viridis"):
    """Ridgeline of per-round gradient distributions (one ridge per round, round 0 at the
    bottom), on a symmetric log x axis when the edges are log-spaced magnitudes, coloured by
    sparsity. ``mass`` rows are per-bin probability masses (see ``round_histograms``)."""
    import matplotlib as mpl  # noqa: PLC0415

    rounds = np.asarray(rounds)
    mass = np.asarray(mass, float)
    edges = np.asarray(edges, float)
    if mass.ndim != 2 or mass.shape != (len(rounds), len(edges) - 1):
        raise GradscopeError(f"mass must be [rounds, bins] = [{len(rounds)}, {len(edges) - 1}], got {mass.shape}")
    if len(rounds) == 0:
        raise GradscopeError("no recorded rounds to plot")
    ax = new_axes(ax, (7.5, 1.2 + 0.55 * len(rounds)))
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
            ax.set_xlabel(f"weight gradient of unpruned weights (symmetric log, linear within ±{thresh:.1g})")
        else:
            ax.set_xlabel("weight gradient of unpruned weights")
        ax.set_xlim(-span, span)
    ax.set_yticks(np.arange(len(rounds)))
    ax.set_yticklabels([f"round {int(r)}" + (f"\n{100 * s:.0f}% pruned" if np.isfinite(s) else "")
                        for r, s in zip(rounds, sp)], fontsize="small")
    ax.set_ylim(-0.1, len(rounds) - 1 + overlap + 0.2)
    if has_sp:
        sm = mpl.cm.ScalarMappable(norm=norm, cmap=cm)
        ax.figure.colorbar(sm, ax=ax, label="sparsity (pruned fraction)", pad=0.01)
    if title:
        ax.set_title(title)
    return ax


# ----------------------------------------------------------------------------- narrowing
def draw_narrowing(narrowing: pd.DataFrame, statistic: str = "std", layers: Optional[Sequence[str]] = None,
                   ax=None, title: Optional[str] = None):
    """Fitted scale relative to round 0 (``ratio``) vs sparsity: pooled (black, thick) and
    each layer, with confidence bands (``ratio_lo``..``ratio_hi``) where given."""
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
    names = [x for x in names if x != "pooled"] + (["pooled"] if "pooled" in names else [])
    ax = new_axes(ax)
    for i, name in enumerate(names):
        g = n[n["layer"] == name].sort_values("sparsity")
        x = 100 * g["sparsity"].to_numpy(float)
        pooled = name == "pooled"
        color = "k" if pooled else f"C{i % 10}"
        ax.plot(x, g["ratio"], marker="o", ms=4 if pooled else 3, lw=2.4 if pooled else 1.0,
                color=color, label=str(name), zorder=3 if pooled else 2)
        if {"ratio_lo", "ratio_hi"} <= set(g.columns) and np.isfinite(g["ratio_lo"]).any():
            ax.fill_between(x, g["ratio_lo"], g["ratio_hi"], color=color, alpha=0.2 if pooled else 0.1, lw=0)
    ax.axhline(1.0, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("sparsity (% of prunable weights pruned)")
    ax.set_ylabel(f"{statistic} / {statistic} at round 0")
    ax.set_title(title or f"Narrowing of the weight-gradient distribution ({statistic})")
    ax.legend(fontsize="small", ncol=2 if len(names) > 6 else 1)
    return ax


# ----------------------------------------------------------------------------- calibration
def draw_calibration(points: pd.DataFrame, curve: Optional[pd.DataFrame] = None,
                     presets: Optional[Mapping[str, Sequence[float]]] = None,
                     oracle: Optional[pd.DataFrame] = None, used: Optional[pd.DataFrame] = None,
                     ax=None, title: Optional[str] = None, note: Optional[str] = None):
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
        if {"max_lr_lo", "max_lr_hi"} <= set(curve.columns):
            ax.fill_between(curve["round"], curve["max_lr_lo"], curve["max_lr_hi"], color="C0", alpha=0.15,
                            lw=0, label="fit 95% band")
    for i, (name, peaks) in enumerate((presets or {}).items()):
        ax.plot(np.arange(len(peaks)), peaks, color=f"C{i + 1}", ls="--", lw=1.3, label=f"preset {name}")
    if used is not None and len(used):
        _need(used, ["round", "max_lr"], "used max_lr table")
        ax.plot(used["round"], used["max_lr"], color="0.5", ls=":", marker=".", label="max_lr used by the run")
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
                    label="implied by measured narrowing", zorder=5)
    else:
        ax.plot(p["round"], p["implied_max_lr"], "o", color="k", ms=5, label="implied by measured narrowing",
                zorder=5)
    ax.set_xlabel("pruning round")
    ax.set_ylabel("max_lr")
    ax.set_title(title or "SILO calibration: max_lr over rounds")
    if note:
        ax.text(0.02, 0.97, note, transform=ax.transAxes, va="top", fontsize="small", color="C3", wrap=True)
    ax.legend(fontsize="small", loc="best")
    return ax


# ----------------------------------------------------------------------------- accuracy
def draw_accuracy(runs: Mapping[str, pd.DataFrame], metric: str = "test_acc", ax=None,
                  title: Optional[str] = None):
    """Accuracy vs sparsity, one line per run (label -> per-round table with ``sparsity`` and
    ``metric``)."""
    if not runs:
        raise GradscopeError("accuracy plot needs at least one run")
    ax = new_axes(ax)
    markers = "osD^vP*X"
    for i, (label, t) in enumerate(runs.items()):
        _need(t, ["sparsity", metric], f"round table of {label}")
        t = t.sort_values("sparsity")
        ax.plot(100 * t["sparsity"].to_numpy(float), 100 * t[metric].to_numpy(float),
                marker=markers[i % len(markers)], ms=4, lw=1.4, label=str(label))
    ax.set_xlabel("sparsity (% of prunable weights pruned)")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    ax.set_title(title or f"{metric.replace('_', ' ').capitalize()} vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax
