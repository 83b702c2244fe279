"""Heavy-ball and Nesterov momentum SGD with torch.optim.SGD's conventions.

Per step, with L2 weight decay folded into the gradient as torch.optim.SGD does::

    g <- g + wd * p
    b <- g                               (first step)
    b <- mu * b + (1 - dampening) * g    (later steps)
    u <- g + mu * b   (nesterov)   or   u <- b
    p <- p - lr * u

The cautious twin masks ``u`` against ``g`` (the gradient of the L2-regularised loss),
PAPERS.md §A.1.

As torch.optim.SGD: **sparse gradients** are taken (the momentum buffer is then sparse, a copy
of the first gradient; weight decay with a sparse gradient raises torch's error), except by the
cautious twins (the mask compares update and gradient element by element); **complex
parameters** are optimized as their real view, which is what torch.optim.SGD's complex arithmetic
computes.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import ZooOptimizer, as_float, check_bool, check_range
from .blocks import apply_, into, l2

__all__ = ["SGD", "sgd_step"]


def sgd_step(param: Tensor, grad: Tensor, buf: Tensor | None, *, lr, momentum: float, dampening: float,
             nesterov: bool, weight_decay: float, first: bool, caution: bool, caution_norm) -> Tensor | None:
    """One tensor's step; ``buf`` is None without momentum and is filled with the gradient at
    the first step (``first``), as torch.optim.SGD."""
    grad = l2(grad, param, weight_decay)
    update = grad
    if buf is not None:
        if first:
            buf.copy_(grad)
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        update = torch.add(grad, buf, alpha=momentum, **into(grad, "update", buf)) if nesterov else buf
    return apply_(param, update, grad, -lr, caution, caution_norm)


class SGD(ZooOptimizer):
    """SGD with heavy-ball or Nesterov momentum (Polyak 1964; Sutskever et al. 2013).

    Same arguments and results as ``torch.optim.SGD``, plus ``caution`` / ``caution_norm``.
    ``weight_decay`` is an L2 penalty added to the gradient, as in torch.optim.SGD.
    """

    low_bit_states = {"momentum_buffer": True}

    defining_settings = ("caution", "nesterov")
    torch_settings = {"foreach": None, "differentiable": (False,), "fused": None}
    supports_complex = True
    supports_sparse = True

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
                 caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        check_range("momentum", group["momentum"], 0.0, 1.0, high_open=True)
        check_range("dampening", group["dampening"], 0.0, 1.0)
        check_bool("nesterov", group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Invalid nesterov: Nesterov momentum requires momentum > 0 and dampening = 0")

    def _formula_bytes(self, param, group):
        if group["momentum"] == 0:
            return 0
        buffer = self.state.get(param, {}).get("momentum_buffer")
        if buffer is not None and buffer.is_sparse:   # a copy of sparse gradients: nnz indices and values
            dense = math.prod(buffer.shape[buffer.sparse_dim():])
            return buffer._nnz() * (buffer.sparse_dim() * 8 + dense * buffer.element_size())
        return param.numel() * param.element_size()

    def _state_keys(self, param, group):
        return ({"momentum_buffer"} if group["momentum"] != 0 else set()), set()

    def _low_bit_noop_reason(self, group):
        return "has momentum=0 and keeps no state" if group["momentum"] == 0 else None

    def _caution_noop_reason(self, group):
        if group["momentum"] == 0:
            return "momentum is 0, so the update is the gradient itself"
        return None

    def _update_group(self, group, params):
        grads = self._grads(group, params)
        if group["caution"] and any(g.is_sparse for g in grads):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients: the cautious mask compares "
                               "the update with the gradient element by element (the non-cautious SGD takes them)")
        for param, grad in zip(params, grads):
            state = self._state(param)
            first = group["momentum"] != 0 and "momentum_buffer" not in state
            if first:
                state["momentum_buffer"] = (torch.empty_like(grad) if grad.is_sparse
                                            else torch.empty_like(grad, memory_format=torch.preserve_format))
            self._run(sgd_step, param, grad, state.get("momentum_buffer"), scalars={"lr": as_float(group["lr"])},
                      momentum=group["momentum"], dampening=group["dampening"], nesterov=group["nesterov"],
                      weight_decay=group["weight_decay"], first=first, **self._caution_settings(group))
