"""Adan (Xie et al. 2022, "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
Models", arXiv 2208.06677, Algorithm 1), step for step as timm's ``Adan`` (``timm/optim/adan.py``,
adapted from sail-sg/Adan; the single-tensor path), with timm's defaults.

Step t, with ``d = g - g_prev`` the gradient difference (0 at the first step, where timm takes
``g_prev = g``)::

    m <- b1 * m + (1 - b1) * g
    s <- b2 * s + (1 - b2) * d
    n <- b3 * n + (1 - b3) * (g + b2 * d)^2
    D  = sqrt(n) / sqrt(1 - b3^t) + eps
    u  = m / (1 - b1^t) / D + b2 * s / (1 - b2^t) / D
    p <- (p - lr * u) / (1 + lr * wd)          (no_prox=False, the default: the proximal decay)
    p <- p * (1 - lr * wd) - lr * u            (no_prox=True: decoupled decay, as AdamW)

Algorithm 1 writes the betas as the weights of the new values (its 0.02, 0.08, 0.01 are timm's
0.98, 0.92, 0.99) and has no bias corrections; the authors' code (sail-sg/Adan) and timm divide
``m``, ``s`` and ``n`` by ``1 - b^t`` as above. As timm, the state keeps the negated previous
gradient (``neg_pre_grad``), also the scratch buffer of ``d`` and ``g + b2 * d``: four tensors of
the parameter's size.

Defaults (timm's): ``lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0, no_prox=False``.

**Choices.** The step count is the parameter's own (``state["step"]``, as torch.optim and every
zoo optimizer keep it), where timm counts steps per param group (``group["step"]``, advanced even
for parameters without a gradient): the two agree whenever every parameter has a gradient at every
step, and the per-parameter count is what per-layer updates (:mod:`zoo.layerwise`) need. timm's
``foreach`` multi-tensor path computes the same step and is not offered; the authors' code's global
gradient clip (``max_grad_norm``, off by default) is not in timm and not here (the runner clips).

The cautious twin masks, as timm's ``caution=True``, the first moment ``m`` against ``g`` (the
mask ``1[m * g > 0]``; ``D`` is positive, so this is the sign of the ``m`` term of the update);
the gradient-difference term ``b2 * s / (1 - b2^t) / D`` and the weight decay are not masked
(PAPERS.md §A.1). With ``b1 = 0``, ``m`` is ``g`` itself, so caution is refused there.
"""
from __future__ import annotations

import math

from torch import Tensor

from .base import ZooOptimizer, as_float, check_betas, check_bool, check_range
from .blocks import adam_denom, add_, addcdiv_, apply_, bias_correction, decay_, ema_sq_

__all__ = ["Adan", "adan_step"]


def adan_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, exp_avg_diff: Tensor,
              neg_pre_grad: Tensor, *, lr, bias_correction1, bias_correction2, bias_correction3_sqrt, beta1: float,
              beta2: float, beta3: float, eps: float, weight_decay: float, no_prox: bool, caution: bool,
              caution_norm) -> Tensor | None:
    """One tensor's step; ``neg_pre_grad`` holds ``-g_prev`` (``-g`` at the first step) and
    holds ``-g`` afterwards."""
    diff = neg_pre_grad.add_(grad)                 # d = g - g_prev
    add_(exp_avg.mul_(beta1), grad, 1 - beta1)
    add_(exp_avg_diff.mul_(beta2), diff, 1 - beta2)
    ema_sq_(exp_avg_sq, diff.mul_(beta2).add_(grad), beta3)   # (g + b2 * d)^2
    denom = adam_denom(exp_avg_sq, bias_correction3_sqrt, eps)
    if no_prox:
        decay_(param, lr, weight_decay)
    count = apply_(param, exp_avg, grad, -lr / bias_correction1, caution, caution_norm, denom=denom)
    addcdiv_(param, exp_avg_diff, denom, -lr * beta2 / bias_correction2)
    if not no_prox and weight_decay != 0:
        param.div_(1 + lr * weight_decay)
    neg_pre_grad.copy_(grad).neg_()
    return count


class Adan(ZooOptimizer):
    """Adan: Nesterov momentum from an EMA of the gradient and of its step-to-step difference,
    over the RMS of the Nesterov-extrapolated gradient; the arguments of timm's ``Adan`` (less
    ``foreach``), plus ``maximize``, ``caution_norm`` and ``compile``."""

    full_size_states = 4   # m, n, s, -g_prev
    state_keys = ("step", "exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad")
    low_bit_states = {"exp_avg": True, "exp_avg_sq": False, "exp_avg_diff": True}
    full_precision_states = {"neg_pre_grad": "is the previous gradient, subtracted from the next one: its quantization error would enter that difference at full size, not averaged as a moment's is"}

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0, no_prox: bool = False, *, maximize: bool = False,
                 caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, no_prox=no_prox, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        check_betas("betas", group["betas"], 3)
        check_range("eps", group["eps"])
        check_bool("no_prox", group["no_prox"])

    def _caution_noop_reason(self, group):
        if group["betas"][0] == 0:
            return "betas[0] is 0, so the masked first moment m is g itself"
        return None

    def _update_group(self, group, params):
        states = self._states(params, "exp_avg", "exp_avg_sq", "exp_avg_diff", "neg_pre_grad")
        beta1, beta2, beta3 = group["betas"]
        lr = as_float(group["lr"])
        for param, grad, state in zip(params, self._grads(group, params), states):
            step = state["step"]
            if step == 1:   # timm: g_prev = g, so the first difference is 0
                state["neg_pre_grad"].copy_(grad).neg_()
            self._run(adan_step, param, grad, state["exp_avg"], state["exp_avg_sq"], state["exp_avg_diff"],
                      state["neg_pre_grad"],
                      scalars=dict(lr=lr, bias_correction1=bias_correction(beta1, step),
                                   bias_correction2=bias_correction(beta2, step),
                                   bias_correction3_sqrt=math.sqrt(bias_correction(beta3, step))),
                      beta1=beta1, beta2=beta2, beta3=beta3, eps=group["eps"], weight_decay=group["weight_decay"],
                      no_prox=group["no_prox"], **self._caution_settings(group))
