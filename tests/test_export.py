"""gradscope export tensorboard: exact bucket counts and moments, read back with TensorBoard's
own reader; bad input is one line."""
import subprocess

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from gradscope import GradscopeError
from gradscope.export import export_tensorboard, step_offsets
from gradscope.record import GradientRecorder
from gradscope.store import open_run

from conftest import PY, ROOT, cli_env

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard is the optional extra this feature needs")


def _record(path, rounds=2, steps=6, window=3):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    rec = GradientRecorder(net, str(path), window=window, views=("survivors", "relative"), example_input=x)
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
                # the range's own bins are exact; under/over (if any) sit in their own end buckets
                inner = got[1:] if row.under else got
                inner = inner[:-1] if row.over else inner
                assert np.array_equal(inner, counts[i]), (view, row.layer)
                assert got.sum() == row.count
                total += 1
    assert n["histograms"] == total
    # round 1's steps follow round 0's: 6 steps per round, windows of 3
    steps = [e.step for e in acc.Histograms("grad/survivors/0")]
    assert steps == [2, 5, 8, 11]
    val = [(s.step, s.value) for s in acc.Scalars("round/val_acc")]
    assert val == [(0, pytest.approx(0.5)), (1, pytest.approx(0.6))]
    assert [s.value for s in acc.Scalars("round/sparsity")][0] == 0.0


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
