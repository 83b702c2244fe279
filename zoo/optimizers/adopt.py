"""ADOPT (Taniguchi et al. 2024): Adam with the second moment taken *before* the current gradient.

Call k = 1, 2, ... of ``step`` (as the official code, iShohei220/adopt)::

    g <- g + wd * p                                   (decoupled=False: L2 penalty)
    k = 1:  v <- g^2, nothing else (no parameter update)
    k > 1:  p <- p * (1 - lr * wd)                    (decoupled=True)
            n  = clip(g / max(sqrt(v), eps), (k - 1)^clip_exp)    (clip_exp=None: no clipping)
            m <- b1 * m + (1 - b1) * n
            p <- p - lr * m
            v <- b2 * v + (1 - b2) * g^2

The official clip is (k-1)^0.25 (timm's default exponent is 0.333; pass ``clip_exp``). The
cautious twin masks ``m`` against ``g`` (including the L2 term when the decay is coupled).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .adam import _AdaptiveBase
from .base import as_float, check_bool, check_range
from .blocks import apply_, carry_nonfinite, decay_, ema_, ema_sq_, into, l2

__all__ = ["ADOPT", "adopt_step"]


def adopt_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *, lr, clip, beta1: float,
               beta2: float, eps: float, weight_decay: float, decoupled: bool, first: bool, caution: bool,
               caution_norm) -> Tensor | None:
    """One tensor's step; ``first``: the first call, which only records ``v``; ``clip``: the
    bound (k - 1)^clip_exp, or None."""
    if not decoupled:
        grad = l2(grad, param, weight_decay)
    if first:
        exp_avg_sq.addcmul_(grad, grad)
        carry_nonfinite(param, grad)   # no update, but a non-finite gradient still shows in the weight
        return None
    if decoupled:
        decay_(param, lr, weight_decay)
    denom = torch.sqrt(exp_avg_sq, **into(exp_avg_sq, "denom")).clamp_(min=eps)
    normed = torch.div(grad, denom, **into(grad, "update", denom))
    if clip is not None:
        carry_nonfinite(normed.clamp_(-clip, clip), grad)   # a clipped infinity stays visible
    ema_(exp_avg, normed, beta1)
    count = apply_(param, exp_avg, grad, -lr, caution, caution_norm)
    ema_sq_(exp_avg_sq, grad, beta2)
    return count


class ADOPT(_AdaptiveBase):
    """ADOPT: converges with any beta2 by decorrelating the second moment from the gradient."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.9999),
                 eps: float = 1e-6, weight_decay: float = 0.0, decoupled: bool = False,
                 clip_exp: float | None = 0.25, *, maximize: bool = False, caution: bool = False,
                 caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=decoupled,
                        clip_exp=clip_exp, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        super()._validate(group)
        check_range("eps", group["eps"], low_open=True)   # g / max(sqrt(v), eps) needs eps > 0
        check_bool("decoupled", group["decoupled"])
        if group["clip_exp"] is not None:
            check_range("clip_exp", group["clip_exp"])

    def _update_group(self, group, params):
        states = self._states(params, "exp_avg", "exp_avg_sq")
        beta1, beta2 = group["betas"]
        clip_exp = group["clip_exp"]
        for param, grad, state in zip(params, self._grads(group, params), states):
            step = state["step"]
            clip = None if clip_exp is None or step == 1 else (step - 1) ** clip_exp
            self._run(adopt_step, param, grad, state["exp_avg"], state["exp_avg_sq"],
                      scalars={"lr": as_float(group["lr"]), "clip": clip}, beta1=beta1, beta2=beta2,
                      eps=group["eps"], weight_decay=group["weight_decay"], decoupled=group["decoupled"],
                      first=step == 1, **self._caution_settings(group))
