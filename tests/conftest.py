import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CIFAR_ARCHIVE = SHARED / "cifar10-jpeg.tar.xz"
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


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory):
    """One decoded-dataset cache for every test that reads the real archives in a session
    (decoding CIFAR-10's 60 000 JPEGs takes ~20-30 s on a 2-core box; do it once)."""
    d = tmp_path_factory.mktemp("cache")
    yield str(d)
    shutil.rmtree(d, ignore_errors=True)  # ~0.2 GB per dataset of decoded tensors: do not keep them around


def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


PY = sys.executable


@pytest.fixture
def one_thread():
    """One intra-op thread for a test (tiny tensors: more threads only contend on a shared CI
    machine); restored afterwards. Modules opt in with pytest.mark.usefixtures("one_thread")."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
