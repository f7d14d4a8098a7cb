"""The dataset registry: one loader per name, each returning the official train/test split
as uint8 tensors. ``load_dataset`` adds the seeded validation split, subsets and statistics."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
import torch

from gradscope import GradscopeError
from gradscope.data import imagefiles
from gradscope.data.cache import resolve_cache_dir
from gradscope.registry import Registry
from gradscope.data.splits import channel_stats, split_indices, subset_indices

DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0  # the digits test split is fixed, whatever the run's seed


@dataclass
class DataBundle:
    """One dataset, ready for ``BatchLoader``: uint8 images ``[N, C, H, W]``, int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, [0, 1] pixel units, of the train split
    std: tuple[float, ...]
    augment: str  # "cifar" (random crop + horizontal flip) or "none"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.train_x.shape[1:])  # type: ignore[return-value]


@dataclass
class RawData:
    """What a dataset loader returns: the official split, before validation/subsets."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augment: str


Loader = Callable[[Optional[str], str, bool], RawData]  # (root, cache_dir, download)
DATASETS: Registry[Loader] = Registry("dataset", "--dataset")


def register(name: str, defaults: tuple[str, ...] = (), needs_root: bool = True):
    """``@register(name, defaults=(places searched when no root is given,))``."""
    return DATASETS.register(name, defaults=defaults, needs_root=needs_root)


def list_datasets() -> list[str]:
    return DATASETS.names()


def default_roots(name: str) -> tuple[str, ...]:
    """Places (relative to the current directory) searched when no root is given."""
    return DATASETS.meta(name)["defaults"] if name in DATASETS else ()


def _missing(name: str, where: str, what: str) -> GradscopeError:
    hint = "" if name == "Tiny-ImageNet" else ", or --download where you have the internet"
    return GradscopeError(f"{name} not found ({where}); pass --data-root PATH to {what}{hint}")


def _resolve_root(key: str, name: str, root: Optional[str], what: str, download: bool) -> str:
    if root is not None:
        if not os.path.exists(root) and not download:
            raise _missing(name, f"no file or folder at {root}", what)
        return root
    for cand in default_roots(key):
        if os.path.exists(cand):
            return cand
    if download and default_roots(key):
        return default_roots(key)[0]
    looked = ", ".join(os.path.abspath(c) for c in default_roots(key))
    raise _missing(name, f"no --data-root given and nothing at {looked}", what)


def _as_tensors(x: np.ndarray, y) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(np.asarray(x), dtype=torch.uint8)
    if x.dim() == 3:  # [N, H, W] greyscale
        x = x.unsqueeze(1)
    elif x.shape[-1] in (1, 3):  # [N, H, W, C]
        x = x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.as_tensor(np.asarray(y), dtype=torch.int64)


def _torchvision(cls_name: str, root: str, download: bool, name: str, what: str) -> tuple:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    out = []
    for train in (True, False):
        try:
            ds = cls(root, train=train, download=download)
        except Exception as e:  # torchvision raises RuntimeError for missing files, URLError offline
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise _missing(name, f"torchvision could not load it from {os.path.abspath(root)}: {msg}", what) from None
        out.append(_as_tensors(ds.data, ds.targets))
    return out[0], out[1]


# --------------------------------------------------------------------------------- digits
@register("digits", needs_root=False)
def _digits(root: Optional[str], cache_dir: str, download: bool) -> RawData:
    """scikit-learn's bundled 8x8 digits (no files needed); a fixed stratified 20 % is the test set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    x, y = _as_tensors(x, d.target)
    tr, te = split_indices(y, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return RawData(x[tr], y[tr], x[te], y[te], 10, "none")


# -------------------------------------------------------------------------------- cifar10
CIFAR10_WHAT = ("a CIFAR-10 image folder or archive (e.g. ../shared/data/cifar10-jpeg.tar.xz) "
                "or torchvision's cifar-10-batches-py files")


def _image_folder_splits(files: dict[str, bytes], size: int, name: str, src: str) -> dict:
    """CIFAR-style layout ``.../{train,test}/<class>/<file>``; classes sorted alphabetically."""
    items: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for path in files:
        parts = path.split("/")
        if len(parts) >= 3 and parts[-3] in items and not path.endswith(".txt"):
            items[parts[-3]].append((parts[-2], path))
    if not items["train"] or not items["test"]:
        raise GradscopeError(f"{src} has no {{train,test}}/<class>/<image> files; pass --data-root PATH to {CIFAR10_WHAT}")
    classes = sorted({c for c, _ in items["train"]})
    cidx = {c: i for i, c in enumerate(classes)}
    out = {"classes": classes}
    for split, lst in items.items():
        lst.sort(key=lambda t: (cidx.get(t[0], -1), t[1]))
        unknown = {c for c, _ in lst if c not in cidx}
        if unknown:
            raise GradscopeError(f"{src}: {split} has classes {sorted(unknown)} that train lacks")
        out[f"{split}_x"] = imagefiles.decode_images([files[p] for _, p in lst], (size, size), desc=f"{name} {split}")
        out[f"{split}_y"] = torch.tensor([cidx[c] for c, _ in lst], dtype=torch.int64)
    return out


def _find_tv_root(root: str, folder: str) -> Optional[str]:
    """The root torchvision expects for ``folder`` (e.g. cifar-10-batches-py), if present."""
    if os.path.basename(os.path.normpath(root)) == folder:
        return os.path.dirname(os.path.normpath(root)) or "."
    if os.path.isdir(os.path.join(root, folder)):
        return root
    return None


@register("cifar10", defaults=("data/cifar10", "../shared/data/cifar10-jpeg.tar.xz"))
def _cifar10(root: Optional[str], cache_dir: str, download: bool) -> RawData:
    root = _resolve_root("cifar10", "CIFAR-10", root, CIFAR10_WHAT, download)
    tv_root = _find_tv_root(root, "cifar-10-batches-py") if os.path.isdir(root) else None
    if os.path.isdir(root) and tv_root is None:
        archives = sorted(f for f in os.listdir(root) if "cifar" in f.lower() and imagefiles.is_archive(os.path.join(root, f)))
        has_images = any(os.path.isdir(os.path.join(root, d)) for d in ("train", "CIFAR-10-images"))
        if not has_images and archives:
            root = os.path.join(root, archives[0])
        elif not has_images:
            if download:
                (tr, te) = _torchvision("CIFAR10", root, True, "CIFAR-10", CIFAR10_WHAT)
                return RawData(*tr, *te, 10, "cifar")
            raise _missing("CIFAR-10", f"no image folder, archive or cifar-10-batches-py in {os.path.abspath(root)}", CIFAR10_WHAT)
    if tv_root is not None:
        (tr, te) = _torchvision("CIFAR10", tv_root, download, "CIFAR-10", CIFAR10_WHAT)
        return RawData(*tr, *te, 10, "cifar")
    if os.path.isfile(root) and not imagefiles.is_archive(root):
        raise GradscopeError(f"{root} is not a folder or a .tar/.tar.gz/.tar.xz archive; pass --data-root PATH to {CIFAR10_WHAT}")
    src = root

    def build() -> dict:
        return _image_folder_splits(dict(imagefiles.iter_files(src)), 32, "cifar10", src)

    d = imagefiles.cached(cache_dir, "cifar10", src, build)
    if len(d["classes"]) != 10:
        raise GradscopeError(f"{src} has {len(d['classes'])} class folders, CIFAR-10 needs 10")
    return RawData(d["train_x"], d["train_y"], d["test_x"], d["test_y"], 10, "cifar")


# ------------------------------------------------------------------------------- cifar100
CIFAR100_WHAT = "a folder with torchvision's cifar-100-python files"


@register("cifar100", defaults=("data/cifar100",))
def _cifar100(root: Optional[str], cache_dir: str, download: bool) -> RawData:
    root = _resolve_root("cifar100", "CIFAR-100", root, CIFAR100_WHAT, download)
    tv_root = _find_tv_root(root, "cifar-100-python") or root
    (tr, te) = _torchvision("CIFAR100", tv_root, download, "CIFAR-100", CIFAR100_WHAT)
    return RawData(*tr, *te, 100, "cifar")


# -------------------------------------------------------------------------- fashion-mnist
FMNIST_WHAT = "a folder with torchvision's FashionMNIST/raw files"


@register("fashion-mnist", defaults=("data/fashion-mnist",))
def _fashion_mnist(root: Optional[str], cache_dir: str, download: bool) -> RawData:
    root = _resolve_root("fashion-mnist", "Fashion-MNIST", root, FMNIST_WHAT, download)
    tv_root = _find_tv_root(root, "FashionMNIST") or root
    (tr, te) = _torchvision("FashionMNIST", tv_root, download, "Fashion-MNIST", FMNIST_WHAT)
    return RawData(*tr, *te, 10, "none")


# --------------------------------------------------------------------------- tinyimagenet
TINY_WHAT = ("a tiny-imagenet-200 folder or archive (e.g. ../shared/data/tiny-imagenet-200-subset.tar.gz); "
             "it has no torchvision downloader")


def _tiny_splits(files: dict[str, bytes], src: str) -> dict:
    """Standard layout: wnids.txt, train/<wnid>/images/*.JPEG, val/images + val/val_annotations.txt."""
    wn = [p for p in files if p.split("/")[-1] == "wnids.txt"]
    ann = [p for p in files if p.endswith("val/val_annotations.txt")]
    if not wn or not ann:
        raise GradscopeError(f"{src} lacks wnids.txt or val/val_annotations.txt; pass --data-root PATH to {TINY_WHAT}")
    wnids = sorted(set(files[wn[0]].decode().split()))
    cidx = {w: i for i, w in enumerate(wnids)}
    val_dir = ann[0][: -len("val_annotations.txt")] + "images/"
    val_label = {}
    for line in files[ann[0]].decode().splitlines():
        f = line.split("\t")
        if len(f) >= 2:
            val_label[val_dir + f[0]] = f[1]
    train, val = [], []
    for p in files:
        parts = p.split("/")
        if len(parts) >= 4 and parts[-4] == "train" and parts[-2] == "images" and parts[-3] in cidx:
            train.append((cidx[parts[-3]], p))
        elif p in val_label and val_label[p] in cidx:
            val.append((cidx[val_label[p]], p))
    if not train or not val:
        raise GradscopeError(f"{src} has no train/<wnid>/images or labelled val/images files; pass --data-root PATH to {TINY_WHAT}")
    out = {"classes": wnids}
    for split, lst in (("train", sorted(train)), ("test", sorted(val))):
        out[f"{split}_x"] = imagefiles.decode_images([files[p] for _, p in lst], (64, 64), desc=f"tinyimagenet {split}")
        out[f"{split}_y"] = torch.tensor([c for c, _ in lst], dtype=torch.int64)
    return out


@register("tinyimagenet", defaults=("data/tiny-imagenet-200", "../shared/data/tiny-imagenet-200-subset.tar.gz"))
def _tinyimagenet(root: Optional[str], cache_dir: str, download: bool) -> RawData:
    if download and (root is None or not os.path.exists(root)):
        raise GradscopeError(f"Tiny-ImageNet cannot be downloaded by gradscope; pass --data-root PATH to {TINY_WHAT}")
    root = _resolve_root("tinyimagenet", "Tiny-ImageNet", root, TINY_WHAT, False)
    if os.path.isfile(root) and not imagefiles.is_archive(root):
        raise GradscopeError(f"{root} is not a folder or a .tar/.tar.gz archive; pass --data-root PATH to {TINY_WHAT}")
    src = root
    d = imagefiles.cached(cache_dir, "tinyimagenet", src, lambda: _tiny_splits(dict(imagefiles.iter_files(src)), src))
    return RawData(d["train_x"], d["train_y"], d["test_x"], d["test_y"], len(d["classes"]), "cifar")


# ------------------------------------------------------------------------------ public API
def validation_count(n_train: int, val_fraction: float, val_size: int | None, train_subset: int | None) -> int:
    """Validation images: ``val_size``; else ``val_fraction`` of ``train_subset`` when given (so the
    validation set scales with the subset), else of the whole train split."""
    if train_subset is not None and train_subset >= n_train:
        raise GradscopeError(f"train_subset={train_subset} leaves no image of the {n_train} in the train "
                             f"split for validation; pass fewer")
    if val_size is not None:
        if int(val_size) != val_size or val_size <= 0:
            raise GradscopeError(f"val_size must be a positive integer, got {val_size!r}")
        n = int(val_size)
    else:
        n = int(round(val_fraction * (train_subset if train_subset is not None else n_train)))
        if val_fraction > 0 and n == 0:
            of = f"--train-subset {train_subset}" if train_subset is not None else f"{n_train} training images"
            raise GradscopeError(f"--val-fraction {val_fraction:g} of {of} holds out no validation image (val_acc "
                                 "would be undefined); pass a larger --train-subset, --val-size N, or "
                                 "--val-fraction 0 for no validation")
    if n >= n_train:
        raise GradscopeError(f"{n} validation images leave no training image out of {n_train}; "
                             "lower --val-size / --val-fraction")
    if train_subset is not None and train_subset > n_train - n:
        raise GradscopeError(f"train_subset={train_subset} is larger than the {n_train - n} training images "
                             f"left after holding out {n} for validation")
    return n


def load_dataset(name: str, root: str | None = None, *, val_fraction: float = 0.1, seed: int = 0,
                 train_subset: int | None = None, test_subset: int | None = None,
                 cache_dir: str | None = None, download: bool = False,
                 val_size: int | None = None, released_split: bool = False) -> DataBundle:
    """Load dataset ``name`` with a seeded, stratified validation split held out of train.

    Validation: ``validation_count`` images held out of the train split; ``train_subset`` is
    drawn (seeded) from what is left; ``test_subset`` from the test split. Mean/std come from
    the final training images. ``released_split``: first merge train and test and re-split
    them as the released SILO code (``released_merged_split``).
    """
    key = DATASETS.key(name)
    if root is not None and not DATASETS.meta(key)["needs_root"]:
        raise GradscopeError(f"--data-root is not used by dataset {key!r} (it is built in); drop it")
    if download and not DATASETS.meta(key)["needs_root"]:
        raise GradscopeError(f"--download is not used by dataset {key!r} (it is built in: nothing to download); drop it")
    cache_dir = resolve_cache_dir(cache_dir)
    if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        raise GradscopeError(f"--cache-dir {cache_dir} is a file, not a folder")
    raw = DATASETS.get(key)(root, cache_dir, download)
    if released_split:
        raw = released_merged_split(raw, seed)
    if not 0.0 <= val_fraction < 1.0:
        raise GradscopeError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = validation_count(len(raw.train_y), val_fraction, val_size, train_subset)
    tr, va = split_indices(raw.train_y, n_val / len(raw.train_y), seed)
    tr = tr[subset_indices(len(tr), train_subset, seed + 1, "train_subset")]
    te = subset_indices(len(raw.test_y), test_subset, seed + 2, "test_subset")
    tr_t, va_t, te_t = (torch.from_numpy(i) for i in (tr, va, te))
    train_x = raw.train_x.index_select(0, tr_t)
    mean, std = channel_stats(train_x)
    return DataBundle(
        name=key, train_x=train_x, train_y=raw.train_y.index_select(0, tr_t),
        val_x=raw.train_x.index_select(0, va_t), val_y=raw.train_y.index_select(0, va_t),
        test_x=raw.test_x.index_select(0, te_t), test_y=raw.test_y.index_select(0, te_t),
        num_classes=raw.num_classes, mean=mean, std=std, augment=raw.augment)


RELEASED_SPLIT_NOTE = (
    "--released-split: the dataset's train and test sets are merged and re-split 80/20, then 75/25 "
    "(CIFAR-10: 36000 train / 12000 val / 12000 'test'), as the released SILO code does "
    "(resnet_20_cifar_10.py l.85-97); the original test images are trained on, and 'test' is a "
    "held-out part of the merged pool, not the dataset's test set")


def released_merged_split(raw, seed: int):
    """Train and test merged and re-split as the released SILO scripts (seeded permutation):
    ``int(0.8·N)`` for train+val (the rest is test), of which ``int(0.75·n)`` train, the rest val.
    Returned as a raw dataset whose train split holds train+val (validation is then held out of
    it with ``val_fraction`` 0.25 of it by the caller's setting) and whose test split is the 20 %."""
    x = torch.cat([raw.train_x, raw.test_x])
    y = torch.cat([raw.train_y, raw.test_y])
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(int(seed)))
    n_tv = int(0.8 * len(y))
    tv, te = perm[:n_tv], perm[n_tv:]
    return replace(raw, train_x=x[tv], train_y=y[tv], test_x=x[te], test_y=y[te])


def load_dataset_from_config(cfg, seed: int) -> DataBundle:
    """``load_dataset`` from a ``gradscope.config.DataConfig``; ``cfg.augment=False`` gives augment "none"."""
    released = bool(getattr(cfg, "released_split", False))
    if released:
        print(f"gradscope: note: {RELEASED_SPLIT_NOTE}", file=sys.stderr)
    b = load_dataset(cfg.dataset, cfg.data_root, val_fraction=0.25 if released and cfg.val_size is None
                     else cfg.val_fraction, seed=seed,
                     train_subset=cfg.train_subset, test_subset=cfg.test_subset,
                     cache_dir=cfg.cache_dir, download=cfg.download, val_size=getattr(cfg, "val_size", None),
                     released_split=released)
    return b if cfg.augment else replace(b, augment="none")
