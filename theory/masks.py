"""Checks of a cautious mask φ against the conditions of Theorem 2.1 (PAPERS.md §A.2).

With ``x = u ∘ g`` (update times gradient, elementwise) and the cautious step ``-ε φ(x) ∘ u``:

- condition (6), coordinate-wise:  φ_i(x) >= 1 where x_i > 0  and  φ_i(x) <= 0 where x_i < 0
  (nothing is required where x_i = 0);
- ``xᵀφ(x) >= 0``: the loss L is itself a Lyapunov function (dL/dt <= 0);
- ``xᵀ(1 - φ(x)) <= 0``: H and L decrease at least as fast as under the base dynamics.

(6) implies the other two; they do not imply (6) (the inner-product mask ``1[Σx >= 0]`` satisfies
both but not (6)).

:func:`zoo_mask` turns a zoo ``caution_norm`` into φ(x) computed by :func:`zoo.caution.caution_mask`
itself, so :func:`check_mask` checks what the zoo really does. Reference results (see
``tests/test_theory_masks.py``):

- ``"mean"``: satisfies all three (its scale ``n / max(nnz, 1e-3 n)`` is >= 1).
- ``"paper"``: violates (6) and ``xᵀ(1 - φ) <= 0`` exactly when every coordinate agrees
  (x > 0 everywhere): the scale is ``n / (n + 1) < 1``; ``xᵀφ >= 0`` holds.
- soft ``φ_c`` (``c >= 0``: 1 where x > 0, ``-c`` where x <= 0): satisfies all three
  (1 >= 1; -c <= 0; ``xᵀφ = Σ_{x>0} x - c Σ_{x<0} x >= 0``; ``xᵀ(1-φ) = (1+c) Σ_{x<0} x <= 0``).
- ``0.5 · 1[x > 0]``: violates (6) and ``xᵀ(1 - φ) <= 0``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from zoo.caution import caution_mask, check_norm

__all__ = ["MaskReport", "check_mask", "zoo_mask", "soft_mask", "inner_product_mask",
           "condition_6_holds", "probe_vectors"]

Mask = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class MaskReport:
    """The verdict of :func:`check_mask` on one φ.

    ``condition_6``: coordinate-wise condition (6) held on every tested x; ``inner_nonneg``:
    ``xᵀφ(x) >= 0`` held; ``faster_than_base``: ``xᵀ(1 - φ(x)) <= 0`` held. ``counterexample`` is
    the first x that broke one of them (condition (6) preferred), else None; ``note`` says what
    failed where. ``checked`` is the number of x tested.
    """

    name: str
    condition_6: bool
    inner_nonneg: bool
    faster_than_base: bool
    counterexample: np.ndarray | None
    note: str
    checked: int = 0

    @property
    def ok(self) -> bool:
        return self.condition_6 and self.inner_nonneg and self.faster_than_base


def zoo_mask(norm) -> Mask:
    """φ(x) as the zoo computes it on one tensor for ``caution_norm=norm``.

    Calls :func:`zoo.caution.caution_mask` with ``update = x`` and ``grad = 1`` (so
    ``update ∘ grad = x``), in float64. For "mean", "paper" and a float c the zoo's φ depends on
    ``u ∘ g`` only, so any factorisation of x gives the same φ (tested). A callable norm
    ``mask(update, grad)`` is evaluated at ``(x, 1)``: that is φ(x) only for a callable that
    depends on ``update ∘ grad`` alone.
    """
    check_norm(norm)

    def phi(x) -> np.ndarray:
        u = torch.as_tensor(np.asarray(x, dtype=np.float64))
        return caution_mask(u, torch.ones_like(u), norm).numpy()

    phi.__name__ = f"zoo_mask({getattr(norm, '__name__', repr(norm))})"
    return phi


def soft_mask(c: float) -> Mask:
    """The soft family of the ablations, written from the formula: φ_c = 1[x>0] - c·1[x<=0]."""
    return lambda x: np.where(np.asarray(x) > 0, 1.0, -float(c))


def inner_product_mask(x) -> np.ndarray:
    """φ(x) = 1[Σ x_i >= 0] on every coordinate (Theorem A.5's mask 1[uᵀg >= 0])."""
    x = np.asarray(x, dtype=np.float64)
    return np.full_like(x, float(x.sum() >= 0))


def condition_6_holds(x, phi, tol: float = 0.0) -> bool:
    """Condition (6) at one x: φ_i >= 1 - tol where x_i > 0 and φ_i <= tol where x_i < 0."""
    x, phi = np.asarray(x), np.broadcast_to(np.asarray(phi, dtype=np.float64), np.shape(x))
    return bool(np.all(phi[x > 0] >= 1 - tol) and np.all(phi[x < 0] <= tol))


def probe_vectors(dims=(1, 2, 3, 5, 10), samples: int = 200, seed: int = 0, exhaustive_max: int = 5):
    """The x vectors :func:`check_mask` tries, in order: for each n in ``dims`` the corners (all
    coordinates agree, none agree, all zero, one zero among agreeing ones, one disagreeing among
    agreeing ones), every sign pattern in {-1, 0, +1}^n when n <= ``exhaustive_max`` (with random
    magnitudes), then ``samples`` random draws (Gaussian, with random zeros and magnitudes over
    several decades)."""
    rng = np.random.default_rng(seed)
    for n in dims:
        mags = rng.uniform(0.1, 10.0, n)
        yield mags                                   # every coordinate agrees
        yield -mags                                  # none agrees
        yield np.zeros(n)                            # no information at all
        if n > 1:
            yield np.concatenate([[0.0], mags[1:]])      # agreeing, one zero
            yield np.concatenate([[-mags[0]], mags[1:]])  # agreeing, one against
        if n <= exhaustive_max:
            for signs in itertools.product((-1.0, 0.0, 1.0), repeat=n):
                yield np.array(signs) * rng.uniform(0.1, 10.0, n)
        for _ in range(samples):
            x = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n)
            x[rng.random(n) < 0.1] = 0.0
            yield x


def _describe(x: np.ndarray) -> str:
    pos, neg = int((x > 0).sum()), int((x < 0).sum())
    n = x.size
    if pos == n:
        return "every coordinate agrees"
    if neg == n:
        return "no coordinate agrees"
    if pos == neg == 0:
        return "x = 0"
    return f"{pos} of {n} coordinates agree, {neg} disagree"


def check_mask(mask: Mask, name: str | None = None, dims=(1, 2, 3, 5, 10), samples: int = 200,
               seed: int = 0, rtol: float = 1e-12) -> MaskReport:
    """Check φ = ``mask`` (x -> φ(x), a float64 vector or anything broadcastable to x) against
    condition (6), ``xᵀφ >= 0`` and ``xᵀ(1-φ) <= 0`` on :func:`probe_vectors`.

    The inner products are compared with a round-off allowance ``rtol · Σ|x_i| · (1 + |φ_i|)``;
    condition (6) is checked exactly (φ_i >= 1 must hold in floating point).
    """
    name = name or getattr(mask, "__name__", repr(mask))
    ok6 = ok_inner = ok_fast = True
    first: dict[str, np.ndarray] = {}
    notes: list[str] = []
    checked = 0
    for x in probe_vectors(dims, samples, seed):
        checked += 1
        phi = np.broadcast_to(np.asarray(mask(x), dtype=np.float64), x.shape)
        slack = rtol * float(np.sum(np.abs(x) * (1.0 + np.abs(phi))))
        if not condition_6_holds(x, phi):
            if ok6:
                bad_pos = (x > 0) & (phi < 1)
                i = int(np.argmax(bad_pos)) if bad_pos.any() else int(np.argmax((x < 0) & (phi > 0)))
                notes.append(f"condition (6) fails when {_describe(x)} (n = {x.size}): "
                             f"x_{i} = {x[i]:.3g}, phi_{i} = {phi[i]:.6g}")
                first["6"] = x.copy()
            ok6 = False
        inner = float(x @ phi)
        if inner < -slack:
            if ok_inner:
                notes.append(f"x^T phi = {inner:.3g} < 0 when {_describe(x)} (n = {x.size})")
                first["inner"] = x.copy()
            ok_inner = False
        excess = float(x @ (1.0 - phi))
        if excess > slack:
            if ok_fast:
                notes.append(f"x^T (1 - phi) = {excess:.3g} > 0 when {_describe(x)} (n = {x.size})")
                first["fast"] = x.copy()
            ok_fast = False
    counter = first.get("6", first.get("inner", first.get("fast")))
    note = "; ".join(notes) if notes else f"all conditions hold on {checked} vectors"
    return MaskReport(name, ok6, ok_inner, ok_fast, counter, note, checked)
