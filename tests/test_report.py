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
