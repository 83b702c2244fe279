"""Adam, AdamW and NAdamW, step for step as torch.optim.Adam / AdamW / NAdam.

Adam / AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019), step t::

    p <- p * (1 - lr * wd)                 (AdamW: decoupled)   |   g <- g + wd * p   (Adam: L2)
    m <- b1 * m + (1 - b1) * g
    v <- b2 * v + (1 - b2) * g^2
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

Cautious twin (PAPERS.md §A.1): the denominator is positive, so masking ``m`` against ``g``
masks the update itself; decay is applied before and is not masked.

NAdamW (Dozat 2016 with decoupled decay, torch.optim.NAdam(decoupled_weight_decay=True))::

    mu_t = b1 * (1 - 0.5 * 0.96^(t * psi)),  prod_t = mu_1 ... mu_t
    p <- p - lr * [(1 - mu_t) / (1 - prod_t) * g + mu_{t+1} / (1 - prod_t * mu_{t+1}) * m] / d
    d  = sqrt(v / (1 - b2^t)) + eps
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from ..caution import caution as cautious
from .base import ZooOptimizer, as_float, check_betas, check_bool, check_range
from .blocks import adam_denom, adam_moments_, add_, addcdiv_, apply_, bias_correction, into

__all__ = ["Adam", "AdamW", "NAdamW", "adam_step", "nadamw_step"]


def adam_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *, lr, bias_correction1,
              bias_correction2_sqrt, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
              caution: bool, caution_norm) -> Tensor | None:
    """One tensor's step of Adam (``decoupled=False``) or AdamW (``decoupled=True``)."""
    grad = adam_moments_(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2,
                         weight_decay=weight_decay, decoupled=decoupled)
    denom = adam_denom(exp_avg_sq, bias_correction2_sqrt, eps)
    return apply_(param, exp_avg, grad, -lr / bias_correction1, caution, caution_norm, denom=denom)


def _adam_foreach(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay,
                  decoupled, caution, caution_norm, counts) -> None:
    """The same step with torch._foreach_* kernels over the whole list (one launch per op)."""
    if weight_decay != 0:
        if decoupled:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, [math.sqrt(1 - beta2**step) for step in steps])
    torch._foreach_add_(denom, eps)
    numer = ([cautious(m, g, caution_norm, counts) for m, g in zip(exp_avgs, grads)]
             if caution else exp_avgs)
    torch._foreach_addcdiv_(params, numer, denom, [-lr / (1 - beta1**step) for step in steps])


def _adam_fused(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay,
                decoupled) -> None:
    """The same step (not cautious) by torch's fused kernel, one call per device and dtype."""
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    buckets: dict = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    for (device, _), idx in buckets.items():
        step_tensors = {s: torch.tensor(float(s), device=device) for s in {steps[i] for i in idx}}
        kernel([params[i] for i in idx], [grads[i] for i in idx], [exp_avgs[i] for i in idx],
               [exp_avg_sqs[i] for i in idx], [],
               [step_tensors[steps[i]] for i in idx], amsgrad=False, lr=lr,
               beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps, maximize=False,
               grad_scale=None, found_inf=None)


def _check_fused(params: list[Tensor]) -> None:
    """torch.optim's check before its fused kernel: floating-point parameters on a device it has the
    kernel for (``RuntimeError`` naming the device and dtype, at the step, as torch.optim)."""
    devices = _get_fused_kernels_supported_devices()
    for p in params:
        if p.device.type not in devices or not torch.is_floating_point(p):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported "
                               f"devices: {devices} but {p.dtype} and {p.device.type}")


def nadamw_step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *, lr, bias_correction2,
                grad_coef, avg_coef, beta1: float, beta2: float, eps: float, weight_decay: float, caution: bool,
                caution_norm) -> Tensor | None:
    """One tensor's step of NAdamW; the momentum coefficients come from the caller."""
    adam_moments_(param, grad, exp_avg, exp_avg_sq, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
                  decoupled=True)
    denom = torch.div(exp_avg_sq, bias_correction2, **into(exp_avg_sq, "denom")).sqrt_().add_(eps)
    if caution:
        direction = add_(torch.mul(grad, grad_coef, **into(grad, "update")), exp_avg, avg_coef)
        return apply_(param, direction, grad, -lr, caution, caution_norm, denom=denom)
    addcdiv_(param, grad, denom, -lr * grad_coef)
    addcdiv_(param, exp_avg, denom, -lr * avg_coef)
    return None


def adam_steps(optimizer: ZooOptimizer, group: dict, params: list[Tensor], grads: list[Tensor], states: list[dict],
               *, lr_ratio: float = 1.0, betas: str = "betas", eps: str = "eps", decoupled: bool | None = None):
    """:func:`adam_step` for each tensor of ``group`` (Muon's AdamW passes its own settings' names)."""
    beta1, beta2 = group[betas]
    lr = as_float(group["lr"]) * lr_ratio
    decoupled = optimizer.decoupled if decoupled is None else decoupled
    for param, grad, state in zip(params, grads, states):
        step = state["step"]
        optimizer._run(adam_step, param, grad, state["exp_avg"], state["exp_avg_sq"],
                       scalars=dict(lr=lr, bias_correction1=bias_correction(beta1, step),
                                    bias_correction2_sqrt=math.sqrt(bias_correction(beta2, step))),
                       beta1=beta1, beta2=beta2, eps=group[eps], weight_decay=group["weight_decay"],
                       decoupled=decoupled, **optimizer._caution_settings(group))


class _AdaptiveBase(ZooOptimizer):
    """Validation shared by the Adam-like optimizers (betas, eps)."""

    full_size_states = 2   # m, v
    state_keys = ("step", "exp_avg", "exp_avg_sq")
    low_bit_states = {"exp_avg": True, "exp_avg_sq": False}

    def _validate(self, group):
        check_betas("betas", group["betas"])
        check_range("eps", group["eps"])


class _Decoupling(_AdaptiveBase):
    """Adam-like optimizers whose groups say, as torch.optim's, whether the decay is decoupled
    (``decoupled_weight_decay``, fixed by the class): a torch.optim.NAdam reading a zoo NAdamW
    state then decays as it should, and Adam and AdamW states cannot be mistaken. Complex
    parameters are optimized as their real view, as torch.optim's (the cautious mask then works
    on the real view: real and imaginary parts are masked each on its own)."""

    supports_complex = True
    decoupled = False
    defining_settings = ("caution", "decoupled_weight_decay")
    torch_settings = {"capturable": None, "differentiable": (False,)}

    def __init__(self, params, defaults: dict, caution: bool = False, caution_norm="mean", compile=False, *,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        super().__init__(params, dict(defaults, decoupled_weight_decay=self.decoupled), caution, caution_norm,
                         compile, state_bits=state_bits, stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        super()._validate(group)
        if group["decoupled_weight_decay"] is not self.decoupled:
            raise ValueError(f"Invalid decoupled_weight_decay: {group['decoupled_weight_decay']!r}; "
                             f"{type(self).__name__}'s weight decay is {'' if self.decoupled else 'not '}decoupled")


class Adam(_Decoupling):
    """Adam with L2 weight decay added to the gradient (as ``torch.optim.Adam``)."""

    decoupled = False
    torch_settings = {"amsgrad": (False,), "capturable": None, "differentiable": (False,)}

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool = False, caution: bool = False,
                 caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, fused=fused)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        super()._validate(group)
        if group["fused"] is not None:   # None: torch.optim's default, not fused
            check_bool("fused", group["fused"])
        if group["fused"] and group["foreach"]:
            raise ValueError("Invalid fused: fused=True and foreach=True cannot both be set")
        if group["fused"] and group["caution"]:
            raise ValueError("Invalid fused: torch's fused Adam kernel has no cautious mask; "
                             "use fused=False (foreach or the for-loop)")
        if self.compile and group["fused"]:
            raise ValueError("Invalid fused: compile compiles the per-tensor step; pass fused=False (or "
                             "compile=False for torch's fused kernel)")

    def _update_group(self, group, params):
        if group["fused"]:   # before any state is made, as torch.optim
            _check_fused([self._parameter(p) for p in params])
        states = self._states(params, "exp_avg", "exp_avg_sq")
        grads = self._grads(group, params)
        beta1, beta2 = group["betas"]
        lr = as_float(group["lr"])
        lists = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [s["step"] for s in states]
        settings = dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                        decoupled=self.decoupled)
        if group["fused"]:
            return _adam_fused(params, grads, *lists, lr=lr, **settings)
        if not self.compile and self._foreach(group, params):
            return _adam_foreach(params, grads, *lists, lr=lr, **settings, **self._caution_settings(group),
                                 counts=self._aligned_counts if group["caution"] else None)
        adam_steps(self, group, params, grads, states)


class AdamW(Adam):
    """Adam with decoupled weight decay (as ``torch.optim.AdamW``; default ``weight_decay=1e-2``)."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool = False, caution: bool = False,
                 caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, maximize=maximize, foreach=foreach,
                         fused=fused, caution=caution, caution_norm=caution_norm, compile=compile,
                         state_bits=state_bits, stochastic_round=stochastic_round, kahan=kahan)


class NAdamW(_Decoupling):
    """NAdam with decoupled weight decay (as ``torch.optim.NAdam(decoupled_weight_decay=True)``)."""

    decoupled = True
    torch_settings = {"foreach": None, "capturable": None, "differentiable": (False,)}
    state_keys = ("step", "exp_avg", "exp_avg_sq", "mu_product")
    scalar_state = {"step": int, "mu_product": float}

    def __init__(self, params, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, momentum_decay: float = 4e-3, *,
                 maximize: bool = False, caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        super()._validate(group)
        check_range("momentum_decay", group["momentum_decay"])

    def _update_group(self, group, params):
        states = self._states(params, "exp_avg", "exp_avg_sq")
        beta1, beta2 = group["betas"]
        lr, psi = as_float(group["lr"]), group["momentum_decay"]
        for param, grad, state in zip(params, self._grads(group, params), states):
            step = state["step"]
            mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * psi))
            mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * psi))
            product = state["mu_product"] = state.get("mu_product", 1.0) * mu
            self._run(nadamw_step, param, grad, state["exp_avg"], state["exp_avg_sq"],
                      scalars=dict(lr=lr, bias_correction2=bias_correction(beta2, step),
                                   grad_coef=(1.0 - mu) / (1.0 - product),
                                   avg_coef=mu_next / (1.0 - product * mu_next)),
                      beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                      **self._caution_settings(group))
