"""silo-auto --predictor NAME (issue 20): silo-auto calibrates itself from a probe's per-round
values (RUN/probes.json, no recorder) through the same gate as `calibrate --predictor`, keeps
the fixed peak until the gate says "supported", says so per round, and survives kills. The
probes are synthetic with a known answer (tests/synthetic_probes.py: 1/density, a constant)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import synthetic_probes
from conftest import PY, ROOT, cli_env
from gradscope import GradscopeError

LO = 0.05
ROUNDS = 7  # the gate's first verdict comes after round 5 (6 points); round 6 trains at it
RUN = ["--dataset", "digits", "--model", "small_cnn", "--epochs", "1", "--batch-size", "64", "--train-subset", "128",
       "--test-subset", "64",
       "--threads", "1", "--no-progress", "--schedule", "silo-auto", "--lo", str(LO), "--rounds", str(ROUNDS)]
RISE = [*RUN, "--predictor", "test-rise", "--probes", "test-rise"]


@pytest.fixture(scope="module")
def synthetic():
    """The synthetic probes registered in this process (removed afterwards)."""
    from gradscope.probes.registry import PROBES
    synthetic_probes.register()
    yield
    for n in ("test-rise", "test-flat"):
        PROBES._entries.pop(n, None)
        PROBES._meta.pop(n, None)


@pytest.fixture(scope="module")
def rise_run(synthetic, tmp_path_factory):
    """One uninterrupted 7-round prune run with silo-auto --predictor test-rise: (dir, its log)."""
    from gradscope.cli import main
    d = tmp_path_factory.mktemp("rise")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["prune", *RISE, "--cache-dir", str(d / "cache"), "--out", str(d / "run")]) == 0
    return d / "run", buf.getvalue()


def test_a_rising_probe_makes_silo_auto_take_over_with_the_implied_curve(rise_run):
    from gradscope.calibrate.core import calibrate_points
    from gradscope.schedules.curves import planned_pruned_fraction, s_curve
    from gradscope.store.probes import read_probes
    from gradscope.train.checkpoint import load_torch
    run, log = rise_run
    assert not (run / "run.h5").exists()  # probes need no recorder: --no-record (prune's default) holds
    rows = json.loads((run / "rounds.json").read_text())
    lrs = [r["max_lr"] for r in rows]
    assert lrs[:6] == [LO] * 6  # the fixed peak until the gate's first "supported" (after round 5)
    # the implied points, computed here from the round files' masks: max_lr(0) * density(0) / density(k)
    dens = []
    for k in range(6):
        m = load_torch(run / f"round_{k}.pt", what="round file")["masks"]
        dens.append(sum(int(t.sum()) for t in m.values()) / sum(t.numel() for t in m.values()))
    recs = {r["round"]: r["values"]["value"][0] for r in read_probes(run) if r["probe"] == "test-rise"}
    assert np.allclose([recs[k] for k in range(6)], 1 / np.array(dens))
    import pandas as pd
    ks = np.arange(6)
    x = np.asarray(planned_pruned_fraction(ks, 0.2, 1), float)
    pts = pd.DataFrame({"round": ks, "x": x, "implied_max_lr": LO * dens[0] / np.array(dens)})
    cal = calibrate_points(pts, p=0.2, lag=1, fix_lo=LO)
    assert cal.status == "supported"
    want = s_curve(float(planned_pruned_fraction(6, 0.2, 1)), *(cal.params[k] for k in ("lo", "hi", "beta", "midpoint")))
    assert lrs[6] == pytest.approx(want, rel=1e-9) and lrs[6] > 2 * LO
    # one labelled line per round: predictor, status, slope with its CI, what the next round does
    lines = [l for l in log.splitlines() if l.startswith("silo-auto after round")]
    assert len(lines) == ROUNDS
    assert all("predictor test-rise, status " in l for l in lines)
    assert all("keeps the fixed peak max_lr 0.05 (round 0's)" in l for l in lines[:5])
    assert "status underdetermined (slope of log implied max_lr on x" in lines[4] and "the gate needs 4 dof" in lines[4]
    assert "status supported (slope of log implied max_lr on x" in lines[5] and "95 % CI" in lines[5]
    assert "calibrated S-curve (since round 5" in lines[5] and "(if the run is extended)" in lines[6]
    assert "silo-auto: calibration takes over after round 5" in log
    sched = load_torch(run / "round_6.pt", what="round file")["schedule"]  # what round 6 trained with, and why
    assert sched["predictor"] == "test-rise" and sched["predictor_gate"]["status"] == "supported"
    assert sched["max_lr"] == lrs[6] and sched["calibrated"] is True


def _cli(args: list, out: Path, env_extra: dict) -> subprocess.CompletedProcess:
    env = {**cli_env(), **env_extra}
    return subprocess.run([PY, str(ROOT / "tests" / "synthetic_probes.py"), "prune", *args, "--cache-dir",
                           str(out.parent / "cache"), "--out", str(out)], env=env, cwd=ROOT, capture_output=True, text=True)


def test_silo_auto_predictor_state_survives_a_kill(rise_run, tmp_path):
    """Killed after round 5's takeover was computed but before it was checkpointed
    (round-file:5): the resumed process restores round 4's state from the checkpoint (round 0's
    max_lr, the last verdict), computes the takeover again and trains the same schedule as the
    uninterrupted run, round for round."""
    ref, _ = rise_run
    out, kills = tmp_path / "killed", tmp_path / "kills"
    env = {"GRADSCOPE_KILL_FILE": str(kills), "GRADSCOPE_KILL_MATCH": r"^round-file:5$"}
    r = _cli(RISE, out, env)
    assert r.returncode == -9, r.stderr[-2000:]
    r = _cli(RISE, out, env)
    assert r.returncode == 0 and kills.read_text().split() == ["round-file:5"], r.stderr[-2000:]
    assert "silo-auto: calibration takes over after round 5" in r.stdout  # computed again after the resume
    a, b = (json.loads((d / "rounds.json").read_text()) for d in (ref, out))
    assert [(x["round"], x["max_lr"], x["val_acc"]) for x in a] == [(x["round"], x["max_lr"], x["val_acc"]) for x in b]
    assert a[6]["max_lr"] > LO
    from gradscope.train.checkpoint import load_torch
    for k in range(ROUNDS):  # what each round trained with and why (the verdict restored from the checkpoint)
        sa, sb = (load_torch(d / f"round_{k}.pt", what="round file")["schedule"] for d in (ref, out))
        assert sa == sb, k


def test_the_predictor_state_is_checkpointed_in_plain_values():
    """After a takeover: the curve, the round it took over, the verdict and round 0's max_lr
    come back from a JSON round trip of state_dict (what a kill mid-round restores)."""
    import gradscope.calibrate  # noqa: F401 - registers silo-auto
    from gradscope.calibrate.auto import SiloAutoCalibration
    from gradscope.schedules import get_schedule, planned_round_info
    a = get_schedule("silo-auto", lo=LO, predictor="lr-range:steep")
    info = planned_round_info(6, 0.2)
    assert a.peak_lr(info) == LO and a.predictor == "lr-range:steep"
    a.hi, a.beta, a.midpoint, a.calibrated_at, a.max_lr0 = 0.2, 4.0, 0.4, 5, LO
    a.gate = {"status": "supported", "slope": 1.6, "slope_lo": 1.2, "slope_hi": 2.0, "dof": 4.0, "level": 0.95}
    saved = json.loads(json.dumps(SiloAutoCalibration(a, Path("unused.h5")).state_dict()))
    b = get_schedule("silo-auto", lo=LO, predictor="lr-range:steep")
    SiloAutoCalibration(b, Path("unused.h5")).load_state_dict(saved)
    assert b.peak_lr(info) == a.peak_lr(info) > LO and (b.calibrated_at, b.max_lr0, b.gate) == (5, LO, a.gate)
    p = b.round_params(info)
    assert "S-curve calibrated from predictor lr-range:steep since round 5" in p["note"]
    assert p["predictor_gate"]["status"] == "supported" and p["calibrated"] is True


def _fake_run(d: Path, values: list, probe: str = "test-flat") -> Path:
    from gradscope.store.probes import write_probes
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"prune": {"prune_rate": 0.2}, "schedule": {"lag": 1}}))
    write_probes(d, [{"round": k, "at": "start", "probe": probe, "sparsity": 1 - 0.8 ** k, "values": {"value": [v]},
                      "cv": {"value": None}, "fb_equiv": 0.0, "share_of_oracle_round": 0.0}
                     for k, v in enumerate(values)])
    return d


def test_a_flat_probe_keeps_the_fixed_peak_and_says_so_each_round(synthetic, tmp_path):
    """Records injected into probes.json round by round, the callback called as the runner
    calls it: the gate says flat, every round keeps max_lr = lo, and each line says why."""
    import gradscope.calibrate  # noqa: F401 - registers silo-auto
    from gradscope.calibrate.auto import SiloAutoCalibration
    from gradscope.callbacks import TrainState
    from gradscope.schedules import get_schedule, planned_round_info
    f = get_schedule("silo-auto", lo=LO, hi=0.2, predictor="test-flat")
    lines: list = []
    cb = SiloAutoCalibration(f, tmp_path / "run" / "run.h5", lines.append)
    vals = [2.0, 2.02, 1.97, 2.01, 1.99, 2.03, 1.98, 2.0]
    for k in range(len(vals)):
        info = planned_round_info(k, 0.2)
        assert f.peak_lr(info) == LO  # the prior is the fixed peak, not the S-curve to hi
        _fake_run(tmp_path / "run", vals[: k + 1])
        cb.on_round_end(TrainState(model=None, round=k, schedule=f.round_params(info),
                                   config={"prune": {"rounds": len(vals)}, "probe": {"probes_at": "start"}}))
    assert f.calibrated_at is None and f.peak_lr(planned_round_info(9, 0.2)) == LO
    assert len(lines) == len(vals) and not (tmp_path / "run" / "run.h5").exists()
    last = lines[-1]
    assert last.startswith("silo-auto after round 7: predictor test-flat, status flat (slope of log implied max_lr on x ")
    assert "95 % CI" in last and "keeps the fixed peak max_lr 0.05 (round 0's) for round 8" in last
    g = f.gate
    assert g["slope_lo"] < np.log(1.1) and g["status"] == "flat"
    # the same verdict as `calibrate --predictor` with lo fixed
    from gradscope.calibrate.predictor import calibrate_predictor
    cal, _, (shape, _) = calibrate_predictor(tmp_path / "run", "test-flat", lo=LO, fix_lo=True)
    assert cal.status == "flat" and shape == "flat" and cal.rise["slope"] == pytest.approx(g["slope"])
    assert "fixed peak max_lr 0.05" in f.round_params(planned_round_info(8, 0.2))["note"]


def test_predictor_errors_are_one_line_before_anything_is_written(synthetic, tmp_path, capsys):
    from gradscope.cli import main
    from gradscope.config import RunConfig
    out = tmp_path / "x"
    cases = [([*RUN, "--predictor", "test-rise"], "reads the test-rise probe, but the run measures none (--probes); "
                                                  "add --probes test-rise"),
             ([*RUN, "--predictor", "test-rise", "--probes", "test-flat"], "the run measures only test-flat"),
             ([*RUN, "--predictor", "hessian", "--probes", "test-rise"], "unknown probe 'hessian'"),
             ([*RUN, "--predictor", "lr-range:fast", "--probes", "lr-range"], "lr-range has no variant 'fast'"),
             ([*RUN[:-6], "--schedule", "silo", "--predictor", "test-rise", "--probes", "test-rise"],
              "needs --schedule silo-auto (the schedule is 'silo')")]
    for args, words in cases:
        assert main(["prune", *args, "--cache-dir", str(tmp_path / "c"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("gradscope: error: ") and words in err and err.count("\n") == 1, err
        assert not out.exists()
    cfg = RunConfig()
    cfg.schedule.predictor = "bn-norm"
    with pytest.raises(GradscopeError, match="needs --schedule silo-auto"):
        cfg.validate()


def test_the_new_flag_leaves_older_checkpoints_resumable():
    """config_hash of a config at predictor = None is the hash gradscope computed before the
    field existed (the same config without the key), so those runs still resume."""
    from gradscope.config import RunConfig
    from gradscope.train.runner import comparable_config, config_hash
    d = RunConfig().to_dict()
    comp = comparable_config(d)
    comp["prune"].pop("rounds")
    comp["schedule"].pop("predictor")
    before = hashlib.sha256(json.dumps(comp, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()
    assert config_hash(d) == before
    d["schedule"]["predictor"] = "bn-norm"
    assert config_hash(d) != before
