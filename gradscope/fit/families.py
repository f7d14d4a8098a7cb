"""Standardised symmetric families as small pure functions of z = (x - loc) / scale.

Each family gives what the vectorised fitters need, on broadcast arrays: the lower tail
G(z) = F(-|z|) (tail-safe cell probabilities), log f(z), z·dlog f/dz and z²·d²log f/dz²
(analytic scale derivatives), and quantiles (initial guesses). Shapes broadcast with z.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import special as sp
from scipy import stats

_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)
# a bin is integrated by Gauss-Legendre (binned._quad_cells) when log f changes by at most
# _QUAD_LAMBDA across its half-width and the nearest singularity of f is _QUAD_DIST half-widths away
_QUAD_LAMBDA = 1.0
_QUAD_DIST = 10.0


@dataclass(frozen=True)
class Family:
    """A symmetric location-scale family; shape is None for one-parameter families."""

    name: str
    n_shape: int  # 0 or 1
    lower_tail: Callable  # (absz, shape) -> F(-|z|)
    logpdf: Callable  # (z, shape) -> log f(z)
    zg: Callable  # (z, shape) -> z * dlogf/dz
    zzgp: Callable  # (z, shape) -> z^2 * d2logf/dz2
    ppf: Callable  # (q, shape) -> standardised quantile
    shape_bounds: Optional[tuple] = None  # (lo, hi) of the shape parameter
    shape_name: Optional[str] = None
    # two-parameter families, for the bin quadrature (binned._BinQuad): the density with its
    # analytic log-shape derivatives (z, shape) -> (f, dlogf/dlog shape, d2logf/dlog shape2),
    # (|centre|, half-width, shape) -> where 4-node Gauss-Legendre gives a bin's P to 3e-7 at worst
    # (steep bins; mostly 1e-10): z units
    dshape: Optional[Callable] = None
    pdfs: Optional[Callable] = None  # (z, shape, shifts) -> [f at shape * exp(s) for s in shifts]
    quad_ok: Optional[Callable] = None


def _abs(z):
    return np.abs(z)


NORMAL = Family(
    "normal", 0,
    lower_tail=lambda a, s: sp.ndtr(-a),
    logpdf=lambda z, s: -0.5 * z * z - _LOG_SQRT_2PI,
    zg=lambda z, s: -z * z,
    zzgp=lambda z, s: -z * z,
    ppf=lambda q, s: stats.norm.ppf(q),
)

LAPLACE = Family(
    "laplace", 0,
    lower_tail=lambda a, s: 0.5 * np.exp(-a),
    logpdf=lambda z, s: -np.abs(z) - np.log(2.0),
    zg=lambda z, s: -np.abs(z),
    zzgp=lambda z, s: np.zeros_like(z),
    ppf=lambda q, s: stats.laplace.ppf(q),
)


def _t_logpdf(z, nu):
    return (sp.gammaln((nu + 1) / 2) - sp.gammaln(nu / 2) - 0.5 * np.log(nu * np.pi)
            - (nu + 1) / 2 * np.log1p(z * z / nu))


def _t_norm(nu):
    """log normaliser of t(nu)."""
    return sp.gammaln(0.5 * nu + 0.5) - sp.gammaln(0.5 * nu) - 0.5 * np.log(nu * np.pi)


def _t_dshape(z, nu):
    """Density f of t(nu) at z with d log f / d log nu and d2 log f / d log nu2 (fixed z), fused
    for the bin quadrature (r = z^2 / (nu + z^2))."""
    hn = 0.5 * nu
    a1 = hn * (sp.digamma(hn + 0.5) - sp.digamma(hn)) - 0.5  # nu A'(nu), A = log normaliser
    a2 = hn * hn * (sp.polygamma(1, hn + 0.5) - sp.polygamma(1, hn)) + 0.5  # nu^2 A''(nu)
    c1 = hn + 0.5
    u = z * z
    u *= 1.0 / nu
    L = np.log1p(u)
    r = u
    r /= 1.0 + u  # u no longer needed
    f = np.exp(_t_norm(nu) - c1 * L)
    D = c1 * r
    D -= hn * L
    D += a1
    DD = c1 * r
    DD -= 1.0
    DD *= r
    DD += a2
    DD += D
    return f, D, DD


def _t_pdfs(z, nu, shifts):
    """Densities of t(nu * exp(s)) at z for each s in shifts (z^2 computed once)."""
    zz = z * z
    out = []
    for sh in shifts:
        n2 = nu * np.exp(sh)
        v = zz * (1.0 / n2)
        np.log1p(v, out=v)
        v *= -(0.5 * n2 + 0.5)
        v += _t_norm(n2)
        out.append(np.exp(v, out=v))
    return out


def _t_quad_ok(c, h, nu, lam=_QUAD_LAMBDA, dist=_QUAD_DIST):
    """Poles of the density at +-i sqrt(nu); |dlog f/dz| = (nu+1)|z|/(nu+z^2) over the bin times h <= lam."""
    g = (nu + 1) * np.minimum(np.minimum((c + h) / nu, 1.0 / np.maximum(c - h, 1e-300)), 0.5 / np.sqrt(nu))
    return (h * g <= lam) & (np.sqrt(c * c + nu) >= dist * h)


STUDENT_T = Family(
    "t", 1,
    lower_tail=lambda a, nu: sp.stdtr(nu, -a),
    logpdf=_t_logpdf,
    zg=lambda z, nu: -(nu + 1) * z * z / (nu + z * z),
    zzgp=lambda z, nu: -(nu + 1) * (nu - z * z) * z * z / (nu + z * z) ** 2,
    ppf=lambda q, nu: stats.t.ppf(q, nu),
    shape_bounds=(0.5, 1000.0),
    shape_name="df",
    dshape=_t_dshape,
    pdfs=_t_pdfs,
    quad_ok=_t_quad_ok,
)


def _gn_logpdf(z, beta):
    return np.log(beta) - np.log(2.0) - sp.gammaln(1.0 / beta) - np.abs(z) ** beta


def _gammaincc(s, x):
    """Regularised upper incomplete gamma Q(s, x), broadcast (scipy). torch's kernel is ~2.5x
    faster per value, but with the bin quadrature only gennorm's cdf-path cells (1-3 %) need Q,
    and importing torch for them cost a first fit ~2.7 s (``gradscope fit`` imports no torch)."""
    return sp.gammaincc(s, x)


def _gn_norm(b):
    """log normaliser of gennorm(beta)."""
    return np.log(b) - np.log(2.0) - sp.gammaln(1.0 / b)


def _gn_dshape(z, b):
    """Density f of gennorm(beta) at z with d log f / d log beta and d2 log f / d log beta2
    (fixed z), fused for the bin quadrature (u = |z|^beta)."""
    ib = 1.0 / b
    ps = sp.digamma(ib) * ib
    c2 = -sp.polygamma(1, ib) * ib * ib - ps
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lu = np.abs(z)
        np.log(lu, out=lu)
        lu *= b  # log u
        u = np.exp(lu)
        f = np.exp(_gn_norm(b) - u)
        ulu = u
        ulu *= lu
        ulu[~np.isfinite(ulu)] = 0.0  # z = 0: u log u -> 0
    D = (1.0 + ps) - ulu
    lu += 1.0
    lu *= ulu
    DD = c2 - lu
    return f, D, DD


def _gn_pdfs(z, b, shifts):
    """Densities of gennorm(beta * exp(s)) at z for each s in shifts (log |z| computed once)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        la = np.abs(z)
        np.log(la, out=la)
        out = []
        for sh in shifts:
            b2 = b * np.exp(sh)
            v = la * b2
            np.exp(v, out=v)  # |z|^beta
            np.subtract(_gn_norm(b2), v, out=v)
            out.append(np.exp(v, out=v))
    return out


def _gn_quad_ok(c, h, b, lam=_QUAD_LAMBDA, dist=_QUAD_DIST):
    """Branch point of |z|^beta at 0; |dlog f/dz| = beta |z|^(beta-1) at the bin's worse end times h <= lam."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        g = b * np.where(b >= 1, c + h, np.maximum(c - h, 0.0)) ** (b - 1)
    return (h * g <= lam) & (c >= dist * h)


GENNORM = Family(
    "gennorm", 1,
    lower_tail=lambda a, b: 0.5 * _gammaincc(1.0 / b, a ** b),
    logpdf=_gn_logpdf,
    zg=lambda z, b: -b * np.abs(z) ** b,
    zzgp=lambda z, b: -b * (b - 1) * np.abs(z) ** b,
    ppf=lambda q, b: stats.gennorm.ppf(q, b),
    shape_bounds=(0.2, 10.0),
    shape_name="beta",
    dshape=_gn_dshape,
    pdfs=_gn_pdfs,
    quad_ok=_gn_quad_ok,
)

FAMILIES = {f.name: f for f in (NORMAL, LAPLACE, STUDENT_T, GENNORM)}


def get_family(name: str) -> Family:
    from gradscope import GradscopeError

    try:
        return FAMILIES[name]
    except KeyError:
        raise GradscopeError(f"unknown model {name!r}; choose from {', '.join(FAMILIES)}") from None


def tail_ratio_table(fam: Family, n: int = 64):
    """(shape grid, r) with r = q95/q75 of the standardised family, for initial shapes."""
    lo, hi = fam.shape_bounds
    grid = np.geomspace(lo, hi, n)
    r = fam.ppf(0.95, grid) / fam.ppf(0.75, grid)
    return grid, r


def initial_shape(fam: Family, ratio: np.ndarray) -> np.ndarray:
    """Shape whose q95/q75 matches the observed ratio (moment-free, robust initial guess)."""
    grid, r = tail_ratio_table(fam)
    # r decreases with shape for both t (df) and gennorm (beta)
    ratio = np.where(np.isfinite(ratio), ratio, r[len(r) // 2])
    return np.interp(ratio, r[::-1], grid[::-1])
