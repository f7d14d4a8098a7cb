"""``gradscope plot probes RUN``: what each recorded probe implies for max_lr per round, and the
range test's curves (``--probe lr-range``). Figures take ``ax=`` and return the Axes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


from gradscope import GradscopeError
from gradscope.plot.figures import integer_ticks, new_axes, place_legend, series_styles


def probe_curves(run_dir, at: str = "start", names: Optional[Sequence[str]] = None) -> dict:
    """``{predictor: DataFrame(round, implied_max_lr, lo, hi)}`` for every probe recorded in the run
    (each probe's first variant unless ``names`` lists predictors); lo/hi map the smallest and
    largest repeat through the same rule (the repeats' spread)."""
    from gradscope.calibrate.predictor import _round0_max_lr, _run_config, predictor_points, predictor_values  # noqa: PLC0415
    from gradscope.probes.registry import PROBES  # noqa: PLC0415
    from gradscope.store.probes import read_probes  # noqa: PLC0415

    recs = read_probes(run_dir)
    max_lr0 = _round0_max_lr(Path(run_dir))
    if max_lr0 is None:
        raise GradscopeError(f"round 0's max_lr is not in {Path(run_dir) / 'rounds.json'} (has round 0 finished?)")
    p = (_run_config(Path(run_dir)).get("prune") or {}).get("prune_rate") or 0.2  # x is not drawn; rounds are
    if names is None:
        have = sorted({r["probe"] for r in recs if r["at"] == at})
        names = [n if not PROBES.get(n).variants[0] else f"{n}:{PROBES.get(n).variants[0]}" for n in have]
    out = {}
    for name in names:
        try:
            vals = predictor_values(recs, name, at)
            pts = predictor_points(vals, name, max_lr0=max_lr0, p=p, lag=1)
        except GradscopeError:
            continue  # e.g. a probe without round 0: nothing to draw
        out[name] = pts
    if not out:
        raise GradscopeError(f"{run_dir}: no probe with a usable round 0 was recorded at {at!r}")
    return out


def draw_probes(curves: dict, max_lr0: Optional[float] = None, at: str = "start", ax=None):
    """Implied max_lr per round, one line per predictor, on a log axis (round 0 = max_lr0 for all)."""
    ax = new_axes(ax)
    for (name, pts), st in zip(curves.items(), series_styles(len(curves))):
        ax.plot(pts["round"], pts["implied_max_lr"], label=name, **st)
    if max_lr0:
        ax.axhline(max_lr0, color="0.5", lw=0.8, ls=":", label=f"constant max_lr {max_lr0:g} (round 0's)")
    ax.set_yscale("log")
    ax.set_xlabel("pruning round")
    ax.set_ylabel("implied max_lr (one constant fitted on round 0)")
    ax.set_title(f"What each probe implies for max_lr (measured at each round's {at})", fontsize="medium")
    integer_ticks(ax.xaxis)
    place_legend(ax)
    return ax


def draw_lr_range(records: Sequence[dict], ax=None):
    """The range test's smoothed loss against LR, one line per round, divergence points marked."""
    ax = new_axes(ax)
    recs = sorted(records, key=lambda r: r["round"])
    for r, st in zip(recs, series_styles(len(recs))):
        res = r["result"]
        ax.plot(res["lr"], res["smoothed"], color=st["color"], ls=st["ls"], lw=1.2,
                label=f"round {r['round']} (sparsity {100 * (r.get('sparsity') or 0):.0f} %)")
        if res.get("divergence_lr"):
            i = res["lr"].index(res["divergence_lr"])
            ax.plot([res["lr"][i]], [res["smoothed"][i]], "x", color=st["color"], ms=8)
        v = (res.get("suggestions") or {}).get("valley")
        if v:
            ax.axvline(v, color=st["color"], lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (exponential steps)")
    ax.set_ylabel("training loss (EMA 0.98, debiased)")
    ax.set_title("LR range test per round (x: divergence, smoothed loss > 4x min; dotted: fastai valley)",
                 fontsize="medium")
    place_legend(ax)
    return ax


def plot_probes(run_dir, at: str = "start", probe: Optional[str] = None, ax=None):
    """``plot probes RUN``: implied max_lr of every probe, or ``probe="lr-range"``'s curves."""
    from gradscope.calibrate.predictor import _round0_max_lr  # noqa: PLC0415
    from gradscope.store.probes import read_probes  # noqa: PLC0415

    if not Path(run_dir).is_dir():
        raise GradscopeError(f"plot probes reads a run directory's probes.json; {run_dir} is not a directory")
    if probe == "lr-range":
        recs = [r for r in read_probes(run_dir) if r["probe"] == "lr-range" and r["at"] == at]
        if not recs:
            raise GradscopeError(f"{run_dir}: no lr-range records at {at!r} (run with --probes lr-range)")
        return draw_lr_range(recs, ax=ax)
    curves = probe_curves(run_dir, at, None if probe is None else [probe])
    return draw_probes(curves, _round0_max_lr(Path(run_dir)), at, ax=ax)
