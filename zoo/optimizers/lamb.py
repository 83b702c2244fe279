"""LAMB (You et al. 2020, "Large Batch Optimization for Deep Learning"), as timm's ``Lamb`` (the
NVIDIA/apex FusedLAMB variant, single-tensor path).

Step t, with ``c`` the global gradient-norm clip divisor (1 unless ``max_grad_norm`` is set)::

    g <- g / c,   c = max(||all gradients|| / max_grad_norm, 1)
    m <- b1 * m + b3 * g   (b3 = 1 - b1 with grad_averaging, else 1);   v <- b2 * v + (1 - b2) * g^2
    u  = (m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)            (bias_correction=False: no 1 - b^t)
    u <- u + wd * p
    u <- u * ||p|| / ||u||        when wd != 0 or always_adapt (1 where either norm is 0; at most 1
                                  with trust_clip, LAMBC)
    p <- p - lr * u

**A choice:** ``max_grad_norm`` defaults to None (no global clipping), where timm's default is
1.0: the runner already clips globally (``--grad-clip``), and clipping twice would hide one. With
it set, the clip divisor comes from every gradient of the optimizer, so per-layer updates refuse
it. The cautious twin masks the Adam direction ``u`` (after the bias corrections, before the decay
and the trust ratio) against ``g``, as timm's ``caution=True``; weight decay is not masked.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..caution import mask_and_count
from ..sharding import reduced
from .adam import _AdaptiveBase
from .base import as_float, check_bool, check_range
from .blocks import adam_denom, add_, ema_, ema_sq_, into

__all__ = ["Lamb", "lamb_step"]


def lamb_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, clip: Tensor | None, *, lr,
              bias_correction1, bias_correction2, beta1: float, beta2: float, beta3: float, eps: float,
              weight_decay: float, adapt: bool, trust_clip: bool, caution: bool, caution_norm) -> Tensor | None:
    """One tensor's step; ``clip`` the global clip divisor (None: no clipping), ``adapt`` whether
    the trust ratio applies (weight decay or always_adapt)."""
    if clip is not None:
        grad = grad / clip
    if beta3 == 1 - beta1:
        ema_(exp_avg, grad, beta1)
    else:
        exp_avg.mul_(beta1).add_(grad, alpha=beta3)
    ema_sq_(exp_avg_sq, grad, beta2)
    denom = adam_denom(exp_avg_sq, bias_correction2**0.5, eps)
    update = torch.div(exp_avg, bias_correction1, **into(exp_avg, "update")).div_(denom)
    count = None
    if caution:
        phi, count = mask_and_count(update, grad, caution_norm, out=into(update, "mask").get("out"))
        update.mul_(phi)
    if weight_decay != 0:
        update.add_(param, alpha=weight_decay)
    if adapt:   # both norms in one reduction when sharded
        norms = reduced(torch.stack([param.norm(2.0), update.norm(2.0)]))
        trust = torch.where(norms[0] > 0, torch.where(norms[1] > 0, norms[0] / norms[1], 1.0), 1.0)
        update.mul_(trust.clamp(max=1.0) if trust_clip else trust)
    add_(param, update, -lr)
    return count


class Lamb(_AdaptiveBase):
    """LAMB: Adam's direction scaled per tensor by the trust ratio ||p|| / ||update||."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, bias_correction: bool = True, grad_averaging: bool = True,
                 max_grad_norm: float | None = None, trust_clip: bool = False, always_adapt: bool = False, *,
                 maximize: bool = False, caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
                        grad_averaging=grad_averaging, max_grad_norm=max_grad_norm, trust_clip=trust_clip,
                        always_adapt=always_adapt, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        super()._validate(group)
        for key in ("bias_correction", "grad_averaging", "trust_clip", "always_adapt"):
            check_bool(key, group[key])
        if group["max_grad_norm"] is not None:
            check_range("max_grad_norm", group["max_grad_norm"], low_open=True)

    def _clip(self, group) -> Tensor | None:
        """The global clip divisor max(||all gradients|| / max_grad_norm, 1), or None."""
        if group["max_grad_norm"] is None:
            return None
        if self.per_layer is not None:
            raise ValueError("Invalid max_grad_norm: per-layer updates step each parameter before the other "
                             "gradients exist, so the global gradient norm cannot be computed; pass "
                             "max_grad_norm=None")
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        return (norm / group["max_grad_norm"]).clamp_(min=1.0)

    def _update_group(self, group, params):
        states = self._states(params, "exp_avg", "exp_avg_sq")
        beta1, beta2 = group["betas"]
        lr, clip = as_float(group["lr"]), self._clip(group)
        for param, grad, state in zip(params, self._grads(group, params), states):
            step = state["step"]
            corrected = group["bias_correction"]
            self._run(lamb_step, param, grad, state["exp_avg"], state["exp_avg_sq"], clip,
                      scalars=dict(lr=lr, bias_correction1=1 - beta1**step if corrected else 1.0,
                                   bias_correction2=1 - beta2**step if corrected else 1.0),
                      beta1=beta1, beta2=beta2, beta3=1 - beta1 if group["grad_averaging"] else 1.0,
                      eps=group["eps"], weight_decay=group["weight_decay"],
                      adapt=group["weight_decay"] != 0 or group["always_adapt"], trust_clip=group["trust_clip"],
                      **self._caution_settings(group))
