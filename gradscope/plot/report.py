"""One self-contained HTML page per set of runs: config, per-round table, figures (base64 PNG)
and fit diagnostics. Written atomically (temporary file + rename)."""
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
from gradscope.plot.figures import new_axes
from gradscope.plot.runs import (RunSource, plot_accuracy, plot_calibration, plot_histograms, plot_narrowing,
                                 resolve_run, run_config, run_fit, run_rounds)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 7px;
text-align:right}th{background:#f0f0f0}img{max-width:100%;height:auto;display:block;margin:.5em 0}
pre{background:#f7f7f7;padding:.6em;font-size:12px;overflow-x:auto;max-height:24em}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:8px}.note{color:#a33}.meta{color:#666;font-size:13px}details{margin:.5em 0}
"""


def figure_png(ax_or_fig, dpi: int = 90) -> str:
    """A figure (or an Axes' figure) as a base64 PNG string."""
    fig = getattr(ax_or_fig, "figure", ax_or_fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _table(df: pd.DataFrame, max_rows: int = 60) -> str:
    if len(df) > max_rows:
        df = df.head(max_rows)
    return df.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4g}", escape=True)


def _section(title: str, fn: Callable[[], str]) -> str:
    """A report section; a GradscopeError inside becomes a visible note, not a failed report."""
    try:
        body = fn()
    except GradscopeError as e:
        body = f'<p class="note">{html.escape(str(e))}</p>'
    return f"<h3>{html.escape(title)}</h3>\n{body}\n"


def _run_html(src: RunSource, bootstrap: int) -> str:
    parts = [f"<h2>Run {html.escape(src.label)}</h2>",
             f'<p class="meta">{html.escape(str(src.h5 or src.run_dir))}</p>']
    cfg = run_config(src)
    parts.append(f"<details><summary>Configuration</summary><pre>{html.escape(json.dumps(cfg, indent=2, default=str))}"
                 "</pre></details>")

    def rounds_tbl():
        t = run_rounds(src)
        cols = [c for c in ("round", "sparsity", "target_sparsity", "max_lr", "train_loss", "val_acc", "test_acc",
                            "time_s") if c in t]
        return _table(t[cols])
    parts.append(_section("Per-round table", rounds_tbl))
    if src.h5 is None:
        parts.append('<p class="note">No run.h5 (gradients not recorded): no histograms, fits or calibration.</p>')
        return "\n".join(parts)
    fit_box = {}

    def fit():
        if "fit" not in fit_box:
            fit_box["fit"] = run_fit(src, bootstrap=bootstrap)
        return fit_box["fit"]

    def hists():
        from gradscope.store import open_run  # noqa: PLC0415

        lay = open_run(str(src.h5)).layers()
        names = [n for n, r, rec in zip(lay["layer"], lay["relu_fed"], lay.get("recorded", lay["relu_fed"]))
                 if r and rec][:6]
        out = [_img(figure_png(plot_histograms(src)), "pooled histograms")]
        per = [_img(figure_png(plot_histograms(src, layer=n)), f"histograms {n}") for n in names]
        return (out[0] + "<details open><summary>each ReLU-fed layer</summary><div class=\"grid\">"
                + "".join(per) + "</div></details>")

    parts.append(_section("Gradient distributions per round", hists))
    parts.append(_section("Narrowing", lambda: _img(figure_png(plot_narrowing(src, fit=fit())), "narrowing")))
    parts.append(_section("Calibration", lambda: _img(figure_png(plot_calibration(src, fit=fit())), "calibration")))

    def diagnostics():
        from gradscope.calibrate import calibrate_run, format_calibration  # noqa: PLC0415
        from gradscope.fit import format_summary, format_trend  # noqa: PLC0415

        f = fit()
        out = ["<h4>Pooled fits per round</h4>", _table(format_summary(f))]
        out += ["<h4>Trend of each statistic (slope of log ratio vs sparsity)</h4>", _table(format_trend(f))]
        try:
            cal = calibrate_run(str(src.h5), fit=f)
            out += ["<h4>Calibrated SILO parameters</h4>", _table(format_calibration(cal)),
                    f'<p class="meta">rmse(log)={cal.uncertainty.get("rmse_log", float("nan")):.3g}, '
                    f'dof={cal.uncertainty.get("dof")}, at bound: {cal.uncertainty.get("at_bound") or "none"}</p>']
        except GradscopeError as e:
            out.append(f'<p class="note">Calibration: {html.escape(str(e))}</p>')
        return "\n".join(out)
    parts.append(_section("Fit diagnostics", diagnostics))
    return "\n".join(parts)


def build_report(runs: Sequence, *, title: Optional[str] = None, bootstrap: int = 200) -> str:
    """The HTML text of a report on one or more runs (RUN.h5 or RUN_DIR each)."""
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    if not runs:
        raise GradscopeError("report needs at least one run")
    srcs = [resolve_run(r) for r in runs]
    title = title or ("gradscope report: " + ", ".join(s.label for s in srcs))
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="meta">gradscope {__version__}, generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}</p>']
    body.append("<h2>All runs</h2>")
    body.append(_section("Accuracy vs sparsity",
                         lambda: _img(figure_png(plot_accuracy(srcs, "test_acc")), "accuracy vs sparsity")))

    def schedules():
        from gradscope.config import RunConfig  # noqa: PLC0415
        from gradscope.plot.schedules import plot_schedules  # noqa: PLC0415
        from gradscope.schedules import schedule_from_config  # noqa: PLC0415

        factories = {}
        for s in srcs:
            cfg = run_config(s)
            if not cfg.get("schedule"):
                continue
            sc = RunConfig.from_dict(cfg).schedule
            if sc.schedule == "silo-auto":
                import gradscope.calibrate  # noqa: F401,PLC0415 - registers silo-auto
            factories[f"{s.label} ({sc.schedule})"] = schedule_from_config(sc)
        if not factories:
            raise GradscopeError("the runs' configs name no schedule")
        rounds = max(int(run_rounds(s)["round"].max()) + 1 for s in srcs)
        p = (run_config(srcs[0]).get("prune") or {}).get("prune_rate", 0.2)
        ax = new_axes(None, (8, 3.2))
        plot_schedules(factories, rounds, 50, float(p), ax=ax)
        ax.set_title("LR over rounds of each run's schedule (its parameters, planned sparsity)")
        return _img(figure_png(ax), "schedules")
    body.append(_section("Schedules", schedules))
    for s in srcs:
        body.append(_run_html(s, bootstrap))
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(runs: Sequence, out, *, title: Optional[str] = None, bootstrap: int = 200) -> Path:
    """Write ``build_report`` to ``out`` atomically (an existing file is replaced only on success)."""
    out = Path(os.fspath(out))
    if out.is_dir():
        raise GradscopeError(f"{out} is a directory; give a file name like report.html")
    if not out.parent.exists():
        raise GradscopeError(f"directory {out.parent} does not exist")
    text = build_report(runs, title=title, bootstrap=bootstrap)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out
