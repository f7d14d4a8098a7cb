"""HDF5 store: round trip, views ("all" exact, relative), population, snapshot, writer modes,
resume without duplicates, checksums and validation, schema-1 files, repair, SIGKILL safety."""
import json
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

from gradscope import GradscopeError, InternalError
from gradscope.cli import main
from gradscope.store import SCHEMA_VERSION, RunWriter, open_run, pooled_std, repair, window_rows, write_derived
from gradscope.store import checksum as C
from gradscope.store import schema as S
from tests import faultlib as F


def test_roundtrip_views_and_round_summary(tmp_path):
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=2, windows=3, views=("survivors", "relative"), relative_eps=1e-8)
    run = open_run(p)
    assert run.schema_version == SCHEMA_VERSION == 2 and run.config == {"x": 1} and run.checksums
    assert set(run.versions) >= {"torch", "numpy", "h5py", "gradscope", "python"}
    assert run.views() == ["survivors", "all", "relative"] and run.relative_eps == 1e-8
    lay = run.layers()
    assert list(lay.activation) == ["relu", ""] and list(lay.rule) == ["relu", "all"] and "crc" not in lay
    counts, edges, idx = run.histograms(layer="b", round=1)
    assert np.array_equal(edges, F.EDGES) and list(idx.window) == [0, 1, 2] and set(idx.view) == {"survivors"}
    for i in range(3):
        m, h, _ = F.window(1, i, 100 + i, kept=[5, 4], views=("survivors", "relative"))
        assert np.array_equal(counts[i], h[1])  # survivors row of layer b
        rel_counts, _, _ = run.histograms(layer="b", round=1, window=i, view="relative")
        assert np.array_equal(rel_counts[0], h[3])
    mom = run.moments(round=0)
    assert len(mom) == 6 and list(mom.layer[:2]) == ["a", "b"] and list(mom.relu_fed[:2]) == [True, False]
    assert list(mom.columns[:9]) == S.KEY_COLUMNS + ["relu_fed"] and (mom.steps == 2).all()
    s = run.round_summary()
    for r in range(2):
        rows = run.moments(round=r, layer="a")
        ref = pooled_std(rows["count"].to_numpy(), rows["sum"].to_numpy(), rows["sumsq"].to_numpy())
        assert s["std"][r] == pytest.approx(ref) and s["count"][r] == rows["count"].sum()
    assert s.std_ratio[1] == pytest.approx(s["std"][1] / s["std"][0]) and s.val_acc[0] == 0.5
    assert set(s.view) == {"survivors"} and set(s.windows) == {"all"}
    last = run.round_summary(window="last")
    assert list(last["count"]) == [int(run.moments(round=r, layer="a", window=2)["count"].iloc[0]) for r in range(2)]
    with pytest.raises(GradscopeError, match="no gradient samples"):
        run.samples()
    with pytest.raises(GradscopeError, match="unknown layer"):
        run.moments(layer="zzz")
    with pytest.raises(GradscopeError, match="has survivors, all, relative"):
        run.moments(view="fixed")


def test_unrecorded_view_lists_what_the_file_has(tmp_path):
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=1, windows=1)
    with pytest.raises(GradscopeError, match="view 'relative' is not in .* it has survivors, all"):
        open_run(p).histograms(view="relative")


@pytest.mark.parametrize("edges", [np.linspace(-1, 1, 9), np.linspace(0.5, 2, 5), np.linspace(-2, -0.5, 4),
                                   np.concatenate([-np.logspace(0, -3, 4), np.logspace(-3, 0, 4)])])
def test_all_view_equals_numpy_with_pruned_zeros(tmp_path, edges):
    """The derived "all" view is exact: moments and histograms of the whole layer with pruned
    weights counted as zeros, whether 0 falls in a bin, under or over the edges."""
    p = tmp_path / "r.h5"
    w = F.writer(p, edges=edges)
    rng = np.random.default_rng(3)
    mask = [rng.random(6) < 0.5, np.ones(6, bool)]
    mask[0][0] = True
    steps = 3
    full = [rng.standard_normal((steps, 6)) * m for m in mask]  # pruned positions: exact zeros
    full[1][1, 2] = np.nan  # a non-finite survivor value is excluded from "all" too
    surv = [x[:, m] for x, m in zip(full, mask)]
    st, h = F.stats(surv, edges)
    w.add_window(window_rows(0, 0, 0, 0, steps - 1, [0, 1], "survivors", st), h)
    w.commit()
    run = open_run(p)
    m = run.moments(view="all")
    counts, _, _ = run.histograms(view="all")
    ref, ref_h = F.stats(full, edges)
    for c in S.MOMENT_COLUMNS:
        assert np.allclose(m[c].to_numpy(), ref[c], rtol=1e-12, atol=0, equal_nan=True), c
    assert np.array_equal(counts, ref_h)
    assert m["count"][0] == 6 * steps and m["nonfinite"][1] == 1
    surv_m = run.moments()
    assert surv_m["count"][0] == mask[0].sum() * steps


def test_population_rms_matches_numpy(tmp_path):
    p = tmp_path / "r.h5"
    w = F.writer(p, population=True)
    rng = np.random.default_rng(5)
    masks = [np.ones(12, bool)]
    masks.append(masks[0] & (rng.random(12) < 0.7))
    masks.append(masks[1] & (rng.random(12) < 0.7))
    sums = [rng.uniform(0, 2, 12).astype(np.float32) for _ in range(3)]
    steps = [4, 5, 6]
    for r in range(3):
        w.add_population(r, sums[r], np.packbits(masks[r]) if r != 1 else masks[r], steps[r])
    w.commit()
    run = open_run(p)
    assert run.population_rounds() == [0, 1, 2]
    df = run.population()
    for K in range(3):
        for j in range(K + 1):
            sel = masks[K]
            for name, seg in (("a", slice(0, 6)), ("b", slice(6, 12)), ("pooled", slice(0, 12))):
                s, mk = sums[j][seg].astype(np.float64), sel[seg]
                row = df[(df.reference_round == K) & (df["round"] == j) & (df.layer == name)].iloc[0]
                assert row["count"] == mk.sum()
                assert row["rms"] == pytest.approx(np.sqrt(s[mk].sum() / (mk.sum() * steps[j])))
    assert set(run.population(reference_round=1)["reference_round"]) == {1}
    with pytest.raises(GradscopeError, match="no population record"):
        run.population(reference_round=7)
    with pytest.raises(InternalError):
        w.add_population(3, np.zeros(5), np.zeros(2, np.uint8), 1)
    q = tmp_path / "q.h5"
    F.write_run(q, rounds=1, windows=1)
    with pytest.raises(GradscopeError, match="no fixed-population"):
        open_run(q).population()


def test_snapshot_reads_one_committed_state(tmp_path):
    p = tmp_path / "r.h5"
    w = F.write_run(p, rounds=1, windows=2)
    run = open_run(p)
    with run.snapshot():
        before = run.moments()
        w.add_window(*F.window(1, 0, 7, kept=[5, 4]))
        w.commit()
        counts, _, idx = run.histograms()
        assert len(run.moments()) == len(before) == len(idx) == counts.shape[0] == 4
    assert len(run.moments()) == 6
    with run.snapshot():
        F.writer(p, mode="w")  # the file is replaced under the snapshot
        with pytest.raises(GradscopeError, match="replaced while a snapshot"):
            run.moments()


def test_window_rows_and_add_window_check_the_layout(tmp_path):
    st, h = F.stats([np.ones(3), np.ones(2)])
    rows = window_rows(0, 0, 0, 5, 9, [0, 1], "survivors", st)
    assert rows.dtype == S.MOMENTS_DTYPE and list(rows["steps"]) == [5, 5] and list(rows["view"]) == [0, 0]
    with pytest.raises(InternalError):
        window_rows(0, 0, 0, 0, 1, [0, 1], "all", st)
    with pytest.raises(InternalError):
        window_rows(0, 0, 0, 0, 1, [0], "survivors", st)
    w = F.writer(tmp_path / "r.h5")
    with pytest.raises(InternalError):
        w.add_window(rows[:1], h[:1])
    with pytest.raises(InternalError):
        w.add_window(np.concatenate([rows[:1], rows[:1]]), h)  # layer 0 twice, layer 1 missing
    legacy = rows.copy()
    legacy["steps"] = 0  # producers that do not count steps: every step recorded
    assert w.add_window(legacy, h)
    w.commit()
    assert list(open_run(tmp_path / "r.h5").moments()["steps"]) == [5, 5]


def test_writer_modes_never_drop_data_silently(tmp_path):
    """A second run into the same file (the README loop run twice) must choose: 'a' or 'w'."""
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=1, windows=2)
    for cfg, words in (({"x": 1}, "the same settings"), ({"seed": 2}, "other settings")):
        with pytest.raises(GradscopeError, match=f"already holds a run .*{words}.*mode='a'.*mode='w'"):
            F.writer(p, config=cfg)
    assert len(open_run(p).moments()) == 4  # untouched
    w = F.writer(p, mode="a", config={"seed": 2})  # continue: keeps the file's config, skips known windows
    assert w.has_window(0, 1) and not w.add_window(*F.window(0, 1, 55))
    w.add_window(*F.window(0, 2, 2))
    w.commit()
    run = open_run(p)
    assert list(run.moments().window) == [0, 0, 1, 1, 2, 2] and run.config == {"x": 1}
    F.writer(p, mode="w", config={"y": 3})
    run = open_run(p)
    assert run.config == {"y": 3} and len(run.moments()) == 0
    F.writer(p)  # mode "x" on a file with nothing committed: nothing to lose, replaced
    foreign = tmp_path / "f.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(GradscopeError, match="not a readable gradscope run.*mode='w'"):
        F.writer(foreign)
    with pytest.raises(GradscopeError, match="not a gradscope run"):
        F.writer(foreign, mode="a")
    assert h5py.File(foreign, "r")["x"][2] == 2  # untouched
    with pytest.raises(GradscopeError, match="mode must be"):
        F.writer(tmp_path / "z.h5", mode="r+")
    with pytest.raises(GradscopeError, match="other histogram edges"):
        F.writer(p, mode="a", edges=np.linspace(-2, 2, 9))
    with pytest.raises(GradscopeError, match="views"):
        F.writer(p, mode="a", views=("survivors", "relative"), relative_eps=1e-3)
    with pytest.raises(GradscopeError, match="relative_eps"):
        F.writer(tmp_path / "e.h5", views=("survivors", "relative"))
    with pytest.raises(GradscopeError, match="derived at read time"):
        F.writer(tmp_path / "e.h5", views=("survivors", "all"))


def test_resume_skips_existing_windows_and_cuts_torn_tail(tmp_path):
    p = str(tmp_path / "r.h5")
    w = F.writer(p)
    for i in range(2):
        w.add_window(*F.window(0, i, i))
    w.commit()
    with h5py.File(p, "r+") as f:  # a torn tail past the commit point (as a kill mid-write leaves)
        f["moments"].resize((6,))
        f["hist"].resize((6, 8))
        f["hist"][4:] = 999
    assert len(open_run(p).moments()) == 4
    w2 = F.writer(p, mode="a")  # resumed process
    assert w2.has_window(0, 1) and not w2.has_window(0, 2)
    assert not w2.add_window(*F.window(0, 1, 77))
    w2.add_window(*F.window(0, 2, 2))
    w2.commit()
    run = open_run(p)
    assert list(run.moments().window) == [0, 0, 1, 1, 2, 2]
    counts, _, _ = run.histograms()
    assert np.array_equal(counts[2:4], F.window(0, 1, 1)[1]) and (counts != 999).all()


def _rounds_maxlr_offset(path) -> int:
    off, _ = F.chunk_offset(path, "rounds", (0,))
    return off + F.field_offset(S.SMALL_TABLES["rounds"], "max_lr")


def test_one_flipped_bit_of_max_lr_is_refused(tmp_path, capsys):
    """Issue 11: flipping one bit of round 0's max_lr made calibrate recommend LRs twice as large."""
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=2, windows=1)
    assert open_run(p).rounds()["max_lr"][0] == 0.1
    F.flip_bit(p, _rounds_maxlr_offset(p) + 7, 4)  # exponent bit: 0.1 -> 0.2 without a checksum
    with pytest.raises(GradscopeError, match="checksum"):
        open_run(p).rounds()
    assert main(["calibrate", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gradscope: error:") and "checksum" in err and "\n" not in err


def test_attribute_and_committed_checksums(tmp_path):
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=1, windows=1)
    with h5py.File(p, "r+") as f:  # changed behind gradscope's back: the checksum no longer matches
        f.attrs["config"] = json.dumps({"x": 2})
    with pytest.raises(GradscopeError, match="'config' fails its checksum"):
        open_run(p)
    F.write_run(p := tmp_path / "q.h5", rounds=1, windows=1)
    with h5py.File(p, "r+") as f:
        c = f.attrs["committed"].copy()
        c[4] -= 2
        f.attrs["committed"] = c
    with pytest.raises(GradscopeError, match="'committed' fails its checksum"):
        open_run(p)


@pytest.mark.parametrize("attrs, words", [
    ({"schema_version": "abc"}, "schema_version is 'abc', not an integer"),
    ({"schema_version": 99}, "schema version 99"),
    ({"committed": [2, 2, 4, 2, 40, 0]}, "40 moments rows are committed but"),
    ({"committed": [2, 2, 4, 2, -2, 0]}, "negative"),
    ({"committed": [2, 2, 4, 2, 3, 0]}, "not whole windows"),
    ({"sample_k": -1}, "out of range"),
    ({"config": "{not json"}, "not valid JSON"),
    ({"views": json.dumps({"survivors": 0, "bogus": 5})}, "unknown views"),
])
def test_impossible_root_values_are_one_clear_error(tmp_path, attrs, words):
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=2, windows=1)
    F.forge_attrs(p, **attrs)
    with pytest.raises(GradscopeError, match=words):
        open_run(p).moments()


def _forge_rows(path, name, fn, sel=slice(None), crc: bool = True):
    """Change rows and (crc=True) their row checksums: a consistent forgery only validation catches."""
    with h5py.File(path, "r+") as f:
        a = f[name][sel]
        fn(a)
        f[name][sel] = C.with_row_crcs(a) if crc and a.dtype.names else a


@pytest.mark.parametrize("name, fn, words", [
    ("moments", lambda a: a.__setitem__("sum", np.nan), "non-finite sum"),
    ("moments", lambda a: a.__setitem__("count", -1), "negative count"),
    ("moments", lambda a: a.__setitem__("layer", 7), "layer that does not exist"),
    ("moments", lambda a: a.__setitem__("step_end", -5), "steps out of order"),
    ("moments", lambda a: a.__setitem__("window", 1), "stored twice"),
    ("hist", lambda a: a.__setitem__((0, 0), -3), "negative counts"),
    ("hist", lambda a: a.__setitem__((0, 0), a[0, 0] + 1), "do not add up"),
    ("edges", lambda a: a.__setitem__(3, np.nan), "edges are not finite and increasing"),
    ("edges", lambda a: a.__setitem__(3, 5.0), "edges are not finite and increasing"),
])
def test_impossible_rows_are_one_clear_error(tmp_path, name, fn, words):
    """h5py rewrites the fletcher32 checksum, so only validation can catch these."""
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=1, windows=2)
    _forge_rows(p, name, fn, slice(0, 2) if name == "moments" else slice(None))
    with pytest.raises(GradscopeError, match=words):
        run = open_run(p)
        run.histograms()


def _first_window_round(a):
    a["round"] = 50


@pytest.mark.parametrize("name, fn, words", [
    ("rounds", lambda a: a.__setitem__("max_lr", np.inf), "max_lr=inf"),
    ("rounds", lambda a: a.__setitem__("max_lr", -1.0), "max_lr=-1.0"),
    ("rounds", lambda a: a.__setitem__("max_lr", 0.0), "max_lr=0.0"),
    ("rounds", lambda a: a.__setitem__("sparsity", -0.5), "sparsity=-0.5"),
    ("rounds", lambda a: a.__setitem__("sparsity", 2.0), "sparsity=2.0"),
    ("rounds", lambda a: a.__setitem__("val_acc", np.inf), "val_acc=inf"),
    ("rounds", lambda a: a.__setitem__("val_acc", 1.5), "val_acc=1.5"),
    ("epochs", lambda a: a.__setitem__("val_acc", -np.inf), "val_acc=-inf"),
    ("layer_rounds", lambda a: a.__setitem__("sparsity", 3.0), "sparsity=3.0"),
    ("layers", lambda a: a.__setitem__("numel", 2 ** 60), "numel < 1 or > 1099511627776"),
    ("layers", lambda a: a.__setitem__("shape", "x;rm -rf"), "shape"),
    ("layers", lambda a: a.__setitem__("shape", "3x3"), "product is its numel 6"),
    ("layers", lambda a: a.__setitem__("shape", "2x-3"), "shape"),
    ("moments", _first_window_round, "round 50, which neither"),
])
def test_impossible_values_in_checksummed_rows_are_refused(tmp_path, name, fn, words):
    """Issue 22 item 9: values no recording produces, with row checksums recomputed (a buggy
    writer or a hand edit), are one clear error on read; so is a window of a round the file
    does not describe (fit used to print an empty table)."""
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=2, windows=2)
    _forge_rows(p, name, fn, slice(0, 2) if name == "moments" else slice(None))
    with pytest.raises(GradscopeError, match=words) as e:
        run = open_run(p)
        run.rounds(), run.epochs(), run.layer_rounds(), run.histograms()
    assert "damaged" in str(e.value) and "\n" not in str(e.value)


def test_missing_values_stay_readable(tmp_path):
    """NaN is how a table says "not measured" (a plain loop passes no max_lr or val_acc): allowed."""
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=1, windows=1)
    _forge_rows(p, "rounds", lambda a: [a.__setitem__(c, np.nan) for c in ("max_lr", "val_acc", "test_acc")])
    assert open_run(p).rounds()["max_lr"].isna().all()


def test_all_nan_samples_are_refused(tmp_path):
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=1, windows=2, sample_k=3)
    _forge_rows(p, "samples", lambda a: a.__setitem__((1, slice(None)), np.nan))
    run = open_run(p)
    with pytest.raises(GradscopeError, match="samples are all NaN"):
        run.samples()
    with pytest.raises(GradscopeError, match="samples are all NaN"):
        run.verify()


def test_moment_rows_carry_a_row_checksum(tmp_path):
    """A moments row changed without its crc (the chunk's fletcher32 rewritten by h5py) is
    caught by the row checksum, even where the new value is possible (a count off by one)."""
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=1, windows=2)
    with h5py.File(p, "r") as f:
        assert "crc" in f["moments"].dtype.names and (f["moments"]["crc"] != 0).all()
    _forge_rows(p, "moments", lambda a: a.__setitem__("sum", a["sum"] * 1.5), slice(2, 4), crc=False)
    with pytest.raises(GradscopeError, match="row 2 of table 'moments' fails its checksum"):
        open_run(p).moments()
    assert main(["repair", "--check", str(p)]) == 2


def test_files_from_before_moment_row_checksums_stay_readable(tmp_path, capsys):
    """Schema-2 files written before moment rows had ``crc``: read, continued, and repaired
    (which adds the CRCs)."""
    p = tmp_path / "old.h5"
    F.write_run(p, rounds=1, windows=2)
    ref = open_run(p).moments()
    with h5py.File(p, "r+") as f:  # the moments dataset as the older writer built it
        old = f["moments"][:]
        rows = np.zeros(len(old), dtype=S.MOMENTS_DTYPE_NOCRC)
        for n in rows.dtype.names:
            rows[n] = old[n]
        del f["moments"]
        rpw = len(F.LAYERS)
        f.create_dataset("moments", data=rows, maxshape=(None,), chunks=(rpw,), fletcher32=True, **S.COMPRESSION)
    pd.testing.assert_frame_equal(open_run(p).moments(), ref)
    assert main(["repair", "--check", str(p)]) == 0
    w = F.writer(p, mode="a")
    w.add_window(*F.window(1, 0, 9, kept=[5, 4]))
    w.commit()
    with h5py.File(p, "r") as f:
        assert f["moments"].dtype == S.MOMENTS_DTYPE_NOCRC
    assert len(open_run(p).moments()) == 6
    _forge_rows(p, "moments", lambda a: a.__setitem__("count", -7), slice(4, 6))  # damage: repair rewrites
    assert main(["repair", str(p)]) == 0
    with h5py.File(p, "r") as f:
        assert f["moments"].dtype == S.MOMENTS_DTYPE
    pd.testing.assert_frame_equal(open_run(p).moments(), ref)
    assert open_run(p).verify()["windows"] == 2


def test_hist_shorter_than_moments_and_damaged_compound_type(tmp_path):
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=1, windows=2)
    with h5py.File(p, "r+") as f:
        f["hist"].resize((2, 8))
    with pytest.raises(GradscopeError, match="4 moments rows are committed but 'hist' stores 2"):
        open_run(p)
    q = tmp_path / "q.h5"
    F.write_run(q, rounds=1, windows=1)
    with h5py.File(q, "r+") as f:  # a table whose type lost a column
        data = f["epochs"][:]
        del f["epochs"]
        dt = np.dtype([(n, S.SMALL_TABLES["epochs"][n]) for n in S.SMALL_TABLES["epochs"].names if n != "lr"])
        f.create_dataset("epochs", data=np.array([tuple(r[n] for n in dt.names) for r in data], dtype=dt))
    with pytest.raises(GradscopeError, match="'epochs' has data type"):
        open_run(q).epochs()


def test_string_heap_damage_is_caught_by_row_checksums(tmp_path):
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=1, windows=1)
    with h5py.File(p, "r+") as f:  # the variable-length string changes, the row's crc does not
        a = f["layers"][:]
        a["layer"][1] = b"c"
        f["layers"][:] = a
    with pytest.raises(GradscopeError, match="row 1 of table 'layers' fails its checksum"):
        open_run(p)


def test_bad_files(tmp_path):
    txt = tmp_path / "t.h5"
    txt.write_text("hello, not hdf5\n" * 10)
    with pytest.raises(GradscopeError, match="not an HDF5 file"):
        open_run(txt)
    with pytest.raises(GradscopeError, match="does not exist"):
        open_run(tmp_path / "missing.h5")
    os.mkdir(tmp_path / "dir.h5")
    with pytest.raises(GradscopeError, match="is a directory"):
        open_run(tmp_path / "dir.h5")
    with pytest.raises(GradscopeError, match="is a directory"):
        F.writer(tmp_path / "dir.h5", mode="a")
    foreign = tmp_path / "f.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(GradscopeError, match="not a gradscope run"):
        open_run(foreign)
    good = tmp_path / "g.h5"
    F.write_run(good, rounds=1, windows=1)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(GradscopeError):
        open_run(trunc).histograms()
    corrupt = tmp_path / "c.h5"
    corrupt.write_bytes(b"\0" * 64 + data[64:])
    with pytest.raises(GradscopeError):
        open_run(corrupt)


def test_schema1_files_read_as_survivors_without_checksums(tmp_path):
    p = tmp_path / "v1.h5"
    F.write_v1(p, rounds=2, windows=2, sample_k=3)
    run = open_run(p)
    assert run.schema_version == 1 and not run.checksums and run.views() == ["survivors", "all"]
    assert list(run.layers().activation) == ["relu", ""] and list(run.layers().rule) == ["", ""]
    m = run.moments()
    ref = F.window(1, 1, 101, kept=[5, 4])[0]
    assert len(m) == 8 and set(m.view) == {"survivors"} and (m.steps == 2).all()
    assert np.array_equal(m["sum"].to_numpy()[6:], ref["sum"])
    vals, idx = run.samples(round=1)
    assert vals.shape == (4, 3) and len(idx) == 4
    assert run.moments(view="all")["count"].tolist()[:2] == [12, 12]
    with pytest.raises(GradscopeError, match="has survivors, all"):
        run.moments(view="relative")
    info = run.verify()
    assert info["schema_version"] == 1 and info["windows"] == 4 and not info["checksums"]
    with pytest.raises(GradscopeError, match="older gradscope.*gradscope repair"):
        F.writer(p, mode="a")


def test_repair_converts_schema1_and_keeps_a_backup(tmp_path, capsys):
    p = tmp_path / "v1.h5"
    F.write_v1(p, rounds=2, windows=2, sample_k=3)
    before = open_run(p)
    m0, (c0, _, _), (s0, _) = before.moments(), before.histograms(), before.samples()
    write_derived(p, "fits", pd.DataFrame({"round": [0, 1], "model": ["t", "normal"]}))
    assert main(["repair", str(p)]) == 0
    out = capsys.readouterr().out
    assert "nothing committed was lost" in out and "converted schema 1 -> 2" in out and ".bak" in out
    run = open_run(p)
    assert run.schema_version == 2 and run.checksums
    pd.testing.assert_frame_equal(run.moments(), m0)
    assert np.array_equal(run.histograms()[0], c0) and np.array_equal(run.samples()[0], s0, equal_nan=True)
    assert run.derived("fits")["model"].tolist() == ["t", "normal"]
    assert open_run(str(p) + ".bak").schema_version == 1
    assert main(["repair", str(p)]) == 0 and "healthy" in capsys.readouterr().out
    assert main(["repair", "--check", str(p)]) == 0 and "OK (schema 2" in capsys.readouterr().out
    w = F.writer(p, mode="a", sample_k=3)  # and the run continues
    w.add_window(*F.window(2, 0, 9, kept=[4, 2], sample_k=3))
    w.commit()
    assert len(open_run(p).moments()) == 10


def test_repair_keeps_the_readable_prefix_of_a_damaged_file(tmp_path, capsys):
    p = tmp_path / "r.h5"
    F.write_run(p, rounds=2, windows=2)
    off, size = F.chunk_offset(p, "moments", (6,))  # last window's chunk
    F.flip_bit(p, off + size // 2, 3)
    assert main(["repair", "--check", str(p)]) == 2
    assert "checksum" in capsys.readouterr().err
    res = repair(p)
    assert res.kept["windows"] == 3 and res.dropped["windows"] == 1 and res.backup
    run = open_run(p)
    assert len(run.moments()) == 6 and run.verify()["windows"] == 3 and len(run.rounds()) == 2


def test_write_derived_replaces_and_leaves_raw_alone(tmp_path):
    p = str(tmp_path / "r.h5")
    F.write_run(p, rounds=1, windows=1)
    before = open_run(p).moments()
    df = pd.DataFrame({"round": [0, 1], "scale": [1.0, 0.5], "model": ["normal", "t"], "ok": [True, False]})
    write_derived(p, "fits", df)
    write_derived(p, "fits", df.iloc[:1])
    write_derived(p, "other", df)
    write_derived(p, "empty", df.iloc[:0])
    run = open_run(p)
    assert run.derived_names() == ["empty", "fits", "other"]
    pd.testing.assert_frame_equal(run.derived("fits"), df.iloc[:1])
    pd.testing.assert_frame_equal(run.derived("other"), df)
    assert len(run.derived("empty")) == 0
    pd.testing.assert_frame_equal(run.moments(), before)
    with pytest.raises(GradscopeError):
        write_derived(p, "a/b", df)
    with pytest.raises(GradscopeError, match="no derived table"):
        run.derived("nope")
    with h5py.File(p, "r+") as f:  # a write that died before switching the pointer: old table stays
        f["derived/fits"].create_group("v99")
    pd.testing.assert_frame_equal(open_run(p).derived("fits"), df.iloc[:1])
    with h5py.File(p, "r+") as f:  # a changed string cell is caught by the column checksum
        g = f["derived/other/v0/c2"]
        g[0] = "laplace"
    with pytest.raises(GradscopeError, match="column 'model' of derived table 'other' fails its checksum"):
        open_run(p).derived("other")


_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from tests import faultlib as F
    w = F.writer({path!r}, mode="a")
    i = int(sys.argv[1])
    while True:
        w.add_window(*F.window(0, i, i))
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
            mm, hh, _ = F.window(0, i, i)
            rows = np.nonzero(idx.window.to_numpy() == i)[0]
            assert len(rows) == 2 and np.array_equal(counts[rows], hh)
            assert np.array_equal(m.loc[rows, "sum"].to_numpy(), mm["sum"])
        assert m.groupby("window").size().eq(2).all()  # no duplicates after resume
        assert run.verify()["windows"] == len(wins)
        flushed = wins[-1]


def _cut_off_end(p) -> int:
    """A run file whose end is missing, as a failed write leaves it (also older versions'
    "truncated file: eof < stored_eof"): an uncommitted window's chunk is the file's last
    bytes, and half of it is cut off."""
    w = F.writer(p, sample_k=4000)
    w.add_window(*F.window(0, 0, 0, sample_k=4000, steps=400))
    w.commit()
    with h5py.File(p, "r+", libver=("v108", "v108")) as f:  # written, never committed
        f["samples"].resize((4, 4000))
        f["samples"][2:] = np.random.default_rng(0).random((2, 4000), dtype=np.float32)
        f["moments"].resize((4,))
        f["hist"].resize((4, 8))
    size = os.path.getsize(p)
    off, n = F.chunk_offset(p, "samples", (2, 0))
    assert off + n == size  # the tail chunk is last: cutting into it loses nothing committed
    os.truncate(p, off + n // 2)
    with pytest.raises(OSError, match="truncated file"):
        h5py.File(p, "r")
    return size


def test_file_with_its_end_cut_off_reads_continues_and_repairs(tmp_path, capsys):
    p = tmp_path / "r.h5"
    size = _cut_off_end(p)
    run = open_run(p)  # read as if zero-padded: every committed row is before the cut
    assert run.verify()["truncated"] and len(run.moments()) == 2
    assert main(["repair", "--check", str(p)]) == 0 and "end was cut off" in capsys.readouterr().out
    assert main(["repair", str(p)]) == 0 and "restored its cut-off end" in capsys.readouterr().out
    assert os.path.getsize(p) == size and not open_run(p).verify()["truncated"]
    q = tmp_path / "q.h5"
    _cut_off_end(q)
    w = F.writer(q, mode="a", sample_k=4000)  # continuing restores it too
    w.add_window(*F.window(0, 1, 1, sample_k=4000, steps=400))
    w.commit()
    assert open_run(q).verify()["windows"] == 2 and h5py.File(q, "r")["samples"].shape[0] == 4


def test_store_reader_does_not_import_the_writer():
    """The store's modules import one way (issue 22 item 8): the reader, the validation and the
    checksums never import the writer (the derived-table CRC lives in store/checksum.py)."""
    import ast

    import gradscope.store as store

    root = os.path.dirname(store.__file__)
    for mod in ("reader.py", "validate.py", "checksum.py", "schema.py", "views.py"):
        tree = ast.parse(open(os.path.join(root, mod)).read())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(x.endswith("store.writer") or x.endswith("store.recovery") for x in names), (mod, names)
    from gradscope.store.checksum import derived_crc
    from gradscope.store.writer import derived_crc as old_name

    assert derived_crc is old_name


def test_checksums_verify_with_zlib_and_struct_alone(tmp_path):
    """docs/hdf5-format.md "Checksums" is enough to verify a file without gradscope: an
    independent verifier (zlib.crc32 + struct, the byte order the docs give) agrees with every
    row CRC of the epochs, rounds and moments tables, with attr_crc32 and with committed."""
    import struct
    import zlib

    p = tmp_path / "r.h5"
    F.write_run(p, rounds=2, windows=2)
    codes = {"<i4": "i", "<i8": "q", "<u4": "I", "<f8": "d", "|i1": "b", "|b1": "?"}

    def row_crc(row, dtype) -> int:
        num = [n for n in dtype.names if n != "crc" and dtype[n].kind != "O"]
        strs = [n for n in dtype.names if n != "crc" and dtype[n].kind == "O"]
        c = zlib.crc32(struct.pack("<" + "".join(codes[dtype[n].str] for n in num), *(row[n].item() for n in num)))
        for n in strs:
            b = row[n] if isinstance(row[n], bytes) else str(row[n]).encode()
            c = zlib.crc32(struct.pack("<I", len(b)) + b, c)
        return c

    with h5py.File(p, "r") as f:
        for name in ("epochs", "rounds", "layers", "moments"):
            a = f[name][:]
            assert len(a) and all(row_crc(r, a.dtype) == int(r["crc"]) for r in a), name
        crcs = json.loads(f.attrs["attr_crc32"])
        for k, want in crcs.items():
            v = f.attrs[k]
            v = v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v
            assert zlib.crc32(f"{type(v).__name__}:{json.dumps(v, sort_keys=True)}".encode()) == want, k
        com = f.attrs["committed"]
        assert zlib.crc32(struct.pack("<6q", *com[:6].tolist())) == int(com[6])
