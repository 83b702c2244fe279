"""RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond"), step for
step as torch.optim.RAdam.

Step t, with rho_inf = 2 / (1 - b2) - 1 and rho_t = rho_inf - 2 t b2^t / (1 - b2^t)::

    p <- p * (1 - lr * wd)        (decoupled_weight_decay)   |   g <- g + wd * p   (L2, default)
    m <- b1 * m + (1 - b1) * g;   v <- b2 * v + (1 - b2) * g^2
    rho_t > 5:  p <- p - lr * m / (1 - b1^t) * sqrt(1 - b2^t) / (sqrt(v) + eps) * r_t
                r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
    otherwise:  p <- p - lr * m / (1 - b1^t)         (the variance is not yet tractable)

The cautious twin masks ``m`` against ``g`` (every factor after it is positive), PAPERS.md §A.1;
the decay is not masked.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..caution import mask_and_count
from .adam import _AdaptiveBase
from .base import as_float, check_bool
from .blocks import adam_moments_, bias_correction, into

__all__ = ["RAdam", "radam_step", "rectification"]


def rectification(beta2: float, step: int) -> float:
    """RAdam's r_t at ``step``, or 0 while rho_t <= 5 (the steps without an adaptive step size)."""
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction(beta2, step)
    if rho_t <= 5.0:
        return 0.0
    return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5


def radam_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *, lr, bias_correction1,
               bias_correction2, rect, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
               caution: bool, caution_norm) -> Tensor | None:
    """One tensor's step; ``rect`` is :func:`rectification` (0: no adaptive step yet)."""
    grad = adam_moments_(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2,
                         weight_decay=weight_decay, decoupled=decoupled)
    direction, count = exp_avg, None
    if caution:
        phi, count = mask_and_count(exp_avg, grad, caution_norm, out=into(exp_avg, "mask").get("out"))
        direction = phi.mul_(exp_avg)
    update = torch.div(direction, bias_correction1, **into(direction, "update")).mul_(lr)
    if isinstance(rect, Tensor):   # compiled: both phases in one graph, so the switch never recompiles
        update = torch.where(rect > 0, update * (bias_correction2**0.5 / exp_avg_sq.sqrt().add_(eps)) * rect, update)
    elif rect > 0:
        update = update * (bias_correction2**0.5 / exp_avg_sq.sqrt().add_(eps)) * rect
    param.add_(update, alpha=-1.0)
    return count


class RAdam(_AdaptiveBase):
    """RAdam: Adam whose adaptive step is switched on, and rectified, once the second moment's
    variance is tractable; the arguments and results of ``torch.optim.RAdam``.Complex parameters
    are optimized as their real view, as torch.optim's (the cautious mask then works on the real
    view)."""

    supports_complex = True
    torch_settings = {"foreach": None, "capturable": (False,), "differentiable": (False,)}

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, *, maximize: bool = False,
                 caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        super()._validate(group)
        check_bool("decoupled_weight_decay", group["decoupled_weight_decay"])

    def _update_group(self, group, params):
        states = self._states(params, "exp_avg", "exp_avg_sq")
        beta1, beta2 = group["betas"]
        lr = as_float(group["lr"])
        for param, grad, state in zip(params, self._grads(group, params), states):
            step = state["step"]
            self._run(radam_step, param, grad, state["exp_avg"], state["exp_avg_sq"],
                      scalars=dict(lr=lr, bias_correction1=bias_correction(beta1, step),
                                   bias_correction2=bias_correction(beta2, step), rect=rectification(beta2, step)),
                      beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                      decoupled=group["decoupled_weight_decay"], **self._caution_settings(group))
