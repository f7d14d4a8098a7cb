"""Reading run files into pandas. Each query opens the file briefly (under a shared lock), so a
reader sees every window committed so far and never holds up the recorder."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, Union

import h5py
import numpy as np
import pandas as pd

from gradscope import GradscopeError
from gradscope.store import schema as S
from gradscope.store.writer import check_format, committed_counts, file_lock, open_h5

Sel = Union[None, str, int, Iterable]


def _decode_df(arr: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(arr)
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = [v.decode() if isinstance(v, bytes) else v for v in df[c]]
    return df


def _as_set(x: Sel) -> Optional[set]:
    if x is None:
        return None
    if isinstance(x, (str, int, np.integer)):
        return {x}
    return set(x)


def pooled_std(count: np.ndarray, s: np.ndarray, sumsq: np.ndarray) -> float:
    """Standard deviation of the union of groups from their counts, sums and sums of squares."""
    n = float(np.sum(count))
    if n <= 0:
        return float("nan")
    mean = float(np.sum(s)) / n
    return float(np.sqrt(max(float(np.sum(sumsq)) / n - mean * mean, 0.0)))


class RunReader:
    """Read-only view of one run file (see docs/hdf5-format.md)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        with self._open() as f:
            self.schema_version = check_format(f, self.path)
            try:
                self.config = json.loads(f.attrs["config"])
                self.versions = json.loads(f.attrs["versions"])
                self.git_commit = str(f.attrs.get("git_commit", "unknown"))
                self.edge_kind = str(f.attrs.get("edge_kind", ""))
                self.sample_k = int(f.attrs.get("sample_k", 0))
                self.edges = f["edges"][:]
                n = committed_counts(f)["layers"]
                self._layers = _decode_df(f["layers"][:n])
            except (OSError, KeyError, ValueError) as e:
                raise GradscopeError(f"{self.path} is damaged: {e}") from None

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _open(self) -> Iterator[h5py.File]:
        with file_lock(self.path, exclusive=False):
            f = open_h5(self.path, "r")
            try:
                yield f
            except (OSError, RuntimeError) as e:
                raise GradscopeError(f"{self.path} is damaged or truncated: {str(e).splitlines()[0]}") from None
            finally:
                f.close()

    def __enter__(self) -> "RunReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing is held open between queries; kept for symmetry and ``with`` blocks."""

    def _table(self, name: str) -> pd.DataFrame:
        with self._open() as f:
            n = committed_counts(f)[name]
            return _decode_df(f[name][:n])

    # ------------------------------------------------------------------ tables
    def layers(self) -> pd.DataFrame:
        """One row per conv/linear layer: layer, index, kind, shape, numel, relu_fed, relu_path, recorded."""
        return self._layers.copy()

    def rounds(self) -> pd.DataFrame:
        return self._table("rounds")

    def epochs(self) -> pd.DataFrame:
        return self._table("epochs")

    def layer_rounds(self) -> pd.DataFrame:
        df = self._table("layer_rounds")
        names = dict(zip(self._layers["index"], self._layers["layer"]))
        df["layer"] = df["layer"].map(names)
        return df

    def _select(self, f: h5py.File, layer: Sel, round: Sel, window: Sel) -> tuple[np.ndarray, pd.DataFrame]:
        n = committed_counts(f)["moments"]
        m = f["moments"][:n]
        keep = np.ones(n, dtype=bool)
        if layer is not None:
            want = _as_set(layer)
            idx = {int(i) for nm, i in zip(self._layers["layer"], self._layers["index"])
                   if nm in want or int(i) in {w for w in want if isinstance(w, (int, np.integer))}}
            unknown = {w for w in want if isinstance(w, str)} - set(self._layers["layer"])
            if unknown:
                raise GradscopeError(f"unknown layer(s) {sorted(unknown)}; see RunReader.layers()")
            keep &= np.isin(m["layer"], list(idx))
        if round is not None:
            keep &= np.isin(m["round"], list(_as_set(round)))
        if window is not None:
            keep &= np.isin(m["window"], list(_as_set(window)))
        rows = np.nonzero(keep)[0]
        df = pd.DataFrame(m[rows])
        lay = self._layers.set_index("index")
        df.insert(df.columns.get_loc("layer") + 1, "relu_fed", df["layer"].map(lay["relu_fed"]).astype(bool))
        df["layer"] = df["layer"].map(lay["layer"])
        return rows, df.reset_index(drop=True)

    def moments(self, layer: Sel = None, round: Sel = None) -> pd.DataFrame:
        """Exact per-window moments of unpruned gradients: one row per (round, window, layer)."""
        with self._open() as f:
            return self._select(f, layer, round, None)[1]

    def histograms(self, layer: Sel = None, round: Sel = None,
                   window: Sel = None) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """(counts [n, nbins], edges [nbins+1], index with the moments key columns)."""
        with self._open() as f:
            rows, df = self._select(f, layer, round, window)
            counts = _rows(f["hist"], rows)
        return counts, self.edges.copy(), df[S.KEY_COLUMNS[:5] + ["layer", "relu_fed"]]

    def samples(self, layer: Sel = None, round: Sel = None,
                window: Sel = None) -> tuple[np.ndarray, pd.DataFrame]:
        """(values [n, K] NaN-padded, index) of the seeded per-window gradient samples."""
        if not self.sample_k:
            raise GradscopeError(f"{self.path} holds no gradient samples (recorded with sample_k=0)")
        with self._open() as f:
            rows, df = self._select(f, layer, round, window)
            vals = _rows(f["samples"], rows)
        return vals, df[S.KEY_COLUMNS[:5] + ["layer", "relu_fed"]]

    def round_summary(self, relu_only: bool = True) -> pd.DataFrame:
        """Per round: sparsity, accuracies, pooled std (and mean |g|) of unpruned gradients over
        all (ReLU-fed) layers and windows, and ``std_ratio`` = std / std of the first round."""
        m = self.moments()
        if relu_only:
            m = m[m["relu_fed"]]
        out = []
        for r, g in m.groupby("round", sort=True):
            n = g["count"].sum()
            out.append({"round": int(r), "count": int(n),
                        "std": pooled_std(g["count"].to_numpy(), g["sum"].to_numpy(), g["sumsq"].to_numpy()),
                        "mean_abs": float(g["sumabs"].sum() / n) if n else float("nan")})
        summ = pd.DataFrame(out, columns=["round", "count", "std", "mean_abs"])
        rounds = self.rounds()[["round", "sparsity", "val_acc", "test_acc"]].drop_duplicates("round")
        summ = summ.merge(rounds, on="round", how="left")
        base = summ["std"].iloc[0] if len(summ) else np.nan
        summ["std_ratio"] = summ["std"] / base
        return summ[["round", "sparsity", "val_acc", "test_acc", "count", "std", "mean_abs", "std_ratio"]]

    # ------------------------------------------------------------------ derived results
    def derived_names(self) -> list[str]:
        with self._open() as f:
            return sorted(k for k, g in f["derived"].items() if "current" in g.attrs)

    def derived(self, name: str) -> pd.DataFrame:
        with self._open() as f:
            grp = f["derived"].get(name)
            if grp is None or "current" not in grp.attrs:
                raise GradscopeError(f"no derived table {name!r} in {self.path}; "
                                     f"have {sorted(f['derived'])}")
            g = grp[f"v{int(grp.attrs['current'])}"]
            cols = json.loads(g.attrs["columns"])
            kinds = json.loads(g.attrs["kinds"])
            data = {}
            for i, (c, k) in enumerate(zip(cols, kinds)):
                v = g[f"c{i}"][:]
                if k == "str":
                    v = [x.decode() if isinstance(x, bytes) else x for x in v]
                elif k == "datetime":
                    v = pd.to_datetime(v)
                data[c] = v
            return pd.DataFrame(data, columns=cols)


def _rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    if len(rows) == 0:
        return np.zeros((0,) + ds.shape[1:], dtype=ds.dtype)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    return ds[lo:hi][rows - lo]


def open_run(path: str) -> RunReader:
    """Open a gradscope run file for reading (also a context manager)."""
    return RunReader(path)
