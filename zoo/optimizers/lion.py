"""Lion (Chen et al. 2023) and Signum, signed momentum (Bernstein et al. 2018).

Lion, step t::

    p <- p * (1 - lr * wd)
    u <- sign(b1 * m + (1 - b1) * g)
    p <- p - lr * u
    m <- b2 * m + (1 - b2) * g

Signum is Lion with b1 = b2 = momentum: ``m <- mu * m + (1 - mu) * g; p <- p - lr * sign(m)``,
with the same decoupled weight decay. The cautious twins mask ``u`` against ``g``
(PAPERS.md §A.1).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..caution import caution_mask
from .base import ZooOptimizer, as_float, check_betas, check_range
from .blocks import apply_, carry_nonfinite, decay_, ema_, into

__all__ = ["Lion", "Signum", "lion_step"]


def lion_step(param: Tensor, grad: Tensor, exp_avg: Tensor, *, lr, beta1: float, beta2: float, weight_decay: float,
              caution: bool, caution_norm) -> Tensor | None:
    """One tensor's step of Lion (and of Signum with ``beta1 == beta2``)."""
    decay_(param, lr, weight_decay)
    update = carry_nonfinite(torch.lerp(exp_avg, grad, 1 - beta1, **into(exp_avg, "update")).sign_(), grad)
    count = apply_(param, update, grad, -lr, caution, caution_norm)
    ema_(exp_avg, grad, beta2)
    return count


def _lion_foreach(params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay, caution, caution_norm, counts) -> None:
    """The same step with torch._foreach_* kernels over the whole list (one launch per op)."""
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    updates = torch._foreach_lerp(exp_avgs, grads, 1 - beta1)
    torch._foreach_sign_(updates)
    torch._foreach_add_(updates, grads, alpha=0)   # carry_nonfinite: sign(NaN) is 0
    if caution:
        masks = [caution_mask(u, g, caution_norm, counts) for u, g in zip(updates, grads)]
        torch._foreach_addcmul_(params, masks, updates, -lr)
    else:
        torch._foreach_add_(params, updates, alpha=-lr)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)


def _lion_steps(optimizer: ZooOptimizer, group: dict, params: list[Tensor], beta1: float, beta2: float) -> None:
    states = optimizer._states(params, "exp_avg")
    grads = optimizer._grads(group, params)
    settings = dict(beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], **optimizer._caution_settings(group))
    lr = as_float(group["lr"])
    if not optimizer.compile and optimizer._foreach(group, params):
        return _lion_foreach(params, grads, [s["exp_avg"] for s in states], lr=lr, **settings,
                             counts=optimizer._aligned_counts if group["caution"] else None)
    for param, grad, state in zip(params, grads, states):
        optimizer._run(lion_step, param, grad, state["exp_avg"], scalars={"lr": lr}, **settings)


class Lion(ZooOptimizer):
    """Lion: the sign of an interpolated momentum, decoupled weight decay."""

    full_size_states = 1   # m
    state_keys = ("step", "exp_avg")
    low_bit_states = {"exp_avg": True}

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False, foreach: bool | None = None,
                 caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        check_betas("betas", group["betas"])

    def _caution_noop_reason(self, group):
        if group["betas"][0] == 0:
            return "betas[0] is 0, so the update is sign(g)"
        return None

    def _update_group(self, group, params):
        _lion_steps(self, group, params, *group["betas"])


class Signum(ZooOptimizer):
    """Signum: the sign of an exponential moving average of gradients, decoupled weight decay."""

    full_size_states = 1   # m
    state_keys = ("step", "exp_avg")
    low_bit_states = {"exp_avg": True}

    def __init__(self, params, lr: float = 1e-4, momentum: float = 0.9, weight_decay: float = 0.0, *,
                 maximize: bool = False, foreach: bool | None = None, caution: bool = False,
                 caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        check_range("momentum", group["momentum"], 0.0, 1.0, high_open=True)

    def _caution_noop_reason(self, group):
        if group["momentum"] == 0:
            return "momentum is 0, so the update is sign(g)"
        return None

    def _update_group(self, group, params):
        _lion_steps(self, group, params, group["momentum"], group["momentum"])
