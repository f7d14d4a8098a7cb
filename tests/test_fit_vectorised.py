"""The vectorised binned fits give the binned maximum-likelihood estimates (checked with
scipy.stats, independently of gradscope's own cdfs and derivatives), and the bootstrap that
reuses the optimiser's per-cell derivatives equals one that recomputes them."""
import numpy as np
from scipy import stats

import gradscope.fit.binned as B
from gradscope.fit import fit_histograms
from gradscope.fit.families import get_family
from gradscope.fit.synthetic import log_edges

EDGES = log_edges(0.1, n_half=101, min_abs=1e-6)  # 201 log-spaced bins, as the recorder writes
EXT = np.concatenate([[-np.inf], EDGES, [np.inf]])
SCIPY = {"normal": lambda sh: stats.norm(), "laplace": lambda sh: stats.laplace(),
         "t": lambda sh: stats.t(sh), "gennorm": lambda sh: stats.gennorm(sh)}


def _counts(n_rows, seed):
    """Histograms (under, bins, over) of 2e5 draws each: t(4) and gennorm(1.5), varied scales."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_rows):
        s = 0.004 * 1.004**i  # 0.004 .. 0.013: well inside the edges
        dist = stats.t(4, scale=s) if i % 2 else stats.gennorm(1.5, scale=s)
        rows.append(rng.multinomial(200_000, np.diff(dist.cdf(EXT))))
    return np.array(rows)


def _loglik(model, c, logshape, logscale):
    """Binned log-likelihood by scipy.stats (tail-safe: sf differences right of 0), rows of c."""
    sh = None if logshape is None else np.exp(logshape)[:, None]
    dist = SCIPY[model](sh)
    z = EXT[None, :] / np.exp(logscale)[:, None]
    cdf, sf = dist.cdf(z), dist.sf(z)
    p = np.where(z[:, :-1] >= 0, sf[:, :-1] - sf[:, 1:], cdf[:, 1:] - cdf[:, :-1])
    return (c * np.log(np.maximum(p, 1e-300))).sum(1)


def _newton_step_scipy(model, c, est):
    """-H^-1 g of the scipy log-likelihood at est [m, d]: the distance to its maximum. The
    shape derivative is the central difference of step B._H that defines gradscope's estimate."""
    m, d = est.shape
    hs = np.array([B._H, 1e-4][-d:])

    def ll(x):
        return _loglik(model, c, x[:, 0] if d == 2 else None, x[:, -1])

    e = np.eye(d)
    g = np.stack([(ll(est + hs[i] * e[i]) - ll(est - hs[i] * e[i])) / (2 * hs[i]) for i in range(d)], 1)
    H = np.empty((m, d, d))
    f0 = ll(est)
    for i in range(d):
        for j in range(d):
            hi, hj = 1e-3 * e[i], 1e-3 * e[j]
            if i == j:
                H[:, i, i] = (ll(est + hi) - 2 * f0 + ll(est - hi)) / 1e-6
            else:
                H[:, i, j] = (ll(est + hi + hj) - ll(est + hi - hj) - ll(est - hi + hj) + ll(est - hi - hj)) / 4e-6
    return -np.linalg.solve(H, g[..., None])[..., 0]


def test_estimates_are_the_binned_mle_to_1e6_for_every_family():
    c = _counts(300, seed=0)
    df = fit_histograms(c[:, 1:-1], EDGES, c[:, 0], c[:, -1], bootstrap=0)
    assert (df["status"] == "ok").all()
    for model in ("normal", "laplace", "t", "gennorm"):
        fam = get_family(model)
        cols = ([np.log(df[f"{model}_shape"].to_numpy())] if fam.n_shape else []) + \
            [np.log(df[f"{model}_scale"].to_numpy())]
        step = _newton_step_scipy(model, c, np.stack(cols, 1))
        # one Newton step from the estimate moves it by < 1e-6 in log units: it is the MLE to 1e-6 relative
        assert np.abs(step).max() < 1e-6, (model, np.abs(step).max(0))
        # and a worse point really is worse (the check above is not vacuous)
        assert (_loglik(model, c, cols[0] if fam.n_shape else None, cols[-1] + 1e-3)
                < _loglik(model, c, cols[0] if fam.n_shape else None, cols[-1])).all()


def test_bootstrap_from_the_optimisers_cells_equals_a_fresh_evaluation(monkeypatch):
    """The bootstrap reuses the per-cell derivatives kept at each row's last accepted point;
    recomputing them at the estimate gives the same replicates (both resampling modes)."""
    c = _counts(40, seed=1).astype(float)
    fam = get_family("t")
    q = {p: np.quantile(np.abs(np.random.default_rng(0).standard_t(4, 999)), p) * 0.004 for p in (0.05, 0.25, 0.75, 0.95)}
    q = {p: np.full(len(c), v) for p, v in q.items()}
    for resample in ("multinomial", "normal"):
        kept = B.fit_family(fam, c, EXT, np.zeros(len(c)), q, np.full(len(c), 0.005), 60,
                            np.random.default_rng(3), resample)
        with monkeypatch.context() as mp:
            mp.setattr(B._Problem, "cell_derivs", lambda self, rows, x: self._cells(rows, x)[..., 1:])  # never the kept cells
            fresh = B.fit_family(fam, c, EXT, np.zeros(len(c)), q, np.full(len(c), 0.005), 60,
                                 np.random.default_rng(3), resample)
        for k in ("scale", "shape", "scale_lo", "scale_hi"):
            np.testing.assert_allclose(kept[k], fresh[k], rtol=1e-12)
        assert kept["converged"].all() and np.isfinite(kept["scale_lo"]).all()


def test_blocks_of_rows_give_the_same_statistics_as_one_block(monkeypatch):
    """Rows are evaluated in cache-sized blocks: the block size must not change any number."""
    c = _counts(30, seed=2)
    a = fit_histograms(c[:, 1:-1], EDGES, c[:, 0], c[:, -1], bootstrap=20, models=("gennorm", "normal"))
    monkeypatch.setattr(B, "_CHUNK_ELEMS", 3 * c.shape[1])  # blocks of 3 rows
    b = fit_histograms(c[:, 1:-1], EDGES, c[:, 0], c[:, -1], bootstrap=20, models=("gennorm", "normal"))
    num = a.select_dtypes("number").columns
    np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), rtol=1e-10)
