"""gradscope.plot: figures from tables, run wrappers, the plot/report commands."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from gradscope import GradscopeError
from gradscope import plot as P
from gradscope.plot.commands import register


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def profile_run(tmp_path_factory):
    """A real 5-round recorded run on built-in digits (seconds)."""
    from gradscope.config import RunConfig
    from gradscope.train import PruningRun

    tmp = tmp_path_factory.mktemp("plotrun")
    cfg = RunConfig()
    cfg.data.dataset = "digits"
    cfg.model.model = "small_cnn"
    cfg.prune.rounds = 5
    cfg.train.epochs = 1
    cfg.train.threads = 1
    cfg.train.progress = False
    cfg.record.record = True
    cfg.data.cache_dir = str(tmp / "cache")
    cfg.out = str(tmp / "run")
    PruningRun(cfg, log=lambda s: None).run()
    return tmp / "run"


def _cli(argv):
    p = argparse.ArgumentParser(prog="gradscope")
    sub = p.add_subparsers(dest="command")
    register(sub)
    ns = p.parse_args(argv)
    try:
        return ns.func(ns)
    except GradscopeError as e:  # what cli.main does
        return f"error: {e}"


def _fake_index(rounds, layers, relu):
    rows = [{"round": r, "layer": l, "relu_fed": relu[l]} for r in rounds for l in layers]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- pure parts
def test_round_histograms_pools_relu_layers_and_normalises():
    edges = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    idx = _fake_index([0, 1], ["a", "b", "fc"], {"a": True, "b": True, "fc": False})
    counts = np.zeros((6, 4))
    counts[0] = [1, 0, 0, 0]  # r0 a
    counts[1] = [0, 3, 0, 0]  # r0 b
    counts[2] = [0, 0, 0, 100]  # r0 fc (not ReLU-fed: excluded from pooled)
    counts[3] = [0, 0, 2, 2]  # r1 a
    rounds, mass = P.round_histograms(counts, edges, idx)
    assert list(rounds) == [0, 1]
    np.testing.assert_allclose(mass[0], [0.25, 0.75, 0, 0])
    np.testing.assert_allclose(mass[1], [0, 0, 0.5, 0.5])
    _, m_fc = P.round_histograms(counts, edges, idx, layer="fc")
    np.testing.assert_allclose(m_fc[0], [0, 0, 0, 1])
    np.testing.assert_allclose(m_fc[1], 0)  # an empty round stays zero, not NaN
    with pytest.raises(GradscopeError, match="no histograms of layer"):
        P.round_histograms(counts, edges, idx, layer="nope")
    with pytest.raises(GradscopeError, match="shapes disagree"):
        P.round_histograms(counts[:, :3], edges, idx)


def test_draw_histograms_symlog_on_log_edges_and_colour_by_sparsity():
    pos = np.geomspace(1e-6, 1.0, 30)
    edges = np.concatenate([-pos[::-1], pos])
    rng = np.random.default_rng(0)
    mass = []
    for s in (1e-2, 5e-3):
        c, _ = np.histogram(rng.normal(0, s, 5000), bins=edges)
        mass.append(c / c.sum())
    ax = P.draw_histograms([0, 1], np.array(mass), edges, {0: 0.0, 1: 0.5})
    assert ax.get_xscale() == "symlog"
    assert len(ax.figure.axes) == 2  # main + sparsity colorbar
    fills = [p for p in ax.patches if p.get_fill()]
    assert len(fills) == 2
    assert fills[0].get_facecolor() != fills[1].get_facecolor()
    lin = P.draw_histograms([0], np.array([[0.5, 0.5]]), np.array([-1.0, 0.0, 1.0]))
    assert lin.get_xscale() == "linear"
    with pytest.raises(GradscopeError):
        P.draw_histograms([0, 1], np.array(mass)[:1], edges)


def test_draw_narrowing_pooled_last_with_bands():
    n = pd.DataFrame({"round": [0, 1, 0, 1], "sparsity": [0, 0.2, 0, 0.2], "layer": ["pooled", "pooled", "c1", "c1"],
                      "statistic": "std", "ratio": [1, 0.8, 1, 0.9], "ratio_lo": [1, 0.7, 1, 0.85],
                      "ratio_hi": [1, 0.9, 1, 0.95]})
    ax = P.draw_narrowing(n)
    lines = [l for l in ax.get_lines() if l.get_label() in ("pooled (ReLU-fed layers)", "c1")]
    assert [l.get_label() for l in lines] == ["c1", "pooled (ReLU-fed layers)"]
    np.testing.assert_allclose(lines[1].get_xdata(), [0, 20])  # sparsity in percent
    np.testing.assert_allclose(lines[1].get_ydata(), [1, 0.8])
    assert len(ax.collections) == 1  # the pooled band, which the legend names
    assert any(t.get_text().startswith("pooled: 95 % CI") for t in ax.get_legend().get_texts())
    assert ax.get_ylabel().startswith("std relative to round 0") and "sparsity" in ax.get_xlabel()
    with pytest.raises(GradscopeError, match="statistic 'iqr'"):
        P.draw_narrowing(n, statistic="iqr")
    with pytest.raises(GradscopeError, match="unknown layer"):
        P.draw_narrowing(n, layers=["zz"])
    with pytest.raises(GradscopeError, match="lacks column"):
        P.draw_narrowing(n.drop(columns="sparsity"))


def test_many_layers_are_coloured_by_depth_with_a_colour_bar():
    import matplotlib as mpl
    L = 18
    rows = [{"round": r, "sparsity": 0.2 * r, "layer": f"l{i:02d}", "statistic": "std", "ratio": 1 - 0.01 * i * r}
            for i in range(L) for r in range(3)]
    rows += [{"round": r, "sparsity": 0.2 * r, "layer": "pooled", "statistic": "std", "ratio": 1 - 0.05 * r}
             for r in range(3)]
    n = pd.DataFrame(rows)
    depth = {f"l{i:02d}": L - 1 - i for i in range(L)}  # reverse order in the network
    ax = P.draw_narrowing(n, depth=depth)
    assert len(ax.figure.axes) == 2 and "layer depth" in ax.figure.axes[1].get_xlabel()  # colour bar underneath
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["pooled (ReLU-fed layers)"]  # no 18-entry legend over the data
    per = [l for l in ax.get_lines() if l.get_label().startswith("_")][:L]
    cm = mpl.colormaps["viridis"]
    # the first line drawn is the shallowest layer (l17) in the colour of depth 0
    np.testing.assert_allclose(per[0].get_color(), cm(0.0))
    np.testing.assert_allclose(per[0].get_ydata(), [1, 1 - 0.17, 1 - 0.34])
    assert len({tuple(l.get_color()) for l in per}) == L  # no colour repeats


def _agg(fig):
    """Draw ``fig`` on an Agg canvas (what savefig uses) and return its renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _inside_and_apart(fig, *, apart=()):
    """Draw ``fig``; every text (labels, titles, legends, colour-bar labels) lies inside the figure
    (not cut off) and the bboxes in each pair of ``apart`` do not overlap."""
    r = _agg(fig)
    W, H = fig.bbox.width, fig.bbox.height
    texts = [t for a in fig.axes for t in (a.xaxis.label, a.yaxis.label, a.title, *a.texts) if t.get_text()]
    texts += [t for a in fig.axes if a.get_legend() for t in a.get_legend().get_texts()]
    for t in texts:
        b = t.get_window_extent(r)
        assert b.x0 >= -1 and b.y0 >= -1 and b.x1 <= W + 1 and b.y1 <= H + 1, (t.get_text()[:40], b, W, H)
    for a, b in apart:
        assert not a(r).overlaps(b(r)), (a(r), b(r))


def test_short_deep_runs_fit_their_figures():
    """2 rounds, 21 layers (issue 24.10): ridge labels and colour-bar label inside the figure, the
    narrowing legend apart from the depth colour bar, the calibration note off the data."""
    L = 21
    rows = [{"round": r, "sparsity": 0.2 * r, "layer": f"l{i:02d}", "statistic": "std", "ratio": 1 - 0.005 * i * r}
            for i in range(L) for r in range(2)]
    rows += [{"round": r, "sparsity": 0.2 * r, "layer": "pooled", "statistic": "std", "ratio": 1 - 0.02 * r,
              "ratio_lo": 1 - 0.03 * r, "ratio_hi": 1 - 0.01 * r} for r in range(2)]
    ax = P.draw_narrowing(pd.DataFrame(rows))
    cbar = ax.figure.axes[1]
    _inside_and_apart(ax.figure, apart=[(ax.get_legend().get_window_extent, cbar.get_window_extent)])

    pos = np.geomspace(1e-6, 1.0, 30)
    edges = np.concatenate([-pos[::-1], pos])
    rng = np.random.default_rng(0)
    mass = [np.histogram(rng.normal(0, s, 5000), bins=edges)[0] / 5000 for s in (1e-2, 5e-3)]
    ax = P.draw_histograms([0, 1], np.array(mass), edges, {0: 0.0, 1: 0.2})
    assert ax.figure.axes[1].get_ylabel()  # the colour bar is labelled, and the label fits
    _inside_and_apart(ax.figure)

    pts = pd.DataFrame({"round": [0, 1], "implied_max_lr": [0.05, 0.051], "implied_lo": [0.05, 0.0505],
                        "implied_hi": [0.05, 0.0515]})
    note = "no S-curve fit: calibration needs at least 3 usable rounds with pruned fraction x > 0 and 5 points"
    ax = P.draw_calibration(pts, presets={"resnet20": [0.03, 0.03]}, note=note)
    msg = next(t for t in ax.texts if t.get_text().startswith("no S-curve"))
    r = _agg(ax.figure)
    xy = ax.transData.transform(pts[["round", "implied_max_lr"]].to_numpy(float))
    box = msg.get_window_extent(r)
    assert not any(box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1 for x, y in xy)  # round 0's point stays visible
    _inside_and_apart(ax.figure)


def test_draw_calibration_shows_every_part():
    pts = pd.DataFrame({"round": [0, 1, 2], "implied_max_lr": [0.03, 0.035, 0.05],
                        "implied_lo": [0.03, 0.033, 0.045], "implied_hi": [0.03, 0.037, 0.055]})
    curve = pd.DataFrame({"round": [0, 1, 2], "max_lr": [0.03, 0.036, 0.049], "max_lr_lo": [0.03, 0.034, 0.045],
                          "max_lr_hi": [0.03, 0.038, 0.053]})
    oracle = pd.DataFrame({"round": [1, 2], "lo": [0.02, 0.04], "hi": [0.05, 0.08], "best": [0.03, 0.06]})
    ax = P.draw_calibration(pts, curve, {"resnet20": [0.03, 0.03, 0.032]}, oracle, note="hello")
    labels = ax.get_legend_handles_labels()[1]
    for want in ("fitted S-curve", "fit: 95 % band", "preset resnet20", "Oracle optimal interval", "Oracle best",
                 "implied by measured narrowing (95 % CI)"):
        assert want in labels
    assert any(t.get_text() == "hello" for t in ax.texts)
    ticks = ax.xaxis.get_major_locator().tick_values(0, 2)
    assert np.allclose(ticks, np.round(ticks))  # never a tick at round 0.5


def test_draw_accuracy_one_line_per_run_in_percent():
    runs = {"a": pd.DataFrame({"sparsity": [0.2, 0.0], "test_acc": [0.8, 0.9]}),
            "b": pd.DataFrame({"sparsity": [0.0], "test_acc": [0.5]})}
    ax = P.draw_accuracy(runs)
    a, b = ax.get_lines()
    np.testing.assert_allclose(a.get_xdata(), [0, 20])  # sorted by sparsity
    np.testing.assert_allclose(a.get_ydata(), [90, 80])
    assert b.get_label() == "b"
    with pytest.raises(GradscopeError):
        P.draw_accuracy({})


def test_given_axes_is_used_and_returned():
    from matplotlib.figure import Figure
    ax0 = Figure().add_subplot()
    runs = {"a": pd.DataFrame({"sparsity": [0.0], "test_acc": [0.9]})}
    assert P.draw_accuracy(runs, ax=ax0) is ax0


def test_plot_schedule_uses_registry():
    ax = P.plot_schedule("silo,lth", rounds=4, steps_per_round=10)
    assert [l.get_label() for l in ax.get_lines()] == ["silo", "lth"]
    assert len(ax.get_lines()[0].get_xdata()) == 40
    with pytest.raises(GradscopeError, match="unknown schedule"):
        P.plot_schedule("nope")


# ----------------------------------------------------------------------------- on a real run
def test_run_wrappers_on_a_real_run(profile_run):
    h5 = profile_run / "run.h5"
    t = P.run_rounds(profile_run)
    assert list(t["round"]) == [0, 1, 2, 3, 4]
    ax = P.plot_histograms(h5)
    assert len([p for p in ax.patches if p.get_fill()]) == 5
    ax = P.plot_narrowing(profile_run)
    assert "pooled (ReLU-fed layers)" in ax.get_legend_handles_labels()[1]
    ax = P.plot_calibration(profile_run)
    labels = ax.get_legend_handles_labels()[1]
    assert "implied by measured narrowing (95 % CI)" in labels and "preset resnet20" in labels
    assert "status" in ax.get_title() and "view survivors" in ax.get_title()
    ax = P.plot_accuracy([profile_run, h5], labels=["x", "y"])
    assert [l.get_label() for l in ax.get_lines()] == ["x", "y (= x)"]  # the same run twice: both visible


def test_oracle_intervals_read_from_candidates(tmp_path):
    d = tmp_path / "oracle" / "round_2"
    d.mkdir(parents=True)
    (d / "candidates.json").write_text(json.dumps({"best_max_lr": 0.05, "optimal_interval": [0.04, 0.07],
                                                   "candidates": [], "within_noise": [0.04, 0.05, 0.07]}))
    o = P.oracle_intervals(tmp_path)
    assert o.to_dict("records") == [{"round": 2, "lo": 0.04, "hi": 0.07, "best": 0.05}]
    assert P.oracle_intervals(tmp_path / "none") is None


def test_bad_inputs_raise_gradscope_error(tmp_path):
    with pytest.raises(GradscopeError, match="does not exist"):
        P.resolve_run(tmp_path / "missing.h5")
    with pytest.raises(GradscopeError, match="not a run directory"):
        P.resolve_run(tmp_path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(GradscopeError, match="not a run file"):
        P.resolve_run(tmp_path / "x.txt")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(GradscopeError):
        P.plot_histograms(bad)
    assert bad.read_bytes() == b"not hdf5 at all"  # untouched


def test_plot_command_writes_png_and_reports_errors(profile_run, tmp_path):
    for kind in ("histograms", "narrowing", "calibration"):
        out = tmp_path / f"{kind}.png"
        assert _cli(["plot", kind, str(profile_run / "run.h5"), "-o", str(out)]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _cli(["plot", "accuracy", str(profile_run), str(profile_run), "-o", str(tmp_path / "a.png")]) == 0
    assert _cli(["plot", "schedule", "--schedules", "silo,clr", "--rounds", "3", "-o", str(tmp_path / "s.svg")]) == 0
    assert (tmp_path / "s.svg").read_text().lstrip().startswith("<?xml")
    assert "needs a run" in _cli(["plot", "narrowing", "-o", str(tmp_path / "n.png")])
    assert "does not exist" in _cli(["plot", "narrowing", str(tmp_path / "no.h5"), "-o", str(tmp_path / "n.png")])
    assert ".png, .pdf or .svg" in _cli(["plot", "narrowing", str(profile_run), "-o", str(tmp_path / "n.jpg")])


# ----------------------------------------------------------------------------- issue 15: pictures that carry the message
def _spread_table():
    return pd.DataFrame({"round": [0, 1, 2], "sparsity": [0.0, 0.2, 0.36], "q05": [1e-4, 0.9e-4, 0.8e-4],
                         "q25": [1e-3, 0.9e-3, 0.8e-3], "q50": [2e-3, 1.8e-3, 1.6e-3], "q75": [4e-3, 3.6e-3, 3.2e-3],
                         "q95": [8e-3, 7e-3, 6e-3], "std": [5e-3, 4.5e-3, 4e-3]})


def test_draw_spread_shows_a_20_percent_change_on_a_linear_ratio_axis():
    ax = P.draw_spread(_spread_table(), relative=True)
    assert ax.get_yscale() == "linear" and "relative to round 0" in ax.get_ylabel()
    lines = {l.get_label(): l for l in ax.get_lines()}
    np.testing.assert_allclose(lines["50th (median) percentile of |g|"].get_ydata(), [1, 0.9, 0.8])
    np.testing.assert_allclose(lines["std (exact, from the moments)"].get_ydata(), [1, 0.9, 0.8])
    assert ax.get_xlabel() == "pruning round"
    ticks = ax.xaxis.get_major_locator().tick_values(0, 2)
    assert np.allclose(ticks, np.round(ticks))
    ab = P.draw_spread(_spread_table(), relative=False)
    assert ab.get_yscale() == "log" and "∂loss/∂w" in ab.get_ylabel()
    labels = ab.get_legend_handles_labels()[1]
    assert "middle 50 % of |g| (25th–75th percentile)" in labels and "middle 90 % of |g| (5th–95th percentile)" in labels
    with pytest.raises(GradscopeError, match="lacks column"):
        P.draw_spread(_spread_table().drop(columns="q50"))


def test_identical_series_stay_visible_and_say_so():
    t = pd.DataFrame({"sparsity": [0.0, 0.2], "test_acc": [0.9, 0.8]})
    ax = P.draw_accuracy({"digits (lth)": t, "digits-lth": t.copy(), "other": t.assign(test_acc=[0.5, 0.4])})
    a, b, c = ax.get_lines()
    assert b.get_label() == "digits-lth (= digits (lth))" and c.get_label() == "other"
    assert a.get_linewidth() > b.get_linewidth() > c.get_linewidth()  # the one underneath shows around
    assert len({a.get_linestyle(), b.get_linestyle(), c.get_linestyle()}) == 3
    assert len({a.get_marker(), b.get_marker(), c.get_marker()}) == 3
    assert ax.get_ylabel() == "test accuracy (%)"
    ax = P.plot_schedule("lth,clr,silo", rounds=6, peaks=True)
    assert [l.get_label() for l in ax.get_lines()] == ["lth", "clr (= lth)", "silo"]
    ticks = ax.xaxis.get_major_locator().tick_values(0, 5)
    assert np.allclose(ticks, np.round(ticks))


def test_plot_schedule_takes_a_schedule_file(tmp_path):
    f = tmp_path / "cal.yaml"
    f.write_text("schedule: silo\nlo: 0.02\nhi: 0.08\nbeta: 4\nmidpoint: 0.5\nlag: 1\np: 0.2\n"
                 "notes: {status: flat}\nuncertainty: {lo: 0.001}\nsource: {run: x}\n")
    ax = P.plot_schedule("silo", rounds=8, peaks=True, files=[f])
    lines = {l.get_label(): l for l in ax.get_lines()}
    assert set(lines) == {"silo", "silo (cal.yaml, status flat)"}
    from gradscope.schedules import planned_pruned_fraction, s_curve
    want = s_curve(planned_pruned_fraction(np.arange(8), 0.2, 1), 0.02, 0.08, 4, 0.5)
    np.testing.assert_allclose(lines["silo (cal.yaml, status flat)"].get_ydata(), want)
    assert _cli(["plot", "schedule", "--schedule-file", str(f), "--schedules", "", "-o", str(tmp_path / "s.png")]) == 0
    assert "does not exist" in _cli(["plot", "schedule", "--schedule-file", str(tmp_path / "no.yaml"),
                                      "-o", str(tmp_path / "s.png")])


def test_views_and_windows_reach_every_run_figure(profile_run, tmp_path):
    h5 = profile_run / "run.h5"
    for fn in (P.plot_histograms, P.plot_spread, P.plot_narrowing, P.plot_calibration):
        ax = fn(h5, window="last")
        assert "last epoch of each round" in ax.get_title(), fn.__name__
        assert ax.get_xlabel() and ax.get_ylabel(), fn.__name__
    with pytest.raises(GradscopeError, match="view 'relative' is not in .*it has survivors, all"):
        P.plot_spread(h5, view="relative")  # not recorded in this run: one clear error
    ax = P.plot_spread(h5, view="all")  # derived from the survivors' view: always there
    assert "all weights" in ax.get_title() or "all" in ax.get_title()
    assert "unknown view" in _cli(["plot", "spread", str(h5), "--view", "bogus", "-o", str(tmp_path / "x.png")])
    assert _cli(["plot", "spread", str(h5), "--window", "last", "--absolute", "-o", str(tmp_path / "x.png")]) == 0
    with pytest.raises(GradscopeError, match="unknown statistic"):
        P.plot_narrowing(h5, statistic="variance")


def test_plot_schedule_of_runs_draws_what_they_ran(profile_run, tmp_path):
    """plot schedule RUN...: each run's own max_lr (not the schedule's default 0.1), from config.json's
    schedule_used, so it holds even when the schedule file the run read is gone (issue 24.4)."""
    import json
    import shutil

    ax = P.plot_run_schedules([profile_run], peaks=True)
    (line,) = [l for l in ax.get_lines() if not l.get_label().startswith("_")]
    assert line.get_label() == "run (silo)"  # the fixture runs silo with its defaults, 0.03 -> 0.07
    assert 0.03 <= min(line.get_ydata()) < max(line.get_ydata()) <= 0.07
    other = tmp_path / "silo-run"
    shutil.copytree(profile_run, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["schedule"].update(schedule="silo", schedule_file=str(tmp_path / "gone.yaml"), max_lr=None)
    cfg["schedule_used"] = {"name": "silo", "lo": 0.02, "hi": 0.04, "beta": 5.0, "midpoint": 0.5}
    (other / "config.json").write_text(json.dumps(cfg))
    (other / "run.h5").unlink()  # the config comes from config.json
    ax = P.plot_run_schedules([profile_run, other], peaks=True, labels=["default", "calibrated"])
    peaks = {l.get_label(): l.get_ydata() for l in ax.get_lines() if not l.get_label().startswith("_")}
    assert set(peaks) == {"default (silo)", "calibrated (silo)"}
    assert 0.02 <= min(peaks["calibrated (silo)"]) < max(peaks["calibrated (silo)"]) <= 0.04
    assert _cli(["plot", "schedule", str(profile_run), "--peaks", "-o", str(tmp_path / "s.png")]) == 0


def test_accuracy_points_carry_their_binomial_uncertainty():
    """With the test-set size (rounds.json's n_test) each accuracy gets its 95 % Wilson interval:
    two runs 1.4 points apart on 359 images overlap, which the bare lines hide (issue 24.4)."""
    from gradscope.plot.figures import wilson_interval

    lo, hi = wilson_interval([344 / 359], [359])
    p, n, z = 344 / 359, 359, 1.959963984540054  # the Wilson score interval in closed form
    c, h = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert lo[0] == pytest.approx(c - h, rel=1e-9) and hi[0] == pytest.approx(c + h, rel=1e-9)
    runs = {"silo": pd.DataFrame({"sparsity": [0, 0.2], "test_acc": [0.966, 0.958], "n_test": [359, 359]}),
            "lth": pd.DataFrame({"sparsity": [0, 0.2], "test_acc": [0.952, 0.955], "n_test": [359, 359]})}
    ax = P.draw_accuracy(runs)
    bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    assert len(bars) == 2
    segs = np.concatenate([np.asarray(b.get_segments()) for b in bars])  # (4, 2, 2): x, y of each bar's ends
    assert np.allclose(segs[:, 0, 0], segs[:, 1, 0]) and (segs[:, 1, 1] - segs[:, 0, 1] > 3).all()  # > 3 points wide
    assert "95 % Wilson" in ax.get_ylabel() and [l.get_label() for l in ax.get_lines()] == ["silo", "lth"]
    plain = P.draw_accuracy({k: v.drop(columns="n_test") for k, v in runs.items()})
    assert not [c for c in plain.collections if c.__class__.__name__ == "LineCollection"]
