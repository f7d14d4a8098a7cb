"""Vectorised maximum-likelihood fits of symmetric families to many histograms at once.

Binned likelihood: cells are (-inf, e0) (underflow), the bins, and (e_last, inf) (overflow);
log L = sum_j c_j log P_j(loc, scale, shape). Exact likelihood on raw samples uses log f.
Location is fixed (the exact mean from the moments), scale (and shape) are found by a
trust-region Newton iteration in (log shape, log scale) run on all histograms together,
with analytic derivatives in log scale. Nothing calls scipy.optimize per histogram. Rows are evaluated in
cache-sized blocks; a row stops when its next step would be below tolerance (that step is not
evaluated); the bootstrap reuses the per-cell derivatives of each row's last accepted point.

Two-parameter families (t, gennorm): a bin's P_j is the integral of the density over the
bin, by 4-node Gauss-Legendre where the family's ``quad_ok`` vouches for it (log f bends by at
most 1 across the half-bin, no singularity within 10 half-widths: P to 3e-7 at worst, mostly
1e-10); the shape derivatives are central differences of log P at shape e^+-H, as the cdf
path takes them, and the scale derivatives come from f at the edges. The other cells
(under/overflow, gennorm's bin at 0, steep tails) use the family's cdf with the same central
differences, as every cell did before. ``_QUADRATURE = False`` forces that cdf path
everywhere (the reference the tests and bench/bench_fit.py compare to: every estimate, CI
and log-likelihood agrees to 1e-6, measured ~1e-9). A shape on its bound moves the scale
alone (optimiser and bootstrap). Blocks of rows run on a thread pool (GRADSCOPE_FIT_THREADS).
"""
from __future__ import annotations

import os

import numpy as np

from gradscope.fit.families import Family, initial_shape

_H = 1e-3  # log-shape step of the finite differences (cells on the cdf path)
_TINY = 1e-300
_QUADRATURE = True  # two-parameter families: Gauss-Legendre bins where accurate (False: cdf everywhere)
# the shape gradient of a quadrature bin: "central" = (log P(shape e^H) - log P(shape e^-H)) / 2H,
# the definition of the cdf path (estimates as before to ~1e-8); "analytic" = int f D / P (the
# exact binned MLE; moves shapes by up to ~1e-6 relative, the central difference's O(H^2) bias)
_SHAPE_GRADIENT = "central"
_GL_K = 4  # nodes per bin
_GL_T, _GL_W = np.polynomial.legendre.leggauss(_GL_K)


def _safe(x):
    return np.where(np.isfinite(x), x, 0.0)


def binned_terms(fam: Family, ext_edges, loc, logscale, shape, full: bool = True):
    """Per cell log P, dlogP/dlog(scale), d2logP/dlog(scale)2; arrays [m, cells].

    ``ext_edges`` [E] include -inf and +inf (or [m, E]: edges per row, e.g. one cell's two);
    loc, logscale, shape are [m] (shape may be None).
    ``full=False`` skips the second derivative (None): the shifted-shape evaluations of the
    finite differences need only log P and its first derivative.
    """
    s = np.exp(logscale)[:, None]
    sh = None if shape is None else shape[:, None]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        z = (np.atleast_2d(ext_edges) - loc[:, None]) / s  # shared edges [E] or per-row [m, E]
        fin = np.isfinite(z)
        zf = np.where(fin, z, 0.0)
        G = np.where(fin, fam.lower_tail(np.abs(zf), sh), 0.0)
        f = np.where(fin, np.exp(fam.logpdf(zf, sh)), 0.0)
        q = zf * f
        za, zb = z[:, :-1], z[:, 1:]
        Ga, Gb = G[:, :-1], G[:, 1:]
        p = np.where(za >= 0, Ga - Gb, np.where(zb <= 0, Gb - Ga, 1.0 - Ga - Gb))
        p = np.maximum(p, _TINY)
        d1 = (q[:, :-1] - q[:, 1:]) / p
        if not full:
            return np.log(p), d1, None
        r = q * (1.0 + _safe(fam.zg(zf, sh)))
        d2 = (r[:, 1:] - r[:, :-1]) / p - d1 * d1
    return np.log(p), d1, d2


def exact_terms(fam: Family, x, loc, logscale, shape, full: bool = True):
    """Per sample log density and its log-scale derivatives; NaN samples give zeros."""
    sh = None if shape is None else shape[:, None]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        z = (x - loc[:, None]) * np.exp(-logscale)[:, None]
        fin = np.isfinite(z)
        zf = np.where(fin, z, 0.0)
        zg = fam.zg(zf, sh)
        lp = fam.logpdf(zf, sh) - logscale[:, None]
        d1 = -zg - 1.0
        d2 = zg + fam.zzgp(zf, sh)
    return np.where(fin, lp, 0.0), np.where(fin, d1, 0.0), np.where(fin, d2, 0.0)


_STORE_STEP = 1e-2  # newton_fit keeps the cells of points reached by a step shorter than this
_TAKE = 1e-6  # a whole Newton step shorter than this (log units) ends a row, taken unevaluated
_CHUNK_ELEMS = 1 << 16  # cells per block of rows: a block's temporaries stay in the CPU cache


class _Problem:
    """Data of one fit: weights [m, W] and a terms function over the same columns.

    Rows are evaluated in blocks of about ``_CHUNK_ELEMS`` cells (the elementwise work is
    memory-bound: whole-array temporaries of 10^4 histograms would stream through RAM).
    With ``keep_cells`` the optimiser keeps each row's per-cell derivatives at its last
    accepted point (``cells``, ``cells_x``), so the bootstrap at the MLE needs no new
    evaluation of the family's cdf."""

    def __init__(self, fam, weights, loc, terms, keep_cells: bool = False, quad=None):
        self.fam, self.w, self.loc, self._terms = fam, weights, loc, terms
        self.keep_cells = keep_cells
        self.quad = quad  # a _BinQuad (binned fits of two-parameter families) or None
        self.cells = self.cells_x = None  # [1 + K, m, W] (log P, K = 2 or 5 derivatives: _cells) and [m, d]

    def cell_terms(self, rows, logshape, logscale, full=True):
        shape = None if logshape is None else np.exp(logshape)
        return self._terms(self.fam, rows, self.loc[rows], logscale, shape, full)

    def stats(self, rows, x, store=None, put=None):
        """LL, gradient [m, d], Hessian [m, d, d] at params x [m, d] (d = 1 or 2); with
        ``store`` [1 + K, M, W] (K = 2 or 5) each row's per-cell log P and derivatives are
        written to ``store[:, rows]`` (preallocated: a fresh array of this size would page-fault
        on every call); ``put`` [m] bool limits that to some rows. Rows whose terms overflow (a
        diverged run's extreme cells) come out non-finite, silently: the optimiser rejects such
        steps and reports no-convergence."""
        m, d = x.shape
        quad = d == 2 and self.quad is not None and _QUADRATURE
        step = max(1, _CHUNK_ELEMS // max(1, self.w.shape[1] * (_GL_K if quad else 1)))  # node arrays
        sums = np.empty((m, 3 if d == 1 else 6))  # weighted sums over the cells

        def block(s):
            """One block of rows; returns its cells left to the cdf path (quad) or None."""
            sl = slice(s, s + step)
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # errstate is per thread
                fb = None
                if quad:
                    c, ri, ci = self.quad.cells(self.fam, self.loc[rows[sl]], x[sl], defer=True)
                    fb = (ri + s, ci)
                else:
                    c = self._cells(rows[sl], x[sl])
                sums[sl] = np.matmul(c.transpose(1, 0, 2), self.w[rows[sl]][:, :, None])[..., 0]
                if store is not None:
                    if put is None or put[sl].all():
                        _put_rows(store, rows[sl], c)
                    elif put[sl].any():
                        store[:, rows[sl][put[sl]]] = c[:, put[sl]]
            return fb

        # blocks write disjoint rows, so threads (numpy releases the GIL) give the same numbers
        fbs = _map_blocks(block, range(0, m, step))
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            if quad and fbs:
                pos, ci = np.concatenate([f[0] for f in fbs]), np.concatenate([f[1] for f in fbs])
                if pos.size:
                    c = self.quad.fallback(self.fam, self.loc[rows[pos]], x[pos], ci)
                    np.add.at(sums, pos, self.w[rows[pos], ci][:, None] * c)
                    if store is not None:
                        keep = slice(None) if put is None else put[pos]
                        store[:, rows[pos][keep], ci[keep]] = c[keep].T
        LL, g, H = sums[:, 0], np.empty((m, d)), np.empty((m, d, d))
        if d == 1:
            g[:, 0], H[:, 0, 0] = sums[:, 1], sums[:, 2]
        else:
            g[:] = sums[:, 1:3]
            H[:, 0, 0], H[:, 1, 1] = sums[:, 3], sums[:, 5]
            H[:, 0, 1] = H[:, 1, 0] = sums[:, 4]
        return LL, g, H

    def _cells(self, rows, x):
        """Per cell, as planes [1 + K, r, W]: log P, then the gradient and the Hessian's upper
        triangle in (log shape, log scale): [d1, d2] (d = 1) or [g_shape, g_scale, h_ss, h_st, h_tt]."""
        if x.shape[1] == 1:
            lp, d1, d2 = self.cell_terms(rows, None, x[:, 0])
            return np.stack([lp, d1, d2])
        if self.quad is not None and _QUADRATURE:
            return self.quad.cells(self.fam, self.loc[rows], x)
        phi, th = x[:, 0], x[:, 1]
        lp, d1, d2 = self.cell_terms(rows, phi, th)
        lpp, d1p, _ = self.cell_terms(rows, phi + _H, th, full=False)
        lpm, d1m, _ = self.cell_terms(rows, phi - _H, th, full=False)
        return np.stack([lp, (lpp - lpm) / (2 * _H), d1, (lpp - 2 * lp + lpm) / _H**2,
                         (d1p - d1m) / (2 * _H), d2])

    def cell_derivs(self, rows, x):
        """Per-cell derivatives [K, m, W] of log P at x (the bootstrap's): the optimiser's kept
        cells where x is its final point, else a fresh evaluation."""
        if self.cells is not None and np.array_equal(self.cells_x[rows], x):
            return self.cells[1:, _row_index(rows)]
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return self._cells(rows, x)[1:]


_POOL = None


def _drop_pool():
    global _POOL
    _POOL = None  # a forked child has none of the parent's threads: it starts a pool of its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_pool)


def _threads() -> int:
    """Worker threads for the row blocks: GRADSCOPE_FIT_THREADS, else the CPUs this process may use (at most 8)."""
    env = os.environ.get("GRADSCOPE_FIT_THREADS", "")
    if env.strip().isdigit() and int(env) > 0:
        return int(env)
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _pool():
    """The shared thread pool, or None with one thread."""
    global _POOL
    n = _threads()
    if n == 1:
        return None
    if _POOL is None or _POOL._max_workers != n:
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        _POOL = ThreadPoolExecutor(n, thread_name_prefix="gradscope-fit")
    return _POOL


def _map_blocks(fn, starts):
    """[fn(s) for s in starts], on the thread pool when there are several blocks and CPUs."""
    starts = list(starts)
    pool = _pool() if len(starts) > 1 else None
    if pool is None:
        return [fn(s) for s in starts]
    return list(pool.map(fn, starts))


def _row_index(rows):
    """rows as a slice where they are consecutive (most calls: a view, no index gather), else rows."""
    if rows.size and rows[-1] - rows[0] == rows.size - 1:
        return slice(rows[0], rows[-1] + 1)
    return rows


def _put_rows(store, rows, c):
    """store[:, rows] = c (by a slice where rows are consecutive)."""
    store[:, _row_index(rows)] = c


def _fd_cells(fam, pair, loc, x):
    """The cdf path for single cells: pair [n, 2] edges, loc [n], x [n, 2] -> [n, 6] as _cells
    (the three shapes of the central differences in one evaluation)."""
    n = len(loc)
    phi = np.concatenate([x[:, 0], x[:, 0] + _H, x[:, 0] - _H])
    lp3, d13, d23 = binned_terms(fam, np.concatenate([pair, pair, pair]), np.tile(loc, 3),
                                 np.tile(x[:, 1], 3), np.exp(phi))
    lp, lpp, lpm = lp3[:n, 0], lp3[n:2 * n, 0], lp3[2 * n:, 0]
    d1, d1p, d1m = d13[:n, 0], d13[n:2 * n, 0], d13[2 * n:, 0]
    return np.stack([lp, (lpp - lpm) / (2 * _H), d1, (lpp - 2 * lp + lpm) / _H**2,
                     (d1p - d1m) / (2 * _H), d23[:n, 0]], -1)


class _BinQuad:
    """Gauss-Legendre nodes of every bin of shared edges, for two-parameter families.

    With z = (x - loc) / scale, a bin's P = int f dz by quadrature; the log-scale derivatives
    are differences of z f at the edges (exact). Shape derivatives: "central" (_SHAPE_GRADIENT)
    takes P and z f at shape e^{+-H} and differences them as the cdf path does; "analytic"
    integrates f D and f (D^2 + dD/dlog shape), D = dlog f/dlog shape, with [z f D] at the
    edges. Cells the family's quad_ok does not vouch for (and the under/overflow) take the
    cdf path (_fd_cells)."""

    def __init__(self, ext_edges):
        self.ext = np.asarray(ext_edges, float)
        self.e = self.ext[1:-1]  # finite edges [B+1]
        self.c = 0.5 * (self.e[1:] + self.e[:-1])
        self.h = 0.5 * (self.e[1:] - self.e[:-1])
        self.xn = self.c[:, None] + self.h[:, None] * _GL_T[None, :]  # [B, K]
        self.pts = np.concatenate([self.e, self.xn.ravel()])  # edges, then nodes: one density call

    def fallback(self, fam, loc, x, ci):
        """The cdf path for cells ci (one per entry of loc [n], x [n, 2]) -> [n, 6]."""
        return _fd_cells(fam, np.stack([self.ext[ci], self.ext[ci + 1]], 1), loc, x)

    def cells(self, fam, loc, x, defer: bool = False):
        """Per cell [6, r, W] for rows with loc [r], params x [r, 2] (see _Problem._cells).
        ``defer``: leave the cdf-path cells zero and return (cells, rows, cell indices) of them."""
        r, B = x.shape[0], self.h.size
        sh = np.exp(x[:, 0])
        inv = np.exp(-x[:, 1])
        out = np.empty((6, r, B + 2))
        central = _SHAPE_GRADIENT == "central"
        with np.errstate(invalid="ignore", over="ignore", divide="ignore", under="ignore"):
            s2 = sh[:, None]
            za = self.pts[None, :] - loc[:, None]
            za *= inv[:, None]  # [r, B+1 + B K]: z at the edges, then at the nodes
            z, zn = za[:, :B + 1], za[:, B + 1:].reshape(r, B, _GL_K)
            hz = self.h[None, :] * inv[:, None]
            o = out[:, :, 1:-1]
            if central:  # f at shape e^{0, H, -H}: the cdf path's central differences in log shape
                fa = fam.pdfs(za, s2, (0.0, _H, -_H))
                P, Pp, Pm = (f[:, B + 1:].reshape(r, B, _GL_K) @ _GL_W for f in fa)
                fe, fep, fem = (f[:, :B + 1] for f in fa)
                P *= hz
                Pp *= hz
                Pm *= hz
                ok = (P > 1e-280) & (Pp > 1e-280) & (Pm > 1e-280)  # the others go to the cdf path
                lp, lpp, lpm = np.log(P), np.log(Pp), np.log(Pm)
                iP = 1.0 / P
                qe = fe
                qe *= z
                d1 = qe[:, :-1] - qe[:, 1:]
                d1 *= iP
                t = lpp - lpm
                t *= 1.0 / (2 * _H)
                o[1] = t
                t = lpp + lpm
                t -= 2.0 * lp
                t *= 1.0 / _H**2
                o[3] = t
                fep *= z
                fem *= z
                t = fep[:, :-1] - fep[:, 1:]
                t /= Pp
                t2 = fem[:, :-1] - fem[:, 1:]
                t2 /= Pm
                t -= t2
                t *= 1.0 / (2 * _H)
                o[4] = t
            else:  # analytic: dP/dlog shape = int f D, d2P = int f (D^2 + dD), [z f D] at the edges
                fe, De, _ = fam.dshape(z, s2)
                qe = z * fe
                fn, Dn, DDn = fam.dshape(zn, sh[:, None, None])
                P = (fn @ _GL_W) * hz
                DDn *= fn
                fn *= Dn  # f D
                Q1 = (fn @ _GL_W) * hz
                fn *= Dn  # f D^2
                fn += DDn
                Q2 = (fn @ _GL_W) * hz
                ok = (P > 1e-280) & np.isfinite(Q1) & np.isfinite(Q2)
                P = np.where(ok, P, 1.0)
                lp = np.log(P)
                g = Q1 / P
                d1 = (qe[:, :-1] - qe[:, 1:]) / P
                qD = qe * De
                o[1] = g
                o[3] = Q2 / P - g * g
                o[4] = (qD[:, :-1] - qD[:, 1:]) / P - g * d1
                iP = 1.0 / P
            re = fam.zg(z, s2)
            re += 1.0
            re *= qe
            o[0] = lp
            o[2] = d1
            t = re[:, 1:] - re[:, :-1]
            t *= iP
            t -= d1 * d1
            o[5] = t
            cz = (self.c[None, :] - loc[:, None]) * inv[:, None]
            ok &= fam.quad_ok(np.abs(cz), hz, s2)
            bad = np.ones((r, B + 2), bool)
            bad[:, 1:-1] = ~ok
            ri, ci = np.nonzero(bad)
        if defer:
            out[:, ri, ci] = 0.0
            return out, ri, ci
        out[:, ri, ci] = self.fallback(fam, loc[ri], x[ri], ci).T
        return out


def _newton_step(g, H, radius, x=None, bounds=None):
    """Newton step for maximisation, or a gradient step where H is not negative definite.

    A row whose shape sits on its bound with the step pointing out of it moves its scale
    alone (1-d Newton in log scale), so it converges to the constrained optimum (scale
    gradient 0) instead of where the clipped 2-d step's scale part vanishes, a point that
    depends on the noise of the tiny shape curvature there. Returns (step, newton): newton
    marks rows whose step is the whole Newton step (H negative definite, not shortened by the
    trust region)."""
    m, d = g.shape
    if d == 1:
        h = H[:, 0, 0]
        nd = h < 0
        step = np.where(nd, -g[:, 0] / np.where(nd, h, -1.0), g[:, 0])[:, None]
        newton = nd
    else:
        det = H[:, 0, 0] * H[:, 1, 1] - H[:, 0, 1] ** 2
        nd = (H[:, 0, 0] < 0) & (det > 0)
        inv = np.empty_like(H)
        safe = np.where(nd, det, 1.0)
        inv[:, 0, 0], inv[:, 1, 1] = H[:, 1, 1] / safe, H[:, 0, 0] / safe
        inv[:, 0, 1] = inv[:, 1, 0] = -H[:, 0, 1] / safe
        step = np.where(nd[:, None], -np.einsum("mij,mj->mi", inv, g), g)
        newton = nd.copy()
        if x is not None:
            pin = ((x[:, 0] <= bounds[0, 0]) & (step[:, 0] < 0)) | ((x[:, 0] >= bounds[0, 1]) & (step[:, 0] > 0))
            if pin.any():
                h = H[pin, 1, 1]
                step[pin, 0] = 0.0
                step[pin, 1] = np.where(h < 0, -g[pin, 1] / np.where(h < 0, h, -1.0), g[pin, 1])
                newton[pin] = h < 0
    norm = np.sqrt((step**2).sum(1))
    scale = np.minimum(1.0, radius / np.maximum(norm, 1e-300))
    return step * scale[:, None], newton & (scale >= 1.0)


def newton_fit(problem: _Problem, x0: np.ndarray, bounds: np.ndarray, max_iter: int = 60,
               tol: float = 1e-7):
    """Maximise the log-likelihood of every row from x0 [m, d]; bounds [d, 2] in log units.

    Returns (x, loglik, converged). Trust region per row: radius doubles on an accepted
    step, shrinks by 4 on a rejected one. A row is done when its next step is a whole Newton
    step shorter than ``_TAKE``: that step is taken without evaluating its end (Newton
    converges quadratically, so the end is the maximum to ~1e-12 in log units) and the
    log-likelihood there is the quadratic model's, LL + g.s + s.H.s/2; a row whose gradient
    step is below ``tol`` or whose radius collapses is done where it is. With
    ``problem.keep_cells`` the per-cell derivatives at every row's last evaluated point are
    left in ``problem.cells``, that point in ``problem.cells_x`` (the bootstrap's and the
    model cdf's, which add the last step themselves).
    """
    m, d = x0.shape
    x = np.clip(x0, bounds[:, 0], bounds[:, 1])  # every row's last evaluated, accepted point
    store = np.empty((3 if d == 1 else 6, m, problem.w.shape[1])) if problem.keep_cells else None
    held = np.zeros(m, bool)  # store holds the cells of the row's current (accepted) x
    LL, g, H = problem.stats(np.arange(m), x)
    xf, LLf = x.copy(), LL.copy()  # the final points: x, or x plus its last (unevaluated) Newton step
    radius = np.full(m, 0.5)
    done = np.zeros(m, bool)
    conv = np.zeros(m, bool)
    for _ in range(max_iter):
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        step, newton = _newton_step(g[act], H[act], radius[act], x[act], bounds)
        xn = np.clip(x[act] + step, bounds[:, 0], bounds[:, 1])
        s = xn - x[act]
        real = np.sqrt((s**2).sum(1))
        take = newton & (real < _TAKE)
        if take.any():
            r, st = act[take], s[take]
            xf[r] = xn[take]
            LLf[r] = LL[r] + (g[r] * st).sum(1) + 0.5 * np.einsum("mi,mij,mj->m", st, H[r], st)
        small = take | ((real < tol) & (radius[act] > tol))  # a gradient step below tol: done where it is
        conv[act[small]] = done[act[small]] = True
        act, xn, real = act[~small], xn[~small], real[~small]
        if act.size == 0:
            break
        # keep the cells of points a short step away (likely final: Newton converges
        # quadratically); the few rows that end elsewhere are evaluated again below
        put = real < _STORE_STEP
        LLn, gn, Hn = problem.stats(act, xn, store, put)
        ok = np.isfinite(LLn) & (LLn >= LL[act] - 1e-10 * np.abs(LL[act]))
        acc = act[ok]
        x[acc], LL[acc], g[acc], H[acc] = xn[ok], LLn[ok], gn[ok], Hn[ok]
        xf[acc], LLf[acc] = xn[ok], LLn[ok]
        held[act] = np.where(put, ok, held[act] & ~ok)
        radius[act] = np.where(ok, np.minimum(radius[act] * 2, 1.0), radius[act] / 4)
        fin = ok & (real < tol)  # a step shrunk below tol by the trust region, and accepted
        conv[act] |= fin & (radius[act] >= 1e-9)
        done[act] = fin | (radius[act] < 1e-9)
    if store is not None:
        rows = np.flatnonzero(~held)
        if rows.size:
            problem.stats(rows, x[rows], store)
        problem.cells, problem.cells_x = store, x.copy()
    return xf, LLf, conv


def cells_at(cells, x0, x):
    """log P per cell [m, W] at x [m, d] from the cells [1 + K, m, W] kept at x0 (first-order
    Taylor in the last, short step: off by ~s^2 |d2 log P| < 1e-12 for steps below _TAKE)."""
    s = x - x0
    out = s[:, :1] * cells[1]
    out += cells[0]
    if cells.shape[0] == 6:
        out += s[:, 1:2] * cells[2]
    return out


# ----------------------------------------------------------------------------- binned cdf
def binned_cdf(counts, under, over):
    """Empirical cdf at the edges [m, B+1] (under/overflow included in the total)."""
    c = np.asarray(counts, float)
    tot = c.sum(1) + under + over
    cum = under[:, None] + np.concatenate([np.zeros((c.shape[0], 1)), np.cumsum(c, 1)], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cum / tot[:, None]


def _interp_rows(x, xp, fp_rows):
    """Row-wise linear interpolation of fp_rows [m, E] (common xp [E]) at x [m]."""
    j = np.clip(np.searchsorted(xp, x, side="right"), 1, len(xp) - 1)
    x0, x1 = xp[j - 1], xp[j]
    r = np.arange(len(x))
    y0, y1 = fp_rows[r, j - 1], fp_rows[r, j]
    t = np.clip((x - x0) / (x1 - x0), 0.0, 1.0)
    return y0 + t * (y1 - y0)


def binned_quantile(cdf, edges, q):
    """Quantile q per row by linear interpolation of the binned cdf; NaN when q falls in
    the under/overflow (outside the edges)."""
    m, E = cdf.shape
    below = cdf < q
    j = below.sum(1)  # first edge index with cdf >= q
    out = np.full(m, np.nan)
    inside = (j >= 1) & (j <= E - 1)
    r = np.flatnonzero(inside)
    jj = j[r]
    c0, c1 = cdf[r, jj - 1], cdf[r, jj]
    t = np.where(c1 > c0, (q - c0) / np.where(c1 > c0, c1 - c0, 1.0), 0.5)
    out[r] = edges[jj - 1] + t * (edges[jj] - edges[jj - 1])
    return out


def binned_abs_quantile(cdf, edges, center, q: float, iters: int = 60):
    """The q-quantile of |g - center| per row from the binned cdf: t with
    F(center+t) - F(center-t) = q (bisection; F linear within bins). NaN when the interval
    reaches past the edges (the value is not measurable from this histogram)."""
    center = np.asarray(center, float)
    lo = np.zeros_like(center)
    hi = np.full_like(center, edges[-1] - edges[0])
    ok = np.isfinite(center)
    c = np.where(ok, center, 0.0)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        mass = _interp_rows(c + mid, edges, cdf) - _interp_rows(c - mid, edges, cdf)
        big = mass >= q
        hi = np.where(big, mid, hi)
        lo = np.where(big, lo, mid)
    out = 0.5 * (lo + hi)
    bad = ~ok | (c + out >= edges[-1]) | (c - out <= edges[0])
    return np.where(bad, np.nan, out)


def abs_quantiles(counts, under, over, edges, qs=(0.05, 0.25, 0.5, 0.75, 0.95)) -> dict:
    """Quantiles of |g| per row from histograms (under/overflow in the total): {q: values}
    and {("res", q): width of the bin the quantile fell in, relative to it}. NaN where a
    quantile lies beyond the edges."""
    c = np.asarray(counts, float)
    cdf = binned_cdf(c, np.asarray(under, float), np.asarray(over, float))
    zero = np.zeros(c.shape[0])
    out = {}
    for q in qs:
        v = binned_abs_quantile(cdf, edges, zero, q)
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.fmax(bin_width_at(edges, v), bin_width_at(edges, -v))
            out[q], out[("res", q)] = v, w / v
    return out


def binned_mad(cdf, edges, median, iters: int = 60):
    """Median absolute deviation from the binned cdf: m with F(med+m) - F(med-m) = 1/2."""
    return binned_abs_quantile(cdf, edges, median, 0.5, iters)


def bin_of(edges, x):
    """Index of the bin holding x (per element), -1 outside the edges or for NaN."""
    x = np.asarray(x, float)
    j = np.searchsorted(edges, np.where(np.isfinite(x), x, edges[0] - 1.0), side="right") - 1
    return np.where((j >= 0) & (j < len(edges) - 1), j, -1)


def binned_density(counts, total, edges, x):
    """Histogram density (count / total / bin width) at x per row; NaN outside the edges."""
    c = np.asarray(counts, float)
    j = bin_of(edges, x)
    r = np.arange(c.shape[0])
    jj = np.maximum(j, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = c[r, jj] / np.asarray(total, float) / np.diff(edges)[jj]
    return np.where(j >= 0, f, np.nan)


def bin_width_at(edges, x):
    """Width of the bin holding x; NaN outside the edges."""
    j = bin_of(edges, x)
    return np.where(j >= 0, np.diff(edges)[np.maximum(j, 0)], np.nan)


def binned_spreads(counts, under, over, edges, level: float = 0.95) -> dict:
    """IQR and MAD from the binned cdf, each with an asymptotic CI and its binning resolution.

    Asymptotic variances treat values as iid (like every per-window CI here):
    var(IQR) = [3/16 (1/f25^2 + 1/f75^2) - 2/16 /(f25 f75)] / N and, for a distribution
    symmetric about its median m, var(MAD) = 1 / (4 N (f(m+d) + f(m-d))^2), with the densities
    f read off the histogram. ``{stat}_res`` = width of the bin(s) the statistic was
    interpolated in, relative to its value: binning alone leaves it uncertain by up to that
    fraction (log-spaced edges of 201 bins over 11 decades: about 25 %).
    """
    from scipy import stats  # noqa: PLC0415

    c = np.asarray(counts, float)
    tot = c.sum(1) + under + over
    cdf = binned_cdf(c, under, over)
    q25, q50, q75 = (binned_quantile(cdf, edges, p) for p in (0.25, 0.5, 0.75))
    z = stats.norm.ppf(0.5 + level / 2)
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        iqr = q75 - q25
        f1, f2 = binned_density(c, tot, edges, q25), binned_density(c, tot, edges, q75)
        var = (3 / 16 * (1 / f1**2 + 1 / f2**2) - 2 / 16 / (f1 * f2)) / tot
        se = np.sqrt(np.maximum(var, 0.0)) / iqr
        out["iqr"] = iqr
        out["iqr_lo"], out["iqr_hi"] = iqr * np.exp(-z * se), iqr * np.exp(z * se)
        out["iqr_res"] = (bin_width_at(edges, q25) + bin_width_at(edges, q75)) / iqr
        mad = binned_mad(cdf, edges, q50)
        g = binned_density(c, tot, edges, q50 + mad) + binned_density(c, tot, edges, q50 - mad)
        se = 1.0 / (2.0 * g * np.sqrt(tot)) / mad
        out["mad"] = mad
        out["mad_lo"], out["mad_hi"] = mad * np.exp(-z * se), mad * np.exp(z * se)
        out["mad_res"] = np.fmax(bin_width_at(edges, q50 + mad), bin_width_at(edges, q50 - mad)) / mad
    for k in ("iqr_lo", "iqr_hi", "mad_lo", "mad_hi"):  # a zero density (empty bin): no CI
        out[k] = np.where(np.isfinite(out[k]) & (out[k] > 0), out[k], np.nan)
    return out


# ----------------------------------------------------------------------------- fitting
def _initial(fam: Family, q, fallback_scale):
    """Initial (log shape, log scale) [m, d] from binned quantiles q = {p: values}."""
    iqr = q[0.75] - q[0.25]
    ratio = (q[0.95] - q[0.05]) / np.where(iqr > 0, iqr, np.nan)
    cols = []
    if fam.n_shape:
        shape = initial_shape(fam, ratio)
        cols.append(np.log(shape))
        half = fam.ppf(0.75, shape)
    else:
        half = fam.ppf(0.75, None)
    scale = np.where(np.isfinite(iqr) & (iqr > 0), iqr / (2 * half), fallback_scale)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    cols.append(np.log(scale))
    return np.stack(cols, 1)


def _bounds(fam: Family, ref_scale: np.ndarray):
    b = [[np.log(fam.shape_bounds[0]), np.log(fam.shape_bounds[1])]] if fam.n_shape else []
    return np.array(b + [[-np.inf, np.inf]], float)


def bootstrap_scales(problem: _Problem, x, n_boot: int, rng, resample: str = "auto",
                     chunk_elems: int = 2_000_000, pinned=None):
    """One-step (linearised Newton) bootstrap of log scale from the MLE x [m, d].

    Each replicate resamples the cell counts (multinomial with the observed proportions),
    then takes one Newton step from the MLE: theta* = theta - H(c*)^-1 g(c*), where g and H
    are linear in the counts, so a replicate costs a matrix product, not a refit.
    ``resample``: "multinomial" (exact draws), "normal" (the multinomial's normal limit of
    the linear statistics: used automatically for very many histograms), or "auto".
    ``pinned`` [m] bool: rows whose shape sits on its bound, where a replicate moves the scale
    alone (as the optimiser did). Returns log-scale replicates [m, n_boot]. Rows are taken ``chunk_elems`` (rows x
    replicates x cells) at a time, small enough for the CPU cache; the draws do not depend on it.
    """
    m, d = x.shape
    W = problem.w.shape[1]
    out = np.empty((m, n_boot))
    if resample == "auto":
        resample = "multinomial" if m * n_boot * W <= 5e6 else "normal"
    rows_per = max(1, int(chunk_elems // max(1, n_boot * W)))

    def replicates(rows, c, N, p, draws):
        """out[rows] from the chunk's cells and its draws (no random numbers: runs on the pool).
        A replicate's linear statistics vs [r, b, D]: the gradient, then the Hessian's upper
        triangle (h_ss, h_st, h_tt for d = 2)."""
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if resample == "multinomial":
                # the counts enter linearly: [r, b, W] @ [r, W, D]
                vs = np.matmul(draws, c.transpose(1, 2, 0))
            else:
                v = c.transpose(1, 0, 2)  # [r, D, W]
                mean = np.matmul(v, p[:, :, None])[..., 0]
                dv = v - mean[:, :, None]
                cov = np.matmul(dv * p[:, None, :], dv.transpose(0, 2, 1)) * N[:, None, None]
                D = v.shape[1]
                jitter = 1e-12 * np.abs(np.trace(cov, axis1=1, axis2=2))[:, None, None] + 1e-300
                L = _psd_sqrt(cov + jitter * np.eye(D))
                vs = N[:, None, None] * mean[:, None, :] + np.matmul(draws, L.transpose(0, 2, 1))
            if d == 1:
                h = vs[..., 1]
                delta = -vs[..., 0] / np.where(h < 0, h, np.nan)
            else:
                delta = _solve2_last(vs[..., 2], vs[..., 3], vs[..., 4], vs[..., 0], vs[..., 1])
                if pinned is not None and pinned[rows].any():  # shape on its bound: the scale moves alone
                    pr = pinned[rows]
                    h = vs[pr, :, 4]
                    delta[pr] = -vs[pr, :, 1] / np.where(h < 0, h, np.nan)
            out[rows] = x[rows, -1][:, None] + delta

    # replicates are one Newton step from the point whose cells are kept (x plus the optimiser's
    # last, unevaluated step: the replicate of the observed counts is x itself)
    x = x if problem.cells is None else problem.cells_x
    pool = _pool()
    pending = []
    for s in range(0, m, rows_per):
        rows = np.arange(s, min(m, s + rows_per))
        c = problem.cell_derivs(rows, x[rows])  # [D, r, W]: gradient, Hessian's upper triangle
        w = problem.w[rows]
        N = w.sum(1)
        p = w / np.where(N > 0, N, 1.0)[:, None]
        # the random draws in chunk order, here; the arithmetic on them (the normal limit's
        # covariance too) may run on the pool
        if resample == "multinomial":
            draws = rng.multinomial(N.astype(np.int64)[:, None], p[:, None, :],
                                    size=(len(rows), n_boot)).astype(float)
        else:  # D = d + d(d+1)/2 linear statistics per replicate
            draws = rng.standard_normal((len(rows), n_boot, c.shape[0]))
        if pool is None:
            replicates(rows, c, N, p, draws)
            continue
        pending.append(pool.submit(replicates, rows, c, N, p, draws))
        if len(pending) > 2 * pool._max_workers:  # bounded memory
            pending.pop(0).result()
    for f in pending:
        f.result()
    return out


def _psd_sqrt(cov):
    """A matrix square root L (cov = L L^T) of each positive semi-definite [.., D, D] matrix;
    eigenvalues below 0 (round-off of a rank-deficient covariance) count as 0, so a histogram
    whose statistics are linearly dependent never stops the bootstrap."""
    w, v = np.linalg.eigh(cov)
    return v * np.sqrt(np.clip(w, 0.0, None))[..., None, :]


def _solve2_last(a, b, c, g0, g1):
    """Last component of -H^-1 g for each 2x2 H = [[a, b], [b, c]], g = (g0, g1) (arrays of one
    shape); NaN where H is not negative definite (a replicate whose Newton step is undefined
    is dropped, not fatal)."""
    det = a * c - b * b
    ok = (a < 0) & (det > 0) & np.isfinite(det)
    with np.errstate(invalid="ignore", divide="ignore"):
        step = -(a * g1 - b * g0) / np.where(ok, det, 1.0)
    return np.where(ok, step, np.nan)


def _row_quantiles(b, a):
    """Lower and upper a-quantiles of each row (NaN replicates dropped; all-NaN -> NaN)."""
    s = np.sort(b, axis=1)  # NaN sort last
    n = np.isfinite(s).sum(1)
    out = []
    for q in (a, 1 - a):
        pos = q * np.maximum(n - 1, 0)
        i0 = np.floor(pos).astype(int)
        i1 = np.minimum(i0 + 1, np.maximum(n - 1, 0))
        r = np.arange(len(b))
        v = s[r, i0] + (pos - i0) * (s[r, i1] - s[r, i0])
        out.append(np.where(n > 0, v, np.nan))
    return out


def fit_family(fam: Family, counts_ext, ext_edges, loc, q, fallback_scale,
               n_boot: int = 0, rng=None, resample: str = "auto", level: float = 0.95, init_scale=None):
    """Binned ML fit of one family to every row of counts_ext [m, cells].

    ``init_scale`` [m] (optional): a starting scale of a one-parameter family close to its
    MLE (the exact std for the normal, mean |g| for the Laplace: their unbinned MLEs), used
    where finite and > 0 in place of the quartile-based start; it saves Newton steps and
    moves the estimate by less than the tolerance.

    Returns dict of arrays: scale, scale_lo, scale_hi, shape, loglik, converged, and with
    a bootstrap cdf_edges (the fitted model's cdf at the finite edges, [m, B+1]).
    """
    m = counts_ext.shape[0]
    terms = lambda f, rows, lc, ls, sh, full: binned_terms(f, ext_edges, lc, ls, sh, full)  # noqa: E731
    quad = _BinQuad(ext_edges) if fam.dshape is not None and ext_edges.ndim == 1 else None
    prob = _Problem(fam, counts_ext.astype(float), loc, terms, keep_cells=bool(n_boot and m), quad=quad)
    x0 = _initial(fam, q, fallback_scale)
    if init_scale is not None and not fam.n_shape:
        good = np.isfinite(init_scale) & (init_scale > 0)
        x0[good, 0] = np.log(init_scale[good])
    x, LL, conv = newton_fit(prob, x0, _bounds(fam, None))
    res = {"scale": np.exp(x[:, -1]), "loglik": LL, "converged": conv,
           "shape": np.exp(x[:, 0]) if fam.n_shape else np.full(m, np.nan)}
    if prob.cells is not None:  # the model cdf at the finite edges, from the final cells' P
        res["cdf_edges"] = np.cumsum(np.exp(cells_at(prob.cells[:, :, :-1], prob.cells_x, x)), 1)
    if n_boot and m:
        b = _bounds(fam, None)
        pinned = ((x[:, 0] <= b[0, 0]) | (x[:, 0] >= b[0, 1])) if fam.n_shape else None
        boots = bootstrap_scales(prob, x, n_boot, rng, resample, pinned=pinned)
        a = (1 - level) / 2
        lo, hi = _row_quantiles(boots, a)
        res["scale_lo"], res["scale_hi"] = np.exp(lo), np.exp(hi)
    else:
        res["scale_lo"] = res["scale_hi"] = np.full(m, np.nan)
    return res


def model_cdf_at_edges(fam: Family, edges, loc, scale, shape):
    """Model cdf at the (finite) edges [m, B+1]. A failed fit's scale (0, tiny, non-finite) gives
    whatever it gives, silently: such rows are blanked by the caller."""
    sh = None if shape is None else shape[:, None]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        z = (edges[None, :] - loc[:, None]) / scale[:, None]
        G = fam.lower_tail(np.abs(z), sh)
        return np.where(z < 0, G, 1.0 - G)


def fit_exact(fam: Family, values, loc, max_iter: int = 60):
    """Exact ML fit to raw samples values [m, K] (NaN-padded); returns scale, shape, loglik."""
    m = values.shape[0]
    fin = np.isfinite(values)
    w = fin.astype(float)
    v = np.where(fin, values, np.nan)
    terms = lambda f, rows, lc, ls, sh, full: exact_terms(f, v[rows], lc, ls, sh)  # noqa: E731
    prob = _Problem(fam, w, loc, terms)
    qs = {p: np.nanquantile(v, p, axis=1) for p in (0.05, 0.25, 0.75, 0.95)}
    x0 = _initial(fam, qs, np.nanstd(v, axis=1))
    x, LL, conv = newton_fit(prob, x0, _bounds(fam, None), max_iter=max_iter)
    return {"scale": np.exp(x[:, -1]), "loglik": LL, "converged": conv,
            "shape": np.exp(x[:, 0]) if fam.n_shape else np.full(m, np.nan)}
