"""scripts/compare_fit_versions.py: the fit-versus-revision check behind "same estimates as before"."""
import importlib.util
import os

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("compare_fit_versions", os.path.join(ROOT, "scripts", "compare_fit_versions.py"))
cfv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cfv)


def test_differences_names_what_differs_and_by_how_much():
    a = pd.DataFrame({"s": [1.0, 2.0, np.nan], "k": ["ok", "ok", "empty"], "same": [1.0, 0.0, 3.0], "gone": [1, 2, 3]})
    b = pd.DataFrame({"s": [1.0, 2.0 * (1 + 3e-7), np.nan], "k": ["ok", "no-convergence", "empty"],
                      "same": [1.0, 0.0, 3.0]})
    d = cfv.differences(a, b)
    assert set(d) == {"s", "k", "gone"}
    assert abs(d["s"] - 3e-7) < 1e-12 and d["k"] == "1 rows differ" and d["gone"] == "missing"
    b.loc[2, "s"] = 5.0
    assert cfv.differences(a, b)["s"] == "finite in 1 rows on one side only"


def test_against_head_runs_and_a_bad_revision_is_one_line(capsys):
    assert cfv.main(["HEAD", "--rows", "20", "--bootstrap", "5"]) == 0
    out = capsys.readouterr().out
    for name in ("bench (20 histograms)", "mixed (42 histograms)", "t_gennorm (300 histograms)"):
        assert name in out, out
    assert "largest relative difference over every numeric column:" in out.splitlines()[-1]
    assert cfv.main(["no-such-revision-xyz"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("compare_fit_versions: error: git archive no-such-revision-xyz")
