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

from torch import Tensor

from ..caution import add_update
from .adam import _AdaptiveBase
from .base import as_float, carry_nonfinite, check_bool, check_range

__all__ = ["ADOPT", "adopt"]


def adopt(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
          steps: list[int], *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
          decoupled: bool, clip_exp: float | None, caution: bool = False, caution_norm="mean",
          counts=None) -> None:
    """Functional core of ADOPT."""
    for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        if weight_decay != 0 and not decoupled:
            grad = grad.add(param, alpha=weight_decay)
        if step == 1:
            exp_avg_sq.addcmul_(grad, grad)
            carry_nonfinite(param, grad)   # no update, but a non-finite gradient still shows in the weight
            continue
        if weight_decay != 0 and decoupled:
            param.mul_(1 - lr * weight_decay)
        normed = grad / exp_avg_sq.sqrt().clamp_(min=eps)
        if clip_exp is not None:
            clip = (step - 1) ** clip_exp
            carry_nonfinite(normed.clamp_(-clip, clip), grad)   # a clipped infinity stays visible
        exp_avg.lerp_(normed, 1 - beta1)
        add_update(param, exp_avg, grad, -lr, caution, caution_norm, counts)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)


class ADOPT(_AdaptiveBase):
    """ADOPT: converges with any beta2 by decorrelating the second moment from the gradient."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.9999),
                 eps: float = 1e-6, weight_decay: float = 0.0, decoupled: bool = False,
                 clip_exp: float | None = 0.25, *, maximize: bool = False, caution: bool = False,
                 caution_norm="mean"):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decoupled=decoupled,
                        clip_exp=clip_exp, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm)

    def _validate(self, group):
        super()._validate(group)
        check_range("eps", group["eps"], low_open=True)   # g / max(sqrt(v), eps) needs eps > 0
        check_bool("decoupled", group["decoupled"])
        if group["clip_exp"] is not None:
            check_range("clip_exp", group["clip_exp"])

    def _update_group(self, group, params):
        states = self._states(params, "exp_avg", "exp_avg_sq")
        beta1, beta2 = group["betas"]
        adopt(params, self._grads(group, params), [s["exp_avg"] for s in states],
              [s["exp_avg_sq"] for s in states], [s["step"] for s in states],
              lr=as_float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
              weight_decay=group["weight_decay"], decoupled=group["decoupled"],
              clip_exp=group["clip_exp"], **self._caution_args(group))
