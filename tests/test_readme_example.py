"""The README's 'attach the recorder to your own training loop' example runs as written."""
import re

import torch
from torch import nn

from gradscope.store import open_run

from conftest import ROOT


def test_readme_recorder_snippet(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "GradientRecorder" in code and "rec.step()" in code
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    xs, ys = torch.randn(64 * 4, 1, 8, 8), torch.randint(0, 3, (64 * 4,))
    loader = [(xs[i:i + 8], ys[i:i + 8]) for i in range(0, len(ys), 8)] * 7  # 224 steps
    ns = {"model": model, "loader": loader, "loss_fn": nn.functional.cross_entropy,
          "opt": torch.optim.SGD(model.parameters(), lr=0.01)}
    monkeypatch.chdir(tmp_path)
    exec(code, ns)  # noqa: S102 - our own README
    with open_run(tmp_path / "run.h5") as r:
        m = r.moments()
        assert set(m["layer"]) == {"0"}  # only the conv feeds a ReLU (through BatchNorm)
        assert len(m) == 3  # windows of 100 steps: 0-99, 100-199, and the rest flushed by close()
        assert int(m["count"].sum()) == 224 * 36
