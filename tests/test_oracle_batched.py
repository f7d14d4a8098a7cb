"""The batched Oracle executor (K candidates as one vmapped model) writes the candidate files
that K sequential candidates write: same losses, accuracies, weights, and divergences."""
import copy
import json

import pytest
import torch

from gradscope import GradscopeError
from gradscope.cli import main
from gradscope.paths import RunPaths
from gradscope.train.checkpoint import load_torch
from gradscope.train.oracle import Batched, InProcess, OracleRounds, make_executor, run_candidates_batched
from gradscope.train.runner import PruningRun

GRID = [0.01, 0.03, 0.1, 2000.0]  # the last one diverges; the others train (no chaotic amplification)


def _oracle(cfg, out, executor):
    c = copy.deepcopy(cfg)
    c.out, c.prune.rounds = str(out), 1
    PruningRun(c, rounds=OracleRounds(GRID, seeds=2, executor=executor, max_extend=0), log=lambda s: None).run()
    return {(v, s): load_torch(RunPaths(out).candidate(0, v, s if s else None), what="candidate")
            for v in GRID for s in range(2)}


def test_batched_candidates_equal_sequential_ones(tiny_config, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    seq = _oracle(tiny_config, tmp_path / "seq", InProcess())
    bat = _oracle(tiny_config, tmp_path / "bat", Batched(3))  # 8 jobs: chunks of 3, 3, 2
    assert any(f["result"]["diverged"] for f in seq.values())  # the divergence path is exercised
    assert len({round(f["result"]["train_loss"] or 0, 5) for f in seq.values()}) == len(seq)  # all differ
    for key, a in seq.items():
        b = bat[key]
        ra, rb = a["result"], b["result"]
        assert rb["batched"] in (2, 3) and "batched" not in ra
        assert ra["diverged"] == rb["diverged"], key
        if ra["diverged"]:
            assert b["epochs"] == [] and rb["val_acc"] == 0.0 and not b["val_correct"].any()
            continue
        assert rb["val_acc"] == ra["val_acc"] and rb["test_acc"] == ra["test_acc"], key
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5), key
        assert torch.equal(a["val_correct"], b["val_correct"])
        for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
            assert eb["lr"] == pytest.approx(ea["lr"], rel=1e-6) and eb["epoch"] == ea["epoch"]
        assert a["model"].keys() == b["model"].keys()
        for n, t in a["model"].items():  # weight_orig (pruned entries included), masks, BatchNorm statistics
            # float32 sums in another order (vmapped kernels): differences of ~1e-5 of the tensor's scale
            # after an epoch at the largest stable max_lr (measured 6e-5 there, 2e-6 at the others)
            scale = float(t.float().abs().max()) if t.numel() else 1.0
            torch.testing.assert_close(b["model"][n].float(), t.float(), rtol=1e-4, atol=2e-4 * max(scale, 1e-6),
                                       msg=f"{key} {n}")
    # the Oracle chose the same candidate in both runs
    ra, rb = (json.loads((tmp_path / d / "rounds.json").read_text()) for d in ("seq", "bat"))
    assert [r["max_lr"] for r in ra] == [r["max_lr"] for r in rb]
    # a chunk interrupted after its first file (a kill): rerunning it keeps that file as it is
    # and retrains the other two, batched, to the same results
    out = str(tmp_path / "bat")
    specs = [(0.01, 1), (0.03, 0), (0.03, 1)]
    paths = [RunPaths(out).candidate(0, v, s if s else None) for v, s in specs]
    kept = paths[0].read_bytes()
    for p in paths[1:]:
        p.unlink()
    run_candidates_batched(out, 0, specs)
    assert paths[0].read_bytes() == kept
    for (v, s), p in zip(specs[1:], paths[1:]):
        again = load_torch(p, what="candidate")
        assert again["result"]["batched"] == 2 and again["result"]["val_acc"] == bat[(v, s)]["result"]["val_acc"]
        for n, t in bat[(v, s)]["model"].items():
            torch.testing.assert_close(again["model"][n], t, rtol=1e-5, atol=1e-6)
    # K copies that do not fit in GPU memory: the chunk trains one by one instead, with a warning
    import gradscope.train.batched as batched

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
    monkeypatch.setattr(batched, "train_batched", oom)
    for p in paths[1:]:
        p.unlink()
    with pytest.warns(RuntimeWarning, match="do not fit in GPU memory"):
        run_candidates_batched(out, 0, specs)
    for (v, s), p in zip(specs[1:], paths[1:]):
        again = load_torch(p, what="candidate")
        assert "batched" not in again["result"] and again["result"]["val_acc"] == seq[(v, s)]["result"]["val_acc"]


def test_batched_flag_and_its_conflicts(tiny_config, capsys):
    assert isinstance(make_executor(1, 4), Batched)
    assert isinstance(make_executor(1, 1), InProcess) and isinstance(make_executor(1, 0), InProcess)
    with pytest.raises(GradscopeError, match="exclude each other"):
        make_executor(2, 4)
    args = ["oracle", "--dataset", "digits", "--model", "small_cnn", "--no-progress", "--out", tiny_config.out]
    assert main([*args, "--batched", "4", "--workers", "2"]) == 2
    assert main([*args, "--batched", "4", "--ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("gradscope: error:") == 2 and "--batched" in err
