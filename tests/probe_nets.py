"""Shared by the probe tests: a tiny pruned BatchNorm MLP in float64, seeded batches, and one torch thread."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_bn_mlp(dtype=torch.float64, seed=0, prune_mask=True):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).to(dtype)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    if prune_mask:
        prune.custom_from_mask(m[0], "weight", mask)
    return m, {"0": mask}


def batches(n, size, d=3, classes=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, d, generator=g, dtype=dtype), torch.randint(0, classes, (size,), generator=g))
            for _ in range(n)]
