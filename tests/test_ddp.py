"""One run on 2 processes (torchrun, gloo, CPU) trains what one process trains with the same global batch."""
import json
import math
import os
import signal
import subprocess

import numpy as np
import pytest
import torch

from gradscope import GradscopeError
from gradscope.cli import main
from gradscope.data import BatchLoader
from gradscope.train import distributed as D
from gradscope.train.checkpoint import load_torch

from conftest import PY, ROOT, cli_env

ARGS = ["--dataset", "digits", "--model", "small_cnn", "--epochs", "1", "--threads", "1", "--no-progress",
        "--batch-size", "64", "--rounds", "3", "--schedule", "lth", "--max-lr", "0.05"]  # small_cnn has BatchNorm: the sync path is exercised


def _torchrun(*args, env_extra=None, **kw):
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "gradscope", *args]
    return subprocess.Popen(cmd, env={**cli_env(), **(env_extra or {})}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kw)


def _descendants(pid: int) -> list[int]:
    """Child processes, recursively (torchrun starts its workers in their own sessions)."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _same_rounds(a, b):
    ra, rb = (json.loads((d / "rounds.json").read_text()) for d in (a, b))
    assert len(ra) == len(rb) == 3
    for x, y in zip(ra, rb):
        assert x["sparsity"] == y["sparsity"]
        for key in ("val_acc", "test_acc"):  # counts of correct images: equal unless a logit tie flips
            assert abs(x[key] - y[key]) <= 1.5 / 300, (key, x, y)
        assert math.isclose(x["train_loss"], y["train_loss"], rel_tol=1e-4), (x, y)
    for k in range(3):
        ma, mb = load_torch(a / f"round_{k}.pt", what="a round file")["masks"], load_torch(b / f"round_{k}.pt", what="a round file")["masks"]
        assert ma.keys() == mb.keys() and all(torch.equal(ma[n], mb[n]) for n in ma), k
    wa, wb = load_torch(a / "checkpoint.pt", what="a checkpoint")["model"], load_torch(b / "checkpoint.pt", what="a checkpoint")["model"]
    assert wa.keys() == wb.keys()  # a DDP checkpoint resumes in one process and vice versa
    for n in wa:
        assert torch.allclose(wa[n].float(), wb[n].float(), atol=1e-4), n


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process reference: profile (recorded), 3 rounds, global batch 64."""
    d = tmp_path_factory.mktemp("ddp")
    out = d / "single"
    assert main(["profile", *ARGS, "--cache-dir", str(d / "cache"), "--out", str(out)]) == 0
    return out


def test_ddp_profile_matches_single_process(single):
    """Same masks, metrics within float tolerance, and rank 0 records the all-reduced gradients
    (per-rank gradients of half batches would have clearly different moments)."""
    from gradscope.store import open_run

    out = single.parent / "ddp"
    p = _torchrun("profile", *ARGS, "--cache-dir", str(single.parent / "cache"), "--out", str(out))
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    assert stdout.count("recorded to") == 1  # only rank 0 prints
    _same_rounds(single, out)
    keys = ["round", "window", "layer"]
    with open_run(single / "run.h5") as a, open_run(out / "run.h5") as b:
        ma, mb = (r.moments().sort_values(keys).reset_index(drop=True) for r in (a, b))
        assert len(ma) == len(mb) > 0
        assert (ma["count"].to_numpy() == mb["count"].to_numpy()).all()
        np.testing.assert_allclose(mb["sumsq"].to_numpy(), ma["sumsq"].to_numpy(), rtol=2e-3, atol=1e-12)
        # the signed sum cancels (here 1.31 of a sum|g| of 39): its rounding error from the two ranks'
        # reduction order scales with sum|g|, not with the sum itself
        a, b, scale = ma["sum"].to_numpy(), mb["sum"].to_numpy(), ma["sumabs"].to_numpy()
        assert (np.abs(b - a) <= 2e-3 * np.abs(a) + 2e-4 * scale).all(), np.c_[a, b, scale]


def test_ddp_killed_and_resumed_matches_single_process(single):
    """torchrun killed mid-run: rank 0 SIGKILLs itself at a fault point (round 1's checkpoint
    after pruning; no timing involved), then every other process of the run is killed, like a
    lost node; the same command resumes on every rank from rank 0's checkpoint and ends where
    the uninterrupted single process ends."""
    out = single.parent / "killed"
    args = ["prune", *ARGS, "--cache-dir", str(single.parent / "cache"), "--out", str(out)]
    kills = single.parent / "killed.kills"
    fault = {"GRADSCOPE_KILL_FILE": str(kills), "GRADSCOPE_KILL_MATCH": r"^checkpoint:1:train:0$"}
    p = _torchrun(*args, env_extra=fault)
    try:
        p.communicate(timeout=600)  # torchrun ends (non-zero) once rank 0 is gone
    finally:
        for pid in [p.pid, *_descendants(p.pid)]:  # whatever is left dies too
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()
    assert p.returncode != 0 and kills.read_text().splitlines() == ["checkpoint:1:train:0"]
    assert (out / "round_0.pt").exists() and not (out / "round_1.pt").exists()
    p = _torchrun(*args, env_extra=fault)  # the boundary is in the kill file: not killed again
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    assert "resuming" in stdout
    _same_rounds(single, out)


def test_loader_shards_each_global_batch(monkeypatch):
    """Rank r's training batch i is the r-th half of the single-process batch i (same order and
    augmentation); evaluation loaders split the data into disjoint contiguous parts."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(40)
    kw = dict(mean=[0.5] * 3, std=[0.25] * 3, augment="cifar", seed=3, drop_last=True)
    one = BatchLoader(x, y, 8, shuffle=True, **kw)
    ranks = [BatchLoader(x, y, 8, shuffle=True, rank=r, world_size=2, **kw) for r in (0, 1)]
    for ld in (one, *ranks):
        ld.set_epoch(5)
    assert len(one) == len(ranks[0]) == 5
    for (xa, ya), (x0, y0), (x1, y1) in zip(one, *ranks):
        assert torch.equal(torch.cat([y0, y1]), ya) and torch.equal(torch.cat([x0, x1]), xa)
    ev = [BatchLoader(x[:7], y[:7], 2, shuffle=False, rank=r, world_size=2, mean=[0.5] * 3, std=[0.25] * 3)
          for r in (0, 1)]
    parts = [torch.cat([b for _, b in ld]) for ld in ev]
    assert torch.equal(torch.cat(parts), y[:7]) and [ld.examples for ld in ev] == [3, 4]
    with pytest.raises(GradscopeError, match="splits evenly"):
        BatchLoader(x, y, 9, shuffle=True, rank=0, world_size=2, **kw)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "divisible" in D.check_batch(63, 1000) and D.check_batch(64, 1000) is None
    assert "at least one global batch" in D.check_batch(64, 10)
