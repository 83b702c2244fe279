"""The 2-D toy of the cautious-optimizer paper (PAPERS.md §A.4), run with the zoo's real optimizers.

    L(w) = 4 w1² + w2²,   ∇L(w) = (8 w1, 2 w2),   start w0 = (1, 1),   minimum 0 at w = 0.

Gradient descent with momentum (GDM) is the heavy ball ``z <- β z + ∇L(w); w <- w - ε z``: the
zoo's ``"sgdm"`` with ``dampening=0`` (``z`` is its momentum buffer). Cautious GDM (C-GDM) is
``"c-sgdm"``: ``w <- w - ε φ(z ∘ ∇L) ∘ z`` with the zoo's mask (PAPERS.md §A.1), under each
``caution_norm``: ``"mean"`` (the zoo's default), ``"paper"``, the soft family ``φ_c`` (a float
``c``; ``c = 0`` is the unnormalised mask ``1[x > 0]``) and the inner-product mask
``1[zᵀ∇L ≥ 0]`` (:func:`inner_product_mask`, passed as a callable ``caution_norm``).

The rate
--------
:func:`convergence_rate` returns the **asymptotic linear rate**, estimated as the geometric mean
contraction per step over the second part of the run::

    rate(ε, β) = (‖w_K‖ / ‖w_{K0}‖) ** (1 / (K - K0)),     K = steps,  K0 = start (default K // 2)

(‖·‖ the Euclidean norm of the iterate, i.e. of ``w - w*``). It estimates
``lim_K ‖w_K‖^{1/K}``. The run is kept out of floating-point underflow by multiplying ``w`` and the
momentum buffer by a power of two every few steps (and adding its exponent to a log-scale
counter): every map here is positively homogeneous of degree 1 and every mask depends only on
signs and counts, and multiplying by 2^k is exact, so the trajectory is bit-for-bit the unscaled
one, just without underflow (a callable ``caution_norm`` must be scale-invariant for this to
hold: ``mask(s u, s g) = mask(u, g)`` for s > 0). (Without it, ``z ∘ ∇L`` underflows to 0 once ‖w‖ ~ 1e-162 in
float64, the zoo's mask then reads "disagree" and the cautious runs stall or blow up: a float
artefact, not the method.)

This is the definition that reproduces the paper's GDM figure: for a quadratic with condition
number κ = 4 the best heavy-ball rate over all (ε, β) is the spectral radius
(√κ - 1)/(√κ + 1) = 1/3, attained at Goh's (ε, β) = (4/(√8 + √2)², ((√κ-1)/(√κ+1))²) = (2/9, 1/9)
(:data:`GOH_LR`, :data:`GOH_MOMENTUM`) -- a double root, so ‖w_k‖ ~ k·3^-k and the estimate is
(1/3)·2^{1/(K-K0)} above it at finite K (0.3345 at K = 400; 0.3337 at K = 2000). The paper's 0.332
is 1/3 to within 0.0013; no heavy-ball (ε, β) has an asymptotic rate below 1/3, and every
finite-horizon estimate of ‖w_k‖ at Goh's point is above 1/3 (``k·3^-k`` grows relative to 3^-k),
so a figure below 1/3 cannot be measured for GDM at Goh's point under any definition.

Short-horizon estimates (``steps=40, start=20``) are also supported: they reward transients and
depend strongly on the grid resolution (see :func:`best_rates`).

Results (float64, the zoo's sgdm / c-sgdm; best rate over the grid, Goh's point included)::

                          paper   asymptotic           asymptotic          short horizon
                                  K=400, 0.0025 grid   K=2000, 0.01 grid   K=40, K0=20, 0.0025 grid
    GDM                   0.332   0.3345 (Goh)         0.3336 (Goh)        0.317  (Goh: 0.345)
    C-GDM "mean"          0.294   0.301                0.312               0.205
    C-GDM "paper"         0.294   0.358                0.381               0.290
    C-GDM 1[x>0] (c = 0)  0.294   0.333                0.3336 (Goh)        0.298
    phi_c c = 0.01        0.291   0.334                0.3336 (Goh)        0.299
    phi_c c = 0.1         0.286   0.3345 (Goh)         0.3336 (Goh)        0.293
    inner product         0.322   0.3345 (Goh)         0.3336 (Goh)        0.314

Under the asymptotic rate only the zoo's default normalisation ``"mean"`` clearly beats the
heavy-ball bound 1/3 (0.28-0.31 at tuned points: (0.17375, 0.09) settles at exactly √β = 0.300,
(0.16, 0.06125) at ≈ 0.284 after a slow transient); the unnormalised mask (c = 0) gains at most
marginally (0.3326 at (0.22375, 0.115) over 6000 steps), the soft masks with c > 0 and the
inner-product mask not at all on these grids (along GDM's optimal trajectory no mask acts, so
their best is Goh's point), and ``"paper"`` is worse than GDM. So the paper's C-GDM figure 0.294
is reproduced (to the grid's resolution) by ``"mean"``, but its soft-mask and inner-product
figures are not; a short-horizon rate reproduces those (0.298 / 0.299 / 0.293 / 0.314, with C-GDM = c = 0) but then not GDM's 0.332.
The C-GDM landscape is rough (chaotic switching between regimes; neighbouring grid points and
longer horizons change the rate by ±0.05), so best-over-grid figures of cautious methods depend
on the grid resolution and horizon. On :data:`DEFAULT_GRID` (K = 400) the table is GDM 0.3345
(Goh), C-GDM "mean" 0.329 at (0.185, 0.08) -- a regime that lasts about 2000 steps before the
trajectory switches to ≈ 0.41 --, "paper" 0.566, and Goh's 0.3345 for the other masks.

Exact-arithmetic corner: at ε = 1/8 the first step lands exactly on w1 = 0; the cautious mask then
sees ``z1 ∘ ∇L1 = 0`` for ever and freezes w1, leaving a 1-D problem (rates far below the 2-D
ones, even exact termination). :data:`DEFAULT_GRID` avoids ε·8 = 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

import zoo

__all__ = ["CURVATURE", "START", "GOH_LR", "GOH_MOMENTUM", "OPTIMAL_RATE", "PAPER_RATES",
           "Method", "METHODS", "DEFAULT_GRID", "FINE_GRID", "DEFAULT_STEPS", "loss",
           "inner_product_mask", "trajectory", "rate_grid", "convergence_rate", "best_rates"]

CURVATURE = (8.0, 2.0)
"""The Hessian diagonal of L(w) = 4 w1² + w2²."""
START = (1.0, 1.0)
GOH_LR = 2.0 / 9.0
"""Goh's optimal heavy-ball step 4 / (√λmax + √λmin)² = 4 / (√8 + √2)² = 2/9."""
GOH_MOMENTUM = 1.0 / 9.0
"""Goh's optimal momentum ((√κ - 1) / (√κ + 1))² = 1/9 for κ = 4."""
OPTIMAL_RATE = 1.0 / 3.0
"""The optimal heavy-ball rate (√κ - 1)/(√κ + 1) for κ = 4: no (ε, β) does better asymptotically."""

PAPER_RATES = {"GDM": 0.332, "C-GDM": 0.294, "phi_c c=0.01": 0.291, "phi_c c=0.1": 0.286,
               "inner product": 0.322}
"""Best linear rates reported by the paper (PAPERS.md §A.4)."""

DEFAULT_STEPS = 400
_RENORM_EVERY = 16   # steps between power-of-two rescalings (safe for rates in [1e-15, 1e15])


def loss(w: Tensor) -> Tensor:
    """L(w) = 4 w1² + w2² for a tensor whose last dimension has length 2."""
    return 4 * w[..., 0] ** 2 + w[..., 1] ** 2


def inner_product_mask(update: Tensor, grad: Tensor) -> Tensor:
    """The inner-product mask of Theorem A.5, ``φ = 1[uᵀg ≥ 0]`` (the whole update kept or
    dropped), as a ``caution_norm`` callable: a 0-d tensor the zoo broadcasts to the update."""
    return (update * grad).sum() >= 0


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a zoo optimizer name, its ``caution_norm`` and the paper's figure."""

    label: str
    optimizer: str
    caution_norm: object = None
    paper_key: str | None = None

    @property
    def paper_rate(self) -> float:
        return PAPER_RATES.get(self.paper_key, math.nan) if self.paper_key else math.nan


METHODS = (
    Method("GDM", "sgdm", None, "GDM"),
    Method("C-GDM mean", "c-sgdm", "mean", "C-GDM"),
    Method("C-GDM paper", "c-sgdm", "paper", "C-GDM"),
    Method("C-GDM 1[x>0] (c=0)", "c-sgdm", 0.0, "C-GDM"),
    Method("phi_c c=0.01", "c-sgdm", 0.01, "phi_c c=0.01"),
    Method("phi_c c=0.1", "c-sgdm", 0.1, "phi_c c=0.1"),
    Method("inner product", "c-sgdm", inner_product_mask, "inner product"),
)
"""GDM, C-GDM under each zoo normalisation, the soft masks and the inner-product mask."""

DEFAULT_GRID = ((0.145, 0.165, 0.185, 0.205, 0.225, 0.245), (0.02, 0.05, 0.08, 0.11, 0.14))
"""(ε values, β values): a 6 x 5 grid, plus Goh's point, that runs in seconds."""
FINE_GRID = (tuple(np.round(np.arange(0.10125, 0.3, 0.0025), 5)),
             tuple(np.round(np.arange(0.0025, 0.2501, 0.0025), 4)))
"""A 0.0025-spaced grid (80 x 100 points, ε offset to avoid 1/8; minutes per method)."""


def _make_optimizer(method_name: str, params: list, lrs, momenta, caution_norm):
    groups = [{"params": [p], "lr": float(lr), "momentum": float(b)}
              for p, lr, b in zip(params, lrs, momenta)]
    kwargs = {"dampening": 0.0}
    if caution_norm is not None:
        kwargs["caution_norm"] = caution_norm
    return zoo.get(method_name)(groups, **kwargs)


def _log_norms(optimizer_name: str, lrs: Sequence[float], momenta: Sequence[float], steps: int,
               record: Sequence[int], caution_norm=None) -> np.ndarray:
    """log ‖w_k‖ at the steps in ``record`` for every (lr, momentum) pair, one run each (one param
    group per pair, all in one zoo optimizer), renormalised by powers of two (module docstring)."""
    hess = torch.tensor(CURVATURE, dtype=torch.float64)
    params = [torch.tensor(START, dtype=torch.float64) for _ in lrs]
    opt = _make_optimizer(optimizer_name, params, lrs, momenta, caution_norm)
    log_scale = np.zeros(len(params))          # natural log of the factor taken out so far
    out = np.full((len(record), len(params)), np.nan)
    wanted = {k: i for i, k in enumerate(record)}

    def norms():
        return np.array([float(torch.linalg.vector_norm(p)) for p in params])

    with torch.no_grad():
        if 0 in wanted:
            out[wanted[0]] = np.log(norms())
        for k in range(1, steps + 1):
            for p in params:
                p.grad = hess * p
            opt.step()
            if k % _RENORM_EVERY == 0 or k in wanted:
                for i, p in enumerate(params):
                    buf = opt.state[p].get("momentum_buffer")
                    big = max(float(p.abs().max()), float(buf.abs().max()) if buf is not None else 0.0)
                    if big == 0.0 or not math.isfinite(big):
                        continue
                    exponent = math.frexp(big)[1]         # big = m · 2^exponent, 0.5 <= m < 1
                    if exponent != 0:
                        factor = math.ldexp(1.0, -exponent)  # an exact power of two
                        p.mul_(factor)
                        if buf is not None:
                            buf.mul_(factor)
                        log_scale[i] += exponent * math.log(2.0)
            if k in wanted:
                with np.errstate(divide="ignore", invalid="ignore"):
                    out[wanted[k]] = np.log(norms()) + log_scale
    return out


def _rates(log_start: np.ndarray, log_end: np.ndarray, span: int) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        rate = np.exp((log_end - log_start) / span)
    rate[np.isneginf(log_end)] = 0.0                  # exact termination
    rate[~np.isfinite(log_end) & ~np.isneginf(log_end)] = np.inf   # overflow / NaN: diverged
    return rate


def _window(steps: int, start: int | None) -> int:
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    start = steps // 2 if start is None else start
    if not 0 <= start < steps:
        raise ValueError(f"start must be in [0, steps), got {start!r}")
    return start


def convergence_rate(name: str, lr: float, momentum: float, steps: int = DEFAULT_STEPS,
                     caution_norm=None, start: int | None = None) -> float:
    """The linear rate ``(‖w_K‖/‖w_{K0}‖)^{1/(K-K0)}`` (K = ``steps``, K0 = ``start``, default
    K // 2) of the zoo optimizer ``name`` (``"sgdm"`` or ``"c-sgdm"``, dampening 0) with step
    ``lr`` and ``momentum`` on L from (1, 1). 0.0 means exact termination, ``inf`` divergence."""
    start = _window(steps, start)
    logs = _log_norms(name, [lr], [momentum], steps, (start, steps), caution_norm)
    return float(_rates(logs[0], logs[1], steps - start)[0])


def trajectory(name: str, lr: float, momentum: float, steps: int, caution_norm=None) -> np.ndarray:
    """The iterates w_0..w_steps (shape (steps + 1, 2)) of the zoo optimizer, not renormalised."""
    w = torch.tensor(START, dtype=torch.float64)
    opt = _make_optimizer(name, [w], [lr], [momentum], caution_norm)
    hess = torch.tensor(CURVATURE, dtype=torch.float64)
    out = [w.detach().clone()]
    with torch.no_grad():
        for _ in range(steps):
            w.grad = hess * w
            opt.step()
            out.append(w.detach().clone())
    return torch.stack(out).numpy()


def rate_grid(method: Method, grid=DEFAULT_GRID, steps: int = DEFAULT_STEPS,
              start: int | None = None, include_goh: bool = True) -> pd.DataFrame:
    """The rate of ``method`` at every (ε, β) of ``grid`` (plus Goh's point): columns lr,
    momentum, rate. Cautious methods skip β = 0 (no momentum: the zoo refuses caution there)."""
    start = _window(steps, start)
    lrs, momenta = grid
    pairs = [(float(a), float(b)) for a in lrs for b in momenta]
    if zoo.info(method.optimizer).cautious:   # the zoo refuses caution at momentum 0 (a no-op)
        pairs = [(a, b) for a, b in pairs if b != 0]
    if include_goh and (GOH_LR, GOH_MOMENTUM) not in pairs:
        pairs.append((GOH_LR, GOH_MOMENTUM))
    lr_list, b_list = zip(*pairs)
    logs = _log_norms(method.optimizer, lr_list, b_list, steps, (start, steps), method.caution_norm)
    return pd.DataFrame({"lr": lr_list, "momentum": b_list,
                         "rate": _rates(logs[0], logs[1], steps - start)})


def best_rates(grid=DEFAULT_GRID, steps: int = DEFAULT_STEPS, start: int | None = None,
               methods: Sequence[Method] = METHODS, include_goh: bool = True) -> pd.DataFrame:
    """The best rate of each method over ``grid`` (``(ε values, β values)``; Goh's point added
    unless ``include_goh=False``) beside the paper's figure.

    Columns: method, optimizer, caution_norm, rate, lr, momentum, paper_rate.
    """
    rows = []
    for method in methods:
        table = rate_grid(method, grid, steps, start, include_goh)
        best = table.loc[table["rate"].idxmin()]
        norm = method.caution_norm
        rows.append({"method": method.label, "optimizer": method.optimizer,
                     "caution_norm": getattr(norm, "__name__", norm),
                     "rate": float(best["rate"]), "lr": float(best["lr"]),
                     "momentum": float(best["momentum"]), "paper_rate": method.paper_rate})
    return pd.DataFrame(rows)
