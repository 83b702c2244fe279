"""Heavy-ball and Nesterov momentum SGD with torch.optim.SGD's conventions.

Per step, with L2 weight decay folded into the gradient as torch.optim.SGD does::

    g <- g + wd * p
    b <- g                               (first step)
    b <- mu * b + (1 - dampening) * g    (later steps)
    u <- g + mu * b   (nesterov)   or   u <- b
    p <- p - lr * u

The cautious twin masks ``u`` against ``g`` (the gradient of the L2-regularised loss),
PAPERS.md §A.1.
"""
from __future__ import annotations

from torch import Tensor

from ..caution import add_update
from .base import ZooOptimizer, as_float, check_bool, check_range

__all__ = ["SGD", "sgd"]


def sgd(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor | None], *,
        lr: float, momentum: float, dampening: float, nesterov: bool, weight_decay: float,
        caution: bool = False, caution_norm="mean", counts=None) -> None:
    """Functional core; ``momentum_buffers`` entries that are None are created in place."""
    for i, (param, grad) in enumerate(zip(params, grads)):
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        update = grad
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = momentum_buffers[i] = grad.clone().detach()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            update = grad.add(buf, alpha=momentum) if nesterov else buf
        add_update(param, update, grad, -lr, caution, caution_norm, counts)


class SGD(ZooOptimizer):
    """SGD with heavy-ball or Nesterov momentum (Polyak 1964; Sutskever et al. 2013).

    Same arguments and results as ``torch.optim.SGD``, plus ``caution`` / ``caution_norm``.
    ``weight_decay`` is an L2 penalty added to the gradient, as in torch.optim.SGD.
    """

    defining_settings = ("caution", "nesterov")
    torch_settings = {"foreach": None, "differentiable": (False,), "fused": None}

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
                 caution: bool = False, caution_norm="mean"):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm)

    def _validate(self, group):
        check_range("momentum", group["momentum"], 0.0, 1.0, high_open=True)
        check_range("dampening", group["dampening"], 0.0, 1.0)
        check_bool("nesterov", group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Invalid nesterov: Nesterov momentum requires momentum > 0 and dampening = 0")

    def expected_state_bytes(self, param, group):
        return param.numel() * param.element_size() if group["momentum"] != 0 else 0

    def _state_keys(self, param, group):
        return ({"momentum_buffer"} if group["momentum"] != 0 else set()), set()

    def _caution_noop_reason(self, group):
        if group["momentum"] == 0:
            return "momentum is 0, so the update is the gradient itself"
        return None

    def _update_group(self, group, params):
        states = [self._state(p) for p in params]
        buffers = [state.get("momentum_buffer") for state in states]
        sgd(params, self._grads(group, params), buffers, lr=as_float(group["lr"]),
            momentum=group["momentum"], dampening=group["dampening"], nesterov=group["nesterov"],
            weight_decay=group["weight_decay"], **self._caution_args(group))
        if group["momentum"] != 0:
            for state, buf in zip(states, buffers):
                state["momentum_buffer"] = buf
