"""MARS (Yuan et al. 2024, "MARS: Unleashing the Power of Variance Reduction for Training Large
Models", arXiv 2411.10438), step for step as timm's ``Mars`` (``timm/optim/mars.py``, simplified
from AGI-Arena/MARS), with timm's defaults.

Step t of a tensor with at least 2 dimensions (or of any tensor with ``optimize_1d``), with ``g``
the gradient and ``g_prev`` the previous step's::

    c  = g + gamma * b1 / (1 - b1) * (g - g_prev)       (c = g at the first step, as timm)
    c <- c / max(||c||, 1)                              (per tensor; not at the first step, as timm)
    m <- b1 * m + (1 - b1) * c
    p <- p * (1 - lr * wd)
    mars_type="adamw":  v <- b2 * v + (1 - b2) * c^2
                        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    mars_type="lion":   p <- p - lr * sign(m)

Tensors with fewer than 2 dimensions (``optimize_1d=False``, the default) get AdamW on ``g``
(:func:`zoo.optimizers.adam.adam_step`) with ``betas_1d`` and the learning rate
``lr * lr_1d_factor`` (the decay too: ``p <- p * (1 - lr * lr_1d_factor * wd)``).

Defaults (timm's): ``lr=3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0, gamma=0.025,
mars_type="adamw", optimize_1d=False, lr_1d_factor=1.0, betas_1d=None`` (the group's ``betas``).

**Choices.** The clip divides by ``fmax(||c||, 1)``: the values of timm's ``if ||c|| > 1: c / ||c||``
(a NaN norm leaves ``c`` unclipped in both) without its host synchronisation; under FSDP2 the norm
of a sharded tensor costs one all-reduce. The previous gradient is kept as a copy
(``last_grad``), where timm keeps a reference to the gradient tensor itself, which a backward into
a gradient zeroed in place (``zero_grad(set_to_none=False)``, accumulation) overwrites, so that
timm's difference ``g - g_prev`` is then 0. State is kept only where it is used: ``exp_avg``,
``last_grad`` and (``adamw`` type) ``exp_avg_sq`` on the MARS tensors, ``exp_avg`` and
``exp_avg_sq`` on the AdamW ones (timm allocates all three everywhere). ``betas_1d=None`` means
each group's own ``betas`` (timm fills it in from the constructor's ``betas``). Weight decay is
decoupled as in timm (``p - lr * (wd * p + u)``, written as the decay then the step: equal up to
rounding). The step count is per parameter, as timm's. ``maximize`` negates ``g`` first, so the
previous gradient kept is the negated one too.

The cautious twin masks, as timm's ``caution=True``, the first moment ``m`` against the current
gradient ``g`` (the mask ``1[m * g > 0]``; on the MARS tensors ``m`` averages the clipped
corrected gradients ``c``, but the mask compares it with the raw ``g``, not with ``c``; on the AdamW
tensors ``m`` averages ``g``); the weight decay is not masked (PAPERS.md §A.1). With
``mars_type="lion"`` the mask scales the applied update ``sign(m)`` of the MARS tensors, as every
signed zoo optimizer's, where timm takes the sign of the masked ``m`` and so drops the mask's
rescaling: timm's step of those tensors is ``caution_norm=0.0`` here, while its caution elsewhere
(``mars_type="adamw"``, the AdamW tensors) is the default ``"mean"``. With ``b1 = 0`` (and
``betas_1d[0] = 0``, or ``optimize_1d``) ``m`` is a positive multiple of ``g``, so caution is
refused there.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..sharding import reduced
from .adam import adam_steps
from .base import ZooOptimizer, as_float, check_betas, check_bool, check_range
from .blocks import adam_denom, apply_, bias_correction, carry_nonfinite, decay_, ema_, ema_sq_, into

__all__ = ["Mars", "mars_step"]

MARS_TYPES = ("adamw", "lion")


def mars_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor | None, last_grad: Tensor, *, lr,
              bias_correction1, bias_correction2_sqrt, beta1: float, beta2: float, eps: float, weight_decay: float,
              correction: float, first_step: bool, caution: bool, caution_norm) -> Tensor | None:
    """One MARS tensor's step; ``correction`` is gamma * b1 / (1 - b1), ``exp_avg_sq`` None for
    ``mars_type="lion"``; ``last_grad`` holds the previous gradient and then ``g``."""
    if first_step:
        corrected = grad
    else:
        corrected = torch.sub(grad, last_grad, **into(grad, "update", last_grad)).mul_(correction).add_(grad)
        norm = reduced(torch.linalg.vector_norm(corrected))   # one all-reduce when sharded
        corrected.div_(torch.fmax(norm, torch.ones_like(norm)))
    last_grad.copy_(grad)
    ema_(exp_avg, corrected, beta1)
    decay_(param, lr, weight_decay)
    if exp_avg_sq is None:
        return apply_(param, carry_nonfinite(exp_avg.sign(), grad), grad, -lr, caution, caution_norm)
    ema_sq_(exp_avg_sq, corrected, beta2)
    denom = adam_denom(exp_avg_sq, bias_correction2_sqrt, eps)
    return apply_(param, exp_avg, grad, -lr / bias_correction1, caution, caution_norm, denom=denom)


class Mars(ZooOptimizer):
    """MARS: Adam (or Lion) on a variance-reduced, norm-clipped gradient for tensors of 2 or more
    dimensions, AdamW for the others; the arguments of timm's ``Mars``, plus ``maximize``,
    ``caution_norm`` and ``compile``."""

    low_bit_states = {"exp_avg": True, "exp_avg_sq": False}
    full_precision_states = {"last_grad": "is the previous gradient, subtracted from the next one: its quantization error would enter that difference at full size, not averaged as a moment's is"}

    defining_settings = ("caution", "mars_type", "optimize_1d")

    def __init__(self, params, lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.0, gamma: float = 0.025, mars_type: str = "adamw", optimize_1d: bool = False,
                 lr_1d_factor: float = 1.0, betas_1d: tuple[float, float] | None = None, *, maximize: bool = False,
                 caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, gamma=gamma, mars_type=mars_type,
                        optimize_1d=optimize_1d, lr_1d_factor=lr_1d_factor, betas_1d=betas_1d, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        check_betas("betas", group["betas"])
        check_range("eps", group["eps"])
        check_range("gamma", group["gamma"])
        if group["mars_type"] not in MARS_TYPES:
            raise ValueError(f"Invalid mars_type: {group['mars_type']!r}; allowed 'adamw', 'lion'")
        check_bool("optimize_1d", group["optimize_1d"])
        check_range("lr_1d_factor", group["lr_1d_factor"])
        if group["betas_1d"] is not None:
            check_betas("betas_1d", group["betas_1d"])

    @staticmethod
    def _betas_1d(group) -> str:
        """The group's key of the AdamW tensors' betas."""
        return "betas" if group["betas_1d"] is None else "betas_1d"

    @staticmethod
    def _is_mars(param: Tensor, group: dict) -> bool:
        return group["optimize_1d"] or param.dim() >= 2

    def _buffers(self, param: Tensor, group: dict) -> tuple[str, ...]:
        if not self._is_mars(param, group):
            return ("exp_avg", "exp_avg_sq")
        return ("exp_avg", "last_grad") + (("exp_avg_sq",) if group["mars_type"] == "adamw" else ())

    def _caution_noop_reason(self, group):
        if group["betas"][0] == 0 and (group["optimize_1d"] or group[self._betas_1d(group)][0] == 0):
            return "the first betas are 0, so the masked first moment m is a positive multiple of g"
        return None

    def _update_group(self, group, params):
        grads = self._grads(group, params)
        mars = [self._is_mars(p, group) for p in params]
        beta1, beta2 = group["betas"]
        lr = as_float(group["lr"])
        lion = group["mars_type"] == "lion"
        settings = dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                        correction=group["gamma"] * (beta1 / (1 - beta1)), **self._caution_settings(group))
        chosen = [(p, g) for p, g, m in zip(params, grads, mars) if m]
        states = self._states([p for p, _ in chosen], "exp_avg", "last_grad", *(() if lion else ("exp_avg_sq",)))
        for (param, grad), state in zip(chosen, states):
            step = state["step"]
            self._run(mars_step, param, grad, state["exp_avg"], state.get("exp_avg_sq"), state["last_grad"],
                      scalars=dict(lr=lr, bias_correction1=bias_correction(beta1, step),
                                   bias_correction2_sqrt=math.sqrt(bias_correction(beta2, step))),
                      first_step=step == 1, **settings)
        rest = [(p, g) for p, g, m in zip(params, grads, mars) if not m]
        if rest:
            states = self._states([p for p, _ in rest], "exp_avg", "exp_avg_sq")
            adam_steps(self, group, [p for p, _ in rest], [g for _, g in rest], states,
                       lr_ratio=group["lr_1d_factor"], betas=self._betas_1d(group), decoupled=True)
