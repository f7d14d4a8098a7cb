"""gradscope export tensorboard: exact bucket counts and moments over the occupied buckets only, a
log10|g| histogram, one step axis for every series, read back with TensorBoard's own reader;
bad input is one line."""
import subprocess

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from gradscope import GradscopeError
from gradscope.export import export_tensorboard, round_lengths, step_offsets
from gradscope.record import GradientRecorder
from gradscope.store import open_run

from conftest import PY, ROOT, cli_env

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard is the optional extra this feature needs")


def _record(path, rounds=2, steps=6, window=3, every=None):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    rec = GradientRecorder(net, str(path), window=window, every=every, views=("survivors", "relative"),
                           example_input=x)
    for k in range(rounds):
        if k:
            prune.l1_unstructured(net[2], "weight", amount=0.5)
        rec.start_round(k, max_lr=0.1)
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            rec.step()
            opt.step()
        rec.end_round(val_acc=0.5 + 0.1 * k, test_acc=0.4 + 0.1 * k, train_loss=1.0)
    rec.close()


def _acc(logdir):
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_histograms_and_moments_read_back_exactly(tmp_path):
    run = tmp_path / "run.h5"
    _record(run)
    n = export_tensorboard(run, tmp_path / "tb")
    acc = _acc(tmp_path / "tb")
    tags = acc.Tags()["histograms"]
    with open_run(str(run)) as r:
        assert set(r.views()) == {"survivors", "all", "relative"}
        total = 0
        for view in r.views():
            counts, edges, _ = r.histograms(view=view)
            m = r.moments(view=view)
            off = step_offsets(m)
            for i, row in enumerate(m.itertuples(index=False)):
                tag = f"grad/{view}/{row.layer}"
                assert tag in tags
                ev = {e.step: e.histogram_value for e in acc.Histograms(tag)}[off[row.round] + row.step_end]
                assert ev.num == row.count and ev.min == pytest.approx(row.min) and ev.max == pytest.approx(row.max)
                assert ev.sum == pytest.approx(row.sum) and ev.sum_squares == pytest.approx(row.sumsq)
                got = np.asarray(ev.bucket)
                # only the occupied range is written, exactly: the range's own bins, with under/over
                # (if any) in their own end buckets
                full = np.concatenate([[row.under] if row.under else [], counts[i], [row.over] if row.over else []])
                nz = np.flatnonzero(full)
                assert np.array_equal(got, full[nz[0]: nz[-1] + 1]), (view, row.layer)
                assert got[0] > 0 and got[-1] > 0 and got.sum() == row.count
                # TensorBoard's axis: its first bucket starts at min, its last ends at max, so the
                # limits in between lie inside the data's range (not the recorder's +-10)
                lim = np.asarray(ev.bucket_limit)
                assert (lim[:-1] >= row.min).all() and (lim[:-1] <= max(row.max, 0) + 1e-9).all()
                if view != "relative":  # log10|g|: the same count, folded exactly from the signed bins
                    lg = {e.step: e.histogram_value for e in acc.Histograms(f"grad_log10abs/{view}/{row.layer}")}
                    lg = lg[off[row.round] + row.step_end]
                    assert lg.num == row.count and sum(lg.bucket) == row.count
                    assert lg.max == pytest.approx(np.log10(max(abs(row.min), abs(row.max))))
                    m_ = len(edges) // 2 - 1
                    pos = edges[m_ + 1:]
                    vals_in_first = sum(lg.bucket[:1])
                    assert vals_in_first > 0
                    assert lg.bucket_limit[0] >= np.log10(pos[0]) - 1e-9
                total += 1
    assert n["histograms"] == total
    # one x axis: round 1's steps follow round 0's (6 steps per round, windows of 3), and the
    # round scalars sit at each round's last step, with the round index as its own scalar
    steps = [e.step for e in acc.Histograms("grad/survivors/0")]
    assert steps == [2, 5, 8, 11]
    val = [(s.step, s.value) for s in acc.Scalars("round/val_acc")]
    assert val == [(5, pytest.approx(0.5)), (11, pytest.approx(0.6))]
    assert [(s.step, s.value) for s in acc.Scalars("round/round")] == [(5, 0.0), (11, 1.0)]
    assert [s.value for s in acc.Scalars("round/sparsity")][0] == 0.0
    # every tag says what it is
    for tag in ("grad/survivors/0", "grad_log10abs/all/0", "grad_std/relative/2", "round/max_lr"):
        assert "optimizer steps counted across rounds" in acc.SummaryMetadata(tag).summary_description
    assert "log10 |g|" in acc.SummaryMetadata("grad_log10abs/survivors/0").summary_description


def test_a_narrower_distribution_moves_left_in_log10abs(tmp_path):
    """Gradients scaled by 1/10 in round 1 shift the log10|g| histogram by one decade (the signed
    histogram, on a linear axis, would only show a thinner spike)."""
    from faultlib import LAYERS, stats, writer
    from gradscope.record.accumulate import log_edges
    from gradscope.store import window_rows

    edges = log_edges(201, 1e-10, 10.0)
    rng = np.random.default_rng(0)
    run = tmp_path / "run.h5"
    w = writer(run, edges=edges, layers=LAYERS[:1])
    for k, scale in enumerate((1e-2, 1e-3)):
        st, hist = stats([rng.standard_normal(4000) * scale], edges)
        w.add_window(window_rows(k, 0, 0, 0, 999, [0], "survivors", st), hist)  # 6 weights x 1000 steps
        w.add_round(round=k, sparsity=0.2 * k, max_lr=0.1)
        w.commit()
    export_tensorboard(run, tmp_path / "tb", views=["survivors"])
    acc = _acc(tmp_path / "tb")
    h = acc.Histograms("grad_log10abs/survivors/a")
    assert [e.step for e in h] == [999, 1999]
    med = []
    for e in h:
        c = np.cumsum(e.histogram_value.bucket)
        med.append(e.histogram_value.bucket_limit[int(np.searchsorted(c, c[-1] / 2))])
    assert med[0] - med[1] == pytest.approx(1.0, abs=0.15)


def test_every_kth_step_keeps_the_rounds_end_to_end(tmp_path):
    """every=3 on 8-step rounds: the last recorded step is 6 but the round ends at step 7, so
    round 1 starts at 8 (not at 7)."""
    run = tmp_path / "run.h5"
    _record(run, rounds=2, steps=8, window=None, every=3)
    with open_run(str(run)) as r:
        m = r.moments(view="survivors")
    assert round_lengths(m) == {0: 8, 1: 8}
    assert step_offsets(m) == {0: 0, 1: 8}
    assert (m["steps"] == 3).all()  # steps 0, 3, 6 recorded
    export_tensorboard(run, tmp_path / "tb", views=["survivors"])
    acc = _acc(tmp_path / "tb")
    assert [e.step for e in acc.Histograms("grad/survivors/0")] == [7, 15]
    assert [(s.step, s.value) for s in acc.Scalars("round/round")] == [(7, 0.0), (15, 1.0)]


def test_pruned_weights_make_the_all_view_wider_in_zeros(tmp_path):
    """The 'all' view counts pruned weights as zeros: in round 1 its count is the whole layer,
    the survivors' is half of it."""
    run = tmp_path / "run.h5"
    _record(run)
    export_tensorboard(run, tmp_path / "tb", views=["survivors", "all"])
    acc = _acc(tmp_path / "tb")
    last = lambda tag: acc.Histograms(tag)[-1].histogram_value.num  # noqa: E731
    assert last("grad/all/2") == 3 * 16 * 16 and last("grad/survivors/2") == 3 * 16 * 8
    assert not any(t.startswith("grad/relative") for t in acc.Tags()["histograms"])


def test_bad_input_is_one_line(tmp_path):
    run = tmp_path / "run.h5"
    _record(run, rounds=1)
    with pytest.raises(GradscopeError, match="not in .* it holds"):
        export_tensorboard(run, tmp_path / "tb", views=["fixed"])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(GradscopeError, match="is a file"):
        export_tensorboard(run, tmp_path / "afile")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file" * 10)
    for args in (["export", "tensorboard", str(bad), str(tmp_path / "tb2")],
                 ["export", "tensorboard", str(tmp_path / "missing.h5"), str(tmp_path / "tb3")],
                 ["export", "csv", str(run), str(tmp_path / "tb4")]):
        p = subprocess.run([PY, "-m", "gradscope", *args], env=cli_env(), cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 2, p.stderr
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("gradscope: error:"), p.stderr
