import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def tiny_config(tmp_path):
    """A seconds-long run: digits, small_cnn, 3 rounds of 1 epoch, single thread (deterministic)."""
    from gradscope.config import RunConfig
    cfg = RunConfig()
    cfg.data.dataset = "digits"
    cfg.data.batch_size = 64
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.model.model = "small_cnn"
    cfg.prune.rounds = 3
    cfg.train.epochs = 1
    cfg.train.threads = 1
    cfg.train.progress = False
    cfg.schedule.schedule = "lth"
    cfg.schedule.max_lr = 0.05
    cfg.out = str(tmp_path / "run")
    return cfg


def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PY = sys.executable
