"""SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv 2409.11321): Adam run
in the eigenbasis of Shampoo's preconditioners, as the official code (nikhilvyas/SOAP ``soap.py``) with its
defaults.

Each dimension i of a tensor whose size d_i is at most ``max_precond_dim`` (of a vector only with
``precondition_1d``) keeps Shampoo's statistic L_i (d_i x d_i, state ``GG_i``) and its eigenbasis Q_i (``Q_i``);
the other dimensions keep nothing (Q_i = I), so vectors are on plain Adam by default. With ``X x_i A`` the
product of a matrix A with X along its dimension i, and G_(i) G_(i)^T the contraction of G with itself over
every dimension but i (G G^T and G^T G for a matrix)::

    rotate(X) = X x_1 Q_1^T ... x_k Q_k^T      (into the eigenbasis: Q_L^T X Q_R for a matrix)
    back(X)   = X x_1 Q_1 ... x_k Q_k          (Q_L X Q_R^T)

The first step only sets the preconditioner up and moves nothing (as the reference, so that a basis never holds
the gradient it rotates)::

    L_i = (1 - b_s) G_(i) G_(i)^T,   Q_i = eigh(L_i), the eigenvectors by decreasing eigenvalue

and each later step is Adam's step t = 1, 2, ... (b_s = ``shampoo_beta``, or betas[1] when it is -1)::

    G' = rotate(G)
    m <- b1 m + (1 - b1) G';   v <- b2 v + (1 - b2) G'^2          (both kept in the eigenbasis)
    u  = back(m / (sqrt(v) + eps))
    u <- u / (1e-30 + rms(u))                                      (normalize_grads)
    p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) u                      (correct_bias; lr u without)
    p <- p (1 - lr wd)                                             (decoupled decay, after the update)
    L_i <- b_s L_i + (1 - b_s) G_(i) G_(i)^T
    when t is a multiple of precondition_frequency, the bases are refreshed:
        m <- back(m)                                               (with the old bases)
        for each preconditioned i:  o = argsort(diag(Q_i^T L_i Q_i), descending);  v <- v reordered by o
            along i;  Q_i <- qr(L_i Q_i[:, o]).Q                   (one power iteration)
        m <- rotate(m)                                             (with the new bases)

Choices:

- ``merge_dims=True`` (merging small dimensions before preconditioning) is not implemented and refused, and
  the reference's ``data_format``, which only matters when dimensions are merged, is left out.
- L_i and Q_i are kept, and eigh and QR computed, in the parameter's dtype promoted to float32 at least
  (float32 for bfloat16 to float32 weights, float64 for float64); the reference keeps them in torch's default
  dtype and decomposes in float32, in float64 only where eigh fails. Here too eigh is retried in float64
  where it fails; where that fails too (a non-finite gradient) the basis is NaN, so that the weight shows the
  bad gradient, as every zoo optimizer does, instead of the step raising. The first step adds ``0 * g`` to the
  weight for the same reason. m and v are in the parameter's dtype, as the reference's.
- The products (rotations, statistics) are taken on contiguous tensors, so that a weight's memory layout
  does not change its trajectory: Adam's division turns round-off in directions the gradient does not reach
  (the null space of a rank-deficient first statistic) into steps of full size, so a layout-dependent
  rounding would show in float32.
- The reference rotates m back to the parameter space and into the eigenbasis again after every step; with
  unchanged bases that round trip is the identity but for round-off, so here it is done only when the bases
  change.
- ``compile=True`` compiles the Adam step in the eigenbasis (the rotations, the moments, caution, the
  decay). The statistics L_i, their eigendecompositions and the refreshes (with the re-expression of m and v)
  stay eager: eigenvectors are ill-conditioned where eigenvalues are close, so a compiled kernel's round-off
  in L_i could turn a basis; eager, the bases of a compiled optimizer are those of an eager one bit for bit.
- FSDP2 (DTensor parameters sharded along dimension 0): the gradient of a preconditioned tensor is gathered
  whole once, rotated and accumulated into the statistics on every rank; m and v are sharded as the
  parameter (they are element-wise in the eigenbasis); Adam's direction is gathered once to be rotated back
  and each rank keeps its shard. Two all-gathers per preconditioned tensor per step (one at the first step,
  two more, of m and v, at a refresh); L_i and Q_i are plain tensors, the same on every rank.

The cautious twin masks the update u in the parameter space (rotated back from the eigenbasis, after
``normalize_grads``) against the gradient g; the moments and the weight decay are not masked.
"""
from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

from .. import lowbit
from ..sharding import as_shard, is_dtensor
from .base import ZooOptimizer, as_float, check_betas, check_bool, check_range
from .blocks import apply_, bias_correction, carry_nonfinite, decay_, ema_, ema_sq_

__all__ = ["SOAP", "soap_step", "rotate", "eigenbasis"]


def rotate(x: Tensor, bases, back: bool = False) -> Tensor:
    """``x`` into the eigenbasis (``x x_i Q_i^T`` along each dimension i), or ``back`` (``x x_i Q_i``);
    ``bases`` holds Q_i, or None for a dimension left as it is. Each step contracts dimension 0 and puts the
    result last, so the dimensions come back in their order (in the bases' dtype). ``x`` is made contiguous
    first, so that the products' rounding does not depend on its memory layout."""
    x = x.contiguous()
    for q in bases:
        x = x.movedim(0, -1) if q is None else torch.tensordot(x.to(q.dtype), q, dims=([0], [1 if back else 0]))
    return x


def eigenbasis(statistic: Tensor) -> Tensor:
    """The eigenvectors of ``statistic`` by decreasing eigenvalue (eigh of ``statistic + 1e-30 I``, as the
    reference; in float64 where it fails), or NaN where eigh fails in float64 too (a non-finite gradient)."""
    shifted = statistic + 1e-30 * torch.eye(statistic.shape[0], dtype=statistic.dtype, device=statistic.device)
    for dtype in dict.fromkeys((statistic.dtype, torch.float64)):
        try:
            return torch.linalg.eigh(shifted.to(dtype)).eigenvectors.flip(1).to(statistic.dtype).contiguous()
        except torch.linalg.LinAlgError:
            continue
    return torch.full_like(statistic, math.nan)


def soap_step(param: Tensor, grad: Tensor, whole_grad: Tensor | None, exp_avg: Tensor, exp_avg_sq: Tensor,
              bases: tuple, *, lr, step_size, beta1: float, beta2: float, eps: float, weight_decay: float,
              normalize_grads: bool, caution: bool, caution_norm) -> Tensor | None:
    """One tensor's Adam step in its eigenbasis ``bases`` (Q_i or None per dimension; empty when none is
    preconditioned); ``step_size`` is lr with the bias corrections. ``whole_grad``: the gradient of a
    sharded (FSDP2) preconditioned tensor, gathered; else None."""
    sharded = whole_grad is not None
    projected = rotate(whole_grad if sharded else grad, bases)
    projected = (as_shard(projected, param) if sharded else projected).to(exp_avg.dtype)
    ema_(exp_avg, projected, beta1)
    ema_sq_(exp_avg_sq, projected, beta2)
    direction = exp_avg / exp_avg_sq.sqrt().add_(eps)
    update = rotate(direction.full_tensor() if sharded else direction, bases, back=True)
    if normalize_grads:
        update = update / (1e-30 + update.square().mean().sqrt())
    if sharded:
        update = as_shard(update, param)
    count = apply_(param, update, grad, -step_size, caution, caution_norm)
    decay_(param, lr, weight_decay)
    return count


class SOAP(ZooOptimizer):
    """SOAP: Adam in the eigenbasis of Shampoo's preconditioner, refreshed every ``precondition_frequency``
    steps; the arguments and defaults of the official ``SOAP`` (``merge_dims=False`` only)."""

    low_bit_states = {"exp_avg": True, "exp_avg_sq": False}
    full_precision_states = {"Q_i": "are the preconditioner's eigenbases (quantizing them would break their "
                                    "orthogonality), with their statistics GG_i, which are not of the parameter's size"}

    def __init__(self, params, lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95),
                 shampoo_beta: float = -1, eps: float = 1e-8, weight_decay: float = 0.01,
                 precondition_frequency: int = 10, max_precond_dim: int = 10000, merge_dims: bool = False,
                 precondition_1d: bool = False, normalize_grads: bool = False, correct_bias: bool = True, *,
                 maximize: bool = False, caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay,
                        precondition_frequency=precondition_frequency, max_precond_dim=max_precond_dim,
                        merge_dims=merge_dims, precondition_1d=precondition_1d, normalize_grads=normalize_grads,
                        correct_bias=correct_bias, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        check_betas("betas", group["betas"])
        beta = group["shampoo_beta"]
        if isinstance(beta, bool) or not isinstance(beta, Real) or not (beta == -1 or 0 <= beta < 1):
            raise ValueError(f"Invalid shampoo_beta: {beta!r}; allowed -1 (betas[1]) or a number in [0, 1)")
        check_range("eps", group["eps"])
        for key, low in (("precondition_frequency", 1), ("max_precond_dim", 0)):
            value = group[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Invalid {key}: {value!r}; allowed an int >= {low}")
        for key in ("merge_dims", "precondition_1d", "normalize_grads", "correct_bias"):
            check_bool(key, group[key])
        if group["merge_dims"]:
            raise ValueError("Invalid merge_dims: True (merging small dimensions before preconditioning) is not "
                             "implemented; pass merge_dims=False")

    @staticmethod
    def _preconditioned(param: Tensor, group: dict) -> list[int]:
        """The dimensions of ``param`` with a preconditioner: those of size at most max_precond_dim (of a
        vector only with precondition_1d)."""
        if param.dim() == 1 and not group["precondition_1d"]:
            return []
        return [i for i, size in enumerate(param.shape) if size <= group["max_precond_dim"]]

    def _state_keys(self, param, group):
        dims = self._preconditioned(param, group)
        return {"step", "exp_avg", "exp_avg_sq", *(f"GG_{i}" for i in dims), *(f"Q_{i}" for i in dims)}, set()

    def _formula_bytes(self, param, group):
        squares = sum(param.shape[i] ** 2 for i in self._preconditioned(param, group))
        return 2 * param.numel() * param.element_size() + 2 * squares * _precision(param).itemsize

    def _caution_noop_reason(self, group):
        if group["betas"][0] == 0 and not any(self._preconditioned(p, group) for p in group["params"]):
            return "betas[0] is 0 and no dimension is preconditioned, so the update is g over a positive denominator"
        return None

    def _loaded(self, state_dict: dict) -> None:
        # the statistics and bases keep the dtype they were saved in (torch.optim casts every state
        # tensor to its parameter's dtype: a bfloat16 weight's float32 bases would be rounded)
        for _, saved, state in self._loaded_states(state_dict):
            for key, value in saved.items():
                if key.startswith(("GG_", "Q_")) and value.dtype != state[key].dtype:
                    state[key] = value.to(device=state[key].device)

    def _update_group(self, group, params):
        beta1, beta2 = group["betas"]
        shampoo_beta = beta2 if group["shampoo_beta"] == -1 else group["shampoo_beta"]
        lr = as_float(group["lr"])
        for param, grad in zip(params, self._grads(group, params)):
            state, dims = self._state(param), self._preconditioned(param, group)
            whole = grad.full_tensor() if dims and is_dtensor(grad) else None
            full = grad if whole is None else whole
            if not state:   # the first step sets the preconditioner up and moves nothing
                state["step"] = 0
                for key in ("exp_avg", "exp_avg_sq"):
                    self._zeros(state, key, param, group["state_bits"])
                for i in dims:
                    state[f"GG_{i}"] = torch.zeros((param.shape[i],) * 2, dtype=_precision(param), device=full.device)
                _accumulate(state, full, dims, shampoo_beta)
                for i in dims:
                    state[f"Q_{i}"] = eigenbasis(state[f"GG_{i}"])
                carry_nonfinite(param, grad)
                continue
            state["step"] += 1
            step = state["step"]
            step_size = lr
            if group["correct_bias"]:
                step_size = lr * math.sqrt(bias_correction(beta2, step)) / bias_correction(beta1, step)
            self._run(soap_step, param, grad, whole, state["exp_avg"], state["exp_avg_sq"],
                      _bases(state, param, dims), scalars=dict(lr=lr, step_size=step_size), beta1=beta1,
                      beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                      normalize_grads=group["normalize_grads"], **self._caution_settings(group))
            _accumulate(state, full, dims, shampoo_beta)
            if dims and step % group["precondition_frequency"] == 0:
                _refresh(state, param, dims, group["state_bits"])


def _precision(param: Tensor) -> torch.dtype:
    """The dtype of a parameter's statistics and bases: its own, float32 at least."""
    return torch.promote_types(param.dtype, torch.float32)


def _bases(state: dict, param: Tensor, dims: list[int]) -> tuple:
    """Q_i or None per dimension of ``param``; empty when no dimension is preconditioned."""
    return tuple(state.get(f"Q_{i}") for i in range(param.dim())) if dims else ()


def _accumulate(state: dict, grad: Tensor, dims: list[int], beta: float) -> None:
    """``L_i <- beta L_i + (1 - beta) G_(i) G_(i)^T`` for each preconditioned dimension i (``grad`` whole)."""
    for i in dims:
        statistic = state[f"GG_{i}"]
        g = grad.to(statistic.dtype).contiguous()
        others = [d for d in range(g.dim()) if d != i]
        statistic.lerp_(torch.tensordot(g, g, dims=(others, others)), 1 - beta)


def _refresh(state: dict, param: Tensor, dims: list[int], bits: int) -> None:
    """New bases by one power iteration and a QR each, with v reordered by the estimated eigenvalues and m
    re-expressed in the new bases, as the reference; m and v of a sharded tensor are gathered whole."""
    with lowbit.unpacked(state, SOAP.low_bit_states, bits, param.dtype) as moments:
        _change_bases(state, param, dims, moments["exp_avg"], moments["exp_avg_sq"])


def _change_bases(state: dict, param: Tensor, dims: list[int], exp_avg: Tensor, exp_avg_sq: Tensor) -> None:
    """The change of bases of :func:`_refresh` on the (dequantized) moments."""
    sharded = is_dtensor(exp_avg)
    momentum = rotate(exp_avg.full_tensor() if sharded else exp_avg, _bases(state, param, dims), back=True)
    second = exp_avg_sq.full_tensor() if sharded else exp_avg_sq
    for i in dims:
        statistic, basis = state[f"GG_{i}"], state[f"Q_{i}"]
        order = torch.argsort(torch.diagonal(basis.T @ statistic @ basis), descending=True)
        second = second.index_select(i, order)
        state[f"Q_{i}"] = torch.linalg.qr(statistic @ basis[:, order]).Q.contiguous()
    momentum = rotate(momentum, _bases(state, param, dims))
    exp_avg.copy_(as_shard(momentum, exp_avg) if sharded else momentum)
    exp_avg_sq.copy_(as_shard(second, exp_avg_sq) if sharded else second)
