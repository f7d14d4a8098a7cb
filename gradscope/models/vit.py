"""Vision Transformers for small images (ViT, Dosovitskiy et al. 2021; DeiT, Touvron et al. 2021).

Pre-norm blocks, GELU MLPs, a class token read by the head (as in ViT/DeiT). Every weight
matrix is an ``nn.Linear`` (attention's ``qkv`` and ``proj``, the MLP's ``fc1`` and ``fc2``),
never ``nn.MultiheadAttention``, so that ``gradscope.pruning`` can prune them; modules are
defined so that the patch embedding is the first conv/linear layer and the head the last,
which is what ``--prune-first`` / ``--prune-last`` exclude. No dropout and no stochastic depth.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradscope import GradscopeError

INIT_STD = 0.02  # ViT/DeiT: truncated normal, std 0.02


def trunc_normal_(t: torch.Tensor, std: float = INIT_STD) -> torch.Tensor:
    """Normal(0, std) truncated at two standard deviations (so the realised std is 0.88 * std).

    timm's ``trunc_normal_(w, std=.02)`` cuts at +-2 in absolute value, i.e. not at all; this
    cuts at +-2 std, as ``tf.random.truncated_normal`` does."""
    return nn.init.trunc_normal_(t, mean=0.0, std=std, a=-2 * std, b=2 * std)


class Attention(nn.Module):
    """Multi-head self-attention from two ``nn.Linear`` layers around ``scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # (b, heads, n, d / heads)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (one ``nn.GELU`` module per block, so hooks can find it)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding (Conv2d, kernel = stride = patch), class token + learned positions,
    ``depth`` pre-norm blocks, final LayerNorm, linear head on the class token.

    Initialised here (not by the registry's Kaiming init): conv/linear weights, positions and
    class token truncated normal std 0.02, biases 0, LayerNorm weight 1 and bias 0."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, *, patch: int = 4, width: int = 192,
                 depth: int = 6, heads: int = 3, mlp_ratio: float = 2.0):
        super().__init__()
        c, h, w = input_shape
        if h % patch or w % patch:
            raise GradscopeError(f"a ViT with patch size {patch} needs image sides divisible by {patch}, got {h}x{w}; "
                                 f"resize or crop the images, or pick a convolutional model (e.g. resnet20)")
        if width % heads:
            raise GradscopeError(f"ViT width {width} is not divisible by its {heads} heads")
        self.input_hw = (h, w)
        self.patch = patch
        # definition order matters: patch_embed is the first conv/linear layer, head the last
        self.patch_embed = nn.Conv2d(c, width, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (h // patch) * (w // patch) + 1, width))
        self.blocks = nn.Sequential(*(Block(width, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The ViT/DeiT initialisation (uses the global torch RNG, so ``torch.manual_seed`` seeds it)."""
        trunc_normal_(self.pos_embed)
        trunc_normal_(self.cls_token)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                trunc_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters usually exempt from weight decay (positions, class token, biases, norms)."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or n in ("pos_embed", "cls_token")}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_hw:
            raise GradscopeError(f"this ViT was built for {self.input_hw[0]}x{self.input_hw[1]} images "
                                 f"(its position embedding is fixed), got {x.shape[-2]}x{x.shape[-1]}")
        x = self.patch_embed(x).permute(0, 2, 3, 1).flatten(1, 2)  # (b, tokens, width); a view if channels_last
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_tiny(input_shape: tuple[int, int, int], num_classes: int) -> VisionTransformer:
    """Small ViT for CPU runs: patch 4, depth 6, width 192, 3 heads, MLP ratio 2 (1.8 M parameters at 32x32)."""
    return VisionTransformer(input_shape, num_classes, patch=4, width=192, depth=6, heads=3, mlp_ratio=2.0)


def deit_tiny(input_shape: tuple[int, int, int], num_classes: int) -> VisionTransformer:
    """DeiT-Tiny's body (depth 12, width 192, 3 heads, MLP ratio 4) with patch 4, for a GPU."""
    return VisionTransformer(input_shape, num_classes, patch=4, width=192, depth=12, heads=3, mlp_ratio=4.0)
