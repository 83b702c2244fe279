"""RMSprop (Hinton 2012; Graves 2013 for the centred form), step for step as torch.optim.RMSprop.

Per step, with L2 weight decay folded into the gradient as torch.optim.RMSprop does::

    g <- g + wd * p
    v <- alpha * v + (1 - alpha) * g^2
    a <- alpha * a + (1 - alpha) * g;   d = sqrt(v - a^2) + eps      (centered)
                                        d = sqrt(v) + eps            (otherwise)
    b <- mu * b + g / d;   p <- p - lr * b                           (momentum mu > 0)
    p <- p - lr * g / d                                              (momentum 0)

The cautious twin masks the momentum buffer ``b`` against ``g`` (the gradient of the
L2-regularised loss), PAPERS.md §A.1. Without momentum the update is ``g`` over a positive
denominator, which always agrees with ``g``: caution is refused there.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import ZooOptimizer, as_float, check_bool, check_range
from .blocks import addcdiv_, apply_, ema_, ema_sq_, into, l2

__all__ = ["RMSprop", "rmsprop_step"]


def rmsprop_step(param: Tensor, grad: Tensor, square_avg: Tensor, grad_avg: Tensor | None, buf: Tensor | None, *,
                 lr, alpha: float, eps: float, weight_decay: float, momentum: float, caution: bool,
                 caution_norm) -> Tensor | None:
    """One tensor's step; ``grad_avg`` is None unless centred, ``buf`` None without momentum."""
    grad = l2(grad, param, weight_decay)
    ema_sq_(square_avg, grad, alpha)
    if grad_avg is not None:
        ema_(grad_avg, grad, alpha)
        denom = torch.addcmul(square_avg, grad_avg, grad_avg, value=-1,
                              **into(square_avg, "denom", grad_avg)).sqrt_().add_(eps)
    else:
        denom = torch.sqrt(square_avg, **into(square_avg, "denom")).add_(eps)
    if buf is None:
        return apply_(param, grad, grad, -lr, denom=denom)
    addcdiv_(buf.mul_(momentum), grad, denom, 1.0)
    return apply_(param, buf, grad, -lr, caution, caution_norm)


class RMSprop(ZooOptimizer):
    """RMSprop with optional momentum and centring; the arguments and results of
    ``torch.optim.RMSprop``, plus ``caution`` / ``caution_norm`` (with momentum).Complex parameters
    are optimized as their real view, as torch.optim's (the cautious mask then works on the real
    view)."""

    low_bit_states = {"square_avg": False, "grad_avg": True, "momentum_buffer": True}

    supports_complex = True
    torch_settings = {"foreach": None, "capturable": (False,), "differentiable": (False,)}

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, *, maximize: bool = False, caution: bool = False,
                 caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        check_range("alpha", group["alpha"], 0.0, 1.0)
        check_range("eps", group["eps"])
        check_range("momentum", group["momentum"], 0.0, 1.0, high_open=True)
        check_bool("centered", group["centered"])

    def _caution_noop_reason(self, group):
        if group["momentum"] == 0:
            return "momentum is 0, so the update is g over a positive denominator"
        return None

    def _buffers(self, param, group) -> tuple[str, ...]:
        return ("square_avg",) + (("momentum_buffer",) if group["momentum"] > 0 else ()) + (
            ("grad_avg",) if group["centered"] else ())

    def _update_group(self, group, params):
        states = self._states(params, *self._buffers(None, group))
        lr = as_float(group["lr"])
        for param, grad, state in zip(params, self._grads(group, params), states):
            self._run(rmsprop_step, param, grad, state["square_avg"], state.get("grad_avg"),
                      state.get("momentum_buffer"), scalars={"lr": lr}, alpha=group["alpha"], eps=group["eps"],
                      weight_decay=group["weight_decay"], momentum=group["momentum"],
                      **self._caution_settings(group))
