"""Muon (Jordan et al. 2024): orthogonalised momentum for matrices, AdamW for everything else.

For a matrix parameter (2-D, or a higher-rank tensor flattened to ``(shape[0], -1)``), step t::

    B <- mu * B + (1 - mu) * g
    U  = (1 - mu) * g + mu * B    (nesterov)   or   U = B
    O  = NS5(U)                   Newton-Schulz quintic on U / max(||U||_F, eps), in ``ns_dtype``
    p <- p * (1 - lr * wd)
    p <- p - lr * adjust(shape) * O
    adjust = sqrt(max(1, A / B))  ("original")   or   0.2 * sqrt(max(A, B))  ("match_rms_adamw")

as torch.optim.Muon. A matrix sharded by FSDP2 is gathered once per step (one all-gather),
orthogonalised whole on every rank, and each rank keeps its shard of O. The cautious twin
masks U *before* orthogonalisation with the mask 1[B * g > 0] of the updated momentum buffer,
as the reference code (C-Optim ``c_muon.py``) does (PAPERS.md §A.1); the decay is not masked.

Parameters that are not matrices, and every parameter of a group with ``use_muon=False``
(:func:`zoo.create` sets it on the biases, norms and embeddings; an output head must be put in
such a group by hand), are updated by AdamW
(:func:`zoo.optimizers.adam.adam`) with ``adamw_betas``, ``adamw_eps`` and the group's ``lr``
times ``adamw_lr_ratio``; caution applies to them too.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..caution import mask_and_count
from ..sharding import as_shard, is_dtensor
from .adam import adam_steps
from .base import ZooOptimizer, as_float, check_betas, check_bool, check_range
from .blocks import add_

__all__ = ["Muon", "muon_step", "newton_schulz"]

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(matrix: Tensor, steps: int = 5, coefficients=NS_COEFFICIENTS, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Approximate the orthogonal polar factor U V^T of ``matrix`` (2-D) by a quintic iteration
    X <- a X + (b A + c A^2) X with A = X X^T, started from X / max(||X||_F, eps)."""
    a, b, c = coefficients
    x = matrix.to(dtype, copy=True)   # never normalise the caller's tensor (the momentum buffer) in place
    tall = matrix.size(0) > matrix.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _adjusted_lr(lr: float, adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1, rows / cols))


def muon_step(param: Tensor, grad: Tensor, buf: Tensor, *, lr, adjusted_lr, momentum: float, nesterov: bool,
              weight_decay: float, ns_coefficients, ns_steps: int, eps: float, ns_dtype: torch.dtype, caution: bool,
              caution_norm) -> Tensor | None:
    """One matrix's step; ``adjusted_lr`` is lr * adjust(shape)."""
    buf.lerp_(grad, 1 - momentum)
    update = grad.lerp(buf, momentum) if nesterov else buf
    count = None
    if caution:
        phi, count = mask_and_count(update, grad, caution_norm, sign_of=buf)
        update = phi.mul_(update)
    matrix = update.reshape(update.shape[0], -1)
    # sharded (FSDP2): gathered once, orthogonalised whole on every rank, each keeps its shard
    whole = matrix.full_tensor() if is_dtensor(matrix) else matrix
    ortho = newton_schulz(whole, ns_steps, ns_coefficients, eps, ns_dtype).view(param.shape)
    ortho = ortho if whole is matrix else as_shard(ortho, param)
    param.mul_(1 - lr * weight_decay)
    add_(param, ortho, -adjusted_lr)
    return count


class Muon(ZooOptimizer):
    """Muon for matrices with an AdamW fallback for the other parameters.

    On matrices it gives the results of ``torch.optim.Muon`` for the same arguments; unlike it,
    it accepts any parameter (non-matrices, or groups with ``use_muon=False``, get AdamW).
    """

    low_bit_states = {"momentum_buffer": True, "exp_avg": True, "exp_avg_sq": False}

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None, *,
                 ns_dtype: torch.dtype = torch.bfloat16, use_muon: bool | None = None,
                 adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-8,
                 adamw_lr_ratio: float = 1.0, maximize: bool = False, caution: bool = False,
                 caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype, use_muon=use_muon,
                        adamw_betas=adamw_betas, adamw_eps=adamw_eps, adamw_lr_ratio=adamw_lr_ratio,
                        maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        check_range("momentum", group["momentum"], 0.0, 1.0, high_open=True)
        check_range("eps", group["eps"])
        check_bool("nesterov", group["nesterov"])
        if not isinstance(group["ns_steps"], int) or not 0 <= group["ns_steps"] < 100:
            raise ValueError(f"Invalid ns_steps: {group['ns_steps']!r}; allowed an int in [0, 100)")
        if len(group["ns_coefficients"]) != 3:
            raise ValueError(f"Invalid ns_coefficients: {group['ns_coefficients']!r}; expected 3 numbers")
        if group["adjust_lr_fn"] not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"Invalid adjust_lr_fn: {group['adjust_lr_fn']!r}; allowed None, "
                             "'original', 'match_rms_adamw'")
        if group["ns_dtype"] not in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
            raise ValueError(f"Invalid ns_dtype: {group['ns_dtype']!r}; allowed a floating dtype")
        if group["use_muon"] not in (None, True, False):
            raise ValueError(f"Invalid use_muon: {group['use_muon']!r}; allowed None (matrices), True, False")
        if group["use_muon"] is True:
            for p in group["params"]:
                if p.dim() < 2:
                    raise ValueError(f"Invalid use_muon: True for a parameter of shape {tuple(p.shape)}; "
                                     "Muon needs parameters with at least 2 dimensions")
        check_betas("adamw_betas", group["adamw_betas"])
        check_range("adamw_eps", group["adamw_eps"])
        check_range("adamw_lr_ratio", group["adamw_lr_ratio"])

    @staticmethod
    def _orthogonalised(param: Tensor, group: dict) -> bool:
        return group["use_muon"] is not False and param.dim() >= 2

    def _formula_bytes(self, param, group):
        tensors = 1 if self._orthogonalised(param, group) else 2
        return tensors * param.numel() * param.element_size()

    def _state_keys(self, param, group):
        if self._orthogonalised(param, group):
            return {"momentum_buffer"}, set()
        return {"step", "exp_avg", "exp_avg_sq"}, set()

    def _caution_noop_reason(self, group):
        if group["momentum"] == 0 and group["use_muon"] is True:
            return "momentum is 0 and every parameter is orthogonalised gradient"
        return None

    def _update_group(self, group, params):
        grads = self._grads(group, params)
        matrices = [self._orthogonalised(p, group) for p in params]
        lr = as_float(group["lr"])
        for param, grad, matrix in zip(params, grads, matrices):
            if not matrix:
                continue
            state = self._state(param)
            if not state:
                self._zeros(state, "momentum_buffer", param, group["state_bits"])
            rows = param.shape[0]
            adjusted = _adjusted_lr(lr, group["adjust_lr_fn"], rows, param.numel() // rows)
            self._run(muon_step, param, grad, state["momentum_buffer"], scalars={"lr": lr, "adjusted_lr": adjusted},
                      momentum=group["momentum"], nesterov=group["nesterov"], weight_decay=group["weight_decay"],
                      ns_coefficients=group["ns_coefficients"], ns_steps=group["ns_steps"], eps=group["eps"],
                      ns_dtype=group["ns_dtype"], **self._caution_settings(group))
        rest = [i for i, is_matrix in enumerate(matrices) if not is_matrix]
        if rest:
            states = self._states([params[i] for i in rest], "exp_avg", "exp_avg_sq")
            adam_steps(self, group, [params[i] for i in rest], [grads[i] for i in rest], states,
                       lr_ratio=group["adamw_lr_ratio"], betas="adamw_betas", eps="adamw_eps", decoupled=True)
