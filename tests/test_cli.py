"""The command line: main paths end to end on tiny runs, and bad input gives one clear line."""
import json
import subprocess

import h5py
import pytest

from gradscope.cli import main

from conftest import PY, ROOT, cli_env

TINY = ["--dataset", "digits", "--model", "small_cnn", "--epochs", "1", "--threads", "1", "--no-progress",
        "--batch-size", "64"]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "prof"
    rc = main(["profile", *TINY, "--rounds", "5", "--cache-dir", str(out.parent / "cache"), "--out", str(out)])
    assert rc == 0
    return out


def test_profile_prints_narrowing_table(profiled, capsys):
    assert (profiled / "run.h5").exists()
    rounds = json.loads((profiled / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4]


def test_fit_and_calibrate_and_schedule_file(profiled, capsys, tmp_path):
    h5 = str(profiled / "run.h5")
    assert main(["fit", h5, "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "Pooled narrowing" in out and "ratio" in out
    with h5py.File(h5, "r") as f:
        assert "derived" in f
    js = tmp_path / "silo.json"
    assert main(["calibrate", h5, "-o", str(js), "--force"]) == 0  # a 5-round digits run need not narrow
    params = json.loads(js.read_text())
    assert params["schedule"] == "silo" and params["lo"] > 0 and params["hi"] >= params["lo"]
    run2 = tmp_path / "with-file"
    assert main(["prune", *TINY, "--rounds", "2", "--schedule", "silo", "--schedule-file", str(js),
                 "--cache-dir", str(profiled.parent / "cache"), "--out", str(run2)]) == 0
    r = json.loads((run2 / "rounds.json").read_text())
    assert r[0]["max_lr"] == pytest.approx(params["lo"])


def test_silo_auto_runs_closed_loop(tmp_path):
    out = tmp_path / "auto"
    assert main(["prune", *TINY, "--rounds", "3", "--schedule", "silo-auto", "--cache-dir", str(tmp_path / "c"),
                 "--out", str(out)]) == 0
    assert (out / "run.h5").exists()  # silo-auto turns the recorder on


def test_oracle_picks_by_validation_and_records_interval(tmp_path, capsys):
    out = tmp_path / "oracle"
    assert main(["oracle", *TINY, "--rounds", "2", "--schedule", "lth", "--grid", "0.003,0.03,0.3",
                 "--seeds", "2", "--max-extend", "1", "--cache-dir", str(tmp_path / "c"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 seeds per max_lr" in printed and "standard error" in printed
    for k in (0, 1):
        d = json.loads((out / "oracle" / f"round_{k}" / "candidates.json").read_text())
        means = {}
        for c in d["candidates"]:  # best by mean validation accuracy over the seeds, never by test
            means.setdefault(c["max_lr"], []).append(c["val_acc"])
        best = max(means, key=lambda v: (sum(means[v]) / len(means[v]), -v))
        assert d["best_max_lr"] == best and all(len(v) == 2 for v in means.values())
        lo, hi = d["optimal_interval"]
        assert lo <= d["best_max_lr"] <= hi
        o = d["optimum"]
        assert o["status"] in ("interior", "edge-low", "edge-high", "flat")
        assert (o["optimum"] is None) == (o["status"] != "interior")  # an edge is never an optimum
        assert d["cost_s"] > 0 and d["n_val"] > 0
    rounds = json.loads((out / "rounds.json").read_text())
    assert rounds[1]["max_lr"] == json.loads((out / "oracle" / "round_1" / "candidates.json").read_text())["best_max_lr"]


def _run(*args):
    return subprocess.run([PY, "-m", "gradscope", *args], env=cli_env(), cwd=ROOT, capture_output=True, text=True)


def test_fit_on_the_command_line_imports_no_torch(profiled):
    """`gradscope fit` built every command's schedule help and imported the calibration package
    for probe columns even without RUN/probes.json: torch's import, ~2.7 s of a ~5 s fit."""
    code = ("import sys, io, contextlib; from gradscope.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as o:\n"
            f"    rc = main(['fit', {str(profiled / 'run.h5')!r}, '--bootstrap', '5', '--no-store'])\n"
            "print(rc, 'torch' in sys.modules, 'Pooled narrowing' in o.getvalue())")
    out = subprocess.run([PY, "-c", code], env=cli_env(), cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False", "True"], out.stdout + out.stderr
    prune_help = _run("prune", "--help").stdout  # the schedule defaults still reach the help that needs them
    assert "the released ResNet-20 constant" in prune_help


@pytest.mark.parametrize("args,needle", [
    (["prune", "--model", "nope", "--rounds", "1"], "unknown model"),
    (["prune", "--dataset", "imagenet-21k", "--rounds", "1"], "imagenet-21k"),
    (["prune", "--prune-rate", "1.5", "--rounds", "2"], "prune-rate"),
    (["prune", "--rounds", "400", "--prune-rate", "0.5"], "100 %"),
    (["prune", "--rewind", "sideways"], "--rewind"),
    (["prune", "--schedule", "zigzag"], "zigzag"),
    (["prune", "--device", "cuda:7"], "cuda"),
    (["fit", "/nonexistent/run.h5"], "run.h5"),
    (["calibrate", "/nonexistent/run.h5"], "run.h5"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, needle):
    r = _run(*args, "--out", str(tmp_path / "o")) if args[0] == "prune" else _run(*args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    err = [l for l in r.stderr.strip().splitlines() if l.startswith("gradscope: error:")]
    assert len(err) == 1 and needle.lower() in err[0].lower(), r.stderr


def test_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all" * 10)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2, 3]
    for p in (bad, foreign):
        r = _run("fit", str(p))
        assert r.returncode == 2 and "Traceback" not in r.stderr and "gradscope: error:" in r.stderr


def test_unknown_flag_is_argparse_error():
    r = _run("prune", "--no-such-flag")
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.startswith("gradscope: error: prune: ") and len(r.stderr.strip().splitlines()) == 1


def test_cli_reference_lists_every_command_and_flag():
    from gradscope.cli import build_parser
    doc = (ROOT / "docs" / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        assert f"## gradscope {name}" in doc, name
        for action in p._actions:
            for opt in action.option_strings:
                assert opt in doc, f"{name} {opt} missing from docs/cli.md (run scripts/gen_cli_docs.py)"


def test_oracle_candidates_as_separate_jobs(tmp_path):
    """--workers 0 names the missing candidate jobs; once they ran, the same command continues."""
    out = tmp_path / "cluster"
    args = ["oracle", *TINY, "--rounds", "1", "--schedule", "lth", "--grid", "0.01,0.05,0.25", "--seeds", "1",
            "--max-extend", "0", "--cache-dir", str(tmp_path / "c"), "--out", str(out), "--workers", "0"]
    r = _run(*args)
    assert r.returncode == 0 and "oracle-candidate" in r.stdout, r.stderr  # not an error: work to hand out
    jobs = [l.split() for l in r.stdout.splitlines() if l.strip().startswith("gradscope oracle-candidate")]
    assert len(jobs) == 3
    for job in jobs:
        assert main(job[1:]) == 0
    assert main(args) == 0
    d = json.loads((out / "oracle" / "round_0" / "candidates.json").read_text())
    assert sorted(c["max_lr"] for c in d["candidates"]) == [0.01, 0.05, 0.25]
