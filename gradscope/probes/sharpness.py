"""``sharpness``: λ_max, the top eigenvalue of the Hessian of the training loss restricted to the
surviving weights, and what it implies for the LR.

The operator is H restricted to the surviving coordinates (pruned weights are not variables:
the iteration vector is packed from, and unpacked to, the surviving weights only, which is the
projection P H P without its zero eigenvalues). Its largest eigenvalue comes from Lanczos
(scipy's ARPACK ``eigsh``, ``which="LA"``) on exact Hessian-vector products: double
backpropagation through a ``torch.func.functional_call`` of the model in train mode, on
training-size batches, BatchNorm on batch statistics (the state the round trains in).

Why not a library: PyHessian puts the model in eval mode (wrong for BatchNorm at a rewound
init) and knows no masks; hessian-eigenthings' stochastic power iteration is noisy (its
#17, #23); curvlinops would fit but is not a dependency. Why double backward rather than
``torch.func.jvp(grad(f))``: functorch's transforms refuse BatchNorm's in-place running-stat
update in train mode, which double backward leaves out of the graph.

Also: λ_max·‖w‖² per layer that feeds a BatchNorm (BN makes λ ∝ 1/‖w‖², so this product is
the scale-free sharpness of the block), each block by Lanczos on its own diagonal block, and
the heavy-ball stability limit: SGD with momentum β and LR η is stable on a quadratic while
λ < 2(1+β)/η (Cohen et al. 2021), so ``stable_lr = 2(1+β)/λ_max`` is the largest LR this
curvature allows and ``limit_at_max_lr = 2(1+β)/max_lr`` the largest λ the round's max_lr allows.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from gradscope import GradscopeError
from gradscope.probes.base import Functional, bn_followed, finite, loss_of, take_batches

# ncv 6, tol 1e-2: the study's cheaper setting (docs/probes.md): 6 Lanczos vectors per restart
# instead of ARPACK's 20 and a relative tolerance below the batch-to-batch noise (CV ~1-4 %)
DEFAULTS = {"batches": 4, "tol": 1e-2, "maxiter": 60, "momentum": 0.9, "blocks": True, "block_tol": 1e-2,
            "method": "lanczos", "ncv": 6}
METHODS = ("lanczos", "power")


class _Packer:
    """Surviving coordinates of a set of parameters <-> one float64 vector."""

    def __init__(self, f: Functional, names):
        self.f, self.names = f, list(names)
        self.idx = {n: (f.masks[n].reshape(-1) > 0).nonzero().squeeze(1) if n in f.masks else None for n in self.names}
        self.sizes = [len(i) if i is not None else f.params[n].numel() for n, i in self.idx.items()]
        self.n = int(sum(self.sizes))

    def unpack(self, v: np.ndarray) -> dict[str, torch.Tensor]:
        out, o = {}, 0
        for n, s in zip(self.names, self.sizes):
            p = self.f.params[n]
            part = torch.as_tensor(v[o:o + s], dtype=p.dtype, device=p.device)
            o += s
            i = self.idx[n]
            if i is None:
                out[n] = part.view_as(p)
            else:
                full = torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                full[i] = part
                out[n] = full.view_as(p)
        return out

    def pack(self, t: Mapping[str, torch.Tensor]) -> np.ndarray:
        parts = []
        for n in self.names:
            x = t[n].reshape(-1)
            i = self.idx[n]
            parts.append((x if i is None else x[i]).detach().double().cpu().numpy())
        return np.concatenate(parts)


class HVP:
    """Exact Hessian-vector products of the mean loss over fixed batches (counts its products)."""

    def __init__(self, f: Functional, batches):
        self.f, self.batches, self.count = f, batches, 0
        self.params = {n: p.requires_grad_(True) for n, p in f.params.items()}
        self.loss0 = finite(float(sum(float(f.loss(self.params, x, y).detach()) for x, y in batches) / len(batches)),
                            "the loss")

    def __call__(self, v: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.count += 1
        names = list(self.params)
        ps = [self.params[n] for n in names]
        acc = [torch.zeros_like(p) for p in ps]
        for x, y in self.batches:
            loss = self.f.loss(self.params, x, y) / len(self.batches)
            g = torch.autograd.grad(loss, ps, create_graph=True, allow_unused=True)
            pairs = [(gi, v[n]) for gi, n in zip(g, names) if gi is not None and n in v]
            dot = sum((gi * vi).sum() for gi, vi in pairs)
            hv = torch.autograd.grad(dot, ps, allow_unused=True)
            for a, h in zip(acc, hv):
                if h is not None:
                    a.add_(h)
        return dict(zip(names, acc))


def top_eigenvalue(hvp: HVP, names, *, tol: float, maxiter: int, seed: int, method: str = "lanczos",
                   ncv: Optional[int] = None) -> tuple[float, int]:
    """λ_max of the Hessian block of ``names`` on their surviving coordinates and the number of
    Hessian-vector products it took: Lanczos (ARPACK, ``ncv`` Lanczos vectors per restart,
    default ARPACK's 20) or ``power`` iteration (see ``power_iteration``)."""
    if method not in METHODS:
        raise GradscopeError(f"sharpness: unknown method {method!r}; known: {', '.join(METHODS)}")
    pk = _Packer(hvp.f, names)
    before = hvp.count
    if pk.n == 1:
        return float(pk.pack(hvp(pk.unpack(np.ones(1))))[0]), hvp.count - before
    matvec = lambda v: pk.pack(hvp(pk.unpack(np.asarray(v).ravel())))  # noqa: E731
    v0 = np.random.default_rng(seed).standard_normal(pk.n)
    if method == "power":
        return power_iteration(matvec, v0, tol=tol, maxiter=maxiter), hvp.count - before
    op = LinearOperator((pk.n, pk.n), matvec=matvec, dtype=np.float64)
    try:
        val = eigsh(op, k=1, which="LA", tol=tol, maxiter=maxiter, v0=v0, return_eigenvectors=False,
                    ncv=min(int(ncv), pk.n) if ncv else None)
    except ArpackNoConvergence as e:
        if len(e.eigenvalues) == 0:
            raise GradscopeError(f"sharpness: Lanczos did not converge in {maxiter} restarts (tol {tol}); "
                                 "raise maxiter or tol") from None
        val = e.eigenvalues
    return float(np.max(val)), hvp.count - before


def power_iteration(matvec, v0: np.ndarray, *, tol: float, maxiter: int) -> float:
    """The dominant eigenvalue by power iteration with a Rayleigh quotient, stopped when two
    successive quotients agree to ``tol`` (relative). Cheaper than ARPACK's 20-vector restarts at
    the accuracy the batch noise allows (docs/probes.md), but it finds the eigenvalue of largest
    *magnitude*: if that one is negative, the iteration is repeated on H + |λ|·I, whose dominant
    eigenvalue is λ_max + |λ|. Not converged in ``maxiter`` products: one clear error."""
    def run(shift: float) -> tuple[float, bool]:
        v = v0 / np.linalg.norm(v0)
        lam = None
        for _ in range(maxiter):
            w = matvec(v) + shift * v
            new = float(v @ w)
            nw = float(np.linalg.norm(w))
            if not np.isfinite(nw) or nw == 0:
                return new, True
            v = w / nw
            if lam is not None and abs(new - lam) <= tol * abs(new):
                return new, True
            lam = new
        return lam, False

    lam, ok = run(0.0)
    if ok and lam < 0:
        shifted, ok = run(abs(lam))
        lam = shifted - abs(lam)
    if not ok:
        raise GradscopeError(f"sharpness: power iteration did not converge in {maxiter} Hessian-vector products "
                             f"(relative tol {tol}); raise maxiter or tol, or use method lanczos")
    return lam


def probe(model: torch.nn.Module, masks: Optional[Mapping[str, torch.Tensor]], loader, config: Mapping[str, Any]) -> dict:
    """λ_max over the surviving weights, the stability limits, and λ_max·‖w‖² per BN block.

    config: batches (training-size batches the loss averages), method (lanczos | power), tol,
    maxiter (ARPACK restarts, or power iteration's Hessian-vector products), ncv, momentum β, max_lr (for ``limit_at_max_lr``), blocks (per-BN-block values), seed, loss."""
    c = {**DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    f = Functional(model, masks, loss_of(c))
    batches = take_batches(loader, int(c["batches"]))
    hvp = HVP(f, batches)
    seed = int(c.get("seed", 0))
    how = {"method": str(c["method"]), "ncv": c["ncv"], "maxiter": int(c["maxiter"]), "seed": seed}
    lam, _ = top_eigenvalue(hvp, f.names, tol=float(c["tol"]), **how)
    beta = float(c["momentum"])
    out = {"lambda_max": lam, "loss": hvp.loss0, "momentum": beta, "surviving": f.surviving(),
           "stable_lr": 2 * (1 + beta) / lam if lam > 0 else None,
           "limit_at_max_lr": 2 * (1 + beta) / float(c["max_lr"]) if c.get("max_lr") else None,
           "blocks": {}}
    if c["blocks"]:
        pairs = bn_followed(model, batches[0][0][:2], f.forward)
        for layer in pairs:
            pname = f"{layer}.weight_orig" if f"{layer}.weight_orig" in f.params else f"{layer}.weight"
            lam_b, _ = top_eigenvalue(hvp, [pname], tol=float(c["block_tol"]), **how)
            w = f.masked({pname: f.params[pname]})[pname].detach()
            nsq = float(w.double().pow(2).sum())
            out["blocks"][layer] = {"lambda_max": lam_b, "weight_norm_sq": nsq, "lambda_norm_sq": lam_b * nsq}
    out["hvps"] = hvp.count
    out["passes"] = float(hvp.count * len(batches) * 2 + len(batches))  # an HVP ~ 2 forward+backward passes
    return out
