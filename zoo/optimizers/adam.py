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

from ..caution import caution as cautious
from .base import ZooOptimizer, as_float, check_betas, check_bool, check_range

__all__ = ["Adam", "AdamW", "NAdamW", "adam", "nadamw"]


def adam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
         steps: list[int], *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
         decoupled: bool, caution: bool = False, caution_norm="mean", counts=None,
         foreach: bool = False, fused: bool = False) -> None:
    """Functional core of Adam (``decoupled=False``) and AdamW (``decoupled=True``)."""
    if fused:
        if caution:
            raise ValueError("fused=True has no cautious kernel; use foreach or the for-loop")
        return _adam_fused(params, grads, exp_avgs, exp_avg_sqs, steps, lr=lr, beta1=beta1,
                           beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled=decoupled)
    if foreach:
        return _adam_foreach(params, grads, exp_avgs, exp_avg_sqs, steps, lr=lr, beta1=beta1,
                             beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled=decoupled,
                             caution=caution, caution_norm=caution_norm, counts=counts)
    for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        if weight_decay != 0:
            if decoupled:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().div_(math.sqrt(1 - beta2**step)).add_(eps)
        numer = cautious(exp_avg, grad, caution_norm, counts) if caution else exp_avg
        param.addcdiv_(numer, denom, value=-lr / (1 - beta1**step))


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


def nadamw(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
           mu_products: list[float], steps: list[int], *, lr: float, beta1: float, beta2: float,
           eps: float, weight_decay: float, momentum_decay: float, caution: bool = False,
           caution_norm="mean", counts=None) -> list[float]:
    """Functional core of NAdamW; returns the updated momentum products."""
    new_products = []
    for param, grad, exp_avg, exp_avg_sq, mu_product, step in zip(
            params, grads, exp_avgs, exp_avg_sqs, mu_products, steps):
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
        mu_product *= mu
        new_products.append(mu_product)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.div(1 - beta2**step).sqrt_().add_(eps)
        grad_coef = (1.0 - mu) / (1.0 - mu_product)
        avg_coef = mu_next / (1.0 - mu_product * mu_next)
        if caution:
            direction = grad.mul(grad_coef).add_(exp_avg, alpha=avg_coef)
            param.addcdiv_(cautious(direction, grad, caution_norm, counts), denom, value=-lr)
        else:
            param.addcdiv_(grad, denom, value=-lr * grad_coef)
            param.addcdiv_(exp_avg, denom, value=-lr * avg_coef)
    return new_products


class _AdaptiveBase(ZooOptimizer):
    """Validation shared by the Adam-like optimizers (betas, eps)."""

    full_size_states = 2   # m, v
    state_keys = ("step", "exp_avg", "exp_avg_sq")

    def _validate(self, group):
        check_betas("betas", group["betas"])
        check_range("eps", group["eps"])


class _Decoupling(_AdaptiveBase):
    """Adam-like optimizers whose groups say, as torch.optim's, whether the decay is decoupled
    (``decoupled_weight_decay``, fixed by the class): a torch.optim.NAdam reading a zoo NAdamW
    state then decays as it should, and Adam and AdamW states cannot be mistaken."""

    decoupled = False
    defining_settings = ("caution", "decoupled_weight_decay")
    torch_settings = {"capturable": None, "differentiable": (False,)}

    def __init__(self, params, defaults: dict, caution: bool = False, caution_norm="mean"):
        super().__init__(params, dict(defaults, decoupled_weight_decay=self.decoupled), caution, caution_norm)

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
                 caution_norm="mean"):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach, fused=fused)
        super().__init__(params, defaults, caution, caution_norm)

    def _validate(self, group):
        super()._validate(group)
        if group["fused"] is not None:   # None: torch.optim's default, not fused
            check_bool("fused", group["fused"])
        if group["fused"] and group["foreach"]:
            raise ValueError("Invalid fused: fused=True and foreach=True cannot both be set")
        if group["fused"] and group["caution"]:
            raise ValueError("Invalid fused: torch's fused Adam kernel has no cautious mask; "
                             "use fused=False (foreach or the for-loop)")

    def _update_group(self, group, params):
        states = self._states(params, "exp_avg", "exp_avg_sq")
        beta1, beta2 = group["betas"]
        adam(params, self._grads(group, params), [s["exp_avg"] for s in states],
             [s["exp_avg_sq"] for s in states], [s["step"] for s in states],
             lr=as_float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
             weight_decay=group["weight_decay"], decoupled=self.decoupled,
             foreach=self._foreach(group, params), fused=bool(group["fused"]), **self._caution_args(group))


class AdamW(Adam):
    """Adam with decoupled weight decay (as ``torch.optim.AdamW``; default ``weight_decay=1e-2``)."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, *, maximize: bool = False,
                 foreach: bool | None = None, fused: bool = False, caution: bool = False,
                 caution_norm="mean"):
        super().__init__(params, lr, betas, eps, weight_decay, maximize=maximize, foreach=foreach,
                         fused=fused, caution=caution, caution_norm=caution_norm)


class NAdamW(_Decoupling):
    """NAdam with decoupled weight decay (as ``torch.optim.NAdam(decoupled_weight_decay=True)``)."""

    decoupled = True
    torch_settings = {"foreach": None, "capturable": None, "differentiable": (False,)}
    state_keys = ("step", "exp_avg", "exp_avg_sq", "mu_product")
    scalar_state = {"step": int, "mu_product": float}

    def __init__(self, params, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, momentum_decay: float = 4e-3, *,
                 maximize: bool = False, caution: bool = False, caution_norm="mean"):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm)

    def _validate(self, group):
        super()._validate(group)
        check_range("momentum_decay", group["momentum_decay"])

    def _update_group(self, group, params):
        states = self._states(params, "exp_avg", "exp_avg_sq")
        beta1, beta2 = group["betas"]
        products = nadamw(
            params, self._grads(group, params), [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states], [s.get("mu_product", 1.0) for s in states],
            [s["step"] for s in states], lr=as_float(group["lr"]), beta1=beta1, beta2=beta2,
            eps=group["eps"], weight_decay=group["weight_decay"],
            momentum_decay=group["momentum_decay"], **self._caution_args(group))
        for state, product in zip(states, products):
            state["mu_product"] = product
