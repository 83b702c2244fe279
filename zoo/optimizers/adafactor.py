"""Adafactor (Shazeer & Stern 2018) in torch.optim.Adafactor's form, with an optional first moment.

Step t, for a parameter whose last two dimensions are (m, n)::

    b2_t  = 1 - t^beta2_decay                              (one_minus = t^beta2_decay)
    rho_t = min(lr, 1 / sqrt(t));  alpha = max(eps2, RMS(p)) * rho_t
    p    <- p * (1 - lr * wd)
    R    <- b2_t R + (1 - b2_t) mean_n(g^2)      C <- b2_t C + (1 - b2_t) mean_m(g^2)
    V     = R C / mean_m(R)                                 (a vector param keeps V = EMA of g^2)
    U     = g / sqrt(max(V, eps1^2));   U_hat = U / max(1, RMS(U) / d)
    p    <- p - alpha * U_hat                                  (without beta1), or
    m    <- b1 * m + (1 - b1) * alpha * U_hat;  p <- p - m    (with beta1, as HF / timm / C-Optim)

Without ``beta1`` the update is g times a positive factor, always aligned with g, so the
cautious twin requires ``beta1`` and masks ``m`` against ``g``.

The step-size scalars (alpha and the clipping divisor) stay 0-d tensors, never Python numbers:
no device synchronisation, and a step runs on the ``meta`` device. torch's momentum-cycling
schedulers (``OneCycleLR``/``CyclicLR`` with ``cycle_momentum=True``) look for a ``momentum`` or
``betas`` setting; Adafactor's first moment is ``beta1`` (HF's name), which they do not know:
pass ``cycle_momentum=False`` (and schedule ``group["beta1"]`` yourself if you want it cycled).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..sharding import zeros_along
from .base import ZooOptimizer, as_float, check_range
from .blocks import apply_, decay_

__all__ = ["Adafactor", "adafactor_step"]


def adafactor_step(param: Tensor, grad: Tensor, row_var: Tensor | None, col_var: Tensor | None,
                   variance: Tensor | None, exp_avg: Tensor | None, *, lr, rho, one_minus_beta2,
                   beta1: float | None, eps1: float, eps2: float, d: float, weight_decay: float, caution: bool,
                   caution_norm) -> Tensor | None:
    """One tensor's step: ``row_var``/``col_var`` for a matrix, ``variance`` for a vector,
    ``exp_avg`` with ``beta1``; the caller gives rho = min(lr, 1/sqrt(t)) and 1 - beta2_t = t^c."""
    # alpha = max(eps2, RMS(p)) * rho, in float64 for every dtype, as torch's Python floats
    alpha = (param.norm(2).double() / param.numel() ** 0.5).clamp_(min=eps2).mul_(rho)
    decay_(param, lr, weight_decay)
    if row_var is not None:
        row_var.lerp_(torch.norm(grad, dim=-1, keepdim=True).square().div_(grad.size(-1)), one_minus_beta2)
        col_var.lerp_(torch.norm(grad, dim=-2, keepdim=True).square().div_(grad.size(-2)), one_minus_beta2)
        var_estimate = row_var @ col_var
        # clamp out of place: sharded (FSDP2), the mean is a partial sum until it is read
        var_estimate.div_(row_var.mean(dim=-2, keepdim=True).clamp(min=eps1))
    else:
        variance.lerp_(grad * grad, one_minus_beta2)
        var_estimate = variance.clone()
    update = var_estimate.clamp_(min=eps1 * eps1).rsqrt_().mul_(grad)
    clip = (update.norm(2).double() / (update.numel() ** 0.5 * d)).clamp_(min=1.0)
    if beta1 is None:
        param.sub_(update.mul_(alpha / clip))
        return None
    exp_avg.mul_(beta1).add_(update.mul_((1 - beta1) * alpha / clip))
    return apply_(param, exp_avg, grad, -1.0, caution, caution_norm)


class Adafactor(ZooOptimizer):
    """Adafactor: factored second moment, relative step size, update clipping; optional ``beta1``.

    Same arguments and results as ``torch.optim.Adafactor`` (``beta1=None``), plus ``beta1``
    (first moment of the clipped update), ``caution`` and ``caution_norm``.
    """

    low_bit_states = {"exp_avg": True, "variance": False}
    full_precision_states = {"row_var and col_var": "are the factored second moment's row and column averages, "
                                                    "not of the parameter's size"}

    torch_settings = {"foreach": None}

    def __init__(self, params, lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
                 weight_decay: float = 0.0, beta1: float | None = None, *, maximize: bool = False,
                 caution: bool = False, caution_norm="mean", compile=False,
                 state_bits: int = 32, stochastic_round: bool = False, kahan: bool = False):
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                        beta1=beta1, maximize=maximize)
        super().__init__(params, defaults, caution, caution_norm, compile, state_bits=state_bits,
                         stochastic_round=stochastic_round, kahan=kahan)

    def _validate(self, group):
        check_range("beta2_decay", group["beta2_decay"], -1.0, 0.0)
        eps = group["eps"]
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"Invalid eps: {eps!r}; expected a pair (eps1 or None, eps2)")
        if eps[0] is not None:
            check_range("eps[0]", eps[0])
        check_range("eps[1]", eps[1])
        check_range("d", group["d"], 1.0)
        if group["beta1"] is not None:
            check_range("beta1", group["beta1"], 0.0, 1.0, high_open=True)

    def _formula_bytes(self, param, group):
        shape = param.shape
        factored = shape[:-1].numel() + shape[:-2].numel() * shape[-1] if param.dim() > 1 else param.numel()
        moment = param.numel() if group["beta1"] is not None else 0
        return (factored + moment) * param.element_size()

    def _state_keys(self, param, group):
        factors = {"row_var", "col_var"} if param.dim() > 1 else {"variance"}
        return {"step"} | factors, {"exp_avg"}   # the first moment appears once beta1 is set

    def _state_shapes(self, param, group):
        return {**({"exp_avg": param.shape} if group["beta1"] is not None else {}),
                **({"variance": param.shape} if param.dim() <= 1 else {})}

    def _low_bit_noop_reason(self, group):
        if group["beta1"] is None:
            return ("has beta1=None: its state is the factored second moment (row and column averages, of the "
                    "parameter's size only for vectors); pass beta1 (e.g. 0.9) for a first moment in fewer bits")
        return None

    def _caution_noop_reason(self, group):
        if group["beta1"] is None or group["beta1"] == 0:
            return ("beta1 is not set (pass e.g. beta1=0.9): without a first moment the update is "
                    "g times a positive factor")
        return None

    def _init_factors(self, p, state):
        dtype = self._state_dtype(p)
        if p.dim() > 1:
            state["row_var"] = zeros_along(p, p.shape[:-1] + (1,), dtype)
            state["col_var"] = zeros_along(p, p.shape[:-2] + (1, p.shape[-1]), dtype)
        else:
            state["variance"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)

    def _update_group(self, group, params):
        states = self._states(params, init=self._init_factors)
        for p, state in zip(params, states):   # beta1 may be switched on after the first step
            if group["beta1"] is not None and "exp_avg" not in state:
                self._zeros(state, "exp_avg", p, group["state_bits"])
        eps1, eps2 = group["eps"]
        lr = as_float(group["lr"])
        for param, grad, state in zip(params, self._grads(group, params), states):
            step = state["step"]
            self._run(adafactor_step, param, grad, state.get("row_var"), state.get("col_var"), state.get("variance"),
                      state.get("exp_avg"), scalars=dict(lr=lr, rho=min(lr, 1 / step**0.5),
                                                         one_minus_beta2=step ** group["beta2_decay"]),
                      beta1=group["beta1"], eps1=torch.finfo(param.dtype).eps if eps1 is None else eps1, eps2=eps2,
                      d=group["d"], weight_decay=group["weight_decay"], **self._caution_settings(group))
