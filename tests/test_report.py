"""gradscope.plot.report: one self-contained HTML page."""
from __future__ import annotations

import base64
import re
import shutil

import pytest

from gradscope import GradscopeError
from gradscope.plot.report import build_report, write_report



@pytest.fixture(scope="module")
def profile_run(tmp_path_factory):
    """A real 5-round recorded run on built-in digits (seconds)."""
    from gradscope.config import RunConfig
    from gradscope.train import PruningRun

    tmp = tmp_path_factory.mktemp("reportrun")
    cfg = RunConfig()
    cfg.data.dataset, cfg.model.model = "digits", "small_cnn"
    cfg.prune.rounds, cfg.train.epochs, cfg.train.threads, cfg.train.progress = 5, 1, 1, False
    cfg.record.record = True
    cfg.data.cache_dir, cfg.out = str(tmp / "cache"), str(tmp / "run")
    PruningRun(cfg, log=lambda s: None).run()
    return tmp / "run"


def test_report_is_self_contained_with_all_sections(profile_run, tmp_path):
    out = write_report([profile_run / "run.h5"], tmp_path / "r.html", bootstrap=20)
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    for section in ("Accuracy vs sparsity", "Per-round table", "Gradient distributions per round", "Narrowing",
                    "Calibration", "Fit diagnostics", "Configuration"):
        assert section in text
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(imgs) >= 5
    assert all(base64.b64decode(b)[:4] == b"\x89PNG" for b in imgs)
    assert not re.search(r'(src|href)="(http|file|/)', text)  # nothing external
    assert "&quot;dataset&quot;: &quot;digits&quot;" in text  # the config (HTML-escaped)


def test_report_of_unrecorded_run_and_several_runs(profile_run, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(profile_run / "rounds.json", plain)
    shutil.copy(profile_run / "config.json", plain)
    text = build_report([profile_run, plain], bootstrap=10)
    assert "Run plain" in text and "gradients not recorded" in text
    assert text.count("<h2>Run ") == 2


def test_report_bad_inputs_keep_existing_file(profile_run, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("old")
    with pytest.raises(GradscopeError, match="does not exist"):
        write_report([tmp_path / "missing"], out)
    assert out.read_text() == "old"
    with pytest.raises(GradscopeError, match="directory"):
        write_report([profile_run], tmp_path / "nodir" / "r.html")
    with pytest.raises(GradscopeError, match="at least one run"):
        build_report([])


# ----------------------------------------------------------------------------- issue 15: report
def _corrupt_hist_chunk(src, dst):
    import h5py
    shutil.copy(src, dst)
    with h5py.File(dst, "r") as f:
        info = f["hist"].id.get_chunk_info(0)
    with open(dst, "r+b") as fh:
        fh.seek(info.byte_offset + 8)
        fh.write(b"\xff\x00" * max(8, info.size // 4))


def test_report_figures_have_captions_150_dpi_percent_and_cli_wording(profile_run, tmp_path):
    from gradscope.fit import TREND_WORDING
    text = build_report([profile_run], bootstrap=10)
    figs = re.findall(r"<figure><img alt=\"[^\"]*\" src=\"data:image/png;base64,([A-Za-z0-9+/=]+)\">"
                      r"<figcaption>([^<]{40,})</figcaption></figure>", text)
    assert len(figs) >= 6  # accuracy, schedules, spread, histograms, narrowing, calibration
    assert len(re.findall(r"<img ", text)) - len(figs) <= 6  # only the collapsed per-layer grid has no caption
    for b64, _ in figs:
        png = base64.b64decode(b64)
        width = int.from_bytes(png[16:20], "big")
        assert width >= 150 * 6, width  # figures are >= 6 in wide: at least 150 dpi
    assert "test acc (%)" in text and "val acc (%)" in text and "sparsity (%)" in text
    assert TREND_WORDING.replace(">", "&gt;") in text and "vs sparsity)" not in text
    assert "status <b>" in text and "view survivors (unpruned weights)" in text
    assert "Spread of the gradients per round" in text


def test_report_on_a_damaged_file_fails_cleanly(profile_run, tmp_path):
    import subprocess
    from conftest import PY, ROOT, cli_env
    bad = tmp_path / "bad.h5"
    _corrupt_hist_chunk(profile_run / "run.h5", bad)
    out = tmp_path / "r.html"
    with pytest.raises(GradscopeError, match="bad.h5"):
        write_report([bad], out, bootstrap=5)
    assert not out.exists()
    r = subprocess.run([PY, "-m", "gradscope", "report", str(bad), "-o", str(out), "--bootstrap", "5"],
                       env=cli_env(), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "gradscope: error:" in r.stderr, r.stderr
    with pytest.raises(GradscopeError, match="bootstrap"):
        build_report([profile_run], bootstrap=-1)
    with pytest.raises(GradscopeError, match="unknown window"):
        build_report([profile_run], window="middle")


def test_calibrate_plot_and_report_give_one_verdict_on_one_file(profile_run, capsys):
    """One default view and window everywhere: `gradscope calibrate`, the calibration figure's
    data and the report print the same status for the same file (and the same for --view all)."""
    import re

    from gradscope.calibrate import calibrate_run
    from gradscope.cli import main
    from gradscope.plot.runs import calibration_data
    from gradscope.views import DEFAULT_VIEW, DEFAULT_WINDOW

    h5 = str(profile_run / "run.h5")
    for view in (None, "all"):
        kw = {} if view is None else {"view": view}
        cal = calibrate_run(h5, **kw)
        assert cal.source["view"] == (view or DEFAULT_VIEW) and cal.source["window"] == DEFAULT_WINDOW
        plot_cal = calibration_data(h5, **kw)["calibration"]
        html_text = build_report([h5], bootstrap=10, **kw)
        report_status = re.search(r'class="status[^"]*">status <b>(\w+)</b>', html_text).group(1)
        main(["calibrate", h5, *([] if view is None else ["--view", view])])
        cli_status = re.search(r"^status: (\w+):", capsys.readouterr().out, re.M).group(1)
        assert cal.status == plot_cal.status == report_status == cli_status, view
    assert cal.status == "underdetermined"  # 5 rounds: 3 residual dof, below the gate's 4


def test_a_two_round_report_says_why_there_is_no_trend():
    """Too few rounds for a slope: a message in place of a header-only table (issue 24.10)."""
    import numpy as np

    from gradscope.fit import fit_run
    from gradscope.fit.synthetic import make_synthetic_run
    from gradscope.plot.report import trend_block

    two = fit_run(make_synthetic_run({"a": np.array([0.01, 0.009])}, n=5000), models=(), bootstrap=0, store=False)
    text = trend_block(two)
    assert "No trend: a slope needs 3 or more rounds" in text and "this run has 2." in text and "<table" not in text
    three = fit_run(make_synthetic_run({"a": np.array([0.01, 0.009, 0.008])}, n=5000), models=(), bootstrap=0,
                    store=False)
    assert "<th>verdict</th>" in trend_block(three) and "No trend" not in trend_block(three)
