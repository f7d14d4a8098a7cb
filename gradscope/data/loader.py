"""``BatchLoader``: minibatches from one in-memory uint8 tensor, augmented a whole batch at once.

The data is moved to ``device`` once (on CUDA it lives on the GPU). Per batch: gather
indices, crop+flip by one vectorised gather, convert to float and normalise in one fused
step. Shuffle order and augmentation depend only on ``(seed, key)`` (see ``set_epoch``), so
an epoch can be replayed exactly after a resume.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gradscope import GradscopeError

AUGMENTS = ("none", "cifar")


def crop_pad(size: int) -> int:
    """Padding of the random crop for images of side ``size``: 4 (CIFAR standard), 8 for 64x64 and up."""
    return 8 if size >= 64 else 4


def epoch_key(round_: int, epoch: int) -> int:
    """The data-order key of (round, epoch): a loader's shuffle and augmentation depend only on
    it and the seed, so an epoch is replayed exactly after a resume."""
    return int(round_) * 100_003 + int(epoch)


def epoch_generator(seed: int, key: int) -> torch.Generator:
    """A CPU generator whose stream depends only on ``(seed, key)``."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(key) & 0xFFFFFFFF, 0x9E5C0]).generate_state(2)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def crop_flip_index(offset_y: torch.Tensor, offset_x: torch.Tensor, flip: torch.Tensor,
                    h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row ``[B, H, 1]`` and column ``[B, 1, W]`` indices into a padded batch that crop at the
    given per-sample offsets and mirror the samples where ``flip`` is True."""
    ar_h = torch.arange(h, device=offset_y.device)
    ar_w = torch.arange(w, device=offset_x.device)
    rows = offset_y[:, None] + ar_h
    cols = offset_x[:, None] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w)
    return rows[:, :, None], cols[:, None, :]


def crop_flip(x: torch.Tensor, offset_y: torch.Tensor, offset_x: torch.Tensor, flip: torch.Tensor,
              pad: int) -> torch.Tensor:
    """Random-crop (zero padding ``pad``, per-sample offsets in ``[0, 2*pad]``) and mirror the
    samples where ``flip`` is True, for a whole batch ``[B, C, H, W]`` in one ``gather``."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
    rows, cols = crop_flip_index(offset_y, offset_x, flip, h, w)
    lin = (rows * (w + 2 * pad) + cols).view(b, 1, h * w).expand(b, c, h * w)
    return xp.reshape(b, c, -1).gather(2, lin).view(b, c, h, w)


class BatchLoader:
    """Iterate over ``(x float32 normalised [B, C, H, W], y int64 [B])`` on ``device``.

    ``augment="cifar"``: random crop with zero padding (4 px; 8 px for 64x64 images) and a
    horizontal flip with probability 1/2, done on the whole batch at once.
    Call ``set_epoch(key)`` before iterating; without it each new iteration uses the next key.
    ``rank``/``world_size`` (DDP): a shuffled loader gives this rank a disjoint 1/world_size slice
    of every global batch of ``batch_size`` (which must divide evenly); an unshuffled one
    (evaluation) gives it a contiguous 1/world_size part of the data.
    """

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool,
                 augment: str = "none", mean: Sequence[float], std: Sequence[float],
                 device="cpu", seed: int = 0, drop_last: bool = False, channels_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
            raise GradscopeError(f"BatchLoader needs uint8 images [N, C, H, W], got {x_uint8.dtype} {tuple(x_uint8.shape)}")
        if len(y) != len(x_uint8):
            raise GradscopeError(f"BatchLoader got {len(x_uint8)} images but {len(y)} labels")
        if int(batch_size) != batch_size or batch_size <= 0:
            raise GradscopeError(f"batch size must be a positive integer, got {batch_size!r}")
        if augment not in AUGMENTS:
            raise GradscopeError(f"unknown augmentation {augment!r}; known: {', '.join(AUGMENTS)}")
        if not 0 <= rank < world_size or (shuffle and world_size > 1 and (batch_size % world_size or not drop_last)):
            raise GradscopeError(f"rank {rank} of {world_size}: a sharded training loader needs drop_last and a "
                                 f"batch ({batch_size}) that splits evenly over the ranks")
        self.rank, self.world_size = int(rank), int(world_size)
        c = x_uint8.shape[1]
        if len(mean) != c or len(std) != c:
            raise GradscopeError(f"mean/std need {c} values (one per channel), got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise GradscopeError(f"std must be positive, got {tuple(std)}")
        self.device = torch.device(device)
        self.x = x_uint8.to(self.device)
        self.y = y.to(self.device, dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self.seed = int(seed)
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.pad = crop_pad(min(x_uint8.shape[2], x_uint8.shape[3]))
        # (x / 255 - mean) / std == x * scale - shift, one fused multiply-subtract per batch
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self._scale = (1.0 / (255.0 * std_t)).view(1, c, 1, 1)
        self._shift = (mean_t / std_t).view(1, c, 1, 1)
        self._key = 0
        self._key_fresh = True

    def _shard(self) -> tuple[int, int]:
        """Start and end of this rank's part of the (unshuffled) data."""
        n, w, r = len(self.x), self.world_size, self.rank
        return n * r // w, n * (r + 1) // w

    @property
    def examples(self) -> int:
        """Examples this rank sees in one pass (all of them in a single process, no drop_last)."""
        if self.world_size > 1 and not self.shuffle:
            a, b = self._shard()
            return b - a
        return len(self.x)

    def __len__(self) -> int:
        n = self.examples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, key: int) -> None:
        """Fix the order and augmentation of the next iteration to those of ``(seed, key)``."""
        self._key = int(key)
        self._key_fresh = True

    def _epoch_plan(self, key: int):
        n = len(self.x)
        g = epoch_generator(self.seed, key)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        aug = None
        if self.augment == "cifar":
            span = 2 * self.pad + 1
            oy = torch.randint(0, span, (n,), generator=g)
            ox = torch.randint(0, span, (n,), generator=g)
            flip = torch.rand(n, generator=g) < 0.5
            aug = (oy.to(self.device), ox.to(self.device), flip.to(self.device))
        return order.to(self.device), aug

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self._key_fresh:
            self._key += 1
        self._key_fresh = False
        order, aug = self._epoch_plan(self._key)
        bs, lo, step = self.batch_size, 0, self.batch_size  # this rank's [lo, lo + step) of each batch
        if self.world_size > 1 and self.shuffle:
            step = bs // self.world_size
            lo = self.rank * step
        elif self.world_size > 1:
            a, b = self._shard()
            order = order[a:b]
            aug = None if aug is None else tuple(t[a:b] for t in aug)
        for i in range(len(self)):
            idx = order[i * bs + lo : i * bs + lo + step]
            xb = self.x.index_select(0, idx)
            if aug is not None:
                oy, ox, flip = (a[i * bs + lo : i * bs + lo + step] for a in aug)
                xb = crop_flip(xb, oy, ox, flip, self.pad)
            xb = xb.float().mul_(self._scale).sub_(self._shift)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, self.y.index_select(0, idx)
