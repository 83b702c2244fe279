"""Low-rank projections of a 2-D gradient, written once for APOLLO, GaLore and Fira (PAPERS.md §B).

For a weight of shape (m, n) the "std" side compresses the smaller dimension:

- m >= n (rows kept): P has shape (r, n), R = G Pᵀ is (m, r), back-projection N P; one channel
  per row.
- m < n (columns kept): P has shape (r, m), R = P G is (r, n), back-projection Pᵀ N; one
  channel per column.

The rank actually used is min(rank, smaller dimension) (:func:`effective_rank`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["rows_kept", "effective_rank", "gaussian", "top_singular", "project", "project_back",
           "channel_norm", "next_seed"]


def rows_kept(shape) -> bool:
    """True when the rows are kept and the columns compressed (m >= n)."""
    return shape[0] >= shape[1]


def effective_rank(shape, rank: int) -> int:
    """The rank used for a weight of ``shape``: at most its smaller dimension."""
    return min(rank, shape[0], shape[1])


def next_seed(seed: int) -> int:
    """The seed of the next projection period, as the APOLLO reference code advances it: the
    last of 15 int64 draws of a CPU generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return int(torch.randint(0, torch.iinfo(torch.int64).max, (15,), generator=gen)[-1])


def gaussian(shape, rank: int, seed: int, device, dtype) -> Tensor:
    """The random projection of PAPERS.md §B.1: entries N(0, 1/r), shape (r, compressed dim),
    drawn in float32 (float64 for float64) from a generator seeded with ``seed`` on ``device``
    (CPU and CUDA draw different, equally distributed, matrices). The draw order is the APOLLO
    reference's: an (r, n) matrix when rows are kept, an (m, r) one, transposed, otherwise."""
    r = effective_rank(shape, rank)
    if torch.device(device).type == "meta":   # shapes only (memory accounting without memory)
        return torch.empty(r, shape[1] if rows_kept(shape) else shape[0], device=device, dtype=dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    draw_dtype = torch.promote_types(dtype, torch.float32)
    if rows_kept(shape):
        proj = torch.randn(r, shape[1], generator=gen, device=device, dtype=draw_dtype)
    else:
        proj = torch.randn(shape[0], r, generator=gen, device=device, dtype=draw_dtype).T
    return proj.div_(math.sqrt(r)).to(dtype)


def top_singular(grad: Tensor, rank: int) -> Tensor:
    """The SVD projection (PAPERS.md §B.1, §B.4), shape (r, compressed dim): the first r rows of
    Vᵀ when rows are kept, else the first r columns of U, transposed. Computed in at least
    float32 (torch has no half-precision SVD)."""
    matrix = grad.to(torch.promote_types(grad.dtype, torch.float32))
    # LAPACK refuses non-finite input; the step carries a non-finite gradient on to the weight
    u, _, vh = torch.linalg.svd(matrix.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0), full_matrices=False)
    r = effective_rank(grad.shape, rank)
    proj = vh[:r] if rows_kept(grad.shape) else u[:, :r].T
    # a copy of its own: a view would keep the whole SVD's storage alive in the optimizer state
    return proj.to(dtype=grad.dtype, memory_format=torch.contiguous_format, copy=True)


def project(grad: Tensor, proj: Tensor) -> Tensor:
    """R = G Pᵀ (rows kept) or P G (columns kept)."""
    return grad @ proj.T if rows_kept(grad.shape) else proj @ grad


def project_back(low: Tensor, proj: Tensor, shape) -> Tensor:
    """The full-size matrix of a low-rank ``low``: N P (rows kept) or Pᵀ N (columns kept)."""
    return low @ proj if rows_kept(shape) else proj.T @ low


def channel_norm(x: Tensor, shape) -> Tensor:
    """Per-channel norms of a low-rank ``x`` over its compressed axis, shaped to broadcast
    against the full weight: (m, 1) when rows are kept, (1, n) otherwise."""
    # sqrt of a sum of squares (several times faster on CPU than torch.norm along a dimension),
    # in at least float32 so that float16 squares cannot overflow
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    # sqrt out of place: under FSDP2 the sum is a partial sum across shards until it is read
    return x.square().sum(dim=1 if rows_kept(shape) else 0, keepdim=True).sqrt()
