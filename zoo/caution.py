"""The cautious rule (PAPERS.md §A.1), written once; every optimizer in the zoo calls it.

For an optimizer that would apply ``p <- p - lr * u`` with ``g`` the current gradient::

    mask  = 1[u * g > 0]                       (elementwise, per parameter tensor)
    p    <- p - lr * (u * phi(mask))

with ``phi`` chosen by the normalisation:

``"mean"`` (default, the reference code and timm)
    ``phi = mask / max(mean(mask), 1e-3)``: the kept coordinates are rescaled so the update keeps
    its average size; the scale is always >= 1.
``"paper"`` (Algorithm 2 of the paper)
    ``phi = mask * numel / (nnz + 1)``; the scale is < 1 when every coordinate agrees, which
    breaks condition (6) of Theorem 2.1 in that corner.
a float ``c`` (the soft family of the ablations)
    ``phi = 1[x > 0] - c * 1[x <= 0]``: disagreeing coordinates are reversed and shrunk by ``c``
    (``c = 0`` is the plain unscaled mask). No rescaling.
a callable ``mask(update, grad) -> phi`` (for research: Theorem 2.4's sigma-mask, the
    inner-product mask of Theorem A.5, ...)
    ``phi`` is used as returned (a tensor broadcastable to ``update``). It receives the tensor the
    optimizer passes as ``update``: the update direction itself for SGD, Lion, Signum, ADOPT,
    Adafactor, GaLore, Fira and Muon (before orthogonalisation), but Adam's first moment ``m``
    (whose sign, not size, is the update's) and LaProp's ``m``.

Only the applied update is masked; momentum states are never touched. Decoupled weight decay is
not masked (each optimizer applies it before the cautious update).
"""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

__all__ = ["caution", "caution_mask", "mask_and_count", "check_norm", "MEAN_CLAMP"]

MEAN_CLAMP = 1e-3
"""Lower clamp of mean(mask) in the "mean" normalisation."""


def check_norm(norm) -> None:
    """Raise ``ValueError`` unless ``norm`` is "mean", "paper", a finite float c >= 0 or a callable."""
    if callable(norm):
        return
    if isinstance(norm, str):
        if norm in ("mean", "paper"):
            return
    elif isinstance(norm, Real) and not isinstance(norm, bool) and math.isfinite(norm) and norm >= 0:
        return
    raise ValueError(
        f"Invalid caution_norm: {norm!r}; allowed: 'mean', 'paper', a float c >= 0 (soft mask phi_c) "
        "or a callable mask(update, grad) -> phi"
    )


def caution_mask(update: Tensor, grad: Tensor, norm="mean", counts: list | None = None, *,
                 sign_of: Tensor | None = None) -> Tensor:
    """The scaled mask ``phi`` of the rule: the cautious update is ``phi * update``.

    Returned as a new tensor of ``update``'s dtype, so an optimizer can fuse the final product
    into its parameter update (``p.addcmul_(phi, u, value=-lr)``). ``update`` may be any tensor
    whose sign agrees elementwise with the real update direction (for Adam the first moment: its
    denominator is positive); ``grad`` is the gradient it is compared with; ``sign_of`` (default
    ``update``) is the tensor whose agreement with ``grad`` builds the mask, for an optimizer
    whose reference masks one tensor by the signs of another (Muon: the momentum buffer's).
    When ``counts`` is a list, ``(number of aligned coordinates as a 0-d tensor, numel)`` is
    appended to it, without a device synchronisation (:func:`mask_and_count` returns it).
    """
    phi, count = mask_and_count(update, grad, norm, sign_of=sign_of)
    if counts is not None:
        counts.append((count, update.numel()))
    return phi


def mask_and_count(update: Tensor, grad: Tensor, norm="mean", *, sign_of: Tensor | None = None,
                   out: Tensor | None = None):
    """``(phi, count)``: :func:`caution_mask` and the number of coordinates it keeps (nonzero
    for a callable), a 0-d tensor counted in float64 for float64 tensors, else float32 (exact
    below 2^24 per tensor). ``phi`` is written into ``out`` where given (a tensor of
    ``update``'s shape and dtype)."""
    kind = torch.promote_types(update.dtype, torch.float32)
    if callable(norm):   # a fresh tensor: the callable may return a view or a broadcast
        phi = (torch.empty_like(update) if out is None else out).copy_(norm(update, grad))
        return phi, (phi != 0).sum(dtype=kind)
    # one temporary, reused in place: sign(u) * g (exact, unlike u * g, which can underflow to 0
    # in low precision), then the 0/1 mask, then phi
    source = update if sign_of is None else sign_of
    phi = (torch.sign(source) if out is None else torch.sign(source, out=out)).mul_(grad).gt_(0)
    n = update.numel()
    count = phi.sum(dtype=kind)
    if norm == "mean":
        return phi.mul_(n / count.clamp(min=MEAN_CLAMP * n)), count
    if norm == "paper":
        return phi.mul_(n / (count + 1)), count
    return phi.mul_(1 + norm).sub_(norm), count


def caution(update: Tensor, grad: Tensor, norm="mean", counts: list | None = None, *,
            sign_of: Tensor | None = None) -> Tensor:
    """The cautious version of ``update``: ``caution_mask(...) * update`` (a new tensor; the
    inputs are not modified). Arguments as :func:`caution_mask`."""
    return caution_mask(update, grad, norm, counts, sign_of=sign_of).mul_(update)
