"""WindowAccumulator / Binner: exact counts, min/max and moments against numpy.

Moments must match numpy's float64 sums within ``RTOL * Σ|x|**p`` (module docstring of
gradscope.record.accumulate); everything else must be identical.
"""
import warnings

import numpy as np
import pytest
import torch

from gradscope.record import accumulate
from gradscope.record.accumulate import (RTOL, Binner, WindowAccumulator, bin_tables, f32_thresholds,
                                         linear_edges, log_edges)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # the GPU paths run where there is one
EDGES = {"log": log_edges(21, 1e-4, 1.0), "log201": log_edges(201), "linear": linear_edges(10, 0.5),
         "linear_odd": linear_edges(7, 0.3), "linear_many": linear_edges(2000, 1.0)}


def adversarial(edges, n=20000, seed=0):
    """Float32 values on, just below and just above every edge, ±0, denormals, huge, inf, nan."""
    rng = np.random.default_rng(seed)
    thr = f32_thresholds(edges)
    e32 = np.asarray(edges).astype(np.float32)
    tiny = np.float32(1.4e-45)
    specials = [0.0, -0.0, tiny, -tiny, 1e-40, -1e-40, 1.17e-38, -1.17e-38, 3.4e38, -3.4e38,
                np.inf, -np.inf, np.nan, -np.nan]
    parts = [rng.standard_normal(n) * 10.0 ** rng.uniform(-12, 2, n), thr, e32,
             np.nextafter(thr, np.float32(-np.inf)), np.nextafter(thr, np.float32(np.inf)),
             np.nextafter(e32, np.float32(-np.inf)), np.nextafter(e32, np.float32(np.inf)), specials]
    x = np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])
    payload = np.array([0x7FC00001, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7FFFFFFF], dtype=np.uint32).view(np.float32)
    return np.concatenate([x, payload])


def reference_slots(x, edges):
    """numpy: number of edges <= x (float64 comparison), non-finite -> len(edges) + 1."""
    with np.errstate(invalid="ignore"):
        xd = x.astype(np.float64)
    k = np.searchsorted(np.asarray(edges, dtype=np.float64), np.where(np.isfinite(xd), xd, 0), side="right")
    return np.where(np.isfinite(xd), k, len(edges) + 1)


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("name", sorted(EDGES))
def test_binner_matches_numpy_on_adversarial_values(name, dev):
    edges = EDGES[name]
    x = adversarial(edges)
    b = Binner(edges, dev)
    assert b.multi == (name == "linear_many")  # 2000 narrow bins: the exact binary-search path
    assert b.bits == {"linear": 12, "linear_odd": 12, "log": 12, "log201": 12, "linear_many": 16}[name]
    k = b(torch.from_numpy(x).to(dev)).cpu().numpy()
    assert np.array_equal(k, reference_slots(x, edges))


@pytest.mark.parametrize("nbits", [12, 14, 16])
@pytest.mark.parametrize("name", ["log201", "linear_odd"])
def test_bin_tables_exact_on_random_bit_patterns(name, nbits):
    """Every bucket, random low bits: table lookup + one comparison == numpy."""
    edges = EDGES[name]
    lut, thr, multi = bin_tables(edges, nbits)
    assert not multi
    rng = np.random.default_rng(1)
    sh = 32 - nbits
    bits = np.arange(1 << nbits, dtype=np.uint32).repeat(8) << sh
    bits |= rng.integers(0, 1 << sh, 8 << nbits, dtype=np.uint32)
    bits[::8] &= np.uint32(~((1 << sh) - 1) & 0xFFFFFFFF)  # each bucket's first pattern ...
    bits[1::8] |= np.uint32((1 << sh) - 1)  # ... and its last
    x = bits.view(np.float32)
    with np.errstate(invalid="ignore"):
        k = lut[bits >> sh] + (x >= thr[bits >> sh])
    assert np.array_equal(k, reference_slots(x, edges))
    assert Binner(edges, "cpu").bits == 12  # these edges fit the smallest table


def reference(layers, edges):
    """numpy statistics of a list of float32 arrays (one layer over a window)."""
    with np.errstate(invalid="ignore"):
        g = np.concatenate([a.ravel() for a in layers]).astype(np.float64) if layers else np.zeros(0)
    fin = g[np.isfinite(g)]
    inner = fin[(fin >= edges[0]) & (fin < edges[-1])]
    return {"count": fin.size, "nonfinite": g.size - fin.size, "under": int((fin < edges[0]).sum()),
            "over": int((fin >= edges[-1]).sum()), "hist": np.histogram(inner, edges)[0],
            "sum": fin.sum(), "sumsq": (fin ** 2).sum(), "sumabs": np.abs(fin).sum(), "sum3": (fin ** 3).sum(),
            "sum4": (fin ** 4).sum(), "min": fin.min() if fin.size else np.nan,
            "max": fin.max() if fin.size else np.nan,
            "abs": [np.abs(fin).sum(), (fin ** 2).sum(), np.abs(fin).sum(), (np.abs(fin) ** 3).sum(), (fin ** 4).sum()]}


def check(out, refs):
    for i, ref in enumerate(refs):
        for c in ["count", "nonfinite", "under", "over"]:
            assert out[c][i] == ref[c], (i, c)
        assert np.array_equal(out["hist"][i], ref["hist"]), i
        for j, c in enumerate(["sum", "sumsq", "sumabs", "sum3", "sum4"]):
            assert abs(out[c][i] - ref[c]) <= RTOL * ref["abs"][j], (i, c, out[c][i], ref[c])
        if ref["count"]:
            assert out["min"][i] == ref["min"] and out["max"][i] == ref["max"], i
        else:
            assert np.isnan(out["min"][i]) and np.isnan(out["max"][i])


def random_layers(sizes, rng, nonfinite=True):
    out = []
    for n in sizes:
        a = (rng.standard_normal(n) * 10.0 ** rng.uniform(-9, 1, n)).astype(np.float32)
        if nonfinite and n > 10:
            a[rng.integers(0, n, 3)] = [np.nan, np.inf, -np.inf]
        out.append(a)
    return out


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("name", ["log", "log201", "linear", "linear_many"])
def test_multi_layer_window_equals_numpy(name, dev):
    edges = EDGES[name]
    rng = np.random.default_rng(2)
    sizes = [5, 3000, 64, 4097, 1, 700]
    acc = WindowAccumulator(sizes, edges, dev, compile=False)
    seen = [[] for _ in sizes]
    for step in range(3):
        layers = random_layers(sizes, rng)
        layers[1][:len(adversarial(edges, 0))] = adversarial(edges, 0)[:3000]
        for s, a in zip(seen, layers):
            s.append(a)
        if step == 1:  # flat input: one tensor of all layers
            acc.add(torch.from_numpy(np.concatenate(layers)).to(dev))
        else:
            acc.add([torch.from_numpy(a).to(dev) for a in layers])
    out = acc.to_host()
    assert out["steps"] == 3
    check(out, [reference(s, edges) for s in seen])


@pytest.mark.parametrize("dev", DEVICES)
def test_masks_flat_list_channels_last_and_changes(dev):
    """Masked values never count; flat and per-layer masks agree; channels_last gradients are
    read in memory order with the mask permuted alike; a changed mask is noticed, an equal new
    mask object keeps the layout."""
    edges = log_edges(41, 1e-6, 1.0)
    rng = np.random.default_rng(3)
    shapes = [(8, 3, 3, 3), (16, 8, 3, 3), (10, 16)]
    sizes = [int(np.prod(s)) for s in shapes]
    masks = [torch.from_numpy(rng.random(s) > 0.4) for s in shapes]
    masks[2][:] = True
    acc_flat = WindowAccumulator(sizes, edges, dev, compile=False)
    acc_list = WindowAccumulator(sizes, edges, dev, compile=False)
    flat_mask = torch.cat([m.reshape(-1) for m in masks]).to(dev)
    seen = [[] for _ in shapes]
    layouts = []
    for step in range(4):
        if step == 2:  # prune more, in place: the version counter changes
            flat_mask[: sizes[0] // 2] = False
            masks[0].view(-1)[: sizes[0] // 2] = False
        grads = [torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in shapes]
        grads[1] = grads[1].to(memory_format=torch.channels_last)
        for g, m, s in zip(grads, masks, seen):
            s.append(g.numpy()[m.numpy()].copy())
            g[~m] = 1e30  # only a masked value could produce this
        grads = [g.to(dev) for g in grads]
        acc_flat.add(grads, flat_mask)
        acc_list.add(grads, [m.clone() if step == 3 else m for m in masks])  # step 3: new, equal objects
        layouts.append(acc_list._lay)
    assert layouts[0] is layouts[1] and layouts[1] is not layouts[2] and layouts[2] is layouts[3]
    refs = [reference(s, edges) for s in seen]
    a, b = acc_flat.to_host(), acc_list.to_host()
    check(a, refs)
    check(b, refs)
    assert (a["max"] < 1e29).all()


@pytest.mark.parametrize("dev", DEVICES)
def test_skipped_layer_scale_and_empty_layer(dev):
    edges = log_edges(21, 1e-4, 1.0)
    rng = np.random.default_rng(4)
    sizes = [300, 50, 20]
    acc = WindowAccumulator(sizes, edges, dev, compile=False)
    mask = [None, torch.zeros(50, dtype=torch.bool, device=dev), None]  # layer 1 fully pruned
    a0 = random_layers(sizes, rng, nonfinite=False)
    a1 = random_layers(sizes, rng, nonfinite=False)
    scale = torch.tensor(1 / 1024.0, device=dev)
    acc.add([torch.from_numpy(a).to(dev).half() * 1024 for a in a0], mask, scale=scale)  # fp16 gradients
    acc.add([torch.from_numpy(a1[0]).to(dev), None, None], mask)  # layers 1 and 2 got no gradient
    out = acc.to_host()
    s0 = [(torch.from_numpy(a).half().float() * 1024 * scale.cpu()).numpy() for a in a0]
    check(out, [reference([s0[0], a1[0]], edges), reference([], edges), reference([s0[2]], edges)])
    assert out["nonfinite"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("dev", DEVICES)
def test_sample_path_draws_recorded_values_only(dev):
    edges = log_edges(21, 1e-4, 1.0)
    rng = np.random.default_rng(5)
    sizes = [400, 30]
    acc = WindowAccumulator(sizes, edges, dev, sample_k=16, seed=7, compile=False)
    mask = torch.from_numpy(np.concatenate([rng.random(400) > 0.5, np.ones(30, bool)])).to(dev)
    vals = []
    for _ in range(3):
        a = rng.standard_normal(430).astype(np.float32)
        a[~mask.cpu().numpy()] = 1e30
        a[0] = np.nan
        vals.append(a)
        acc.add(torch.from_numpy(a).to(dev), mask)
    s = acc.to_host()["samples"]
    allv = np.concatenate(vals)
    kept = np.concatenate([v[:400][mask.cpu().numpy()[:400]] for v in vals])
    assert s.shape == (2, 16) and not np.isnan(s).any()
    assert np.isin(s[0], kept[np.isfinite(kept)]).all() and np.isin(s[1], allv).all()
    assert len(set(s[0].tolist())) == 16


@pytest.mark.parametrize("dev", DEVICES)
def test_histogram_paths_agree(monkeypatch, dev):
    """One bincount (small buffers), bincount per layer, split over two threads, and the GPU
    path (index_add_, no host sync) exercised on the CPU: identical counts, equal to numpy."""
    edges = EDGES["log"]
    rng = np.random.default_rng(6)
    sizes = [1000, 77, 5000]
    layers = [torch.from_numpy(a).to(dev) for a in random_layers(sizes, rng)]
    acc = WindowAccumulator(sizes, edges, dev, compile=False)
    acc._scatter_hist = False
    acc.add(layers)
    scatter = WindowAccumulator(sizes, edges, dev, compile=False)
    scatter._scatter_hist = True
    scatter.add(layers)
    assert acc._small and not scatter._small
    monkeypatch.setattr(accumulate, "_PARALLEL_BINCOUNT", 0)  # as if the buffer were large
    per_layer = WindowAccumulator(sizes, edges, dev, compile=False)
    per_layer._scatter_hist = False
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    per_layer.add(layers)
    assert not per_layer._small and len(per_layer._jobs) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    threads = WindowAccumulator(sizes, edges, dev, compile=False)
    threads._scatter_hist = False
    threads.add(layers)
    assert len(threads._jobs) == 2 and all(threads._jobs)
    for other in (scatter, per_layer, threads):
        assert torch.equal(acc.counts, other.counts)
    check(acc.to_host(), [reference([a.cpu().numpy()], edges) for a in layers])


@pytest.mark.parametrize("dev", DEVICES)
def test_compiled_kernels_equal_numpy(dev):
    """torch.compile path (Inductor C++ on CPU, Triton on GPU): exact counts/min/max, moments
    within RTOL. Compiling takes ~10-60 s once per process (then cached on disk)."""
    edges = log_edges(201)
    rng = np.random.default_rng(8)
    sizes = [40000, 9000, 70001]
    layers = random_layers(sizes, rng)
    layers[0][: adversarial(edges, 0).size] = adversarial(edges, 0)
    acc = WindowAccumulator(sizes, edges, dev, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed compile would warn and fall back
        acc.add([torch.from_numpy(a).to(dev) for a in layers])
    assert acc._use_compile
    check(acc.to_host(), [reference([a], edges) for a in layers])
