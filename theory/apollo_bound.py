"""Monte-Carlo check of APOLLO's Theorem A.4 (PAPERS.md §B.3) with the zoo's own projection code.

Setting. A gradient sequence G_1..G_t of one weight (shape ``shape``), a fixed random projection P
with N(0, 1/r) entries (:func:`zoo.projection.gaussian`) and R_i = P G_i
(:func:`zoo.projection.project`: ``P G`` when columns are kept, ``G Pᵀ`` when rows are kept; the zoo
compresses the smaller dimension, of size n). Adam moments without bias correction,
``M <- β1 M + (1-β1) X``, ``V <- β2 V + (1-β2) X²``, ``X̃ = M / (√V + eps)``, give per channel j
(:func:`zoo.projection.channel_norm`)

    s_j   = ‖G̃_j‖ / ‖G_{t,j}‖        (full-rank moments of the G_i)
    s^R_j = ‖R̃_j‖ / ‖R_{t,j}‖        (moments of the R_i: what APOLLO computes)

Theorem A.4: if r >= (8/ε²)·log(2t/δ), then with probability >= 1 - δ over P, for every channel j,

    √(1-ε)/(1+ε)  <=  √(n/r) · s^R_j / s_j  <=  √(1+ε)/(1-ε).

:func:`coverage_table` estimates that probability ("coverage": the fraction of independent P for
which *every* channel is inside) per rank, for fixed gradient sequences drawn by
:func:`gradient_sequence` (i.i.d. Gaussian, or low rank plus noise), and reports the ratio
``s^R/s`` itself beside √(r/n) (the paper: ≈ 0.35 at r = n/8, 0.5 at r = n/4).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from zoo.projection import channel_norm, gaussian, project, rows_kept

__all__ = ["theorem_eps", "condition_holds", "interval", "compressed_dim", "gradient_sequence", "channel_scales",
           "scale_ratios", "coverage_table", "BETAS", "EPS"]

BETAS = (0.9, 0.999)
EPS = 1e-6
"""APOLLO's defaults in the zoo (betas, eps)."""


def theorem_eps(rank: int, t: int, delta: float) -> float:
    """The smallest ε the theorem's condition r >= (8/ε²)·log(2t/δ) allows at this rank."""
    return math.sqrt(8.0 * math.log(2.0 * t / delta) / rank)


def condition_holds(rank: int, eps: float, t: int, delta: float) -> bool:
    """r >= (8/ε²)·log(2t/δ), with 0 < ε < 1 (for ε >= 1 the lower end of the interval is 0 or
    undefined and the statement is empty)."""
    return 0 < eps < 1 and rank >= 8.0 / eps**2 * math.log(2.0 * t / delta) * (1 - 1e-12)


def interval(eps: float) -> tuple[float, float]:
    """[√(1-ε)/(1+ε), √(1+ε)/(1-ε)] (ε < 1)."""
    if not 0 <= eps < 1:
        raise ValueError(f"eps must be in [0, 1), got {eps!r}")
    return math.sqrt(1 - eps) / (1 + eps), math.sqrt(1 + eps) / (1 - eps)


def compressed_dim(shape) -> int:
    """n, the dimension the zoo's projection compresses (the smaller one)."""
    return shape[1] if rows_kept(shape) else shape[0]


def gradient_sequence(kind: str = "gaussian", shape=(256, 512), t: int = 3, seed: int = 0,
                      signal_rank: int = 4, noise: float = 0.3) -> Tensor:
    """t gradient matrices (a float64 tensor of shape (t, *shape)).

    ``"gaussian"``: i.i.d. N(0, 1) entries at every step. ``"lowrank"``: a fixed rank-
    ``signal_rank`` matrix A Bᵀ (entries of unit variance) plus fresh N(0, noise²) noise at
    every step, times a random per-step gain in [0.5, 1.5] (the moments then mix steps of
    different sizes).
    """
    gen = torch.Generator().manual_seed(seed)
    m, n = shape
    if kind == "gaussian":
        return torch.randn(t, m, n, generator=gen, dtype=torch.float64)
    if kind == "lowrank":
        a = torch.randn(m, signal_rank, generator=gen, dtype=torch.float64)
        b = torch.randn(n, signal_rank, generator=gen, dtype=torch.float64)
        signal = a @ b.T / math.sqrt(signal_rank)
        gains = 0.5 + torch.rand(t, 1, 1, generator=gen, dtype=torch.float64)
        return gains * (signal + noise * torch.randn(t, m, n, generator=gen, dtype=torch.float64))
    raise ValueError(f"unknown kind {kind!r}; allowed 'gaussian', 'lowrank'")


def channel_scales(grads: Tensor, proj: Tensor | None = None, betas=BETAS, eps: float = EPS) -> Tensor:
    """s_j = ‖X̃_j‖ / ‖X_{t,j}‖ after the whole sequence, X = G (``proj`` None) or X = project(G, P).

    Shaped as :func:`zoo.projection.channel_norm` returns it: (m, 1) when rows are kept, (1, n)
    otherwise. Uses the zoo's ``project`` and ``channel_norm``; no 1e-8 in the denominator (the
    gradients here are far from zero)."""
    beta1, beta2 = betas
    shape = grads.shape[1:]
    m = v = x = None
    for grad in grads:
        x = grad if proj is None else project(grad, proj)
        m = (1 - beta1) * x if m is None else beta1 * m + (1 - beta1) * x
        v = (1 - beta2) * x * x if v is None else beta2 * v + (1 - beta2) * x * x
    normed = m / (v.sqrt() + eps)
    return channel_norm(normed, shape) / channel_norm(x, shape)


def scale_ratios(grads: Tensor, rank: int, seed: int, full: Tensor | None = None,
                 betas=BETAS, eps: float = EPS) -> Tensor:
    """s^R_j / s_j for every channel (flattened), with P = zoo.projection.gaussian(shape, rank,
    seed) fixed over the sequence. ``full`` may pass precomputed full-space s_j."""
    shape = tuple(grads.shape[1:])
    proj = gaussian(shape, rank, seed, "cpu", grads.dtype)
    full = channel_scales(grads, None, betas, eps) if full is None else full
    return (channel_scales(grads, proj, betas, eps) / full).flatten()


def coverage_table(ranks: Sequence[int] | None = None, kinds=("gaussian", "lowrank"),
                   shape=(256, 512), t: int = 3, delta: float = 0.2, eps: float | None = None,
                   trials: int = 40, seed: int = 0, betas=BETAS, adam_eps: float = EPS) -> pd.DataFrame:
    """Empirical coverage of Theorem A.4 per gradient kind and rank.

    For each kind one gradient sequence is drawn (``seed``); for each rank ``trials`` independent
    projections (seeds ``seed*10**6 + 1, 2, ...``) are drawn and the fraction of them with every
    channel's √(n/r)·s^R_j/s_j inside the interval is the coverage. ``eps=None`` uses, per rank,
    the smallest ε the condition allows (:func:`theorem_eps`); a given ``eps`` is used for every
    rank and the condition reported as it falls. Ranks default to n/8, n/4, n/2.

    Columns: kind, rank, n, r_over_n, eps, delta, t, condition, low, high, coverage (NaN when
    ε >= 1: no interval), mean_ratio and min_ratio/max_ratio (of √(n/r)·s^R/s over all channels and
    trials), raw_ratio (mean s^R/s) and sqrt_r_over_n.
    """
    n = compressed_dim(shape)
    ranks = [n // 8, n // 4, n // 2] if ranks is None else list(ranks)
    rows = []
    for kind in kinds:
        grads = gradient_sequence(kind, shape, t, seed)
        full = channel_scales(grads, None, betas, adam_eps)
        for rank in ranks:
            e = theorem_eps(rank, t, delta) if eps is None else float(eps)
            lo, hi = interval(e) if e < 1 else (math.nan, math.nan)
            inside, scaled_all = [], []
            for trial in range(trials):
                ratio = scale_ratios(grads, rank, seed * 10**6 + trial + 1, full, betas, adam_eps)
                scaled = ratio * math.sqrt(n / rank)
                scaled_all.append(scaled)
                inside.append(bool(((scaled >= lo) & (scaled <= hi)).all()) if e < 1 else math.nan)
            scaled_all = torch.cat(scaled_all)
            rows.append({
                "kind": kind, "rank": rank, "n": n, "r_over_n": rank / n, "eps": e, "delta": delta,
                "t": t, "condition": condition_holds(rank, e, t, delta), "low": lo, "high": hi,
                "coverage": float(np.mean(inside)) if e < 1 else math.nan,
                "mean_ratio": float(scaled_all.mean()), "min_ratio": float(scaled_all.min()),
                "max_ratio": float(scaled_all.max()),
                "raw_ratio": float(scaled_all.mean()) * math.sqrt(rank / n),
                "sqrt_r_over_n": math.sqrt(rank / n)})
    return pd.DataFrame(rows)
