"""One self-contained HTML page per set of runs: config, per-round table, figures (base64 PNG,
150 dpi, each with a caption) and fit diagnostics. Written atomically (temporary file + rename).

A run file that cannot be read (damaged, truncated, not a gradscope file) stops the report
with a GradscopeError before anything is written; a section that cannot be drawn for an
expected reason (too few rounds to calibrate, no Oracle) shows a note in its place.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

import pandas as pd

from gradscope import GradscopeError, __version__
from gradscope.views import DEFAULT_VIEW, DEFAULT_WINDOW
from gradscope.plot.figures import new_axes
from gradscope.plot.runs import (RunSource, _reader, plot_accuracy, plot_calibration, plot_histograms, plot_narrowing,
                                 plot_spread, resolve_run, run_config, run_fit, run_rounds, view_label)

DPI = 150

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 7px;
text-align:right}th{background:#f0f0f0}img{max-width:100%;height:auto;display:block;margin:.3em 0}
figure{margin:1em 0 1.5em 0}figcaption{font-size:13.5px;color:#444;max-width:60em}
pre{background:#f7f7f7;padding:.6em;font-size:12px;overflow-x:auto;max-height:24em}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:8px}.note{color:#a33}.meta{color:#666;font-size:13px}
details{margin:.5em 0}.status{padding:.4em .7em;border-left:4px solid #a33;background:#fbf3f3}
.status.ok{border-color:#3a3;background:#f3fbf3}
"""


def figure_png(ax_or_fig, dpi: int = DPI) -> str:
    """A figure (or an Axes' figure) as a base64 PNG string."""
    fig = getattr(ax_or_fig, "figure", ax_or_fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _figure(ax_or_fig, alt: str, caption: str) -> str:
    """A figure with its caption (what is drawn, what the bands are)."""
    return (f"<figure>{_img(figure_png(ax_or_fig), alt)}<figcaption>{html.escape(caption)}</figcaption>"
            "</figure>")


def _table(df: pd.DataFrame, max_rows: int = 60) -> str:
    if len(df) > max_rows:
        df = df.head(max_rows)
    return df.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}", escape=True)


def trend_block(fit) -> str:
    """The fit diagnostics' trend table, or the reason there is none (fewer than 3 rounds)."""
    from gradscope.fit import TREND_WORDING, format_trend  # noqa: PLC0415

    tr = format_trend(fit)
    body = _table(tr) if len(tr) else ('<p class="note">No trend: a slope needs 3 or more rounds with a usable '
                                       f'scale; this run has {fit.pooled["round"].nunique()}.</p>')
    return f"<h4>Trend of each statistic: {html.escape(TREND_WORDING)}</h4>\n{body}"


def _section(title: str, fn: Callable[[], str]) -> str:
    """A report section; a GradscopeError inside becomes a visible note, not a failed report."""
    try:
        body = fn()
    except GradscopeError as e:
        body = f'<p class="note">{html.escape(str(e))}</p>'
    return f"<h3>{html.escape(title)}</h3>\n{body}\n"


def percent_table(t: pd.DataFrame) -> pd.DataFrame:
    """The per-round table with sparsity and accuracies in percent, as the CLI prints them."""
    out = pd.DataFrame({"round": t["round"]})
    names = {"sparsity": "sparsity (%)", "target_sparsity": "target sparsity (%)", "max_lr": "max_lr",
             "train_loss": "train loss", "val_acc": "val acc (%)", "test_acc": "test acc (%)", "time_s": "time (s)"}
    for c, name in names.items():
        if c in t:
            v = pd.to_numeric(t[c], errors="coerce")
            out[name] = 100 * v if "(%)" in name else v
    return out


def check_run_readable(src: RunSource) -> None:
    """Read every table of the run once, so a damaged file fails the report with one clear
    GradscopeError (and a non-zero exit) instead of a note inside the page."""
    run_config(src)
    run_rounds(src)
    if src.h5 is None:
        return
    r = _reader(src)
    try:
        if hasattr(r, "verify"):  # every committed row, samples and derived tables included
            r.verify()
        else:
            r.layers()
            r.rounds()
            r.moments()
            r.histograms()
    except GradscopeError as e:
        raise GradscopeError(f"{src.h5} cannot be read: {e}") from None
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise GradscopeError(f"{src.h5} is damaged: {str(e).splitlines()[0]}") from None


_PROBE_ORDER = {"start": 0, "epoch1": 1}
_WHEN = {"start": "at each round's start (the pruned, rewound network)", "epoch1": "after each round's first epoch"}


def _probe_records(run_dir) -> list:
    """RUN/probes.json's records (checksum verified by ``read_probes``), each checked for the
    fields the report reads; a GradscopeError says what is wrong."""
    from gradscope.store.probes import read_probes  # noqa: PLC0415

    recs = read_probes(run_dir, required=False)
    for i, r in enumerate(recs):
        ok = (isinstance(r, dict) and isinstance(r.get("probe"), str) and isinstance(r.get("at"), str)
              and isinstance(r.get("round"), int) and not isinstance(r.get("round"), bool)
              and isinstance(r.get("values"), dict) and all(isinstance(v, list) for v in r["values"].values())
              and isinstance(r.get("cv", {}), dict))
        if not ok:
            raise GradscopeError(f"record {i} of probes.json lacks probe/at/round/values or has them of the wrong "
                                 "type")
    return recs


def _num(v) -> float:
    """A number from a record (None, strings, non-finite -> NaN)."""
    import math  # noqa: PLC0415

    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    return float(v) if math.isfinite(float(v)) else math.nan


def probe_table_rows(recs: list, probe: str, at: str, implied: Optional[pd.DataFrame]) -> pd.DataFrame:
    """Per round of one probe measured ``at``: sparsity, the predictor's value (mean over
    repeats), its implied max_lr, the cost (forward+backward passes, share of an Oracle round)
    and the CV over repeats, with labelled column names."""
    from gradscope.probes.registry import split_predictor  # noqa: PLC0415

    spec, variant = split_predictor(probe)
    key = variant or "value"
    rows = []
    for r in sorted((r for r in recs if r["probe"] == spec.name and r["at"] == at), key=lambda r: r["round"]):
        vals = [_num(v) for v in r["values"].get(key, [])]
        vals = [v for v in vals if v == v]
        share = _num(r.get("share_of_oracle_round"))
        rows.append({"round": r["round"], "sparsity (%)": 100 * _num(r.get("sparsity")),
                     f"{spec.label} (mean over repeats)": sum(vals) / len(vals) if vals else float("nan"),
                     "repeats": r.get("repeats") if isinstance(r.get("repeats"), int) else len(r["values"].get(key, [])),
                     "CV over repeats": _num(r["cv"].get(key)) if isinstance(r.get("cv"), dict) else float("nan"),
                     "cost (forward+backward passes)": _num(r.get("fb_equiv")),
                     "cost (% of an Oracle round)": 100 * share,
                     "_assumed": bool(r.get("oracle_cost_assumed"))})
    t = pd.DataFrame(rows)
    if implied is not None and len(t):
        t.insert(3, "implied max_lr", t["round"].map(dict(zip(implied["round"], implied["implied_max_lr"]))))
    return t


def probes_html(run_dir) -> str:
    """The run's probes: a section per recorded probe (and time of measurement) with its rule,
    per-round table and one figure of every probe's implied max_lr (``plot probes``); '' when
    the run has no probes.json; one line saying why when probes.json cannot be used."""
    from gradscope.calibrate.predictor import _round0_max_lr, _run_config, predictor_points, predictor_values  # noqa: PLC0415
    from gradscope.plot import probes as plot_probes  # noqa: PLC0415 - `plot probes`' drawing functions
    from gradscope.probes.registry import PROBES  # noqa: PLC0415
    from gradscope.store.probes import probes_path  # noqa: PLC0415

    if run_dir is None or not (os.path.lexists(probes_path(run_dir))):
        return ""
    head = "<h3>Probes</h3>\n"
    try:
        recs = _probe_records(run_dir)
    except GradscopeError as e:
        return head + f'<p class="note">probes.json skipped: {html.escape(str(e))}</p>'
    if not recs:
        return head + '<p class="note">probes.json holds no records.</p>'
    try:
        max_lr0 = _round0_max_lr(Path(run_dir))
        cfg = _run_config(Path(run_dir))
    except GradscopeError:  # rounds.json or config.json unreadable: their own sections say so
        max_lr0, cfg = None, {}
    p = float((cfg.get("prune") or {}).get("prune_rate") or 0.2)
    lag = int((cfg.get("schedule") or {}).get("lag") or 1)
    parts = [head, '<p class="meta">RUN/probes.json, checksum verified. Value: the predictor\'s number, mean over '
             "the probe's repeats (different probe seeds, i.e. batches); implied max_lr: its rule with the one constant "
             "fitted on round 0 (round 0's max_lr"
             + (f" = {max_lr0:.4g}" if max_lr0 else ", not in rounds.json yet: no implied column") + "); cost: the "
             "median repeat's wall time over one timed forward+backward pass at the training batch size, and that as a "
             "share of one Oracle round (grid points × seeds × epochs × steps per epoch passes).</p>"]
    by_at = sorted({r["at"] for r in recs}, key=lambda a: (_PROBE_ORDER.get(a, 9), a))
    for at in by_at:
        for name in sorted({r["probe"] for r in recs if r["at"] == at}):
            title = f"Probe {name}, measured {_WHEN.get(at, 'at ' + repr(at))}"
            try:
                spec = PROBES.get(name)
            except GradscopeError:
                parts.append(f"<h4>{html.escape(title)}</h4>\n<p class=\"note\">skipped: {html.escape(name)!s} is not "
                             "a probe this gradscope knows</p>")
                continue
            pred = name if not spec.variants[0] else f"{name}:{spec.variants[0]}"
            body = [f"<h4>{html.escape(title)}</h4>",
                    f"<p>{html.escape(spec.label)}; implied rule: {html.escape(spec.rule)}"
                    + (f" (rule shown: {html.escape(spec.variants[0])}; others: "
                       f"{html.escape(', '.join(v for v in spec.variants[1:]))})" if spec.variants[0] else "") + "</p>"]
            try:
                implied = None
                note = ""
                if max_lr0:
                    try:
                        implied = predictor_points(predictor_values(recs, pred, at), pred, max_lr0=max_lr0, p=p, lag=lag)
                    except GradscopeError as e:
                        note = f'<p class="note">no implied max_lr: {html.escape(str(e))}</p>'
                t = probe_table_rows(recs, pred, at, implied)
                assumed = bool(len(t)) and bool(t["_assumed"].any())
                t = t.drop(columns="_assumed")
                if assumed:
                    t = t.rename(columns={"cost (% of an Oracle round)": "cost (% of an Oracle round, 7 x 3 grid assumed)"})
                if len(t) and t["CV over repeats"].isna().all():
                    t = t.drop(columns="CV over repeats")
                    note += ('<p class="meta">No CV: ' + ("a deterministic probe, measured once per round." if not spec.random
                                                          else "fewer than 2 repeats recorded.") + "</p>")
                body += [_table(t), note]
            except (GradscopeError, KeyError, TypeError, ValueError) as e:  # a hostile record that passed its checksum
                body.append(f'<p class="note">skipped: its records are malformed ({html.escape(type(e).__name__)}: '
                            f"{html.escape(str(e).splitlines()[0] if str(e) else '')})</p>")
            parts.append("\n".join(body))
        if max_lr0:
            try:
                curves = {}
                for n in sorted({r["probe"] for r in recs if r["at"] == at}):
                    if n not in PROBES:
                        continue
                    pred = n if not PROBES.get(n).variants[0] else f"{n}:{PROBES.get(n).variants[0]}"
                    try:  # as probe_curves (plot probes) does, a malformed probe left out rather than the figure
                        curves[pred] = predictor_points(predictor_values(recs, pred, at), pred, max_lr0=max_lr0, p=p,
                                                        lag=lag)
                    except (GradscopeError, KeyError, TypeError, ValueError):
                        continue
                if not curves:
                    raise GradscopeError("no probe this gradscope knows has a usable round 0")
                parts.append(_figure(plot_probes.draw_probes(curves, max_lr0, at), f"probes' implied max_lr ({at})", (
                    f"The max_lr each probe implies per round ({_WHEN.get(at, at)}), each probe's first rule, one "
                    f"constant fitted on round 0 so that every line starts at round 0's max_lr {max_lr0:.4g} (dotted: "
                    "that constant every round); log axis. A line above the dotted one says 'raise max_lr'. Read it "
                    "with the Oracle: a probe predicts max_lr only where the Oracle's optimum moves the same way.")))
            except (GradscopeError, KeyError, TypeError, ValueError) as e:
                parts.append(f'<p class="note">no figure of the implied max_lr ({html.escape(at)}): '
                             f"{html.escape(str(e).splitlines()[0] if str(e) else type(e).__name__)}</p>")
        lr = [r for r in recs if r["probe"] == "lr-range" and r["at"] == at and isinstance(r.get("result"), dict)]
        if lr:
            try:
                parts.append(_figure(plot_probes.draw_lr_range(lr), f"LR range test ({at})", (
                    "The range test per round: training loss (EMA 0.98, debiased) while the LR grows exponentially "
                    "step by step; x: the divergence point (first LR whose smoothed loss exceeds 4 x the minimum); "
                    "dotted: fastai's valley suggestion.")))
            except (KeyError, TypeError, ValueError, IndexError) as e:
                parts.append(f'<p class="note">no range-test figure ({html.escape(at)}): malformed curve '
                             f"({html.escape(type(e).__name__)})</p>")
    return "\n".join(parts)


def _run_html(src: RunSource, bootstrap: int, view: str = DEFAULT_VIEW, window: str = DEFAULT_WINDOW) -> str:
    vw = {"view": view, "window": window}
    parts = [f"<h2>Run {html.escape(src.label)}</h2>",
             f'<p class="meta">{html.escape(str(src.h5 or src.run_dir))}</p>']
    cfg = run_config(src)
    parts.append(f"<details><summary>Configuration</summary><pre>{html.escape(json.dumps(cfg, indent=2, default=str))}"
                 "</pre></details>")
    parts.append(_section("Per-round table", lambda: _table(percent_table(run_rounds(src)))))
    parts.append(probes_html(src.run_dir))  # no probes.json: nothing; probes need no run.h5
    if src.h5 is None:
        parts.append('<p class="note">No run.h5 (gradients not recorded): no histograms, fits or calibration.</p>')
        return "\n".join(parts)
    parts.append(f'<p class="meta">Every gradient number below: {html.escape(view_label(view, window))}.</p>')
    fit_box = {}

    def fit():
        if "fit" not in fit_box:
            fit_box["fit"] = run_fit(src, bootstrap=bootstrap, **vw)
        return fit_box["fit"]

    def spread():
        from matplotlib.figure import Figure  # noqa: PLC0415

        fig = Figure(figsize=(9, 8.6), layout="constrained")
        a, b = fig.subplots(2, 1)
        plot_spread(src, relative=True, ax=a, **vw)
        plot_spread(src, relative=False, ax=b, **vw)
        return _figure(fig, "spread of |g| per round", (
            "Top: each percentile of |g| (pooled ReLU-fed layers) and the exact std, relative to round 0; "
            "below 1 means narrower than the dense network. Bottom: the same per round on a log axis: dark band "
            "= middle 50 % of |g|, light band = middle 90 %, line = median, diamonds = std. Percentiles come "
            "from the histograms (interpolated within a bin: with the default log-spaced bins they are "
            "resolved to about a quarter of their value); the std is exact."))

    def hists():
        lay = _reader(src).layers()
        names = [n for n, r, rec in zip(lay["layer"], lay["relu_fed"], lay.get("recorded", lay["relu_fed"]))
                 if r and rec][:6]
        cap = ("Distribution of the gradients per round on a symmetric log axis, coloured by sparsity. Each ridge "
               "is scaled to its own tallest bin: shapes compare, heights do not (the spread figure above shows "
               "how much the spread changes).")
        out = _figure(plot_histograms(src, **vw), "pooled histograms", cap)
        per = [_img(figure_png(plot_histograms(src, layer=n, **vw)), f"histograms {n}") for n in names]
        return (out + "<details><summary>each ReLU-fed layer (first 6)</summary><div class=\"grid\">"
                + "".join(per) + "</div></details>")

    parts.append(_section("Spread of the gradients per round", spread))
    parts.append(_section("Gradient distributions per round", hists))
    parts.append(_section("Narrowing", lambda: _figure(
        plot_narrowing(src, fit=fit(), **vw), "narrowing",
        "The std of the gradients relative to round 0, per layer and pooled over the ReLU-fed layers, against "
        "sparsity. Grey band: 95 % CI of the pooled ratio by the delta method, treating gradient values as "
        "independent; they are not (values of one step share a batch), so the band is too narrow and the trend "
        "test in the fit diagnostics is the honest one.")))

    def calibration():
        from gradscope.calibrate import STATUS_WORDS, calibrate_run  # noqa: PLC0415

        try:
            cal = calibrate_run(str(src.h5), fit=fit(), **vw)
            status = (f'<p class="status{" ok" if cal.status == "supported" else ""}">status <b>{cal.status}</b>: '
                      f"{html.escape(STATUS_WORDS[cal.status])}</p>")
        except GradscopeError:
            status = ""
        cap = ("Black points: the max_lr that keeps max_lr × std constant, implied by each round's narrowing "
               "(error bars: 95 % CI of the ratio). Blue: the SILO S-curve fitted to them, with its pointwise 95 % "
               "band (delta method, Student-t quantile for the fit's degrees of freedom). Dashed: released preset; "
               "grey: the max_lr this run used; red bars and stars: the Oracle's interval and best max_lr, when "
               "the run has them.")
        return status + _figure(plot_calibration(src, fit=fit(), **vw), "calibration", cap)
    parts.append(_section("Calibration", calibration))

    def diagnostics():
        from gradscope.calibrate import calibrate_run, describe_calibration, format_calibration  # noqa: PLC0415
        from gradscope.fit import format_summary  # noqa: PLC0415

        f = fit()
        out = ["<h4>Pooled fits per round</h4>", _table(format_summary(f))]
        out.append(trend_block(f))
        try:
            cal = calibrate_run(str(src.h5), fit=f, **vw)
            out += ["<h4>Calibrated SILO parameters (95 % CI: value ± t × SE)</h4>", _table(format_calibration(cal)),
                    "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in describe_calibration(cal)) + "</ul>"]
        except GradscopeError as e:
            out.append(f'<p class="note">Calibration: {html.escape(str(e))}</p>')
        return "\n".join(out)
    parts.append(_section("Fit diagnostics", diagnostics))
    return "\n".join(parts)


def build_report(runs: Sequence, *, title: Optional[str] = None, bootstrap: int = 200, view: str = DEFAULT_VIEW,
                 window: str = DEFAULT_WINDOW) -> str:
    """The HTML text of a report on one or more runs (RUN.h5 or RUN_DIR each). Bad options and
    unreadable run files raise GradscopeError before any figure is drawn."""
    from gradscope.fit import check_bootstrap, check_view, check_window  # noqa: PLC0415

    check_bootstrap(bootstrap)
    check_view(view)
    check_window(window)
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    if not runs:
        raise GradscopeError("report needs at least one run")
    srcs = [resolve_run(r) for r in runs]
    for s in srcs:
        check_run_readable(s)
    title = title or ("gradscope report: " + ", ".join(s.label for s in srcs))
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="meta">gradscope {__version__}, generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; '
            f"gradient statistics: {html.escape(view_label(view, window))}</p>"]
    body.append("<h2>All runs</h2>")
    body.append(_section("Accuracy vs sparsity", lambda: _figure(
        plot_accuracy(srcs, "test_acc"), "accuracy vs sparsity",
        "Test accuracy (%) against sparsity (% of prunable weights pruned), one line per run; 0 % is the dense "
        "round 0. A run whose values equal an earlier run's is labelled “(= that run)”, and earlier lines are "
        "drawn wider so both stay visible. Error bars (runs that record their test-set size in rounds.json): the "
        "95 % Wilson interval of each accuracy.")))

    def schedules():
        from gradscope.plot.runs import plot_run_schedules  # noqa: PLC0415

        ax = plot_run_schedules(srcs, steps_per_round=50, ax=new_axes(None, (9, 3.4)))
        p = (run_config(srcs[0]).get("prune") or {}).get("prune_rate", 0.2)
        ax.set_title("LR over rounds of each run's schedule (its parameters, planned sparsity)", fontsize="medium")
        return _figure(ax, "schedules", "Learning rate per step of each run's schedule over its rounds, computed "
                       f"from the run's schedule parameters at the planned sparsity 1-(1-p)^k (p = {float(p):g}); "
                       "50 steps per round drawn, ticks at the start of each round. silo-auto is drawn with its "
                       "prior parameters.")
    body.append(_section("Schedules", schedules))
    for s in srcs:
        body.append(_run_html(s, bootstrap, view, window))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(runs: Sequence, out, *, title: Optional[str] = None, bootstrap: int = 200, view: str = DEFAULT_VIEW,
                 window: str = DEFAULT_WINDOW) -> Path:
    """Write ``build_report`` to ``out`` atomically (an existing file is replaced only on success)."""
    from gradscope.atomic import atomic_text, check_target  # noqa: PLC0415

    out = Path(os.fspath(out))
    check_target(out, "the report")  # before the (slow) report is built: a long name, a link, a folder
    if not out.parent.is_dir():
        raise GradscopeError(f"directory {out.parent} does not exist")
    text = build_report(runs, title=title, bootstrap=bootstrap, view=view, window=window)
    return atomic_text(out, text, "the report")
