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


def test_profile_killed_at_every_boundary_keeps_every_hdf5_row(tmp_path):
    from gradscope.store import open_run

    cmd = ["profile", *TINY, "--rounds", "2"]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert _run(cmd, ref).returncode == 0
    kill_at_every_boundary(cmd, killed)
    _same_rounds(ref, killed)
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
