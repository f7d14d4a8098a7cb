"""Every benchmark in bench/ runs in its --smoke mode (tiny sizes), so that a refactor that
breaks a benchmark fails here instead of rotting unnoticed."""
import runpy
import sys

import pytest

from conftest import ROOT

BENCHES = sorted((ROOT / "bench").glob("bench_*.py"))
# what each smoke run must print (a labelled figure), so a benchmark that silently skips its work fails
EXPECT = {"bench_batched": "batched/seq", "bench_default_job": "gradscope prune", "bench_fit": "speed-up ratio",
          "bench_gpu": "gradscope epoch scaled", "bench_loader": "ms/batch", "bench_oracle_exec": "vs seq",
          "bench_recorder": "ns/w", "bench_trainer": "ratio gradscope/hand"}


def test_every_benchmark_runs_its_smoke_mode(monkeypatch, capsys, tmp_path):
    assert {b.stem for b in BENCHES} == set(EXPECT), "a new benchmark needs a --smoke mode and an entry here"
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    failed = {}
    for b in BENCHES:
        monkeypatch.setattr(sys, "argv", [str(b), "--smoke"])
        try:
            runpy.run_path(str(b), run_name="__main__")
        except BaseException as e:  # noqa: BLE001 - SystemExit included: report every broken benchmark at once
            failed[b.stem] = f"{type(e).__name__}: {e}"
            continue
        out = capsys.readouterr().out
        if EXPECT[b.stem] not in out:
            failed[b.stem] = f"no {EXPECT[b.stem]!r} in its output:\n{out[-2000:]}"
    if failed:
        pytest.fail("\n".join(f"{k}: {v}" for k, v in failed.items()))
