"""Fault suite 4 (issue 11): disk and permission faults while writing a run file.

File-size limit (RLIMIT_FSIZE in a subprocess), full disk (a small tmpfs; needs root), quota
(simulated), read-only output (the writer runs as `nobody`, since root ignores permission
bits), run.h5 replaced by a directory. Each ends in one line naming the cause, the file keeps
every committed window, and continuing the run (mode "a") works.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from gradscope import GradscopeError
from gradscope.store import open_run, write_derived
from tests import faultlib as F
from tests.conftest import ROOT, cli_env

K = 2000  # samples per layer and window: ~16 kB a window, so a small limit is reached quickly

# A child that records windows until it fails; prints each committed window.
CHILD = """
import sys, contextlib
from gradscope import GradscopeError
from tests import faultlib as F
path, start, n, raw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "raw"
if raw:  # no space reservation: the failure then happens inside HDF5's own writes
    import gradscope.store.writer as W
    W.reserved_space = lambda p, n: contextlib.nullcontext()
try:
    w = F.writer(path, mode="a", sample_k={K})
    for i in range(start, start + n):
        w.add_window(*F.window(0, i, i, sample_k={K}, steps=400))
        w.add_epoch(round=0, epoch=i, train_loss=1.0)
        w.commit()
        print(i, flush=True)
except GradscopeError as e:
    print(f"gradscope: error: {{e}}", file=sys.stderr)
    sys.exit(2)
""".format(K=K)


def _limit(nbytes: int):
    def pre():
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return pre


def _one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("gradscope: error:") and "Traceback" not in err, err
    return lines[0]


def _check_windows(path, last: int) -> None:
    run = open_run(path)
    wins = sorted(set(run.moments().window))
    assert wins == list(range(last + 1)), (wins, last)
    assert run.verify()["windows"] == last + 1
    vals, _ = run.samples(window=last)
    assert np.array_equal(vals, F.window(0, last, last, sample_k=K, steps=400)[2], equal_nan=True)


def _record(path, start, n, *, raw=False, preexec=None, user=None):
    rc, out, err = F.run_child(CHILD, str(path), str(start), str(n), "raw" if raw else "res", preexec=preexec,
                               user=user)
    done = [int(x) for x in out.split()]
    return rc, done, err


@pytest.mark.parametrize("raw", [False, True], ids=["reserved", "hdf5-write-fails"])
def test_file_size_limit_then_continue(tmp_path, raw):
    """`ulimit -f`: one line naming the cause, every committed window readable, then resume.
    'hdf5-write-fails' disables the space reservation, so HDF5's own write fails (the path
    that used to crash with a traceback and a segfault and leave a truncated file)."""
    p = tmp_path / "run.h5"
    rc, done, err = _record(p, 0, 200, raw=raw, preexec=_limit(200_000))
    assert rc == 2 and len(done) >= 3, (rc, err)
    assert "file too large" in _one_line(err)
    _check_windows(p, done[-1])  # opens (even if HDF5 left its end cut off) with every committed window
    rc, more, err = _record(p, done[-1] + 1, 4)  # the same command again, no limit: continues
    assert rc == 0 and more == list(range(done[-1] + 1, done[-1] + 5)), err
    _check_windows(p, more[-1])


def test_file_size_limit_at_creation_leaves_nothing(tmp_path):
    p = tmp_path / "run.h5"
    rc, done, err = _record(p, 0, 5, preexec=_limit(4096))
    assert rc == 2 and not done and "file too large" in _one_line(err)
    assert os.listdir(tmp_path) == []  # no half-made file, no temporary left behind


def test_profile_under_a_file_size_limit(tmp_path):
    """Issue 11's reproduction: `ulimit -f 250` with a `--sample-k 5000` profile."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gradscope", "profile", "--rounds", "3", "--epochs", "2", "--sample-k", "5000",
           "--threads", "1", "--no-progress", "--train-subset", "600", "--cache-dir", str(tmp_path / "cache"),
           "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), cwd=ROOT,
                       preexec_fn=_limit(250 * 1024), timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "file too large" in _one_line(r.stderr)
    run = open_run(out / "run.h5")
    info = run.verify()
    assert info["windows"] >= 1 and len(run.moments()) == info["moments"]


@pytest.fixture
def tmpfs(tmp_path):
    """A 320 kB tmpfs (root only): a disk that really fills up."""
    d = tmp_path / "small"
    d.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs (a full disk); the quota test simulates ENOSPC instead")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()})")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)


@pytest.mark.parametrize("raw", [False, True], ids=["reserved", "hdf5-write-fails"])
def test_disk_full_then_continue(tmpfs, raw):
    p = tmpfs / "run.h5"
    rc, done, err = _record(p, 0, 200, raw=raw)
    assert rc == 2 and len(done) >= 3, (rc, err)
    assert "no space left on device" in _one_line(err)
    _check_windows(p, done[-1])
    subprocess.run(["mount", "-o", "remount,size=4m", str(tmpfs)], check=True)  # space freed
    rc, more, err = _record(p, done[-1] + 1, 4)
    assert rc == 0 and len(more) == 4, err
    _check_windows(p, more[-1])


@pytest.mark.parametrize("code, words", [(errno.EDQUOT, "disk quota exceeded"), (errno.ENOSPC, "no space left"),
                                         (errno.EFBIG, "file too large")])
def test_quota_and_no_space_are_named(tmp_path, monkeypatch, code, words):
    p = tmp_path / "run.h5"
    w = F.write_run(p, rounds=1, windows=2)
    write_derived(p, "fits", F.pd_frame())

    def full(fd, off, n):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(os, "posix_fallocate", full)
    w.add_window(*F.window(1, 0, 9))
    with pytest.raises(GradscopeError, match=f"{words}.*run the same command again.*intact"):
        w.commit()
    with pytest.raises(GradscopeError, match=words):
        write_derived(p, "fits", F.pd_frame(3))
    monkeypatch.undo()
    run = open_run(p)
    assert run.verify()["windows"] == 2 and len(run.derived("fits")) == 2
    w.commit()  # the queued window is still queued: it lands once there is space
    assert open_run(p).verify()["windows"] == 3


def _nobody_dir() -> str:
    if os.geteuid() != 0:
        pytest.skip("permission tests run the writer as `nobody` via setpriv, which needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    rc, out, err = F.run_child("import gradscope, h5py; print('ok')", user="nobody")
    if rc != 0 or out.strip() != "ok":  # e.g. the checkout lies under a folder only root may enter
        pytest.skip(f"`nobody` cannot run this Python and checkout (a parent folder is not "
                    f"world-readable?): {(err.strip().splitlines() or ['exit %d' % rc])[-1]}")
    d = tempfile.mkdtemp(prefix="gs-perm-")
    os.chmod(d, 0o755)
    return d


def test_read_only_output_dir_and_file(tmp_path):
    d = _nobody_dir()
    try:
        p = os.path.join(d, "run.h5")
        rc, done, err = _record(p, 0, 3, user="nobody")  # dir is root's: nobody cannot create in it
        assert rc == 2 and not done and "permission denied" in _one_line(err)
        assert os.listdir(d) == []
        F.write_run(p, rounds=1, windows=2)  # root's run file, 0644: nobody can read, not write
        before = open_run(p).moments()
        rc, done, err = F.run_child(CHILD.replace("sample_k=" + str(K), "sample_k=0"), p, "2", "2", "res",
                                    user="nobody")
        assert rc == 2 and "permission denied" in _one_line(err)
        assert open_run(p).moments().equals(before)
        w = F.writer(p, mode="a")  # with the permission back (here: as root), the run continues
        w.add_window(*F.window(0, 2, 2))
        w.commit()
        assert len(open_run(p).moments()) == 6
    finally:
        shutil.rmtree(d)


def test_write_permission_lost_mid_run(tmp_path):
    d = _nobody_dir()
    try:
        os.chown(d, 65534, 65534)
        p = os.path.join(d, "run.h5")
        code = ("import os, sys\nfrom gradscope import GradscopeError\nfrom tests import faultlib as F\n"
                "w = F.write_run(sys.argv[1], rounds=1, windows=2)\nos.chmod(sys.argv[1], 0o444)\n"
                "w.add_window(*F.window(1, 0, 5))\n"
                "try:\n    w.commit()\nexcept GradscopeError as e:\n"
                "    print(f'gradscope: error: {e}', file=sys.stderr); sys.exit(2)\n")
        rc, out, err = F.run_child(code, p, user="nobody")
        assert rc == 2 and "permission denied" in _one_line(err)
        assert open_run(p).verify()["windows"] == 2  # both earlier windows intact
    finally:
        shutil.rmtree(d)


def test_unreadable_run_file_is_not_called_corrupt(tmp_path):
    d = _nobody_dir()
    try:
        p = os.path.join(d, "run.h5")
        F.write_run(p, rounds=1, windows=1)
        os.chmod(p, 0o600)
        code = ("import sys\nfrom gradscope.cli import main\nsys.exit(main(['fit', sys.argv[1], '--no-store']))\n")
        rc, out, err = F.run_child(code, p, user="nobody")
        line = _one_line(err)
        assert rc == 2 and "permission denied" in line and "not a readable HDF5" not in line and "corrupt" not in line
    finally:
        shutil.rmtree(d)


def test_run_file_replaced_by_a_directory(tmp_path):
    p = tmp_path / "run.h5"
    w = F.write_run(p, rounds=1, windows=2)
    os.rename(p, tmp_path / "moved.h5")
    os.mkdir(p)
    w.add_window(*F.window(1, 0, 5))
    with pytest.raises(GradscopeError, match="is a directory"):
        w.commit()
    with pytest.raises(GradscopeError, match="is a directory"):
        open_run(p)
    with pytest.raises(GradscopeError, match="is a directory"):
        F.writer(p, mode="a")
    assert open_run(tmp_path / "moved.h5").verify()["windows"] == 2  # earlier data intact
    os.rmdir(p)
    os.rename(tmp_path / "moved.h5", p)
    w2 = F.writer(p, mode="a")  # put back: the run continues
    w2.add_window(*F.window(1, 0, 5))
    w2.commit()
    assert open_run(p).verify()["windows"] == 3
