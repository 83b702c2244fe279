"""LaProp (Ziyin et al. 2020): momentum over RMSProp-normalised gradients.

Step t, with the learning rate inside the momentum as in the reference code (so a changing
lr is averaged, not applied at once)::

    p  <- p * (1 - lr * wd)                                   (decoupled, before the update)
    v  <- b2 * v + (1 - b2) * g^2
    a1 <- b1 * a1 + (1 - b1) * lr;  a2 <- b2 * a2 + (1 - b2)  (a2 = 1 - b2^t; a1 = lr (1 - b1^t) at constant lr)
    m  <- b1 * m + (1 - b1) * lr * g / (sqrt(v / a2) + eps)
    p  <- p - m * lr / a1

The reference (Z-T-WANG/LaProp-Optimizer; timm ``laprop.py``) decays after the update; here the
decay comes first, as for every decoupled optimizer in the zoo (PAPERS.md §A.1), a difference
of order lr^2 * wd per step. The cautious twin masks ``m`` against ``g``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .adam import _AdaptiveBase
from .base import as_float
from .blocks import addcdiv_, apply_, decay_, ema_sq_, into

__all__ = ["LaProp", "laprop_step"]


def laprop_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *, lr, second_average, alpha,
                beta1: float, beta2: float, eps: float, weight_decay: float, caution: bool,
                caution_norm) -> Tensor | None:
    """One tensor's step; the caller keeps the lr averages: ``second_average`` is a2 and ``alpha``
    is -lr / a1."""
    decay_(param, lr, weight_decay)
    ema_sq_(exp_avg_sq, grad, beta2)
    denom = torch.div(exp_avg_sq, second_average, **into(exp_avg_sq, "denom")).sqrt_().add_(eps)
    addcdiv_(exp_avg.mul_(beta1), grad, denom, (1 - beta1) * lr)
    return apply_(param, exp_avg, grad, alpha, caution, caution_norm)


class LaProp(_AdaptiveBase):
    """LaProp: separates momentum from adaptivity (normalise first, then average)."""

    state_keys = ("step", "exp_avg", "exp_avg_sq", "exp_avg_lr_1", "exp_avg_lr_2")

    def __init__(self, params, lr: float = 4e-4, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-15, weight_decay: float = 0.0, *, maximize: bool = False,
                 caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _update_group(self, group, params):
        states = self._states(params, "exp_avg", "exp_avg_sq",
                              init=lambda p, state: state.update(exp_avg_lr_1=0.0, exp_avg_lr_2=0.0))
        beta1, beta2 = group["betas"]
        lr = as_float(group["lr"])
        for param, grad, state in zip(params, self._grads(group, params), states):
            state["exp_avg_lr_1"] = beta1 * state["exp_avg_lr_1"] + (1 - beta1) * lr
            state["exp_avg_lr_2"] = beta2 * state["exp_avg_lr_2"] + (1 - beta2)
            bias_correction1 = state["exp_avg_lr_1"] / lr if lr != 0 else 1.0
            self._run(laprop_step, param, grad, state["exp_avg"], state["exp_avg_sq"],
                      scalars={"lr": lr, "second_average": state["exp_avg_lr_2"], "alpha": -1 / bias_correction1},
                      beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                      **self._caution_settings(group))
