"""Layer discovery: which elementwise activation each conv/linear layer feeds, and by which path."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradscope import GradscopeError
from gradscope.record import ACTIVATIONS, FOLLOWED_OPS, LayerDiscovery, find_layers, select_layers


def _acts(model, x):
    return {i.name: dict(i.activations) for i in find_layers(model, x)}


class Op(nn.Module):
    """a (Linear 4->8) -> op -> ReLU; ``b`` (Linear 4->8) is a second producer some ops combine."""

    def __init__(self, op):
        super().__init__()
        self.a, self.b, self.op = nn.Linear(4, 8), nn.Linear(4, 8), op

    def forward(self, x):
        return F.relu(self.op(self.a(x), self.b(x)))


def _t(a):  # (N, 8) -> (N, 2, 2, 2), an image-shaped view for the spatial ops
    return a.view(a.shape[0], 2, 2, 2)


# op name -> (function of (a, b), expected path of layer a, expected path of layer b or None = not fed)
OPS = {
    "cat": (lambda a, b: torch.cat([a, b], 1), "direct", "direct"),
    "stack": (lambda a, b: torch.stack([a, b]), "direct", "direct"),
    "slice": (lambda a, b: a[:, 2:6], "direct", None),
    "index": (lambda a, b: a[:, [0, 3, 5]], "direct", None),
    "squeeze": (lambda a, b: a.unsqueeze(1).squeeze(1), "direct", None),
    "unsqueeze": (lambda a, b: torch.unsqueeze(a, 0), "direct", None),
    "avg_pool": (lambda a, b: F.avg_pool2d(_t(a), 2), "direct", None),
    "adaptive_avg_pool": (lambda a, b: F.adaptive_avg_pool2d(_t(a), 1), "direct", None),
    "max_pool": (lambda a, b: nn.MaxPool2d(2)(_t(a)), "direct", None),
    "interpolate": (lambda a, b: F.interpolate(_t(a), scale_factor=2), "direct", None),
    "upsample_module": (lambda a, b: nn.Upsample(scale_factor=2, mode="bilinear")(_t(a)), "direct", None),
    "group_norm": (lambda a, b: nn.GroupNorm(2, 2)(_t(a)), "norm", None),
    "layer_norm": (lambda a, b: nn.LayerNorm(8)(a), "norm", None),
    "instance_norm": (lambda a, b: F.instance_norm(_t(a)), "norm", None),
    "rms_norm": (lambda a, b: F.rms_norm(a, (8,)), "norm", None),
    "batch_norm": (lambda a, b: nn.BatchNorm1d(8)(a), "norm", None),
    "scalar_mul": (lambda a, b: a * 2, "direct", None),
    "scalar_rmul": (lambda a, b: 0.5 * a, "direct", None),
    "scalar_div": (lambda a, b: a / 3, "direct", None),
    "mul_by_gate": (lambda a, b: a * torch.sigmoid(b), "direct", None),
    "sub": (lambda a, b: a - b, "residual", "residual"),
    "rsub_scalar": (lambda a, b: 1 - a, "direct", None),
    "add": (lambda a, b: a + b, "residual", "residual"),
    "add_bias_param": (lambda a, b: a + nn.Parameter(torch.ones(8)), "direct", None),
    "neg": (lambda a, b: -a, "direct", None),
    "chunk": (lambda a, b: a.chunk(2, 1)[1], "direct", None),
    "split": (lambda a, b: torch.split(a, 3, 1)[2], "direct", None),
    "unbind": (lambda a, b: a.unbind(1)[0], "direct", None),
    "view_permute": (lambda a, b: _t(a).permute(0, 2, 3, 1).reshape(a.shape[0], -1), "direct", None),
    "transpose_flatten": (lambda a, b: a.t().contiguous().flatten(), "direct", None),
    "pad": (lambda a, b: F.pad(a, (1, 1)), "direct", None),
    "dropout": (lambda a, b: F.dropout(a, 0.5, training=True), "direct", None),
    "pixel_shuffle": (lambda a, b: F.pixel_shuffle(_t(a).reshape(a.shape[0], 8, 1, 1), 2), "direct", None),
    "expand_repeat": (lambda a, b: a.unsqueeze(0).expand(2, -1, -1).repeat(1, 1, 2), "direct", None),
    "setitem": (lambda a, b: _setitem(a, b), "direct", "direct"),
    "copy_": (lambda a, b: torch.zeros_like(a).copy_(a), "direct", None),
    "in_place_add": (lambda a, b: a.clone().add_(b), "residual", "residual"),
    "norm_then_add": (lambda a, b: F.layer_norm(a, (8,)) + b, "residual", "residual"),
    "matmul_stops": (lambda a, b: a @ b.t(), None, None),
    "softmax_stops": (lambda a, b: a.softmax(-1), None, None),
    "mean_stops": (lambda a, b: a.mean(1), None, None),
}


def _setitem(a, b):
    out = torch.empty(a.shape[0], 16)
    out[:, :8] = a
    out[:, 8:] = b
    return out


@pytest.mark.parametrize("name", sorted(OPS))
def test_trail_followed_through_op(name):
    fn, pa, pb = OPS[name]
    infos = {i.name: i for i in find_layers(Op(lambda a, b: fn(a, b)), torch.randn(3, 4))}
    assert infos["a"].relu_path == (pa or "none") and infos["a"].relu_fed == (pa is not None)
    assert infos["b"].relu_path == (pb or "none")


def test_ops_named_in_followed_ops():
    for op in ("cat", "__getitem__", "squeeze", "unsqueeze", "avg_pool2d", "adaptive_avg_pool2d", "interpolate",
               "group_norm", "layer_norm", "mul", "div", "sub", "__rsub__", "chunk", "split"):
        assert op in FOLLOWED_OPS


ACT_FORMS = [
    (nn.ReLU(), "relu"), (nn.ReLU(inplace=True), "relu"), (F.relu, "relu"), (torch.relu, "relu"),
    (lambda t: t.relu(), "relu"), (nn.ReLU6(), "relu6"), (F.relu6, "relu6"), (lambda t: t.clamp(min=0), "relu"),
    (nn.GELU(), "gelu"), (nn.GELU(approximate="tanh"), "gelu"), (F.gelu, "gelu"), (nn.SiLU(), "silu"),
    (F.silu, "silu"), (nn.Tanh(), "tanh"), (torch.tanh, "tanh"), (lambda t: t.tanh(), "tanh"),
    (nn.Sigmoid(), "sigmoid"), (torch.sigmoid, "sigmoid"), (nn.LeakyReLU(0.1), "leaky_relu"),
    (nn.LeakyReLU(inplace=True), "leaky_relu"), (nn.ELU(), "elu"), (nn.SELU(), "selu"), (nn.CELU(), "celu"),
    (nn.Hardswish(), "hardswish"), (nn.Hardsigmoid(), "hardsigmoid"), (nn.Mish(), "mish"),
    (nn.Softplus(), "softplus"), (nn.PReLU(), "prelu"), (nn.Hardtanh(), "hardtanh"), (nn.Softsign(), "softsign"),
]


@pytest.mark.parametrize("act,name", ACT_FORMS, ids=[f"{n}-{k}" for k, (_, n) in enumerate(ACT_FORMS)])
def test_every_activation_form_is_found(act, name):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b = nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)
            self.act = act if isinstance(act, nn.Module) else None

        def forward(self, x):
            h = self.bn(self.a(x))
            return self.b(self.act(h) if self.act is not None else act(h))

    assert name in ACTIVATIONS
    got = _acts(M(), torch.randn(3, 4))
    assert got == {"a": {name: 1}, "b": {}}  # 1 = through a normalisation


def test_in_place_activation_ends_the_trail():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            F.relu(h, inplace=True)
            return self.b(torch.sigmoid(h))  # sigmoid sees the ReLU's output, not layer a's

    assert _acts(M(), torch.randn(3, 4)) == {"a": {"relu": 0}, "b": {}}


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.h = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4).unbind(0)
        att = (q @ k.transpose(-2, -1) / math.sqrt(C // self.h)).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(B, N, C))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: x + attn(LN(x)), then x + MLP(LN(x)) with a Linear-GELU-Linear MLP."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(d), Attention(d, heads), nn.LayerNorm(d)
        self.fc1, self.act, self.fc2 = nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyViT(nn.Module):
    def __init__(self, d=16, depth=2):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 4, 4)
        self.pos = nn.Parameter(torch.zeros(1, 4, d))
        self.blocks = nn.Sequential(*[TransformerBlock(d) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 5)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


def test_transformer_block_gelu_discovery():
    infos = find_layers(TinyViT(), torch.randn(2, 3, 8, 8))
    got = {i.name: dict(i.activations) for i in infos}
    for b in ("blocks.0", "blocks.1"):
        assert got[f"{b}.fc1"] == {"gelu": 0}
        for n in ("attn.qkv", "attn.proj", "fc2"):
            assert got[f"{b}.{n}"] == {}
    assert got["embed"] == {} and got["head"] == {}
    rec = select_layers(infos, "gelu")
    assert [i.name for i in rec] == ["blocks.0.fc1", "blocks.1.fc1"]
    assert all(i.rule == "gelu" and i.activation == "gelu" for i in rec)
    rows = {r["layer"]: r for r in (i.row(i in rec) for i in infos)}
    assert rows["blocks.0.fc1"]["activation"] == "gelu" and rows["blocks.0.fc1"]["rule"] == "gelu"
    assert rows["blocks.0.fc1"]["relu_fed"] is False and rows["blocks.0.fc1"]["relu_path"] == "none"
    assert rows["head"]["rule"] == "" and rows["head"]["activation"] == ""
    with pytest.raises(GradscopeError, match="feed: gelu"):
        select_layers(infos, "relu")


def test_gelu_reached_through_residual_add_and_layernorm():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.fc, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)
            self.ln = nn.LayerNorm(8)

        def forward(self, x):
            x = x + self.proj(x)  # residual stream
            h = F.gelu(self.ln(x))  # proj reaches GELU through the add and a LayerNorm
            return self.out(F.gelu(self.ln(self.fc(h))))  # fc through LayerNorm only

    infos = {i.name: i for i in find_layers(M(), torch.randn(3, 8))}
    assert infos["proj"].path_to("gelu") == "residual" and infos["fc"].path_to("gelu") == "norm"
    assert infos["out"].activations == {}


def test_densenet_and_unet_style_trails():
    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(7, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(11)
            self.down, self.up = nn.Conv2d(11, 8, 3, 2, 1), nn.Conv2d(8, 4, 1)
            self.head = nn.Conv2d(15, 2, 1)

        def forward(self, x):
            f = torch.cat([x, self.c1(x)], 1)  # DenseNet: features are concatenated
            f = torch.cat([f, self.c2(F.relu(f))], 1)
            d = F.relu(self.bn(f))
            u = F.interpolate(self.up(F.relu(self.down(d))), scale_factor=2)  # U-Net: upsample, then skip concat
            return self.head(F.relu(torch.cat([d, u], 1)))

    p = {i.name: i.relu_path for i in find_layers(Dense(), torch.randn(1, 3, 8, 8))}
    assert p == {"c1": "direct", "c2": "norm", "down": "direct", "up": "direct", "head": "none"}


def test_discovery_keeps_watching_until_every_layer_ran_and_reports_late_ones():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.aux, self.b = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
            self.use_aux = False

        def forward(self, x):
            h = F.relu(self.a(x))
            if self.use_aux:
                h = h + F.silu(self.aux(h))
            return self.b(h)

    m = Branchy()
    disc = LayerDiscovery(m)
    m(torch.randn(2, 4))
    assert disc.forwards == 1 and not disc.infos[1].seen
    m(torch.randn(2, 4))  # still watching: "aux" has not run
    assert disc.forwards == 2
    late = []
    disc.freeze(on_late=late.append)
    m(torch.randn(2, 4))
    assert late == []
    m.use_aux = True
    m(torch.randn(2, 4))
    assert [i.name for i in late] == ["aux"] and late[0].activations == {"silu": 0}
    assert disc._model_handles == [] and disc._late_handles == []  # nothing left once every layer was seen
    # re-deriving before the freeze: a branch used in any observed forward counts
    m2 = Branchy()
    d2 = LayerDiscovery(m2)
    m2(torch.randn(2, 4))
    m2.use_aux = True
    m2(torch.randn(2, 4))
    d2.freeze()
    assert d2.infos[1].activations == {"silu": 0} and d2.infos[0].activations == {"relu": 0}
    assert d2._model_handles == []


def test_discovery_stops_after_every_layer_ran():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    disc = LayerDiscovery(m)
    m(torch.randn(2, 4))
    m(torch.randn(2, 4))
    assert disc.forwards == 1  # every layer ran in the first: the second forward is not traced
    disc.remove()


def test_observation_never_breaks_the_forward():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            h = self.a(x)
            return {"out": F.gelu(h), "aux": [h.sum()]}

    m = Weird()
    disc = LayerDiscovery(m)
    out = m(torch.randn(2, 4))
    assert set(out) == {"out", "aux"} and disc.infos[0].activations == {"gelu": 0}
    disc.remove()


def test_select_layers_rules():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.r, self.g, self.s, self.o = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.o(F.relu(self.r(x)) + F.gelu(self.g(x)) + F.silu(self.s(x)))

    infos = find_layers(M(), torch.randn(2, 4))
    assert [i.name for i in select_layers(infos, "relu")] == ["r"]
    sel = select_layers(infos, ["gelu", "silu"])
    assert [(i.name, i.rule, i.activation) for i in sel] == [("g", "gelu", "gelu"), ("s", "silu", "silu")]
    sel = select_layers(infos, "all")
    assert [(i.rule, i.activation) for i in sel] == [("all", "relu"), ("all", "gelu"), ("all", "silu"), ("all", "")]
    assert [i.name for i in select_layers(infos, "all", skip={0: "frozen"})] == ["g", "s", "o"]
    with pytest.raises(GradscopeError, match="unknown activation 'swish'"):
        select_layers(infos, "swish")
    with pytest.raises(GradscopeError, match="alone"):
        select_layers(infos, ["all", "relu"])
    with pytest.raises(GradscopeError, match="frozen"):
        select_layers(infos, "relu", skip={0: "frozen"})


def test_hooks_removed_once_every_layer_ran():
    """No hook stays on the model after observation is complete (torch.compile would trace it)."""
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    disc = LayerDiscovery(m)
    disc.dry_run(torch.randn(2, 4))
    assert not m._forward_hooks and not m._forward_pre_hooks and not m[0]._forward_hooks
    assert disc.infos[0].activations == {"relu": 0}
