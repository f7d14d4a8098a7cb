"""Fault suite 3 (bad CLI input): every invocation in the table ends in one line
``gradscope: error: ...`` and exit status 2 — never a traceback, never exit 0."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from gradscope.cli import main

from conftest import PY, ROOT, cli_env
import faultlib as F

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
    loop = tmp / "loop1"
    if not os.path.lexists(loop):
        loop.symlink_to(tmp / "loop2")
        (tmp / "loop2").symlink_to(loop)
    dev = F.char_device(tmp)
    victim = tmp / "victim.txt"
    victim.write_text("precious")
    link_png = tmp / "link.png"
    if not os.path.lexists(link_png):
        link_png.symlink_to(victim)
    fifo = tmp / "fifo.h5"
    if not os.path.lexists(fifo):
        os.mkfifo(fifo)
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
        # output paths (issue 22): one line each, nothing written anywhere
        (["prune", *FAST, "--out", "/sys/kernel/x"], "--out"), (["prune", *FAST, "--out", str(file_ / "sub")], "folder"),
        (["prune", *FAST, "--out", str(loop)], "symbolic links"), (["prune", *FAST, "--out", "a" * 5000], "too long"),
        (["calibrate", h5, "-o", str(empty_dir)], "directory"), (["calibrate", h5, "-o", str(dev)], "device"),
        (["report", h5, "-o", str(dev)], "device"), (["plot", "narrowing", h5, "-o", str(link_png)], "symbolic link"),
        (["report", h5, "-o", str(empty_dir)], "directory"), (["fit", str(fifo)], "FIFO"),
        (["export", "tensorboard", h5, str(file_ / "tb")], "file"),
        # counts that would run on for ever (issue 22)
        (["fit", h5, "--bootstrap", "100000000"], "bootstrap"), (["report", h5, "--bootstrap", str(2 ** 64)], "bootstrap"),
        (["export", "tensorboard", h5, "a" * 5000], "too long"), (["report", h5, "-o", "a" * 5000], "too long"),
        (["report", h5, "-o", "b" * 300], "too long"), (["plot", "narrowing", h5, "-o", "c" * 300 + ".png"], "too long"),
        (["calibrate", h5, "--rounds-planned", "1000000000"], "rounds-planned"),
        (p("--epochs", "100000000000000000000"), "epochs"),
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
    assert (tmp_path / "victim.txt").read_text() == "precious"
    assert os.path.lexists(F.char_device(tmp_path)) and Path(F.char_device(tmp_path)).is_char_device()
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # e.g. calibrate -o DIR left DIR/cli.tmp


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
        (["calibrate", h5, "--lo", "1e20"], "lo"),  # found by scripts/fuzz_cli.py (accepted before)
        (["calibrate", h5, "--gamma", "1e20"], "gamma"),  # a numpy overflow warning line, then the error
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


# ---------------------------------------------------------------------- outputs (issue 22)
def test_report_and_plot_never_follow_a_planted_temp_name(run_dir, tmp_path, capsys):
    """`-o RUN/report.html` with a planted `RUN/report.html.tmp` symlink (a received run directory)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    for name in ("report.html.tmp", "n.png.tmp", ".report.html.tmp"):
        (run / name).symlink_to(victim)
    assert main(["report", str(run / "run.h5"), "-o", str(run / "report.html"), "--bootstrap", "0"]) == 0
    assert main(["plot", "narrowing", str(run / "run.h5"), "-o", str(run / "n.png")]) == 0
    assert victim.read_text() == "precious"
    assert (run / "report.html").read_text().startswith("<!DOCTYPE html>") and (run / "n.png").stat().st_size > 0
    assert not (run / "report.html").is_symlink() and (run / "report.html.tmp").is_symlink()


def test_fit_does_not_store_into_a_run_file_linked_from_outside(run_dir, tmp_path, capsys):
    """RUN/run.h5 a symlink to a file elsewhere: `fit RUN` refuses in one line before fitting and the
    file elsewhere is unchanged; `--no-store` reads it fine."""
    elsewhere = tmp_path / "elsewhere" / "theirs.h5"
    elsewhere.parent.mkdir()
    shutil.copyfile(run_dir / "run.h5", elsewhere)
    before = elsewhere.read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.h5").symlink_to(elsewhere)
    code, err = _one(["fit", str(run), "--bootstrap", "0"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "outside its run directory" in lines[0] and "--no-store" in lines[0]
    assert main(["fit", str(run), "--bootstrap", "0", "--no-store"]) == 0
    from gradscope.store.writer import write_derived  # the library refuses as well
    import pandas as pd
    from gradscope import GradscopeError
    with pytest.raises(GradscopeError, match="outside its run directory"):
        write_derived(str(run / "run.h5"), "fit_pooled", pd.DataFrame({"a": [1.0]}))
    assert elsewhere.read_bytes() == before


def test_a_read_only_file_system_is_one_line_for_every_output(run_dir, tmp_path, capsys, monkeypatch):
    """EROFS from every way an output is created (a folder, a temp file, a temp folder): one line,
    exit 2. (Simulated: a read-only mount needs root; the errno is what the kernel returns.)"""
    ro = str(tmp_path / "ro")
    os.mkdir(ro)
    real_mkdir, real_mkstemp, real_mkdtemp = os.mkdir, tempfile.mkstemp, tempfile.mkdtemp

    def guard(real):
        def f(*a, **k):
            target = str(a[0] if a else k.get("dir", "")) + " " + str(k.get("dir", ""))
            if ro in target:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), ro)
            return real(*a, **k)
        return f
    monkeypatch.setattr(os, "mkdir", guard(real_mkdir))
    monkeypatch.setattr(tempfile, "mkstemp", guard(real_mkstemp))
    monkeypatch.setattr(tempfile, "mkdtemp", guard(real_mkdtemp))
    h5 = str(run_dir / "run.h5")
    for argv in (["profile", *FAST, "--cache-dir", str(run_dir.parent / "cache"), "--out", ro + "/run"],
                 ["calibrate", h5, "-o", ro + "/silo.json", "--force"], ["report", h5, "-o", ro + "/r.html"],
                 ["plot", "narrowing", h5, "-o", ro + "/n.png"], ["export", "tensorboard", h5, ro + "/tb"]):
        code, err = _one(argv, capsys)
        lines = err.strip().splitlines()
        if argv[0] == "calibrate" and code == 2 and "usable rounds" in err:
            continue  # a 2-round run cannot be calibrated: refused before -o is written
        assert code == 2 and len(lines) == 1 and "read-only file system" in lines[0], (argv[:2], err)
    assert os.listdir(ro) == []
