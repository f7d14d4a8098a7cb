"""Fault suite 1 (crash-resume): a run killed once at every stage boundary (each checkpoint,
round file, rounds.json, Oracle candidate and HDF5 commit), restarted after each kill, ends
identical to an uninterrupted run: masks, per-round metrics, every HDF5 row."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from gradscope.train.checkpoint import load_torch

from conftest import PY, ROOT, cli_env

TINY = ["--dataset", "digits", "--model", "small_cnn", "--epochs", "2", "--batch-size", "64",
        "--threads", "1", "--no-progress", "--schedule", "lth", "--max-lr", "0.05"]


def _run(cmd: list[str], out: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = cli_env()
    env.update(env_extra or {})
    return subprocess.run([PY, "-m", "gradscope", *cmd, "--cache-dir", str(out.parent / "cache"),
                           "--out", str(out)], env=env, cwd=ROOT, capture_output=True, text=True)


def kill_at_every_boundary(cmd: list[str], out: Path, match: str = "", limit: int = 200) -> list[str]:
    """Run ``cmd`` until it exits 0, each process killed at the next boundary it reaches for the
    first time; return the boundaries killed at, in order."""
    kills = out.parent / f"{out.name}.kills"
    env = {"GRADSCOPE_KILL_FILE": str(kills), "GRADSCOPE_KILL_MATCH": match}
    for _ in range(limit):
        r = _run(cmd, out, env)
        if r.returncode == 0:
            return kills.read_text().splitlines() if kills.exists() else []
        assert r.returncode == -9, f"exit {r.returncode}, not a kill:\n{r.stderr[-2000:]}"
    raise AssertionError(f"no clean finish after {limit} kills")


def _same_rounds(a: Path, b: Path, keys=("round", "sparsity", "max_lr", "train_loss", "val_acc", "test_acc")) -> None:
    ra, rb = json.loads((a / "rounds.json").read_text()), json.loads((b / "rounds.json").read_text())
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb):
        for k in keys:
            assert x[k] == y[k], (k, x, y)
    for k in range(len(ra)):
        fa, fb = (load_torch(d / f"round_{k}.pt", what="round file") for d in (a, b))
        assert all(torch.equal(fa["masks"][n], fb["masks"][n]) for n in fa["masks"])
        assert fa["epochs"] == [dict(e, time_s=e["time_s"]) for e in fa["epochs"]]
        assert [dict(e, time_s=0) for e in fa["epochs"]] == [dict(e, time_s=0) for e in fb["epochs"]]


def test_prune_killed_at_every_boundary_ends_identical(tmp_path):
    cmd = ["prune", *TINY, "--rounds", "3"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _run(cmd, ref).returncode == 0
    kills = kill_at_every_boundary(cmd, killed)
    names = {k.split(":")[0] for k in kills}
    assert {"checkpoint", "round-file", "rounds-json"} <= names
    assert "round-file:1" in kills and "checkpoint:1:train:1" in kills  # a round boundary and mid-round
    assert len(kills) >= 15
    _same_rounds(ref, killed)
    assert not list(killed.glob(".*.tmp"))


def _datasets(path: Path) -> dict:
    """Every dataset of an HDF5 file: name -> (dtype, shape, bytes); the rounds table without
    its wall-clock column (time_s) and the row CRC that covers it."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                a = obj[()]
                if name == "rounds":
                    a = a.copy()
                    a["time_s"], a["crc"] = 0, 0
                if a.dtype.kind == "O" or (a.dtype.names and any(a.dtype[n].kind == "O" for n in a.dtype.names)):
                    out[name] = (str(a.dtype), a.shape, repr(a.tolist()))
                else:
                    out[name] = (str(a.dtype), a.shape, np.ascontiguousarray(a).tobytes())
        f.visititems(visit)
    return out


def assert_same_datasets(a: Path, b: Path) -> None:
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    diff = [k for k in da if da[k] != db[k]]
    assert not diff, f"datasets differ after kills and resumes: {diff}"


def test_profile_killed_at_every_boundary_keeps_every_hdf5_row(tmp_path):
    """The full preset (relative view, fixed population, samples): every dataset of the run
    file ends bit for bit as in an uninterrupted run (issue 22 item 7: a resumed round lost its
    fixed-population steps before the kill, and its samples were drawn anew)."""
    from gradscope.store import open_run

    cmd = ["profile", *TINY, "--rounds", "2", "--record-preset", "full", "--sample-k", "16"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _run(cmd, ref).returncode == 0
    kills = kill_at_every_boundary(cmd, killed)
    assert "checkpoint:1:train:1" in kills  # killed right after round 1's first-epoch checkpoint
    _same_rounds(ref, killed)
    assert_same_datasets(ref / "run.h5", killed / "run.h5")
    with open_run(killed / "run.h5") as r:
        assert r.population_rounds() == [0, 1] and (r.derived_names() == [])
    with open_run(ref / "run.h5") as a, open_run(killed / "run.h5") as b:
        keys = ["round", "window", "layer"]
        ma = a.moments().sort_values(keys).reset_index(drop=True)
        mb = b.moments().sort_values(keys).reset_index(drop=True)
        assert not mb.duplicated(keys).any() and len(ma) == len(mb)
        for col in ("count", "sum", "sumsq", "sumabs", "min", "max", "under", "over"):
            assert np.array_equal(ma[col].to_numpy(), mb[col].to_numpy()), col
        ca, _, ia = a.histograms()
        cb, _, ib = b.histograms()
        assert np.array_equal(ca[ia.sort_values(keys).index], cb[ib.sort_values(keys).index])
        for t in ("rounds", "epochs"):
            ta, tb = getattr(a, t)(), getattr(b, t)()
            cols = [c for c in ta.columns if c != "time_s"]
            assert ta[cols].equals(tb[cols]), t


def test_silo_auto_calibration_survives_kills(tmp_path):
    """silo-auto's calibrated curve is checkpointed: a run killed after calibration took over
    trains every later round at the same max_lr as an uninterrupted one."""
    cmd = ["prune", "--dataset", "digits", "--model", "small_cnn", "--epochs", "1", "--batch-size", "64",
           "--threads", "1", "--no-progress", "--schedule", "silo-auto", "--rounds", "6", "--lo", "0.03",
           "--hi", "0.09"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _run(cmd, ref).returncode == 0
    kills = kill_at_every_boundary(cmd, killed, match=r"^(checkpoint:[3-5]:prune|round-file:[3-5])")
    assert len(kills) >= 4
    _same_rounds(ref, killed, keys=("round", "max_lr", "val_acc"))


def test_killed_after_last_epoch_still_writes_the_round_row(tmp_path):
    """Regression: a run killed after a round's last epoch checkpoint resumes without training a
    step; the recorder must still open the run file and write the round's row."""
    from gradscope.store import open_run

    cmd = ["profile", *TINY, "--rounds", "1"]
    out = tmp_path / "o"
    env = {"GRADSCOPE_KILL_FILE": str(tmp_path / "kills"), "GRADSCOPE_KILL_MATCH": r"^checkpoint:0:train:2"}
    assert _run(cmd, out, env).returncode == -9
    assert _run(cmd, out, env).returncode == 0
    with open_run(out / "run.h5") as r:
        rounds = r.rounds()
        assert rounds["round"].tolist() == [0]
        assert rounds["val_acc"].notna().all() and rounds["test_acc"].notna().all()


# ---------------------------------------------------------------------- one writer at a time (issue 22)
_HOLDER = """
import os, sys
kind, target = sys.argv[1:3]
if kind in ("dir", "lock"):
    from gradscope.store.diskio import writer_lock
    release = writer_lock(os.path.join(target, ".lock") if kind == "dir" else target, "run " + target)
else:
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    import faultlib as F
    release = F.writer(target, mode="a").close
print(os.getpid(), flush=True)  # the lock is held
sys.stdin.read()  # until the test closes our stdin (or kills us)
release()
"""


def _holder(kind: str, target: Path):
    """A second process that takes the writer lock of ``target`` and holds it until told to stop
    (synchronised on its pipes, never on sleeps)."""
    p = subprocess.Popen([PY, "-c", _HOLDER, kind, str(target)], env=cli_env(), cwd=ROOT, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = p.stdout.readline()  # blocks until the child holds the lock (or dies)
    assert line.strip() == str(p.pid), p.stderr.read()

    def stop(kill: bool = False):
        if kill:
            p.kill()
        p.stdin.close()
        assert p.wait(timeout=60) == (-9 if kill else 0), p.stderr.read()
        p.stdout.close()
        p.stderr.close()
    return p, stop


def test_a_second_writer_of_a_run_directory_gets_one_line_naming_the_holder(tmp_path, capsys):
    from gradscope.cli import main

    run = tmp_path / "run"
    run.mkdir()
    p, stop = _holder("dir", run)
    try:
        rc = main(["profile", *TINY, "--epochs", "1", "--rounds", "1", "--train-subset", "64",
                   "--cache-dir", str(tmp_path / "cache"), "--out", str(run)])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert rc == 2 and len(err) == 1 and f"PID {p.pid}" in err[0] and "being written" in err[0], err
        assert not (run / "run.h5").exists() and not (run / "config.json").exists()  # nothing written
    finally:
        stop()
    assert not (run / ".lock").exists()  # the holder removed its lock file on its way out


def test_a_second_writer_of_a_run_file_is_refused_and_readers_stay_lock_free(tmp_path):
    from gradscope import GradscopeError
    from gradscope.store import open_run

    import faultlib as F

    path = tmp_path / "run.h5"
    F.write_run(path, rounds=1, windows=2).close()
    p, stop = _holder("file", path)
    try:
        with pytest.raises(GradscopeError, match=f"being written by PID {p.pid}"):
            F.writer(path, mode="a")
        with open_run(str(path)) as r:  # a reader never waits for the writer lock
            assert len(r.moments()) > 0
    finally:
        stop()
    F.writer(path, mode="a").close()  # released: a new writer gets it


def test_a_stale_lock_of_a_killed_writer_is_taken_over(tmp_path):
    from gradscope.store.diskio import writer_lock

    run = tmp_path / "run"
    run.mkdir()
    p, stop = _holder("dir", run)
    stop(kill=True)  # SIGKILL: its lock file stays behind, naming a dead PID
    assert (run / ".lock").read_text().strip() == str(p.pid)
    release = writer_lock(str(run / ".lock"), "run directory")
    assert (run / ".lock").read_text().strip() == str(os.getpid())
    release()
    assert not (run / ".lock").exists()


def test_repair_waits_for_no_writer(tmp_path):
    """`repair` rewrites the file: it is a writer too, refused while a recorder holds the file."""
    from gradscope import GradscopeError
    from gradscope.store import repair

    import faultlib as F

    from gradscope.store.diskio import run_file_lock_path

    path = tmp_path / "run.h5"
    F.write_v1(path)  # schema 1: repair rewrites it
    before = path.read_bytes()
    p, stop = _holder("lock", Path(run_file_lock_path(str(path))))
    try:
        with pytest.raises(GradscopeError, match=f"PID {p.pid}"):
            repair(str(path))
        assert path.read_bytes() == before
    finally:
        stop()
