"""Fault suite 3 (bad CLI input): every invocation in the table ends in one line
``gradscope: error: ...`` and exit status 2 — never a traceback, never exit 0."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gradscope.cli import main

from conftest import PY, ROOT, cli_env

FAST = ["--dataset", "digits", "--model", "small_cnn", "--rounds", "2", "--epochs", "1", "--threads", "1",
        "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny recorded run for the commands that read one."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["profile", *FAST, "--cache-dir", str(out.parent / "cache"), "--out", str(out)]) == 0
    return out


def table(run: Path, tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, a word the one error line must contain)."""
    h5 = str(run / "run.h5")
    file_ = tmp / "a_file.txt"
    file_.write_text("x")
    bad_json = tmp / "bad.json"
    bad_json.write_text("{lo: ")
    not_h5 = tmp / "not.h5"
    not_h5.write_bytes(b"definitely not hdf5" * 20)
    empty_dir = tmp / "empty"
    empty_dir.mkdir(exist_ok=True)
    out = str(tmp / "o")
    p = lambda *a: (["prune", *FAST, "--out", out, *a])  # noqa: E731
    return [
        (p("--model", "nope"), "model"), (p("--dataset", "imagenet-21k"), "imagenet-21k"),
        (p("--prune-rate", "1.5"), "prune-rate"), (p("--prune-rate", "0"), "prune-rate"),
        (p("--prune-rate", "-0.1"), "prune-rate"), (p("--rounds", "400", "--prune-rate", "0.5"), "100 %"),
        (p("--rounds", "0"), "rounds"), (p("--rewind", "sideways"), "rewind"), (p("--schedule", "zigzag"), "zigzag"),
        (p("--device", "cuda:7"), "cuda"), (p("--device", "tpu"), "device"), (p("--momentum", "-1"), "momentum"),
        (p("--momentum", "1.5"), "momentum"), (p("--weight-decay", "-1"), "weight-decay"),
        (p("--seed", "-1"), "seed"), (p("--threads", "-1"), "threads"), (p("--threads", "0"), "threads"),
        (p("--epochs", "0"), "epochs"), (p("--epochs", "abc"), "epochs"), (p("--batch-size", "0"), "batch-size"),
        (p("--val-fraction", "1.0"), "val-fraction"), (p("--val-fraction", "-0.1"), "val-fraction"),
        (p("--val-size", "0"), "val-size"), (p("--val-size", "100000"), "validation"),
        (p("--train-subset", "0"), "train-subset"), (p("--train-subset", "1000000"), "train_subset"),
        (p("--test-subset", "-5"), "test-subset"), (p("--schedule", "lth", "--max-lr", "-1"), "max-lr"),
        (p("--schedule", "lth", "--max-lr", "nan"), "max-lr"), (p("--schedule", "lth", "--max-lr", "inf"), "max-lr"),
        (p("--lo", "0.1", "--hi", "0.05"), "hi"), (p("--beta", "0"), "beta"), (p("--midpoint", "1.0"), "midpoint"),
        (p("--lag", "-1"), "lag"), (p("--shape", "zigzag"), "zigzag"), (p("--preset", "resnet50"), "resnet50"),
        (p("--silo-p", "1.0"), "silo-p"), (p("--x", "sideways"), "x"), (p("--optimizer", "adam"), "optimizer"),
        (p("--test-every", "never"), "test-every"), (p("--schedule-file", "/nonexistent.json"), "does not exist"),
        (p("--schedule-file", str(empty_dir)), "does not exist"), (p("--schedule-file", str(bad_json)), "JSON"),
        (["prune", *FAST, "--out", ""], "--out"), (["prune", *FAST, "--out", str(file_)], "is a file"),
        (p("--data-root", "/somewhere"), "data-root"), (p("--cache-dir", str(file_)), "cache-dir"),
        (p("--rewind", "early", "--rewind-step", "99999"), "rewind-step"), (p("--record", "--window", "0"), "window"),
        (p("--record", "--bins", "2"), "bins"), (p("--record", "--hist-min", "0"), "hist-min"),
        (p("--record", "--include", "["), "pattern"), (p("--sample-k", "-1"), "sample-k"),
        (p("--prune-method", "magic"), "prune method"), (p("--model", "no_such_module_xyz:build"), "import"),
        (p("--model", "os:getcwd"), "failed"), (p("--model", "os:sep"), "not callable"),
        (p("--model", "operator:mul"), "nn.Module"), (p("--no-such-flag"), "unrecognized"),
        (["oracle", *FAST, "--out", out, "--workers", "-1"], "workers"),
        (["oracle", *FAST, "--out", out, "--grid", "0.1,abc"], "grid"),
        (["oracle", *FAST, "--out", out, "--grid", "-0.1,0.2,0.3"], "grid"),
        (["oracle", *FAST, "--out", out, "--grid", "0.1,0.2"], "3"),
        (["oracle", *FAST, "--out", out, "--seeds", "0"], "seeds"),
        (["oracle", *FAST, "--out", str(tmp / "o2"), "--val-fraction", "0", "--grid", "0.01,0.1,1"], "validation"),
        (["oracle", *FAST, "--out", str(tmp / "o3"), "--record", "--grid", "0.01,0.1,1"], "record"),
        (["oracle-candidate", "--out", str(tmp / "nowhere"), "--round", "0", "--max-lr", "0.1"], "missing"),
        (["oracle-candidate", "--out", out, "--round", "0", "--max-lr", "0"], "max-lr"),
        (["oracle-candidate", "--out", out, "--round", "-1", "--max-lr", "0.1"], "round"),
        (["fit", "/nonexistent/run.h5"], "run.h5"), (["fit", str(empty_dir)], "run.h5"),
        (["fit", h5, "--bootstrap", "-1"], "bootstrap"), (["fit", h5, "--statistic", "foo"], "foo"),
        (["fit", h5, "--view", "nope"], "nope"), (["fit", h5, "--window", "sometimes"], "sometimes"),
        (["fit", str(not_h5)], "hdf5"), (["fit", h5, "--per", "epoch"], "per"),
        (["calibrate", "/nonexistent/run.h5"], "run.h5"), (["calibrate", h5, "--lo", "-1"], "lo"),
        (["calibrate", h5, "--gamma", "0"], "gamma"), (["calibrate", h5, "--rounds-planned", "-1"], "rounds-planned"),
        (["calibrate", h5, "-o", "/nonexistent/dir/x.json"], "does not exist"),
        (["calibrate", h5, "--x", "sideways"], "x"), (["calibrate", h5, "--p", "1.5"], "p"),
        (["plot", "nope", h5], "nope"), (["plot", "narrowing", "-o", str(tmp / "n.png")], "run"),
        (["plot", "narrowing", h5, "-o", str(tmp / "x.gif")], "png"), (["report", "/nonexistent/run.h5"], "run.h5"),
        (["report", h5, "--bootstrap", "-1"], "bootstrap"), (["list", "extra"], "unrecognized"), ([], "command"),
        (["no-such-command"], "no-such-command"),
    ]


def _one(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


def test_bad_invocations_are_one_line_and_exit_2(run_dir, tmp_path, capsys):
    cases = table(run_dir, tmp_path)
    assert len(cases) >= 60
    bad = []
    for argv, needle in cases:
        code, err = _one(argv, capsys)
        lines = [l for l in err.strip().splitlines() if l.strip()]
        ok = (code == 2 and len(lines) == 1 and lines[0].startswith("gradscope: error:")
              and "Traceback" not in err and needle.lower() in lines[0].lower())
        if not ok:
            bad.append((argv[:3], code, err[-300:]))
    print(f"{len(cases)} bad invocations, {len(cases) - len(bad)} clean one-line errors with exit 2")
    assert not bad, bad


@pytest.mark.parametrize("argv", [["prune", "--momentum", "-1"], ["fit", "/nonexistent/run.h5"],
                                  ["prune", "--model", "no_such_module_xyz:build", "--rounds", "1"]])
def test_bad_invocation_in_a_fresh_process_has_no_traceback(argv, tmp_path):
    extra = ["--out", str(tmp_path / "o")] if argv[0] == "prune" else []
    r = subprocess.run([PY, "-m", "gradscope", *argv, *extra], env=cli_env(), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("gradscope: error:")


USER_MODELS = '''
import torch
from torch import nn


def _net(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes))


def wrong_classes(input_shape, num_classes):
    return _net(num_classes + 3)


class _Raises(nn.Module):
    def __init__(self, exc):
        super().__init__()
        self.net, self.exc = _net(10), exc

    def forward(self, x):
        raise self.exc


def forward_raises(input_shape, num_classes):
    return _Raises(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def forward_interrupted(input_shape, num_classes):
    return _Raises(KeyboardInterrupt())


def forward_exits(input_shape, num_classes):
    return _Raises(SystemExit(0))


def build_exits(input_shape, num_classes):
    raise SystemExit(0)
'''


def hostile_table(run: Path, tmp: Path) -> list[tuple[list[str], str]]:
    """Issue 22 items 11 and 12: flags that gave a traceback or were accepted (output-path
    cases are the atomic writer's tests). (argv, a word the one error line must contain)."""
    h5 = str(run / "run.h5")
    outs = iter(range(1000))
    p = lambda *a: (["prune", *FAST, "--out", str(tmp / f"o{next(outs)}"), *a])  # noqa: E731 - a new run each

    def sched(name, text):
        f = tmp / name
        f.write_text(text)
        return str(f)
    return [
        # 11: tracebacks
        (p("--weight-decay", "1e308"), "weight-decay"),
        (p("--schedule", "lth", "--max-lr", "1e308"), "max-lr"),
        (p("--schedule-file", sched("huge.json", '{"lo": 1e308, "hi": 1e308}')), "lo"),
        (p("--seed", str(2 ** 64)), "seed"),
        (p("--threads", "100000"), "threads"),
        (["prune", *FAST, "--out", str(tmp / ("n" * 300))], "300 characters"),
        (["fit", h5, "--models", "normal,normal"], "normal"),
        (p("--model", "gs_user_models:wrong_classes"), "classes"),
        (p("--model", "gs_user_models:forward_raises"), "forward"),
        # 12: accepted nonsense
        (p("--train-subset", "1"), "train-subset"),
        (p("--prune-rate", "1e-300"), "prune-rate"),
        (p("--schedule", "lth", "--max-lr", "1e-320"), "max-lr"),
        (p("--lag", "1000000000"), "lag"),
        (p("--no-record", "--views", "relative"), "--views"),
        (p("--download"), "download"),
        (p("--schedule-file", sched("null.json", "null")), "null"),
        (["fit", h5, "--models", ""], "models"),
        (["fit", h5, "--seed", str(2 ** 70)], "seed"),
        (["plot", "narrowing", h5, "--gamma", "nan", "-o", str(tmp / "n.png")], "gamma"),
        (["plot", "calibration", h5, "--statistic", "bogus", "-o", str(tmp / "c.png")], "bogus"),
        (p("--model", "gs_user_models:forward_exits"), "exit"),
        (p("--model", "gs_user_models:build_exits"), "exit"),
    ]


def test_hostile_flags_are_one_line_and_exit_2(run_dir, tmp_path, capsys, monkeypatch):
    """Every case: one line ``gradscope: error: ...``, exit 2; no traceback, no exit 0, no hang."""
    (tmp_path / "gs_user_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = hostile_table(run_dir, tmp_path)
    bad = []
    for argv, needle in cases:
        try:
            code, err = _one(argv, capsys)
        except BaseException as e:  # noqa: BLE001 - a traceback is what this suite counts
            code, err = "traceback", f"{type(e).__name__}: {e}"
            capsys.readouterr()
        lines = [l for l in err.strip().splitlines() if l.strip()]
        ok = (code == 2 and len(lines) == 1 and lines[0].startswith("gradscope: error:")
              and "Traceback" not in err and needle.lower() in lines[0].lower())
        if not ok:
            bad.append((argv[-4:], code, err[-300:]))
    print(f"{len(cases)} hostile invocations, {len(cases) - len(bad)} clean one-line errors with exit 2")
    assert not bad, "\n".join(map(str, bad))


def test_user_model_interrupted_says_how_to_resume(tmp_path, capsys, monkeypatch):
    """A KeyboardInterrupt from the user's model ends in one line saying how to resume."""
    (tmp_path / "gs_user_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = _one(["prune", *FAST, "--out", str(tmp_path / "o"), "--model", "gs_user_models:forward_interrupted"],
                     capsys)
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == 130 and len(lines) == 1 and "interrupted" in lines[0] and "again to resume" in lines[0], err


def test_schedule_file_with_a_falling_calibration_warns_in_one_line(tmp_path, capsys):
    """A calibrate --force file whose status is 'falling' still loads, with one warning line."""
    import warnings

    f = tmp_path / "falling.json"
    f.write_text('{"schedule": "silo", "lo": 0.01, "hi": 0.1, "status": "falling"}')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        code, err = _one(["prune", *FAST, "--rounds", "1", "--train-subset", "200", "--out", str(tmp_path / "o"),
                          "--schedule-file", str(f)], capsys)
    msgs = [str(x.message) for x in w if "calibration status" in str(x.message)]
    assert code == 0 and len(msgs) == 1 and "'falling'" in msgs[0] and "\n" not in msgs[0], (code, err)
    from gradscope.cli import _one_line_warning

    assert _one_line_warning(msgs[0], UserWarning, "x.py", 1).count("\n") == 1
