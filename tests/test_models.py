"""Tests of gradscope.models: registry, shapes, ReLUs, init, and that small_cnn learns digits."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradscope import GradscopeError
from gradscope.models import get_model, list_models

ALL = ["resnet20", "resnet32", "resnet56", "vgg11", "vgg16", "vgg19", "resnet18", "resnet50",
       "lenet_300_100", "small_cnn"]
INTENDED = [(n, (3, 32, 32), 10) for n in ALL if n not in ("lenet_300_100", "small_cnn")] + [
    ("resnet18", (3, 64, 64), 200), ("resnet20", (1, 28, 28), 10), ("lenet_300_100", (1, 28, 28), 10),
    ("small_cnn", (1, 8, 8), 10), ("small_cnn", (3, 32, 32), 100), ("small_cnn", (3, 64, 64), 200)]


def relu_calls(model: nn.Module, x: torch.Tensor) -> int:
    """How many nn.ReLU modules actually run in one forward pass."""
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return len(calls)


def test_registry_lists_all_models():
    assert sorted(ALL + ["vit_tiny", "deit_tiny", "vgg19_silo", "vgg19_silo_narrow"]) == list_models()
    # the GELU ViTs are tested in test_vit.py, the released SILO VGG-19 below


def test_unknown_model_lists_known_names():
    with pytest.raises(GradscopeError) as e:
        get_model("resnet21", (3, 32, 32), 10)
    for n in ALL:
        assert n in str(e.value)


@pytest.mark.parametrize("name,shape,k", INTENDED)
def test_forward_shape_and_relus(name, shape, k):
    torch.manual_seed(0)
    m = get_model(name, shape, k).eval()
    x = torch.randn(2, *shape)
    out = m(x)
    assert out.shape == (2, k)
    assert torch.isfinite(out).all()
    assert relu_calls(m, x) > 0


def test_cifar_resnet_depth_and_relu_after_add():
    for depth in (20, 32, 56):
        m = get_model(f"resnet{depth}", (3, 32, 32), 10)
        convs3 = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)]
        shortcuts = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1)]
        linears = [c for c in m.modules() if isinstance(c, nn.Linear)]
        assert len(convs3) + len(linears) == depth  # 6n+2 weighted layers
        assert len(shortcuts) == 2  # option B: 1x1 conv at the two stage transitions
        n_blocks = (depth - 2) // 6 * 3
        assert relu_calls(m, torch.randn(1, 3, 32, 32)) == 1 + 2 * n_blocks
    widths = sorted({c.out_channels for c in get_model("resnet20", (3, 32, 32), 10).modules() if isinstance(c, nn.Conv2d)})
    assert widths == [16, 32, 64]


def test_vgg_plans_and_min_size():
    for name, n_conv in (("vgg11", 8), ("vgg16", 13), ("vgg19", 16)):
        m = get_model(name, (3, 32, 32), 10)
        assert sum(isinstance(c, nn.Conv2d) for c in m.modules()) == n_conv
        assert sum(isinstance(c, nn.BatchNorm2d) for c in m.modules()) == n_conv
        assert sum(isinstance(c, nn.Linear) for c in m.modules()) == 1
    with pytest.raises(GradscopeError, match="at least 16x16"):
        get_model("vgg11", (1, 8, 8), 10)


def test_torchvision_resnet_small_input_stem():
    m = get_model("resnet18", (3, 32, 32), 10)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, nn.Identity)
    assert any(isinstance(r, nn.ReLU) and r.inplace for r in m.modules())  # torchvision's ReLUs kept
    # no stride in the stem: a 32x32 input reaches layer4 at 4x4 (3 stride-2 stages)
    feats = {}
    m.layer4.register_forward_hook(lambda mod, i, o: feats.update(s=o.shape))
    m.eval()(torch.randn(1, 3, 32, 32))
    assert feats["s"][-2:] == (4, 4)


def test_seeded_kaiming_init():
    torch.manual_seed(3)
    a = get_model("vgg11", (3, 32, 32), 10)
    torch.manual_seed(3)
    b = get_model("vgg11", (3, 32, 32), 10)
    torch.manual_seed(4)
    c = get_model("vgg11", (3, 32, 32), 10)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.fc.weight, c.fc.weight)
    conv = [m for m in a.modules() if isinstance(m, nn.Conv2d)][-1]  # 512x512x3x3: 2.4M samples
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.02)
    assert torch.count_nonzero(conv.bias) == 0


def test_bad_shapes_rejected():
    with pytest.raises(GradscopeError):
        get_model("small_cnn", (8, 8), 10)
    with pytest.raises(GradscopeError):
        get_model("small_cnn", (1, 8, 8), 1)


def test_small_cnn_learns_digits_in_two_epochs():
    from gradscope.data import BatchLoader, load_dataset

    b = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    m = get_model("small_cnn", b.input_shape, b.num_classes)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    train = BatchLoader(b.train_x, b.train_y, 128, shuffle=True, mean=b.mean, std=b.std, seed=0)
    for epoch in range(2):
        train.set_epoch(epoch)
        m.train()
        for x, y in train:
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
    m.eval()
    val = BatchLoader(b.val_x, b.val_y, 512, shuffle=False, mean=b.mean, std=b.std)
    with torch.no_grad():
        correct = sum((m(x).argmax(1) == y).sum().item() for x, y in val)
    assert correct / len(b.val_y) > 0.9


# ----------------------------------------------------------------------------- the released SILO VGG-19
def test_vgg19_silo_is_the_released_vgg19_bn():
    """Martin1937/SILO archs/cifar10/vgg.py: 16 conv+BN, AdaptiveAvgPool(7,7), 25088-4096-4096-10 with
    dropout and no BatchNorm; 139.6 M weights, 85.7 % of them in the classifier (counted on meta)."""
    from gradscope.models.vgg_silo import VGG19Silo

    with torch.device("meta"):
        m = VGG19Silo()
    convs = [x for x in m.features if isinstance(x, nn.Conv2d)]
    assert len(convs) == 16 and all(c.bias is not None for c in convs)
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m.features) == 16
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.features) == 5
    assert m.avgpool.output_size == (7, 7)
    fcs = [x for x in m.classifier if isinstance(x, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(25088, 4096), (4096, 4096), (4096, 10)]
    assert sum(isinstance(x, nn.Dropout) for x in m.classifier) == 2
    assert not any(isinstance(x, nn.BatchNorm1d) for x in m.classifier)
    w = sum(p.numel() for n, p in m.named_parameters() if "weight" in n)
    fc = sum(p.numel() for n, p in m.classifier.named_parameters() if "weight" in n)
    assert round(w / 1e6, 1) == 139.6 and round(fc / w, 3) == 0.857


def test_vgg19_silo_narrow_runs_and_is_initialised_as_released():
    torch.manual_seed(0)
    m = get_model("vgg19_silo_narrow", (3, 32, 32), 10)
    fcs = [x for x in m.classifier if isinstance(x, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(64 * 49, 256), (256, 256), (256, 10)]
    out = m.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert relu_calls(m, torch.randn(1, 3, 32, 32)) == 18
    fc1 = fcs[0].weight
    assert float(fc1.detach().std()) == pytest.approx(math.sqrt(2 / (64 * 49 + 256)), rel=0.05)  # Xavier normal
    assert float(fcs[0].bias.detach().std()) == pytest.approx(1.0, rel=0.2)  # the released init.normal_ biases
    with pytest.raises(GradscopeError, match="32x32"):
        get_model("vgg19_silo", (3, 16, 16), 10)
