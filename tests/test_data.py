"""Tests of gradscope.data: registry, splits, caches, real archives, and BatchLoader."""
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gradscope import GradscopeError
from gradscope.config import DataConfig
from gradscope.data import BatchLoader, DataBundle, list_datasets, load_dataset, load_dataset_from_config
from gradscope.data import imagefiles
from gradscope.data.loader import crop_flip
from gradscope.data.splits import channel_stats, split_indices, subset_indices

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_ARCHIVE = SHARED / "cifar10-jpeg.tar.xz"
TINY_ARCHIVE = SHARED / "tiny-imagenet-200-subset.tar.gz"
NAMES = ["cifar10", "cifar100", "digits", "fashion-mnist", "tinyimagenet"]


# ------------------------------------------------------------------ registry and digits
def test_registry_and_unknown_name():
    assert list_datasets() == sorted(NAMES)
    with pytest.raises(GradscopeError) as e:
        load_dataset("mnist-ish")
    for n in NAMES:
        assert n in str(e.value)


def test_digits_bundle():
    b = load_dataset("digits", seed=0)
    assert isinstance(b, DataBundle) and b.name == "digits" and b.augment == "none" and b.num_classes == 10
    assert b.input_shape == (1, 8, 8)
    for x, y in ((b.train_x, b.train_y), (b.val_x, b.val_y), (b.test_x, b.test_y)):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and len(x) == len(y) and x.dim() == 4
    assert b.train_x.max() == 255  # 0..16 scaled to 0..255
    n = len(b.train_x) + len(b.val_x) + len(b.test_x)
    assert n == 1797
    assert len(b.test_x) == round(1797 * 0.2)
    assert len(b.val_x) == round((1797 - len(b.test_x)) * 0.1)
    assert sorted(b.test_y.bincount().tolist())[0] >= 30  # stratified: every class ~36
    # mean/std: of the training split, in [0, 1] pixel units
    xf = b.train_x.double() / 255
    assert b.mean[0] == pytest.approx(xf.mean().item(), abs=1e-9)
    assert b.std[0] == pytest.approx(xf.std(unbiased=False).item(), abs=1e-9)


def test_digits_val_split_seeded_and_test_fixed():
    a, a2, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.val_x, a2.val_x) and torch.equal(a.train_y, a2.train_y)
    assert not torch.equal(a.val_x, c.val_x)
    assert torch.equal(a.test_x, c.test_x)  # the test split does not move with the seed


def test_subsets():
    b = load_dataset("digits", seed=2, train_subset=100, test_subset=50)
    full = load_dataset("digits", seed=2)
    assert len(b.train_x) == 100 and len(b.test_x) == 50
    assert len(b.val_x) == 10  # the validation set scales with the subset (10 % of it)
    rows = lambda t: {bytes(r) for r in t.reshape(len(t), -1).numpy()}  # noqa: E731
    assert not rows(b.val_x) & rows(b.train_x)  # held out: never trained on
    c = load_dataset("digits", seed=2, train_subset=100, val_size=300)
    assert len(c.val_x) == 300 and len(c.train_x) == 100 and not rows(c.val_x) & rows(c.train_x)
    with pytest.raises(GradscopeError, match="validation"):
        load_dataset("digits", val_size=5000)
    with pytest.raises(GradscopeError, match="data-root"):
        load_dataset("digits", root="/somewhere")  # built in: a root would be silently ignored
    with pytest.raises(GradscopeError, match="train_subset"):
        load_dataset("digits", train_subset=10**6)
    with pytest.raises(GradscopeError):
        load_dataset("digits", val_fraction=1.0)


def test_split_indices_disjoint_stratified_seeded():
    y = torch.arange(1000) % 7
    keep, out = split_indices(y, 0.2, seed=5)
    assert len(out) == 200 and len(keep) == 800
    assert not set(keep) & set(out) and set(keep) | set(out) == set(range(1000))
    counts = np.bincount(y[torch.from_numpy(out)].numpy(), minlength=7)
    assert counts.max() - counts.min() <= 1
    k2, o2 = split_indices(y, 0.2, seed=5)
    k3, o3 = split_indices(y, 0.2, seed=6)
    assert np.array_equal(o2, out) and not np.array_equal(o3, out)
    keep0, out0 = split_indices(y, 0.0, seed=0)
    assert len(out0) == 0 and len(keep0) == 1000
    s = subset_indices(1000, 10, 0, "x")
    assert len(set(s)) == 10 and np.array_equal(s, subset_indices(1000, 10, 0, "x"))


def test_channel_stats_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (20, 3, 5, 4), dtype=torch.uint8, generator=g)
    mean, std = channel_stats(x)
    xf = x.double().div(255).transpose(0, 1).reshape(3, -1)
    assert np.allclose(mean, xf.mean(1).numpy()) and np.allclose(std, xf.std(1, unbiased=False).numpy())


def test_config_entry_point():
    b = load_dataset_from_config(DataConfig(dataset="digits", val_fraction=0.2, train_subset=64, augment=False), seed=3)
    assert len(b.train_x) == 64 and b.augment == "none"
    assert len(b.val_x) == round(64 * 0.2)  # val_fraction of the subset


# ------------------------------------------------------------------------ missing files
@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashion-mnist", "tinyimagenet"])
def test_missing_root_is_one_clear_error(name, tmp_path):
    with pytest.raises(GradscopeError, match="--data-root") as e:
        load_dataset(name, root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "cache"))
    assert "nowhere" in str(e.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "fashion-mnist", "tinyimagenet"])
def test_no_root_and_no_default_place(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GradscopeError, match="--data-root"):
        load_dataset(name, cache_dir=str(tmp_path / "cache"))


def test_empty_folder_for_torchvision_format(tmp_path):
    with pytest.raises(GradscopeError, match="--download"):
        load_dataset("cifar100", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))


# --------------------------------------------------------------- synthetic image folders
def make_cifar_folder(root: Path, per_class: int = 2, seed: int = 0) -> dict:
    """10 classes of PNGs (lossless) in the CIFAR image-folder layout; returns pixels by path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pix = {}
    for split in ("train", "test"):
        for c in range(10):
            d = root / "CIFAR-10-images" / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(a).save(d / f"{i:04d}.png")
                pix[(split, c, i)] = a
    return pix


def test_image_folder_and_archive_decode_and_cache(tmp_path, monkeypatch):
    src = tmp_path / "src"
    pix = make_cifar_folder(src)
    arch = tmp_path / "copy.tar.gz"
    with tarfile.open(arch, "w:gz") as t:
        t.add(src / "CIFAR-10-images", arcname="CIFAR-10-images")
    cache = tmp_path / "cache"
    decodes = []
    real = imagefiles.decode_images
    monkeypatch.setattr(imagefiles, "decode_images", lambda *a, **k: decodes.append(1) or real(*a, **k))

    b = load_dataset("cifar10", str(src), val_fraction=0.0, cache_dir=str(cache))
    assert b.augment == "cifar" and b.input_shape == (3, 32, 32) and len(b.train_x) == 20
    for (split, c, i), a in pix.items():
        x, y = (b.train_x, b.train_y) if split == "train" else (b.test_x, b.test_y)
        j = 2 * c + i  # sorted by class, then file name
        assert y[j] == c and torch.equal(x[j].permute(1, 2, 0), torch.from_numpy(a))
    assert len(decodes) == 2  # train + test

    from_arch = load_dataset("cifar10", str(arch), val_fraction=0.0, cache_dir=str(cache))
    assert torch.equal(from_arch.train_x, b.train_x) and torch.equal(from_arch.test_y, b.test_y)
    assert len(decodes) == 4
    again = load_dataset("cifar10", str(arch), val_fraction=0.0, cache_dir=str(cache))
    assert len(decodes) == 4 and torch.equal(again.train_x, b.train_x)  # served by the cache
    assert not [f for f in os.listdir(cache) if f.endswith(".tmp")]  # atomic write left no temp file
    assert not (src / "cache").exists()

    # a changed source is decoded again
    (src / "CIFAR-10-images" / "train" / "class0" / "0000.png").unlink()
    changed = load_dataset("cifar10", str(src), val_fraction=0.0, cache_dir=str(cache))
    assert len(decodes) == 6 and len(changed.train_x) == 19


def test_corrupt_cache_is_rebuilt(tmp_path):
    src = tmp_path / "src"
    make_cifar_folder(src, per_class=1)
    cache = tmp_path / "cache"
    b = load_dataset("cifar10", str(src), val_fraction=0.0, cache_dir=str(cache))
    (f,) = [cache / n for n in os.listdir(cache)]
    f.write_bytes(f.read_bytes()[:100])
    with pytest.warns(UserWarning, match="ignoring dataset cache .*truncated or corrupt"):
        b2 = load_dataset("cifar10", str(src), val_fraction=0.0, cache_dir=str(cache))
    assert torch.equal(b.train_x, b2.train_x)


def test_wrong_folder_layout(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(GradscopeError, match="train,test"):
        load_dataset("cifar10", str(tmp_path), cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------------------------------- real archives
# real_cache: the session's decoded-dataset cache (tests/conftest.py), shared with test_vit.py


@pytest.mark.skipif(not CIFAR_ARCHIVE.exists(), reason="needs ../shared/data/cifar10-jpeg.tar.xz")
def test_cifar10_real_archive_then_fast_cache(real_cache, monkeypatch):
    b = load_dataset("cifar10", str(CIFAR_ARCHIVE), seed=0, train_subset=500, test_subset=200, cache_dir=real_cache)
    assert b.input_shape == (3, 32, 32) and b.num_classes == 10 and b.augment == "cifar"
    assert len(b.train_x) == 500 and len(b.val_x) == 50 and len(b.test_x) == 200
    assert set(b.val_y.bincount().tolist()) == {5}  # stratified: 10 % of the 500-image subset, 5 per class
    # published CIFAR-10 channel means (0.4914, 0.4822, 0.4465); 500 images -> loose tolerance
    assert np.allclose(b.mean, (0.4914, 0.4822, 0.4465), atol=0.03)
    monkeypatch.setattr(imagefiles, "decode_images", lambda *a, **k: pytest.fail("cache not used"))
    t = time.perf_counter()
    full = load_dataset("cifar10", str(CIFAR_ARCHIVE), seed=0, cache_dir=real_cache)
    elapsed = time.perf_counter() - t
    assert len(full.train_x) == 45000 and len(full.test_x) == 10000
    assert np.allclose(full.mean, (0.4914, 0.4822, 0.4465), atol=2e-3)
    assert elapsed < 3.0, f"cached load took {elapsed:.2f} s"  # ~0.5 s alone; loose for a busy CI box


@pytest.mark.skipif(not TINY_ARCHIVE.exists(), reason="needs ../shared/data/tiny-imagenet-200-subset.tar.gz")
def test_tinyimagenet_real_archive(real_cache):
    b = load_dataset("tinyimagenet", str(TINY_ARCHIVE), seed=0, val_fraction=0.1, cache_dir=real_cache)
    assert b.input_shape == (3, 64, 64) and b.num_classes == 200 and b.augment == "cifar"
    assert len(b.train_x) + len(b.val_x) == 20000 and len(b.test_x) == 10000
    assert b.test_y.bincount(minlength=200).tolist() == [50] * 200
    assert b.train_y.unique().numel() == 200


# -------------------------------------------------------------------------- BatchLoader
def small_data(n=50, c=3, s=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, s, s), dtype=torch.uint8, generator=g), torch.arange(n)


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def batches(loader, key=None):
    if key is not None:
        loader.set_epoch(key)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_len_and_drop_last():
    x, y = small_data(50)
    assert len(BatchLoader(x, y, 16, shuffle=False, mean=MEAN, std=STD)) == 4
    ld = BatchLoader(x, y, 16, shuffle=True, mean=MEAN, std=STD, drop_last=True)
    assert len(ld) == 3 and [len(b[1]) for b in batches(ld, 0)] == [16, 16, 16]


def test_no_augment_equals_normalised_data():
    x, y = small_data(50)
    out = batches(BatchLoader(x, y, 16, shuffle=False, mean=MEAN, std=STD), 0)
    xs = torch.cat([b[0] for b in out])
    ys = torch.cat([b[1] for b in out])
    ref = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert xs.dtype == torch.float32 and torch.allclose(xs, ref, atol=1e-5) and torch.equal(ys, y)


def test_order_deterministic_per_seed_and_key():
    x, y = small_data(50)
    mk = lambda seed: BatchLoader(x, y, 16, shuffle=True, augment="cifar", mean=MEAN, std=STD, seed=seed)
    a, b = mk(0), mk(0)
    ea, eb = batches(a, 3), batches(b, 3)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(ea, eb))
    order = lambda ep: torch.cat([t[1] for t in ep])
    assert sorted(order(ea).tolist()) == list(range(50))  # a permutation: each sample once
    assert not torch.equal(order(ea), order(batches(a, 4)))  # another key
    assert not torch.equal(order(ea), order(batches(mk(1), 3)))  # another seed
    # resumable: epoch 3 after other epochs equals epoch 3 of a fresh loader
    batches(b, 0); batches(b, 1)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(ea, batches(b, 3)))
    # without set_epoch each iteration moves on to the next key
    c = mk(0)
    assert not torch.equal(order(batches(c)), order(batches(c)))


def reference_crop_flip(img, oy, ox, flip, pad):
    p = F.pad(img, (pad, pad, pad, pad))
    h, w = img.shape[-2:]
    out = p[:, oy:oy + h, ox:ox + w]
    return out.flip(-1) if flip else out


def test_crop_flip_matches_per_image_reference():
    x, _ = small_data(40, s=12)
    g = torch.Generator().manual_seed(1)
    oy, ox = torch.randint(0, 9, (40,), generator=g), torch.randint(0, 9, (40,), generator=g)
    flip = torch.rand(40, generator=g) < 0.5
    out = crop_flip(x, oy, ox, flip, 4)
    for i in range(40):
        assert torch.equal(out[i], reference_crop_flip(x[i], int(oy[i]), int(ox[i]), bool(flip[i]), 4))


def test_augmentation_is_real_and_keeps_shape():
    x, y = small_data(64)
    ld = BatchLoader(x, y, 32, shuffle=False, augment="cifar", mean=MEAN, std=STD, seed=0)
    xs = torch.cat([b[0] for b in batches(ld, 0)])
    assert xs.shape == (64, 3, 32, 32) and xs.dtype == torch.float32
    m, s = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    raw = torch.round((xs * s + m) * 255).to(torch.uint8)
    found = []
    for i in range(64):  # each output is exactly one crop/flip of its own input
        hits = [(oy, ox, f) for oy in range(9) for ox in range(9) for f in (False, True)
                if torch.equal(raw[i], reference_crop_flip(x[i], oy, ox, f, 4))]
        assert hits, f"sample {i} is no crop/flip of its input"
        found.append(hits[0])
    assert {f for _, _, f in found} == {False, True}
    assert any((oy, ox) != (4, 4) for oy, ox, _ in found)


def test_channels_last_same_values():
    x, y = small_data(20)
    a = BatchLoader(x, y, 8, shuffle=True, augment="cifar", mean=MEAN, std=STD, seed=2)
    b = BatchLoader(x, y, 8, shuffle=True, augment="cifar", mean=MEAN, std=STD, seed=2, channels_last=True)
    for (xa, ya), (xb, yb) in zip(batches(a, 1), batches(b, 1)):
        assert xb.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_64px_uses_pad_8_and_bad_inputs():
    x, y = small_data(4, s=64)
    assert BatchLoader(x, y, 2, shuffle=False, mean=MEAN, std=STD).pad == 8
    with pytest.raises(GradscopeError, match="uint8"):
        BatchLoader(x.float(), y, 2, shuffle=False, mean=MEAN, std=STD)
    with pytest.raises(GradscopeError, match="labels"):
        BatchLoader(x, y[:3], 2, shuffle=False, mean=MEAN, std=STD)
    with pytest.raises(GradscopeError, match="augmentation"):
        BatchLoader(x, y, 2, shuffle=False, augment="flip", mean=MEAN, std=STD)
    with pytest.raises(GradscopeError, match="per channel"):
        BatchLoader(x, y, 2, shuffle=False, mean=(0.5,), std=(0.2,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_resident():
    x, y = small_data(20)
    ld = BatchLoader(x, y, 8, shuffle=True, augment="cifar", mean=MEAN, std=STD, device="cuda")
    assert ld.x.is_cuda
    cpu = BatchLoader(x, y, 8, shuffle=True, augment="cifar", mean=MEAN, std=STD)
    for (xa, ya), (xb, yb) in zip(batches(ld, 0), batches(cpu, 0)):
        assert xa.is_cuda and torch.allclose(xa.cpu(), xb) and torch.equal(ya.cpu(), yb)
