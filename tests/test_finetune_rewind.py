"""--rewind finetune fine-tunes at the original training's final LR (Renda et al. 2020's FT)."""
from __future__ import annotations

import json

import pytest

from gradscope.cli import main
from gradscope.rounds import RoundInfo
from gradscope.schedules import get_schedule
from gradscope.train.rewind import round_schedule


def _info0(steps: int = 10, epochs: int = 2) -> RoundInfo:
    return RoundInfo(round=0, sparsity=0.0, prev_sparsity=0.0, prune_rate=0.2, steps_per_epoch=steps, epochs=epochs)


@pytest.mark.parametrize("peak", [0.1, 0.2])
def test_finetune_lr_is_round0_final_lr(peak):
    lth = get_schedule("lth", max_lr=peak)
    ft = round_schedule(lth, "finetune", 1, _info0())
    assert ft.name == "finetune" and ft.shape == "constant"
    # lth: warm-up then x0.1 at half, x0.01 at three quarters of the round: the last step is 0.01 x peak
    assert ft.max_lr == pytest.approx(0.01 * peak, rel=1e-12)
    assert ft.max_lr == pytest.approx(lth.lrs(_info0())[-1], rel=1e-12)


def test_finetune_round0_and_fallbacks():
    lth = get_schedule("lth", max_lr=0.1)
    assert round_schedule(lth, "finetune", 0, _info0()) is lth  # round 0 trains with the run's schedule
    assert round_schedule(lth, "finetune", 2, None).max_lr == 0.001  # no round-0 info: the registry default
    own = get_schedule("finetune", max_lr=0.005)
    assert round_schedule(own, "finetune", 3, _info0()) is own  # an explicit finetune schedule is kept
    assert round_schedule(lth, "init", 3, _info0()) is lth  # other modes force nothing


def test_prune_run_stores_finetune_lr(tmp_path):
    out = tmp_path / "ft"
    code = main(["prune", "--dataset", "digits", "--model", "lenet_300_100", "--rounds", "2", "--epochs", "1",
                 "--schedule", "lth", "--max-lr", "0.2", "--rewind", "finetune", "--no-record", "--no-progress",
                 "--val-size", "200", "--out", str(out)])
    assert code == 0
    rows = json.loads((out / "rounds.json").read_text())
    assert rows[0]["max_lr"] == pytest.approx(0.2)
    assert rows[1]["max_lr"] == pytest.approx(0.002, rel=1e-9)
