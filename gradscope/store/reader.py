"""Reading run files into pandas. Each query opens the file briefly (under a shared lock), so a
reader sees every window committed so far and never holds up the recorder. Everything read is
checked (gradscope.store.validate): damage is one GradscopeError, never a different number."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, Union

import h5py
import numpy as np
import pandas as pd

from gradscope import GradscopeError
from gradscope.store import checksum as C
from gradscope.store import schema as S
from gradscope.store import validate as V
from gradscope.store import views as W
from gradscope.store.diskio import file_lock, first_line, open_h5, stored_eof

Sel = Union[None, str, int, Iterable]


def _decode_df(arr: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(arr)
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = [v.decode() if isinstance(v, bytes) else v for v in df[c]]
    return df.drop(columns=["crc"], errors="ignore")


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


def pooled_flags(layers: pd.DataFrame) -> dict:
    """{layer: True if it is pooled}: the recorded layers that feed an elementwise activation
    (ReLU-fed under the default ``layers="relu"``, GELU-fed under ``"gelu"``; under ``"all"``,
    those feeding any). Every "pooled" number pools these. A table without ``activation``
    (schema 1, synthetic readers) pools its ReLU-fed layers, as before."""
    if "activation" not in layers:
        return dict(zip(layers["layer"], layers["relu_fed"].astype(bool)))
    fed = layers["activation"].astype(str).str.len().to_numpy() > 0
    rec = layers["recorded"].astype(bool).to_numpy() if "recorded" in layers else np.ones(len(layers), bool)
    return dict(zip(layers["layer"], fed & rec))


def _ident(path: str) -> tuple:
    st = os.stat(path)
    return st.st_dev, st.st_ino


class RunReader:
    """Read-only view of one run file (see docs/hdf5-format.md). Schema 1 and 2 files."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self._pin: Optional[tuple] = None
        self._meta: Optional[V.FileMeta] = None
        with self._open() as f:
            self._load(f)

    def _load(self, f: h5py.File) -> None:
        meta = V.read_meta(f, self.path)
        self._meta = meta
        self._id = _ident(self.path)
        self.schema_version = meta.version
        self.config = meta.config
        self.versions = meta.versions
        self.git_commit = meta.git_commit
        self.edge_kind = meta.edge_kind
        self.sample_k = meta.sample_k
        self.edges = meta.edges
        self.relative_eps = meta.relative_eps
        self.checksums = meta.checksums  # False for schema 1 files: no checksums to verify
        lay = _decode_df(meta.layers)
        if "activation" not in lay:  # schema 1: only ReLU-feeding was tracked, no selection rule
            lay["activation"] = np.where(lay["relu_fed"].astype(bool), "relu", "")
            lay["rule"] = ""
        self._layers = lay

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _open(self) -> Iterator[h5py.File]:
        with file_lock(self.path, exclusive=False):
            f = open_h5(self.path, "r")
            try:
                if self._meta is not None and _ident(self.path) != self._id:
                    if self._pin is not None:
                        raise GradscopeError(f"{self.path} was replaced while a snapshot of it was open")
                    self._load(f)  # replaced by a new run (mode "w"): read its header again
                yield f
            except V.H5_ERRORS as e:
                raise GradscopeError(f"{self.path} is damaged: {first_line(e)}") from None
            finally:
                try:
                    f.close()
                except Exception:  # noqa: BLE001 - closing a damaged file may fail; nothing to keep
                    pass

    def __enter__(self) -> "RunReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing is held open between queries; kept for symmetry and ``with`` blocks."""

    @property
    def meta(self) -> V.FileMeta:
        assert self._meta is not None
        return self._meta

    def _counts(self, f: h5py.File) -> dict[str, int]:
        if self._pin is not None:
            return self._pin[0]
        return V.committed(f, self.meta)

    @contextmanager
    def snapshot(self) -> Iterator["RunReader"]:
        """Every query inside reads the same committed rows (one consistent state of a file that
        a run is still writing); committed rows are never rewritten, so this needs no lock."""
        if self._pin is not None:
            yield self
            return
        with self._open() as f:
            counts = V.committed(f, self.meta)
        self._pin = (counts, self._id)
        try:
            yield self
        finally:
            self._pin = None

    def _table(self, name: str) -> pd.DataFrame:
        count = {"pop_meta": "population"}.get(name, name)
        with self._open() as f:
            arr = V.read_table(f, self.meta, name, self._counts(f)[count])
        return _decode_df(arr)

    # ------------------------------------------------------------------ tables
    def layers(self) -> pd.DataFrame:
        """One row per conv/linear layer: layer, index, kind, shape, numel, relu_fed, relu_path,
        recorded, activation (the elementwise activation it feeds, "" none), rule (what chose it)."""
        return self._layers.copy()

    def pooled_layers(self) -> list[str]:
        """The layers every pooled number pools (``pooled_flags``): recorded and activation-fed."""
        return [n for n, f in pooled_flags(self._layers).items() if f]

    def rounds(self) -> pd.DataFrame:
        return self._table("rounds")

    def epochs(self) -> pd.DataFrame:
        return self._table("epochs")

    def layer_rounds(self) -> pd.DataFrame:
        df = self._table("layer_rounds")
        names = dict(zip(self._layers["index"], self._layers["layer"]))
        df["layer"] = df["layer"].map(names)
        return df

    def views(self) -> list[str]:
        """Views this file can answer: the stored ones plus "all" (derived from survivors)."""
        have = set(self.meta.views) | {"all"}
        return [v for v in S.ALL_VIEWS if v in have]

    def _view(self, view: str) -> None:
        if view not in self.views():
            raise GradscopeError(f"view {view!r} is not in {self.path}; it has {', '.join(self.views())}"
                                 + ("" if view in S.ALL_VIEWS else f" (views are {', '.join(S.ALL_VIEWS)})"))

    # ------------------------------------------------------------------ per-window rows
    def _moments_rows(self, f: h5py.File) -> np.ndarray:
        c = self._counts(f)
        m = V.read_moments(f, self.meta, slice(0, c["moments"]))
        if len(m):
            known = {int(r) for t in ("rounds", "layer_rounds") for r in V.read_table(f, self.meta, t, c[t])["round"]}
            V.check_window_rounds(self.meta, m, known)
        return m

    def _select(self, f: h5py.File, layer: Sel, round: Sel, window: Sel, view: str):
        self._view(view)
        meta = self.meta
        m = self._moments_rows(f)
        v2 = meta.version >= 2
        code = meta.views["relative"] if view == "relative" else 0
        keep = (m["view"] == code) if v2 else np.ones(len(m), dtype=bool)
        if layer is not None:
            want = _as_set(layer)
            names = set(self._layers["layer"])
            unknown = {w for w in want if isinstance(w, str)} - names
            if unknown:
                raise GradscopeError(f"unknown layer(s) {sorted(unknown)}; see RunReader.layers()")
            idx = {int(i) for nm, i in zip(self._layers["layer"], self._layers["index"])
                   if nm in want or int(i) in {w for w in want if isinstance(w, (int, np.integer))}}
            keep &= np.isin(m["layer"], list(idx))
        if round is not None:
            keep &= np.isin(m["round"], list(_as_set(round)))
        if window is not None:
            keep &= np.isin(m["window"], list(_as_set(window)))
        rows = np.nonzero(keep)[0]
        stored = m[rows]
        return rows, stored

    def _frame(self, sel: np.ndarray, view: str) -> pd.DataFrame:
        df = pd.DataFrame(sel)
        if "steps" not in df:
            df.insert(df.columns.get_loc("step_end") + 1, "steps", df["step_end"] - df["step_start"] + 1)
        df["view"] = view
        df = df[S.KEY_COLUMNS + S.MOMENT_COLUMNS]
        lay = self._layers.set_index("index")
        df.insert(df.columns.get_loc("layer") + 1, "relu_fed", df["layer"].map(lay["relu_fed"]).astype(bool))
        df["layer"] = df["layer"].map(lay["layer"])
        return df.reset_index(drop=True)

    def _all_view(self, stored: np.ndarray, hist: Optional[np.ndarray] = None):
        steps = stored["steps"] if self.meta.version >= 2 else stored["step_end"] - stored["step_start"] + 1
        zeros = W.pruned_zeros(stored, self.meta.numel[stored["layer"]], steps)
        return W.derive_all(stored, zeros, self.edges, hist)

    def moments(self, layer: Sel = None, round: Sel = None, view: str = "survivors",
                window: Sel = None) -> pd.DataFrame:
        """Exact per-window moments of one view: one row per (round, window, layer).

        view: "survivors" (unpruned weights' gradients), "all" (whole layer, pruned weights as
        exact zeros; derived) or "relative" (|g| / (|w| + eps) over survivors, when recorded).
        """
        with self._open() as f:
            _, stored = self._select(f, layer, round, window, view)
        if view == "all":
            stored, _ = self._all_view(stored)
        return self._frame(stored, view)

    def histograms(self, layer: Sel = None, round: Sel = None, window: Sel = None,
                   view: str = "survivors") -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """(counts [n, nbins], edges [nbins+1], index with the moments key columns)."""
        with self._open() as f:
            rows, stored = self._select(f, layer, round, window, view)
            ds = f["hist"]
            V._check_dtype(ds, np.dtype("<i8"), "hist", self.path)
            counts = _rows(ds, rows, self.path, "histograms")
        V.check_hist(self.meta, counts, stored)
        if view == "all":
            stored, counts = self._all_view(stored, counts)
        df = self._frame(stored, view)
        return counts, self.edges.copy(), df[S.KEY_COLUMNS + ["relu_fed"]]

    def samples(self, layer: Sel = None, round: Sel = None,
                window: Sel = None) -> tuple[np.ndarray, pd.DataFrame]:
        """(values [n, K] NaN-padded, index) of the seeded per-window samples of survivors."""
        if not self.sample_k:
            raise GradscopeError(f"{self.path} holds no gradient samples (recorded with sample_k=0)")
        with self._open() as f:
            rows, stored = self._select(f, layer, round, window, "survivors")
            ds = f["samples"]
            V._check_dtype(ds, np.dtype("<f4"), "samples", self.path)
            vals = _rows(ds, rows, self.path, "gradient samples")
        V.check_samples(self.meta, vals, stored)
        df = self._frame(stored, "survivors")
        return vals, df[S.KEY_COLUMNS + ["relu_fed"]]

    def round_summary(self, relu_only: bool = True, view: str = "survivors", window: str = "all") -> pd.DataFrame:
        """Per round: sparsity, accuracies, pooled std (and mean |g|) of one view's gradients over
        the pooled layers (``pooled_layers()``: ReLU-fed, or GELU-fed, ... as the recorder's rule
        chose; ``relu_only=False``: every recorded layer) and the round's windows
        (``window="all"``) or its last window (``"last"``), and ``std_ratio`` = std / std of
        the first round."""
        if window not in ("all", "last"):
            raise GradscopeError(f"window must be 'all' or 'last', got {window!r}")
        with self.snapshot():
            m = self.moments(view=view)
            rounds = self.rounds()
        if relu_only:
            m = m[m["layer"].isin(self.pooled_layers())]
        if window == "last" and len(m):
            last = m.groupby("round")["window"].transform("max")
            m = m[m["window"] == last]
        out = []
        for r, g in m.groupby("round", sort=True):
            n = g["count"].sum()
            out.append({"round": int(r), "count": int(n),
                        "std": pooled_std(g["count"].to_numpy(), g["sum"].to_numpy(), g["sumsq"].to_numpy()),
                        "mean_abs": float(g["sumabs"].sum() / n) if n else float("nan")})
        summ = pd.DataFrame(out, columns=["round", "count", "std", "mean_abs"])
        rounds = rounds[["round", "sparsity", "val_acc", "test_acc"]].drop_duplicates("round")
        summ = summ.merge(rounds, on="round", how="left")
        base = summ["std"].iloc[0] if len(summ) else np.nan
        summ["std_ratio"] = summ["std"] / base
        summ["view"] = view
        summ["windows"] = window
        return summ[["round", "sparsity", "val_acc", "test_acc", "count", "std", "mean_abs", "std_ratio",
                     "view", "windows"]]

    # ------------------------------------------------------------------ fixed population
    def population_rounds(self) -> list[int]:
        """Rounds with a fixed-population record (empty if the run did not record it)."""
        if not self.meta.population:
            return []
        return [int(r) for r in self._table("pop_meta")["round"]]

    def population(self, reference_round: Optional[int] = None) -> pd.DataFrame:
        """RMS gradient of the weights that survive in a reference round K, measured in every
        round j <= K (per layer and pooled): columns reference_round, round, layer, count
        (weights), steps, rms. ``reference_round=None``: every recorded round as reference."""
        meta = self.meta
        if not meta.population:
            raise GradscopeError(f"{self.path} holds no fixed-population record (recorded without population)")
        with self.snapshot(), self._open() as f:
            n = self._counts(f)["population"]
            pm = V.read_table(f, meta, "pop_meta", n)
            rounds = pm["round"].astype(np.int64)
            if reference_round is None:
                refs = sorted(int(r) for r in rounds)
            else:
                if int(reference_round) not in set(rounds.tolist()):
                    raise GradscopeError(f"round {reference_round} has no population record; recorded rounds: "
                                         f"{sorted(rounds.tolist())}")
                refs = [int(reference_round)]
            N = int(meta.numel[meta.recorded].sum())
            ds_s, ds_m = f["pop_sumsq"], f["pop_mask"]
            if ds_s.shape[1:] != (N,) or ds_m.shape[1:] != ((N + 7) // 8,) or (pm["n"] != N).any():
                raise V.damaged(self.path, "population datasets do not match the recorded layers")

            def read_sumsq(i: int) -> np.ndarray:
                s = V.read(ds_s, i, self.path, "population sums")
                if C.array_crc(s.astype("<f4")) != int(pm["crc_sumsq"][i]) or (s < 0).any():
                    raise V.damaged(self.path, f"population sums of round {int(rounds[i])} fail their checksum")
                return s

            def read_mask(i: int) -> np.ndarray:
                b = V.read(ds_m, i, self.path, "population masks")
                if C.array_crc(b) != int(pm["crc_mask"][i]):
                    raise V.damaged(self.path, f"population mask of round {int(rounds[i])} fails its checksum")
                return np.unpackbits(b, count=N).astype(bool)

            offsets = np.concatenate([[0], np.cumsum(meta.numel[meta.recorded])[:-1]]).astype(np.int64)
            names = [str(self._layers.set_index("index")["layer"][i]) for i in meta.recorded]
            steps = _population_steps(self._moments_rows(f), meta, rounds, pm["steps"])
            return W.population_table(rounds, steps, read_sumsq, read_mask, N, offsets, names, refs)

    # ------------------------------------------------------------------ derived results
    def derived_names(self) -> list[str]:
        with self._open() as f:
            g = f["derived"]
            return sorted(k for k in g if "current" in g[k].attrs)

    def derived(self, name: str) -> pd.DataFrame:
        with self._open() as f:
            grp = f["derived"].get(name)
            if grp is None or "current" not in grp.attrs:
                raise GradscopeError(f"no derived table {name!r} in {self.path}; have {sorted(f['derived'])}")
            return _read_derived(self.path, name, grp)

    # ------------------------------------------------------------------ whole-file check
    def verify(self, block_windows: int = 256) -> dict:
        """Read and check every committed row of every dataset (and each derived table).
        Returns counts of what was checked; damage raises one GradscopeError."""
        meta = self.meta
        with self.snapshot(), self._open() as f:
            c = self._counts(f)
            for name in ("rounds", "layer_rounds", "epochs"):
                V.read_table(f, meta, name, c[name])
            m = self._moments_rows(f)
            rpw = meta.rows_per_window
            step = rpw * block_windows
            for lo in range(0, len(m), step):
                hi = min(lo + step, len(m))
                h = V.read(f["hist"], slice(lo, hi), self.path, "histograms")
                V.check_hist(meta, h, m[lo:hi])
                if meta.sample_k:
                    s = V.read(f["samples"], slice(lo, hi), self.path, "gradient samples")
                    V.check_samples(meta, s, m[lo:hi])
            derived = sorted(k for k in f["derived"] if "current" in f["derived"][k].attrs)
            for k in derived:
                _read_derived(self.path, k, f["derived"][k])
        warn = value_warnings(m, meta)
        if meta.population and c["population"]:
            self.population(reference_round=max(self.population_rounds()))
            with self._open() as f:
                pm = V.read_table(f, meta, "pop_meta", c["population"])
                for i, r in enumerate(pm["round"]):
                    n_inf = int(np.isinf(V.read(f["pop_sumsq"], i, self.path, "population sums")).sum())
                    if n_inf:
                        warn.append(f"the fixed-population sums of g^2 of round {int(r)} overflowed float32 (+inf) "
                                    f"for {n_inf} weights (|g| above ~1.8e19): their RMS is infinite")
        eof = stored_eof(self.path)
        return {"schema_version": meta.version, "checksums": meta.checksums, "windows": len(m) // rpw,
                **{k: v for k, v in c.items()}, "derived": len(derived), "warnings": warn,
                "truncated": eof is not None and eof > os.path.getsize(self.path)}


def _read_derived(path: str, name: str, grp: h5py.Group) -> pd.DataFrame:
    what = f"derived table {name!r}"
    cur = grp.attrs["current"]
    if not isinstance(cur, (int, np.integer)) or f"v{int(cur)}" not in grp:
        raise V.damaged(path, f"{what} points to a version that does not exist")
    g = grp[f"v{int(cur)}"]
    try:
        cols = json.loads(g.attrs["columns"])
        kinds = json.loads(g.attrs["kinds"])
        nrows = int(g.attrs["nrows"])
    except (KeyError, ValueError, TypeError):
        raise V.damaged(path, f"{what} has a damaged description") from None
    if not isinstance(cols, list) or not isinstance(kinds, list) or len(cols) != len(kinds) or \
            any(k not in ("num", "bool", "str", "float", "datetime") for k in kinds):
        raise V.damaged(path, f"{what} has a damaged description")
    col_crcs = None
    if "crc32" in g.attrs:  # written by schema-2 gradscope
        try:
            col_crcs = json.loads(g.attrs["col_crc32"])
        except (KeyError, ValueError, TypeError):
            raise V.damaged(path, f"{what} has a damaged description") from None
        if not isinstance(col_crcs, list) or len(col_crcs) != len(cols) or \
                C.derived_crc(cols, kinds, nrows, col_crcs) != int(g.attrs["crc32"]):
            raise V.damaged(path, f"{what} fails its checksum")
    data = {}
    for i, (c, k) in enumerate(zip(cols, kinds)):
        if f"c{i}" not in g:
            raise V.damaged(path, f"column {c!r} of {what} is missing")
        v = V.read(g[f"c{i}"], slice(None), path, f"column {c!r} of {what}")
        if v.ndim != 1 or len(v) != nrows:
            raise V.damaged(path, f"column {c!r} of {what} has {len(v)} rows, expected {nrows}")
        if col_crcs is not None and C.column_crc(v) != int(col_crcs[i]):
            raise V.damaged(path, f"column {c!r} of {what} fails its checksum")
        if k == "str":
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        elif k == "datetime":
            v = pd.to_datetime(v)
        data[c] = v
    return pd.DataFrame(data, columns=cols)


HUGE = 1e18  # |g| above this: g^2 overflows float32 near 1.8e19, and sums lose all meaning well before


def value_warnings(m: np.ndarray, meta: V.FileMeta) -> list[str]:
    """Recorded values that are legal but make the statistics meaningless: non-finite gradients
    (left out of every statistic) and huge ones."""
    out = []
    if not len(m):
        return out
    nf = m["nonfinite"].astype(np.int64)
    if nf.sum():
        i = int(np.argmax(nf > 0))
        out.append(f"{int(nf.sum())} non-finite gradient values (NaN/inf, left out of every statistic) in "
                   f"{int((nf > 0).sum())} window rows, first in round {int(m['round'][i])} window {int(m['window'][i])}")
    with np.errstate(invalid="ignore"):
        big = np.fmax(np.abs(m["min"]), np.abs(m["max"]))
    huge = np.nan_to_num(big) > HUGE
    if huge.any():
        i = int(np.argmax(huge))
        out.append(f"gradients with |g| up to {float(np.nanmax(big)):.3g} (above {HUGE:.0e}) in {int(huge.sum())} "
                   f"window rows, first in round {int(m['round'][i])} window {int(m['window'][i])}: the run diverged?")
    return out


def _population_steps(m: np.ndarray, meta: V.FileMeta, rounds: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """[population rows, recorded layers]: the steps each layer's sums of g^2 hold. pop_meta
    counts the round's recorded steps; a layer without .grad in some of them (a branch not
    run) has fewer, which its survivors windows count (their per-layer ``steps`` add up over
    the round). A round without windows (a producer that writes none) keeps pop_meta's count."""
    out = np.repeat(np.asarray(steps, dtype=np.int64)[:, None], len(meta.recorded), axis=1)
    if meta.version < 2 or not len(m):
        return out
    surv = m[m["view"] == 0]
    col = {int(i): k for k, i in enumerate(meta.recorded)}
    for r_i, r in enumerate(np.asarray(rounds).tolist()):
        rows = surv[surv["round"] == r]
        if not len(rows):
            continue
        per = np.zeros(len(meta.recorded), dtype=np.int64)
        np.add.at(per, [col[int(x)] for x in rows["layer"]], rows["steps"].astype(np.int64))
        if 0 < per.max() <= out[r_i, 0]:
            out[r_i] = per
    return out


def _rows(ds: h5py.Dataset, rows: np.ndarray, path: str, what: str) -> np.ndarray:
    if len(rows) == 0:
        return np.zeros((0,) + ds.shape[1:], dtype=ds.dtype)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    return V.read(ds, slice(lo, hi), path, what)[rows - lo]


def open_run(path: str) -> RunReader:
    """Open a gradscope run file for reading (also a context manager)."""
    return RunReader(path)
