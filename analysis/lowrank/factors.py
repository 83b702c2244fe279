"""The factors of the low-rank study: AdamW's element-wise scaling summarised per channel and for
the tensor (:func:`full_factors`), and APOLLO's estimates of them in a rank-r projection
(:func:`lowrank_factors`); the formulas are in :mod:`analysis.lowrank`'s docstring."""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor

from theory.apollo_bound import compressed_dim
from zoo.optimizers.lowrank import SCALE_EPS
from zoo.projection import channel_norm, gaussian, next_seed, project, rows_kept, top_singular

__all__ = ["BETAS", "EPS", "rank_sweep", "AdamFactors", "full_factors", "lowrank_factors"]

BETAS = (0.9, 0.999)
EPS = 1e-6
"""The zoo's APOLLO defaults (betas, eps)."""


def rank_sweep(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ranks = [2**k for k in range(n.bit_length()) if 2**k <= n]
    return ranks if ranks[-1] == n else ranks + [n]


def _check_grads(grads: Tensor) -> Tensor:
    if not isinstance(grads, Tensor) or grads.dim() != 3 or grads.shape[0] < 1:
        shape = tuple(grads.shape) if isinstance(grads, Tensor) else type(grads).__name__
        raise ValueError(f"grads must be a tensor [steps, m, n] with steps >= 1, got {shape}")
    return grads.to(torch.promote_types(grads.dtype, torch.float32))


def _adam_normalised(xs: Iterable[Tensor], betas, eps: float, bias_correction: bool) -> tuple[Tensor, Tensor]:
    """(X̃ after the sequence, its last X), in the zoo's operation order."""
    beta1, beta2 = betas
    m = v = last = None
    count = 0
    for last in xs:
        m = torch.zeros_like(last) if m is None else m
        v = torch.zeros_like(last) if v is None else v
        m.mul_(beta1).add_(last, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(last, last, value=1 - beta2)
        count += 1
    if bias_correction:
        m.div_(1 - beta1**count)
        v.div_(1 - beta2**count)
    return m / v.sqrt_().add_(eps), last


@dataclass(frozen=True)
class AdamFactors:
    """AdamW's factors after a window, and what the direction cosines need.

    ``channel`` s_j (C,), ``tensor`` s; ``inner`` ⟨G_{t,j}, G̃_j⟩ and ``grad_sq`` ‖G_{t,j}‖² per
    channel (C,); ``update_norm`` ‖G̃‖."""
    channel: Tensor
    tensor: Tensor
    inner: Tensor
    grad_sq: Tensor
    update_norm: Tensor

    def cosine(self, factors: Tensor) -> Tensor:
        """cos(G_t·s', G̃) for channel factors ``factors`` (..., C)."""
        factors = factors.to(self.inner.dtype)
        return (factors @ self.inner) / ((factors.square() @ self.grad_sq).sqrt() * self.update_norm)


def full_factors(grads: Tensor, betas=BETAS, eps: float = EPS, *, bias_correction: bool = True,
                 scale_eps: float = SCALE_EPS) -> AdamFactors:
    """AdamW's channel-wise and tensor-wise factors for ``grads`` [steps, m, n] (module docstring)."""
    grads = _check_grads(grads)
    shape = grads.shape[1:]
    normed, last = _adam_normalised(grads, betas, eps, bias_correction)
    grad_norm = channel_norm(last, shape)
    channel = channel_norm(normed, shape) / (grad_norm + scale_eps)
    inner = (normed * last).sum(dim=1 if rows_kept(shape) else 0)
    grad_sq = grad_norm.square().flatten()
    update_norm = normed.square().sum().sqrt()
    tensor = update_norm / (grad_sq.sum().sqrt() + scale_eps)
    return AdamFactors(channel.flatten(), tensor, inner, grad_sq, update_norm)


def _check_ranks(ranks, n: int) -> list[int]:
    ranks = list(ranks)
    if not ranks or any(isinstance(r, bool) or not isinstance(r, numbers.Integral) or not 1 <= r <= n for r in ranks):
        raise ValueError(f"Invalid ranks: {ranks!r}; allowed ints in [1, {n}] (n = the compressed dimension)")
    return [int(r) for r in ranks]


def _periods(steps: int, gap: int | None) -> list[range]:
    if gap is not None and (isinstance(gap, bool) or not isinstance(gap, numbers.Integral) or gap < 1):
        raise ValueError(f"Invalid gap: {gap!r}; allowed an int >= 1, or None (one projection per window)")
    gap = gap or steps
    return [range(start, min(start + gap, steps)) for start in range(0, steps, gap)]


def _projections(proj, grads: Tensor, ranks: list[int], period: range, seed: int) -> Tensor:
    """The projections of all ``ranks`` for one period, stacked along the rank axis (Σr, n)."""
    shape = grads.shape[1:]
    if isinstance(proj, Tensor):
        return proj.to(grads.dtype)
    if proj == "svd":   # one SVD: its first r rows are top_singular(grad, r) for every r
        full = top_singular(grads[period.start], max(ranks))
        return torch.cat([full[:r] for r in ranks])
    return torch.cat([gaussian(shape, r, seed, grads.device, grads.dtype) for r in ranks])


def lowrank_factors(grads: Tensor, ranks: Sequence[int], proj="random", *, seed: int = 0,
                    gap: int | None = None, betas=BETAS, eps: float = EPS, bias_correction: bool = True,
                    scale_eps: float = SCALE_EPS) -> tuple[Tensor, Tensor]:
    """APOLLO's estimates for every rank: (s^R_j as [len(ranks), C], s^R as [len(ranks)]).

    ``proj``: ``"random"`` (:func:`zoo.projection.gaussian`, ``seed`` for the first period, then
    :func:`zoo.projection.next_seed`), ``"svd"`` (:func:`zoo.projection.top_singular` of the
    gradient at each refresh) or a fixed tensor P of shape (r, n) (then ``ranks`` must be [r]).
    ``gap``: refresh every ``gap`` steps of the window (None: one projection for the window).
    """
    grads = _check_grads(grads)
    shape = grads.shape[1:]
    ranks = _check_ranks(ranks, compressed_dim(shape))
    if isinstance(proj, Tensor):
        if proj.dim() != 2 or proj.shape[1] != compressed_dim(shape) or ranks != [proj.shape[0]]:
            raise ValueError(f"a fixed projection must have shape (r, {compressed_dim(shape)}) with "
                             f"ranks == [r]; got {tuple(proj.shape)} and ranks {ranks}")
    elif proj not in ("random", "svd"):
        raise ValueError(f"Invalid proj: {proj!r}; allowed 'random', 'svd' or a tensor (r, n)")

    def projected():
        period_seed = seed
        for k, period in enumerate(_periods(len(grads), gap)):
            period_seed = next_seed(period_seed) if k else period_seed
            stacked = _projections(proj, grads, ranks, period, period_seed)
            for i in period:
                yield project(grads[i], stacked)

    normed, last = _adam_normalised(projected(), betas, eps, bias_correction)
    axis = 1 if rows_kept(shape) else 0
    normed_sq = torch.stack([channel_norm(x, shape).flatten() for x in normed.split(ranks, dim=axis)]).square()
    last_sq = torch.stack([channel_norm(x, shape).flatten() for x in last.split(ranks, dim=axis)]).square()
    channel = normed_sq.sqrt() / (last_sq.sqrt() + scale_eps)
    tensor = normed_sq.sum(dim=1).sqrt() / (last_sq.sum(dim=1).sqrt() + scale_eps)
    return channel, tensor
