"""Shared helpers for the store tests and fault suites: a small producer that writes windows
with RunWriter directly (statistics computed with numpy from real arrays, so every
consistency check holds), and a legacy schema-1 writer (what gradscope wrote before schema 2)."""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import h5py
import numpy as np

from gradscope.store import RunWriter, window_rows
from gradscope.store import checksum as C
from gradscope.store import schema as S

EDGES = np.linspace(-1, 1, 9)
LAYERS = [{"layer": "a", "index": 0, "kind": "conv", "shape": "2x3", "numel": 6, "relu_fed": True,
           "relu_path": "direct", "recorded": True, "activation": "relu", "rule": "relu"},
          {"layer": "b", "index": 1, "kind": "linear", "shape": "3x2", "numel": 6, "relu_fed": False,
           "relu_path": "none", "recorded": True, "activation": "", "rule": "all"}]
NUMEL = [6, 6]


def writer(path, mode: str = "x", **kw) -> RunWriter:
    return RunWriter(str(path), config=kw.pop("config", {"x": 1}), edges=kw.pop("edges", EDGES),
                     edge_kind="linear", layers=kw.pop("layers", LAYERS), mode=mode, **kw)


def stats(values: Sequence[np.ndarray], edges: np.ndarray = EDGES) -> tuple[dict, np.ndarray]:
    """Exact per-layer statistics of each array of values (what the recorder stores)."""
    out = {c: [] for c in S.MOMENT_COLUMNS}
    hists = []
    for v in values:
        v = np.asarray(v, dtype=np.float64).ravel()
        fin = v[np.isfinite(v)]
        out["count"].append(fin.size)
        out["nonfinite"].append(v.size - fin.size)
        out["sum"].append(fin.sum())
        out["sumsq"].append((fin ** 2).sum())
        out["sumabs"].append(np.abs(fin).sum())
        out["sum3"].append((fin ** 3).sum())
        out["sum4"].append((fin ** 4).sum())
        out["min"].append(fin.min() if fin.size else np.nan)
        out["max"].append(fin.max() if fin.size else np.nan)
        out["under"].append(int((fin < edges[0]).sum()))
        out["over"].append(int((fin >= edges[-1]).sum()))
        hists.append(np.histogram(fin[(fin >= edges[0]) & (fin < edges[-1])], edges)[0])
    return {k: np.asarray(v) for k, v in out.items()}, np.stack(hists).astype(np.int64)


def gradients(seed: int, kept: Sequence[int], steps: int) -> list[np.ndarray]:
    """Survivor gradients per layer: (steps, kept) values, roughly N(0, 0.5)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((steps, k)) * 0.5 for k in kept]


def window(r: int, w: int, seed: int, *, kept: Sequence[int] = (6, 6), steps: int = 2,
           views: Sequence[str] = ("survivors",), sample_k: int = 0):
    """(moments, hist, samples) of window w of round r, survivors (and relative) rows."""
    g = gradients(seed, kept, steps)
    rows, hists, samples = [], [], []
    for view in views:
        vals = g if view == "survivors" else [np.abs(x) / 0.7 for x in g]
        st, h = stats(vals)
        rows.append(window_rows(r, w, w, steps * w, steps * w + steps - 1, [0, 1], view, st, steps=steps))
        hists.append(h)
        if sample_k:
            s = np.full((len(vals), sample_k), np.nan, dtype=np.float32)
            for i, v in enumerate(vals):
                flat = v.ravel()[:sample_k]
                s[i, : flat.size] = flat
            samples.append(s)
    return np.concatenate(rows), np.concatenate(hists), (np.concatenate(samples) if sample_k else None)


def write_run(path, rounds: int = 2, windows: int = 2, **kw) -> RunWriter:
    """A small complete run: layer_rounds, windows, epochs and round rows per round."""
    views = kw.get("views", ("survivors",))
    sample_k = kw.get("sample_k", 0)
    w = writer(path, **kw)
    for r in range(rounds):
        kept = [6 - r, 6 - 2 * r]
        w.add_layer_rounds([{"round": r, "layer": i, "numel": 6, "kept": k, "sparsity": 1 - k / 6}
                            for i, k in enumerate(kept)])
        for i in range(windows):
            w.add_window(*window(r, i, 100 * r + i, kept=kept, views=views, sample_k=sample_k))
            w.add_epoch(round=r, epoch=i, train_loss=1.0 / (i + 1), val_acc=0.5, test_acc=0.4, lr=0.1)
            w.commit()
        w.add_round(round=r, sparsity=1 - sum(kept) / 12, target_sparsity=0.2 * r, max_lr=0.1,
                    schedule=json.dumps({"max_lr": 0.1}), val_acc=0.5 + 0.1 * r, test_acc=0.4, train_loss=0.5)
        w.commit()
    return w


# ---------------------------------------------------------------------- schema 1 (legacy)
V1_LAYERS = S.SMALL_TABLES_V1["layers"]


def write_v1(path, rounds: int = 2, windows: int = 2, sample_k: int = 0,
             committed: Optional[list] = None) -> None:
    """A schema-1 file exactly as gradscope wrote it before schema 2 (no checksums)."""
    rpw = 2
    nb = len(EDGES) - 1
    with h5py.File(path, "w", locking=False) as f:
        f.attrs["format"] = S.FORMAT
        f.attrs["schema_version"] = 1
        f.attrs["config"] = json.dumps({"x": 1})
        f.attrs["versions"] = json.dumps({"gradscope": "0.1.0"})
        f.attrs["git_commit"] = "unknown"
        f.attrs["created"] = "2026-01-01T00:00:00+00:00"
        f.attrs["edge_kind"] = "linear"
        f.attrs["sample_k"] = sample_k
        f.attrs["rows_per_window"] = rpw
        f.create_dataset("edges", data=EDGES)
        for name, dt in S.SMALL_TABLES_V1.items():
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(256,))
        f.create_dataset("moments", shape=(0,), maxshape=(None,), dtype=S.MOMENTS_DTYPE_V1, chunks=(rpw,),
                         **S.COMPRESSION)
        f.create_dataset("hist", shape=(0, nb), maxshape=(None, nb), dtype=np.int64, chunks=(rpw, nb),
                         **S.COMPRESSION)
        if sample_k:
            f.create_dataset("samples", shape=(0, sample_k), maxshape=(None, sample_k), dtype=np.float32,
                             chunks=(rpw, sample_k), **S.COMPRESSION)
        f.create_group("derived")
        lay = S.make_rows(V1_LAYERS, [{k: v for k, v in r.items() if k in V1_LAYERS.names} for r in LAYERS])
        f["layers"].resize((2,))
        f["layers"][:] = lay
        mom, hist, samp, lr, ep, rd = [], [], [], [], [], []
        for r in range(rounds):
            kept = [6 - r, 6 - 2 * r]
            lr += [{"round": r, "layer": i, "numel": 6, "kept": k, "sparsity": 1 - k / 6} for i, k in enumerate(kept)]
            for i in range(windows):
                m, h, s = window(r, i, 100 * r + i, kept=kept, sample_k=sample_k)
                v1 = np.zeros(len(m), dtype=S.MOMENTS_DTYPE_V1)
                for n in S.MOMENTS_DTYPE_V1.names:
                    v1[n] = m[n]
                mom.append(v1)
                hist.append(h)
                samp.append(s)
                ep.append({"round": r, "epoch": i, "train_loss": 1.0 / (i + 1)})
            rd.append({"round": r, "sparsity": 1 - sum(kept) / 12, "max_lr": 0.1, "schedule": "{}", "val_acc": 0.5})
        for name, rows in (("layer_rounds", lr), ("epochs", ep), ("rounds", rd)):
            arr = S.make_rows(S.SMALL_TABLES_V1[name], rows)
            f[name].resize((len(arr),))
            f[name][:] = arr
        m = np.concatenate(mom)
        f["moments"].resize((len(m),))
        f["moments"][:] = m
        f["hist"].resize((len(m), nb))
        f["hist"][:] = np.concatenate(hist)
        if sample_k:
            f["samples"].resize((len(m), sample_k))
            f["samples"][:] = np.concatenate(samp)
        c = committed or [2, len(rd), len(lr), len(ep), len(m)]
        f.attrs["committed"] = np.array(c, dtype=np.int64)


def pd_frame(n: int = 2):
    """A small derived table."""
    import pandas as pd

    return pd.DataFrame({"round": np.arange(n), "scale": np.arange(n) * 0.5, "model": ["t"] * n})


def forge_attrs(path, **attrs) -> None:
    """Rewrite root attributes and their checksums (a consistent forgery: validation, not the
    checksum, must catch the impossible value)."""
    with h5py.File(path, "r+") as f:
        for k, v in attrs.items():
            if k == "committed":
                v = np.array(list(v) + [C.counts_crc(v)], dtype=np.int64)
            f.attrs[k] = v
        crcs = json.loads(f.attrs["attr_crc32"])
        f.attrs["attr_crc32"] = json.dumps({k: C.value_crc(f.attrs[k]) for k in crcs})


def flip_bit(path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ (1 << bit)]))


def chunk_offset(path, dataset: str, index: tuple = (0,)) -> tuple[int, int]:
    """(byte offset, size) of the stored chunk of ``dataset`` holding element ``index``."""
    with h5py.File(path, "r", locking=False) as f:
        info = f[dataset].id.get_chunk_info_by_coord(index)
        return int(info.byte_offset), int(info.size)


def field_offset(dtype: np.dtype, field: str, row: int = 0) -> int:
    return row * dtype.itemsize + dtype.fields[field][1]


def run_child(code: str, *args: str, env_extra: Optional[dict] = None, preexec=None, user: Optional[str] = None,
              timeout: float = 120):
    """Run python ``code`` in a subprocess with the worktree on the path; (rc, stdout, stderr)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    cmd = [sys.executable, "-c", code, *args]
    if user:  # another user: a home and caches it can write
        env.update(HOME="/tmp", MPLCONFIGDIR=f"/tmp/gs-mpl-{user}")
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user if user != 'nobody' else 'nogroup'}",
               "--clear-groups", *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=preexec, timeout=timeout,
                       cwd=root)
    return p.returncode, p.stdout, p.stderr


def char_device(folder) -> str:
    """A character device to aim an output at: a node like /dev/full's in ``folder`` when root
    (so a writer that replaced it would harm nothing), else /dev/full (which only root could replace)."""
    import stat

    if os.geteuid() == 0:
        dev = os.path.join(folder, "full")
        if not os.path.lexists(dev):
            os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
        return dev
    return "/dev/full"
