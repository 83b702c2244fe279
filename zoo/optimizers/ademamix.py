"""AdEMAMix (Pagliardini, Ablin & Grangier 2024, "The AdEMAMix Optimizer: Better, Faster, Older",
arXiv 2409.03137), step for step as the authors' PyTorch reference (apple/ml-ademamix,
``pytorch/ademamix.py``, class ``AdEMAMix``), with its defaults.

Adam's fast EMA ``m1`` mixed with a slow EMA ``m2`` of the gradient that is not bias-corrected
(Algorithm 1). Step t::

    m1 <- b1 * m1 + (1 - b1) * g                      (b1 = 0: no m1 is kept, m1 = g)
    m2 <- b3_t * m2 + (1 - b3_t) * g
    v  <- b2 * v + (1 - b2) * g^2
    u   = (m1 / (1 - b1^t) + alpha_t * m2) / (sqrt(v) / sqrt(1 - b2^t) + eps)
    p  <- p - lr * (u + wd * p)

The decay is the reference's: ``wd * p`` joins the update, so ``p <- p * (1 - lr * wd) - lr * u``,
AdamW's decoupled decay scaled by the learning rate (applied first here, on the same ``p``).

The schedulers of Algorithm 1 (off when their step counts are None, the reference's default), each
over the parameter's own step count t as the reference::

    alpha_t = alpha * t / T_alpha                              (t < T_alpha, else alpha)
    b3_t    = f^-1((1 - t / T_b3) * f(b1) + t / T_b3 * f(b3))  (t < T_b3, else b3)
    f(b) = ln(0.5) / ln(b + 1e-8) - 1,   f^-1(h) = 0.5^(1 / (h + 1))

``f(b) + 1`` is the half-life in steps of an EMA with factor ``b``: ``b3_t`` grows from ``b1`` to ``b3``
with a half-life linear in t. The ``1e-8`` inside the logarithm is the reference code's (the paper writes
``ln(b)``); it keeps ``f(0)`` finite for ``b1 = 0``. ``alpha_t`` and ``b3_t`` change per step, so
they are passed to the step as scalars (tensors under ``compile=True``: no recompiling).

Defaults (the reference's): ``lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=2.0, eps=1e-8,
weight_decay=0``, ``beta3_warmup=alpha_warmup=None``. As the reference, ``b1 = 0`` keeps no fast EMA
(``exp_avg_fast`` is absent from the state rather than None).

The cautious twin masks the update direction, the combined numerator ``m1 / (1 - b1^t) +
alpha_t * m2`` (its denominator is positive), against ``g`` (PAPERS.md §A.1); the weight decay is
not masked. With ``b1 = 0`` and ``alpha = 0`` the update is ``g`` over a positive denominator, so
caution is refused there.
"""
from __future__ import annotations

import math
from numbers import Integral

import torch
from torch import Tensor

from .base import ZooOptimizer, as_float, check_betas, check_range
from .blocks import adam_denom, add_, apply_, bias_correction, decay_, ema_sq_, into

__all__ = ["AdEMAMix", "ademamix_step", "alpha_schedule", "beta3_schedule"]


def alpha_schedule(step: int, alpha: float, warmup: int | None) -> float:
    """``alpha`` warmed up linearly from 0 over ``warmup`` steps (None: ``alpha`` throughout)."""
    if warmup is None or step >= warmup:
        return alpha
    return step / warmup * alpha


def _half_life(beta: float) -> float:
    return math.log(0.5) / math.log(beta + 1e-8) - 1


def beta3_schedule(step: int, beta3: float, beta_start: float, warmup: int | None) -> float:
    """``beta3`` warmed up from ``beta_start`` over ``warmup`` steps with a half-life linear in the
    step (None: ``beta3`` throughout)."""
    if warmup is None or step >= warmup:
        return beta3
    a = step / warmup
    return 0.5 ** (1 / ((1 - a) * _half_life(beta_start) + a * _half_life(beta3) + 1))


def ademamix_step(param: Tensor, grad: Tensor, exp_avg_fast: Tensor | None, exp_avg_slow: Tensor,
                  exp_avg_sq: Tensor, *, lr, bias_correction1, bias_correction2_sqrt, alpha, beta3, beta1: float,
                  beta2: float, eps: float, weight_decay: float, caution: bool, caution_norm) -> Tensor | None:
    """One tensor's step; ``exp_avg_fast`` is None when ``beta1`` is 0 (the gradient stands for it)."""
    decay_(param, lr, weight_decay)
    if exp_avg_fast is None:
        exp_avg_fast = grad
    else:
        add_(exp_avg_fast.mul_(beta1), grad, 1 - beta1)
    add_(exp_avg_slow.mul_(beta3), grad, 1 - beta3)
    ema_sq_(exp_avg_sq, grad, beta2)
    denom = adam_denom(exp_avg_sq, bias_correction2_sqrt, eps)
    direction = add_(torch.div(exp_avg_fast, bias_correction1, **into(exp_avg_fast, "update")), exp_avg_slow, alpha)
    return apply_(param, direction, grad, -lr, caution, caution_norm, denom=denom)


class AdEMAMix(ZooOptimizer):
    """AdEMAMix: Adam's update with a slow, uncorrected EMA of the gradient added to its
    numerator; the arguments and results of the authors' reference ``AdEMAMix``."""

    low_bit_states = {"exp_avg_fast": True, "exp_avg_slow": True, "exp_avg_sq": False}

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
                 alpha: float = 2.0, beta3_warmup: int | None = None, alpha_warmup: int | None = None,
                 eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False, caution: bool = False,
                 caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, alpha=alpha, beta3_warmup=beta3_warmup, alpha_warmup=alpha_warmup,
                        eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        check_betas("betas", group["betas"], 3)
        check_range("alpha", group["alpha"])
        check_range("eps", group["eps"])
        for key in ("beta3_warmup", "alpha_warmup"):
            value = group[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, Integral) or value < 1):
                raise ValueError(f"Invalid {key}: {value!r}; allowed None (no warm-up) or an int >= 1")

    def _caution_noop_reason(self, group):
        if group["betas"][0] == 0 and group["alpha"] == 0:
            return "betas[0] and alpha are 0, so the update is g over a positive denominator"
        return None

    def _buffers(self, param, group) -> tuple[str, ...]:
        return (("exp_avg_fast",) if group["betas"][0] != 0 else ()) + ("exp_avg_slow", "exp_avg_sq")

    def _update_group(self, group, params):
        states = self._states(params, *self._buffers(None, group))
        beta1, beta2, beta3 = group["betas"]
        lr = as_float(group["lr"])
        for param, grad, state in zip(params, self._grads(group, params), states):
            step = state["step"]
            self._run(ademamix_step, param, grad, state.get("exp_avg_fast"), state["exp_avg_slow"],
                      state["exp_avg_sq"],
                      scalars=dict(lr=lr, bias_correction1=bias_correction(beta1, step),
                                   bias_correction2_sqrt=math.sqrt(bias_correction(beta2, step)),
                                   alpha=alpha_schedule(step, group["alpha"], group["alpha_warmup"]),
                                   beta3=beta3_schedule(step, beta3, beta1, group["beta3_warmup"])),
                      beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                      **self._caution_settings(group))
