"""HDF5 store: round trip, resume without duplicates, crash safety (SIGKILL), bad files, derived."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pandas as pd
import pytest

from gradscope import GradscopeError
from gradscope.store import SCHEMA_VERSION, RunWriter, open_run, pooled_std, write_derived
from gradscope.store import schema as S

EDGES = np.linspace(-1, 1, 9)
LAYERS = [{"layer": "a", "index": 0, "kind": "conv", "shape": "2x3", "numel": 6, "relu_fed": True,
           "relu_path": "direct", "recorded": True},
          {"layer": "b", "index": 1, "kind": "linear", "shape": "3x2", "numel": 6, "relu_fed": False,
           "relu_path": "none", "recorded": True}]


def _writer(path, **kw):
    return RunWriter(path, config={"x": 1}, edges=EDGES, edge_kind="linear", layers=LAYERS, **kw)


def _window(r, w, seed):
    rng = np.random.default_rng(seed)
    m = np.zeros(2, dtype=S.MOMENTS_DTYPE)
    m["round"], m["window"], m["epoch"], m["layer"] = r, w, w, [0, 1]
    m["step_start"], m["step_end"] = 10 * w, 10 * w + 9
    m["count"] = rng.integers(1, 100, 2)
    m["sum"], m["sumsq"] = rng.standard_normal(2), rng.uniform(1, 2, 2)
    return m, rng.integers(0, 50, (2, 8))


def test_roundtrip_and_round_summary(tmp_path):
    p = str(tmp_path / "r.h5")
    w = _writer(p)
    wins = {(r, i): _window(r, i, 10 * r + i) for r in range(2) for i in range(3)}
    for (r, i), (m, h) in wins.items():
        assert w.add_window(m, h)
        w.commit()
    w.add_round(round=0, sparsity=0.0, schedule="{}", val_acc=0.5)
    w.add_epoch(round=0, epoch=0, train_loss=1.0)
    w.commit()
    run = open_run(p)
    assert run.schema_version == SCHEMA_VERSION and run.config == {"x": 1}
    assert set(run.versions) >= {"torch", "numpy", "h5py", "gradscope", "python"}
    counts, edges, idx = run.histograms(layer="b", round=1)
    assert np.array_equal(edges, EDGES) and list(idx.window) == [0, 1, 2]
    assert np.array_equal(counts, np.stack([wins[(1, i)][1][1] for i in range(3)]))
    m = run.moments(round=0)
    assert len(m) == 6 and list(m.layer[:2]) == ["a", "b"] and list(m.relu_fed[:2]) == [True, False]
    s = run.round_summary()
    for r in range(2):
        rows = [wins[(r, i)][0][0] for i in range(3)]  # layer a only (relu-fed)
        ref = pooled_std(np.array([x["count"] for x in rows]), np.array([x["sum"] for x in rows]),
                         np.array([x["sumsq"] for x in rows]))
        vals = np.concatenate([np.full(x["count"], 0.0) for x in rows])  # size check of pooled count
        assert s["std"][r] == pytest.approx(ref) and s["count"][r] == vals.size
    assert s.std_ratio[1] == pytest.approx(s["std"][1] / s["std"][0]) and s.val_acc[0] == 0.5
    with pytest.raises(GradscopeError, match="no gradient samples"):
        run.samples()
    with pytest.raises(GradscopeError, match="unknown layer"):
        run.moments(layer="zzz")


def test_pooled_std_matches_numpy():
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal(n) * s + mu for n, s, mu in [(50, 1, 0), (70, 3, 2), (5, 0.1, -1)]]
    got = pooled_std(np.array([len(p) for p in parts]), np.array([p.sum() for p in parts]),
                     np.array([(p * p).sum() for p in parts]))
    assert got == pytest.approx(np.concatenate(parts).std())


def test_resume_skips_existing_windows_and_cuts_torn_tail(tmp_path):
    p = str(tmp_path / "r.h5")
    w = _writer(p)
    for i in range(2):
        w.add_window(*_window(0, i, i))
    w.commit()
    # a torn tail past the commit point (as a kill mid-write would leave)
    with h5py.File(p, "r+") as f:
        f["moments"].resize((6,))
        f["hist"].resize((6, 8))
        f["hist"][4:] = 999
    assert len(open_run(p).moments()) == 4
    w2 = _writer(p)  # resumed process
    assert w2.has_window(0, 1) and not w2.has_window(0, 2)
    m_dup, h_dup = _window(0, 1, 77)
    assert not w2.add_window(m_dup, h_dup)
    w2.add_window(*_window(0, 2, 2))
    w2.commit()
    run = open_run(p)
    m = run.moments()
    assert list(m.window) == [0, 0, 1, 1, 2, 2]
    counts, _, _ = run.histograms()
    assert np.array_equal(counts[2:4], _window(0, 1, 1)[1]) and (counts != 999).all()
    with pytest.raises(GradscopeError, match="other histogram edges"):
        RunWriter(p, config={}, edges=np.linspace(-2, 2, 9), edge_kind="linear", layers=LAYERS)


def test_bad_files(tmp_path):
    txt = tmp_path / "t.h5"
    txt.write_text("hello, not hdf5\n" * 10)
    with pytest.raises(GradscopeError, match="not a readable HDF5"):
        open_run(txt)
    with pytest.raises(GradscopeError, match="does not exist"):
        open_run(tmp_path / "missing.h5")
    foreign = tmp_path / "f.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(GradscopeError, match="not a gradscope run"):
        open_run(foreign)
    with pytest.raises(GradscopeError, match="not a gradscope run"):
        _writer(str(foreign))
    assert h5py.File(foreign, "r")["x"][2] == 2  # untouched
    good = str(tmp_path / "g.h5")
    w = _writer(good)
    w.add_window(*_window(0, 0, 0))
    w.commit()
    data = open(good, "rb").read()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(GradscopeError):
        open_run(trunc).moments()
    corrupt = tmp_path / "c.h5"
    corrupt.write_bytes(b"\0" * 64 + data[64:])
    with pytest.raises(GradscopeError):
        open_run(corrupt)
    with h5py.File(good, "r+") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(GradscopeError, match="schema version 2"):
        open_run(good)


def test_write_derived_replaces_and_leaves_raw_alone(tmp_path):
    p = str(tmp_path / "r.h5")
    w = _writer(p)
    w.add_window(*_window(0, 0, 0))
    w.commit()
    before = open_run(p).moments()
    df = pd.DataFrame({"round": [0, 1], "scale": [1.0, 0.5], "model": ["normal", "t"], "ok": [True, False]})
    write_derived(p, "fits", df)
    write_derived(p, "fits", df.iloc[:1])
    write_derived(p, "other", df)
    run = open_run(p)
    assert run.derived_names() == ["fits", "other"]
    pd.testing.assert_frame_equal(run.derived("fits"), df.iloc[:1])
    pd.testing.assert_frame_equal(run.derived("other"), df)
    pd.testing.assert_frame_equal(run.moments(), before)
    with pytest.raises(GradscopeError):
        write_derived(p, "a/b", df)
    with pytest.raises(GradscopeError, match="no derived table"):
        run.derived("nope")
    # a write that died before switching the pointer leaves the old table visible
    with h5py.File(p, "r+") as f:
        f["derived/fits"].create_group("v99")
    pd.testing.assert_frame_equal(open_run(p).derived("fits"), df.iloc[:1])


_CHILD = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {root!r})
    from tests.test_store import _writer, _window
    w = _writer({path!r})
    start = int(sys.argv[1])
    i = start
    while True:
        w.add_window(*_window(0, i, i))
        w.add_epoch(round=0, epoch=i, train_loss=float(i))
        w.commit()
        print(i, flush=True)
        i += 1
""")


def test_sigkill_leaves_every_flushed_window(tmp_path):
    p = str(tmp_path / "k.h5")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(root=root, path=p))
    rng = np.random.default_rng(0)
    flushed = -1
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(flushed + 1)], stdout=subprocess.PIPE, text=True)
        n_lines = 0
        deadline = time.monotonic() + 60
        want = rng.integers(3, 25)
        while n_lines < want and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            flushed = int(line)
            n_lines += 1
        time.sleep(rng.uniform(0, 0.01))  # land somewhere inside a later write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for line in proc.stdout.read().split():
            flushed = int(line)
        run = open_run(p)
        m = run.moments()
        wins = sorted(set(m.window))
        assert wins == list(range(len(wins))) and wins[-1] >= flushed  # nothing lost, no gaps
        counts, _, idx = run.histograms()
        for i in range(flushed + 1):
            mm, hh = _window(0, i, i)
            rows = np.nonzero(idx.window.to_numpy() == i)[0]
            assert len(rows) == 2 and np.array_equal(counts[rows], hh)
            assert np.array_equal(m.loc[rows, "sum"].to_numpy(), mm["sum"])
        assert m.groupby("window").size().eq(2).all()  # no duplicates after resume
        flushed = wins[-1]
