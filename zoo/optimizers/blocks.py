"""The blocks every family's per-tensor step is built from.

A family's step function (``adam_step``, ``lion_step``, ...) updates one parameter and its state
tensors in place and returns the cautious mask's count (a 0-d tensor) or None;
:class:`zoo.optimizers.base.ZooOptimizer` calls it for each tensor of a group, compiled with
``compile=True``. The blocks name what the families share: decoupled decay and the L2 penalty,
exponential moving averages, Adam's moments and bias corrections, and caution-and-apply.

Scalars that change from step to step (the learning rate, bias corrections) are Python floats in
eager mode, where every block uses the kernel torch.optim uses (``addcdiv_(..., value=)``: the
parity with torch.optim is bit for bit), and 0-d tensors under ``compile=True``, so that a new
learning rate or step never recompiles; the arithmetic blocks pick the form by the scalar's type
(with a tensor: an explicit product, which rounds once more than the fused kernel).
"""
from __future__ import annotations

from torch import Tensor

from ..caution import mask_and_count

__all__ = ["add_", "addcmul_", "addcdiv_", "decay_", "l2", "ema_", "ema_sq_", "adam_moments_", "bias_correction",
           "apply_", "carry_nonfinite"]


def add_(x: Tensor, y: Tensor, alpha) -> Tensor:
    """``x += alpha * y``."""
    return x.add_(y * alpha) if isinstance(alpha, Tensor) else x.add_(y, alpha=alpha)


def addcmul_(x: Tensor, a: Tensor, b: Tensor, value) -> Tensor:
    """``x += value * a * b``."""
    return x.add_(a * b * value) if isinstance(value, Tensor) else x.addcmul_(a, b, value=value)


def addcdiv_(x: Tensor, a: Tensor, b: Tensor, value) -> Tensor:
    """``x += value * a / b``."""
    return x.add_(a / b * value) if isinstance(value, Tensor) else x.addcdiv_(a, b, value=value)


def decay_(param: Tensor, lr, weight_decay: float) -> None:
    """Decoupled weight decay ``p <- p * (1 - lr * wd)`` (Loshchilov & Hutter)."""
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)


def l2(grad: Tensor, param: Tensor, weight_decay: float) -> Tensor:
    """The gradient of the L2-penalised loss, ``g + wd * p`` (a new tensor), or ``g``."""
    return grad.add(param, alpha=weight_decay) if weight_decay != 0 else grad


def ema_(average: Tensor, value: Tensor, beta: float) -> Tensor:
    """``m <- beta * m + (1 - beta) * value``, as torch.optim's ``lerp_``."""
    return average.lerp_(value, 1 - beta)


def ema_sq_(average: Tensor, value: Tensor, beta: float) -> Tensor:
    """``v <- beta * v + (1 - beta) * value^2``, as torch.optim."""
    return average.mul_(beta).addcmul_(value, value, value=1 - beta)


def adam_moments_(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *, lr, beta1: float,
                  beta2: float, weight_decay: float, decoupled: bool) -> Tensor:
    """Weight decay (decoupled on ``p``, or the L2 term into ``g``), then Adam's two moments, as
    torch.optim's Adam/AdamW/NAdam/RAdam; returns the gradient the step goes on with (with the
    L2 term)."""
    if decoupled:
        decay_(param, lr, weight_decay)
    else:
        grad = l2(grad, param, weight_decay)
    ema_(exp_avg, grad, beta1)
    ema_sq_(exp_avg_sq, grad, beta2)
    return grad


def bias_correction(beta: float, step: int) -> float:
    """``1 - beta^t``."""
    return 1 - beta**step


def carry_nonfinite(update: Tensor, grad: Tensor) -> Tensor:
    """``update + 0 * grad`` in place: NaN where ``grad`` is NaN or infinite, ``update`` elsewhere
    (for updates that would hide a non-finite gradient: a sign, a clip)."""
    return update.add_(grad, alpha=0)


def apply_(param: Tensor, update: Tensor, grad: Tensor, alpha, caution: bool = False, caution_norm="mean", *,
           denom: Tensor | None = None, sign_of: Tensor | None = None) -> Tensor | None:
    """Caution and apply: ``p += alpha * phi * update`` (``/ denom`` when given), where ``phi`` is
    the cautious mask of ``update`` against ``grad`` (:func:`zoo.caution.mask_and_count`; 1
    without caution). Returns the mask's count, or None without caution."""
    if not caution:
        if denom is None:
            add_(param, update, alpha)
        else:
            addcdiv_(param, update, denom, alpha)
        return None
    phi, count = mask_and_count(update, grad, caution_norm, sign_of=sign_of)
    if denom is None:
        addcmul_(param, phi, update, alpha)
    else:
        addcdiv_(param, phi.mul_(update), denom, alpha)
    return count
