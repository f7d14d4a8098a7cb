"""Tests of the Vision Transformers (vit_tiny, deit_tiny): shapes, init, size, pruning, learning, CLI."""
import json

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import truncnorm
from torch import nn

from gradscope import GradscopeError
from gradscope.cli import main
from gradscope.models import get_model, list_models
from gradscope.models.vit import VisionTransformer
from gradscope.pruning import attach_masks, prunable_layers, prune_step, weight_mask
from conftest import CIFAR_ARCHIVE

SIZES = {"vit_tiny": dict(depth=6, width=192, mlp_ratio=2), "deit_tiny": dict(depth=12, width=192, mlp_ratio=4)}


def block_linears(depth: int) -> list[str]:
    return [f"blocks.{i}.{n}" for i in range(depth) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]


def vit_param_count(c: int, h: int, w: int, patch: int, width: int, depth: int, mlp_ratio: float, classes: int) -> int:
    """Parameters of a class-token ViT, from the architecture (weights + biases of every layer)."""
    tokens = (h // patch) * (w // patch) + 1
    hidden = int(width * mlp_ratio)
    embed = c * patch * patch * width + width + width + tokens * width  # conv, its bias, cls token, positions
    block = (2 * 2 * width  # two LayerNorms
             + width * 3 * width + 3 * width + width * width + width  # qkv, proj
             + width * hidden + hidden + hidden * width + width)  # fc1, fc2
    return embed + depth * block + 2 * width + width * classes + classes  # final LayerNorm, head


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread (CI and dev machines are 2 shared cores); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def vit8():
    """vit_tiny on 8x8 inputs: the same layers as at 32x32, a fraction of the compute. Read-only."""
    torch.manual_seed(0)
    return get_model("vit_tiny", (1, 8, 8), 10)


def test_registered():
    assert {"vit_tiny", "deit_tiny"} <= set(list_models())


@pytest.mark.parametrize("name,shape", [("vit_tiny", (3, 32, 32)), ("vit_tiny", (3, 64, 64)), ("vit_tiny", (1, 8, 8)),
                                        ("vit_tiny", (3, 32, 64)), ("deit_tiny", (3, 32, 32))])
def test_forward_shape_and_tokens(name, shape):
    torch.manual_seed(0)
    m = get_model(name, shape, 7).eval()
    c, h, w = shape
    assert m.pos_embed.shape == (1, (h // 4) * (w // 4) + 1, 192)  # patch 4, plus the class token
    assert len(m.blocks) == SIZES[name]["depth"]
    with torch.no_grad():
        out = m(torch.randn(2, *shape))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert sum(isinstance(x, nn.GELU) for x in m.modules()) == SIZES[name]["depth"]
    assert not any(isinstance(x, (nn.ReLU, nn.MultiheadAttention)) for x in m.modules())


def test_channels_last_input_gives_same_output():
    torch.manual_seed(0)
    m = get_model("vit_tiny", (3, 32, 32), 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = m(x)
        b = m.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b)


def test_bad_sides_give_clear_errors():
    with pytest.raises(GradscopeError, match="divisible by 4, got 30x30"):
        get_model("vit_tiny", (3, 30, 30), 10)
    with pytest.raises(GradscopeError, match="divisible by 4, got 32x30"):
        get_model("deit_tiny", (3, 32, 30), 10)
    with pytest.raises(GradscopeError, match="at least 4x4, got 2x2"):
        get_model("vit_tiny", (1, 2, 2), 10)
    m = get_model("vit_tiny", (3, 32, 32), 10)
    with pytest.raises(GradscopeError, match="built for 32x32 images.*got 64x64"):
        m(torch.randn(1, 3, 64, 64))


def test_vit_init_not_kaiming_and_seeded():
    torch.manual_seed(5)
    m = get_model("vit_tiny", (3, 32, 32), 10)
    weights = torch.cat([x.weight.flatten() for x in m.modules() if isinstance(x, (nn.Linear, nn.Conv2d))])
    assert weights.abs().max().item() <= 0.04  # truncated at two std
    assert weights.std().item() == pytest.approx(0.02 * truncnorm(-2, 2).std(), rel=0.01)  # 1.8 M samples
    assert abs(weights.mean().item()) < 1e-4
    fc2 = m.blocks[0].mlp.fc2.weight  # Kaiming would give std sqrt(2 / 384) = 0.072
    assert fc2.std().item() < 0.025
    for x in m.modules():
        if isinstance(x, (nn.Linear, nn.Conv2d)):
            assert torch.count_nonzero(x.bias) == 0
        elif isinstance(x, nn.LayerNorm):
            assert torch.all(x.weight == 1) and torch.count_nonzero(x.bias) == 0
    for p in (m.pos_embed, m.cls_token):
        assert p.abs().max().item() <= 0.04 and p.std().item() > 0.01
    assert m.pos_embed.std().item() == pytest.approx(0.02 * truncnorm(-2, 2).std(), rel=0.05)  # 12 480 samples
    torch.manual_seed(5)
    again = get_model("vit_tiny", (3, 32, 32), 10)
    torch.manual_seed(6)
    other = get_model("vit_tiny", (3, 32, 32), 10)
    for a, b in zip(m.parameters(), again.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(m.head.weight, other.head.weight)


@pytest.mark.parametrize("name,shape,classes", [("vit_tiny", (3, 32, 32), 10), ("vit_tiny", (3, 64, 64), 200),
                                                ("vit_tiny", (1, 8, 8), 10), ("deit_tiny", (3, 32, 32), 100)])
def test_parameter_count_matches_architecture(name, shape, classes):
    s = SIZES[name]
    expected = vit_param_count(*shape, 4, s["width"], s["depth"], s["mlp_ratio"], classes)
    assert n_params(get_model(name, shape, classes)) == expected


def test_deit_tiny_body_matches_reference_size():
    """With DeiT-Tiny's own input (224x224, patch 16, 1000 classes) it has timm's deit_tiny_patch16_224 count."""
    m = VisionTransformer((3, 224, 224), 1000, patch=16, width=192, depth=12, heads=3, mlp_ratio=4)
    assert n_params(m) == vit_param_count(3, 224, 224, 16, 192, 12, 4, 1000) == 5_717_416


@pytest.mark.parametrize("first,last", [(True, True), (False, False), (True, False), (False, True)])
def test_prunable_layers_are_embed_blocks_head(vit8, first, last):
    names = list(prunable_layers(vit8, prune_first=first, prune_last=last))
    assert names == ["patch_embed"] * first + block_linears(6) + ["head"] * last


@pytest.mark.parametrize("first,last", [(False, False), (True, True)])
def test_pruned_vit_has_zero_grads_at_pruned_weights(first, last):
    torch.manual_seed(0)
    m = get_model("vit_tiny", (1, 8, 8), 10)  # 5 tokens: the same layers as at 32x32
    layers = prunable_layers(m, prune_first=first, prune_last=last)
    attach_masks(layers)
    assert prune_step(layers, "global", 0.5) == pytest.approx(0.5, abs=1e-5)
    masked = {n for n, x in m.named_modules() if weight_mask(x) is not None}
    assert masked == set(layers)
    assert ("patch_embed" in masked) == first and ("head" in masked) == last
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        for n, layer in layers.items():
            mask = weight_mask(layer)
            g = layer.weight_orig.grad
            assert 0 < int((~mask).sum()) < mask.numel(), n
            assert torch.count_nonzero(g[~mask]) == 0, n  # exactly zero, not just small
            assert torch.count_nonzero(g[mask]) > 0.9 * int(mask.sum()), n
        opt.step()
    m(x)  # prune's pre-hook recomputes weight = weight_orig * mask
    for n, layer in layers.items():
        assert torch.count_nonzero(layer.weight[~weight_mask(layer)]) == 0, n


def test_small_vit_learns_digits():
    """8x8 digits in 4x4 patches (4 tokens plus the class token); a narrow, shallow ViT of the same
    class (vit_tiny itself runs on digits in the CLI test below), AdamW, a few epochs."""
    from gradscope.data import BatchLoader, load_dataset

    b = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    m = VisionTransformer(b.input_shape, b.num_classes, patch=4, width=48, depth=2, heads=3, mlp_ratio=2)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.05)
    train = BatchLoader(b.train_x, b.train_y, 64, shuffle=True, mean=b.mean, std=b.std, seed=0)
    losses = []
    for epoch in range(4):
        train.set_epoch(epoch)
        m.train()
        for x, y in train:
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    k = len(train)
    assert sum(losses[-k:]) / k < 0.5 * sum(losses[:3]) / 3
    m.eval()
    val = BatchLoader(b.val_x, b.val_y, 512, shuffle=False, mean=b.mean, std=b.std)
    with torch.no_grad():
        correct = sum((m(x).argmax(1) == y).sum().item() for x, y in val)
    assert correct / len(b.val_y) > 0.6  # chance is 0.1


def test_cli_prune_vit_on_digits_keeps_embed_and_head(tmp_path):
    out = tmp_path / "run"
    rc = main(["prune", "--dataset", "digits", "--model", "vit_tiny", "--epochs", "1", "--rounds", "2",
               "--threads", "1", "--no-progress", "--batch-size", "64", "--train-subset", "256",
               "--no-prune-first", "--no-prune-last",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert rc == 0
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[1]["sparsity"] == pytest.approx(0.2, abs=1e-4)
    masks = torch.load(out / "round_1.pt", weights_only=False)["masks"]
    assert sorted(masks) == sorted(block_linears(6))


# ------------------------------------------------------------- profile -> fit -> calibrate
GELU_FED = [f"blocks.{i}.mlp.fc1" for i in range(6)]  # fc1 -> GELU; qkv/proj/fc2 feed no activation


def check_gelu_layers(run) -> None:
    """The recorded layers are exactly the GELU-fed ones, each chosen by the rule "gelu"."""
    lay = run.layers().set_index("layer")
    assert sorted(lay.index[lay["recorded"]]) == GELU_FED
    assert (lay.loc[GELU_FED, "rule"] == "gelu").all() and (lay.loc[GELU_FED, "activation"] == "gelu").all()
    others = lay.drop(index=GELU_FED)
    assert (others["rule"] == "").all() and not others["relu_fed"].any()
    assert run.pooled_layers() == GELU_FED


def test_profile_fit_gelu_vit_on_digits(tmp_path, capsys):
    """A GELU-only model's run fits: its pooled numbers pool the GELU-fed layers (fit raised
    KeyError 'under' and profile printed an empty table when "pooled" meant ReLU-fed only)."""
    from gradscope.fit import fit_run
    from gradscope.store import open_run

    out = tmp_path / "run"
    rc = main(["profile", "--dataset", "digits", "--model", "vit_tiny", "--epochs", "1", "--rounds", "2",
               "--threads", "1", "--no-progress", "--batch-size", "64", "--train-subset", "128",
               "--optimizer", "adamw", "--max-lr", "1e-3", "--layers", "gelu",
               "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "unpruned GELU-fed layers' weights" in printed
    with open_run(out / "run.h5") as run:
        check_gelu_layers(run)
        summ = run.round_summary()
        m = run.moments()
    assert summ["round"].tolist() == [0, 1] and summ["std"].gt(0).all()
    gelu = m[m["layer"].isin(GELU_FED) & (m["round"] == 0)]
    expected = np.sqrt((gelu["sumsq"].sum() - gelu["sum"].sum() ** 2 / gelu["count"].sum()) / gelu["count"].sum())
    assert summ["std"].iloc[0] == pytest.approx(expected, rel=1e-9)
    res = fit_run(out / "run.h5", models=(), bootstrap=0, store=False)
    n = res.narrowing[(res.narrowing["layer"] == "pooled") & (res.narrowing["statistic"] == "std")]
    assert n["round"].tolist() == [0, 1]
    assert n["scale"].to_numpy() == pytest.approx(summ["std"].to_numpy(), rel=1e-6)
    assert res.meta["pooled_activations"] == ["gelu"]
    from gradscope.plot.runs import plot_histograms  # noqa: PLC0415
    ax = plot_histograms(out / "run.h5")
    assert "pooled GELU-fed layers" in ax.get_title()
    ridges = ax.patches[::2]  # filled stairs per round (each followed by its outline)
    assert len(ridges) == 2
    for p in ridges:  # a ridge of zero mass (nothing pooled) would be flat
        y = p.get_path().vertices[:, 1]
        assert y.max() - y.min() > 0.01


@pytest.mark.skipif(not CIFAR_ARCHIVE.exists(), reason="needs ../shared/data/cifar10-jpeg.tar.xz")
def test_profile_fit_calibrate_vit_tiny_cifar10_adamw(tmp_path, capsys, real_cache):
    """Issue 14's end-to-end path on real CIFAR-10 in CI size: vit_tiny with AdamW records the
    GELU-fed layers every round, fit pools them, calibrate warns that the run used AdamW and
    writes its file only if the data support a rising S-curve (else its one-line refusal)."""
    from gradscope.store import open_run

    out = tmp_path / "run"
    rc = main(["profile", "--dataset", "cifar10", "--data-root", str(CIFAR_ARCHIVE), "--cache-dir", real_cache,
               "--model", "vit_tiny", "--optimizer", "adamw", "--max-lr", "1e-3", "--weight-decay", "0.05",
               "--layers", "gelu", "--train-subset", "96", "--val-size", "50", "--test-subset", "50",
               "--batch-size", "32", "--rounds", "5", "--epochs", "1", "--threads", "1", "--no-progress",
               "--out", str(out)])
    assert rc == 0
    capsys.readouterr()
    h5 = out / "run.h5"
    with open_run(h5) as run:
        check_gelu_layers(run)
        assert run.config["train"]["optimizer"] == "adamw"
        m = run.moments()
        steps = 3  # 96 images in batches of 32: one window of 3 steps per round
        assert sorted(m["round"].unique()) == [0, 1, 2, 3, 4]
        for r, g in m.groupby("round"):
            assert sorted(g["layer"]) == GELU_FED
            assert (g["steps"] == steps).all() and (g["sumsq"] > 0).all()
        r0 = m[m["round"] == 0]
        assert (r0["count"] == 384 * 192 * steps).all()  # dense: every fc1 weight, every step
        r4 = m[m["round"] == 4]
        assert (r4["count"] < r0["count"].to_numpy()).all()  # pruned: survivors only
        summ = run.round_summary()

    assert main(["fit", str(h5), "--models", "none", "--bootstrap", "0"]) == 0
    fit_out = capsys.readouterr().out
    assert "Pooled narrowing of GELU-fed layers: std" in fit_out
    table = fit_out.split(":\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert table[0].split()[:4] == ["round", "sparsity", "scale", "ratio"]
    rows = [line.split() for line in table[1:]]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3, 4]
    assert [float(r[2]) for r in rows] == pytest.approx(summ["std"].to_numpy(), rel=1e-3)  # printed to 4 digits

    cal = tmp_path / "silo.json"
    rc = main(["calibrate", str(h5), "-o", str(cal)])
    printed = capsys.readouterr()
    assert "warning: the run trained with AdamW" in printed.out
    # 5 rounds give 3 residual dof: no verdict, so nothing is written (the AdamW warning still prints)
    assert rc == 2 and not cal.exists()
    (line,) = printed.err.strip().splitlines()
    assert line.startswith(f"gradscope: error: not writing {cal}: calibration status is 'underdetermined'")
