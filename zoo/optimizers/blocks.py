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

Temporaries of a tensor's size (a denominator, a mask) are taken, in eager steps, from one
workspace per optimizer step (:func:`workspace`, :func:`into`): a buffer per purpose, as large as
the largest tensor that needed it, whose views every tensor of the step reuses. glibc's malloc
hands blocks that large back to the OS when they are freed, and a fresh one is page-faulted in
again, so fresh temporaries per tensor cost a step more than its arithmetic (measured on a CPU:
c-adamw 3.9x adamw's step, c-lion 6.1x lion's; now 1.5x and 2.1x: ``python -m analysis.bench
step --allocator both``). The workspace
is freed when the step ends: nothing is held between steps, and the step's peak is not raised.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import Tensor

from ..caution import mask_and_count
from ..sharding import is_dtensor as _is_dtensor

__all__ = ["add_", "addcmul_", "addcdiv_", "decay_", "l2", "ema_", "ema_sq_", "adam_moments_", "adam_denom",
           "bias_correction", "apply_", "carry_nonfinite", "workspace", "into", "float_norm"]

_WORKSPACE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("zoo_workspace", default=None)


@contextlib.contextmanager
def workspace():
    """The step's workspace for :func:`into` (the one already open, if any), freed on leaving."""
    if _WORKSPACE.get() is not None:
        yield
        return
    token = _WORKSPACE.set({})
    try:
        yield
    finally:
        _WORKSPACE.reset(token)


def into(like: Tensor, purpose: str, *others: Tensor) -> dict:
    """``{"out": buffer}``, an uninitialised contiguous tensor shaped as ``like`` from the open
    :func:`workspace`'s buffer for ``purpose``, or ``{}`` (a fresh result: no workspace, a compiled
    step, a tensor subclass such as a DTensor or FakeTensor, a non-contiguous tensor, or ``others``
    (the op's other tensor operands) of another shape or dtype, whose result would differ from
    ``like``'s). Used as ``torch.sqrt(v, **into(v, "denom"))``: the same kernel either way, so the
    same values."""
    if torch.compiler.is_compiling():
        return {}
    space = _WORKSPACE.get()
    if (space is None or type(like) is not Tensor or not like.is_contiguous()
            or any(o.shape != like.shape or o.dtype != like.dtype for o in others)):
        return {}
    key = (purpose, like.device, like.dtype)
    buffer = space.get(key)
    if buffer is None or buffer.numel() < like.numel():
        del buffer
        space.pop(key, None)   # the smaller one is freed before the larger is made: the peak is one tensor's
        buffer = space[key] = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
    return {"out": buffer[:like.numel()].view(like.shape)}


def add_(x: Tensor, y: Tensor, alpha) -> Tensor:
    """``x += alpha * y``."""
    return x.add_(y * alpha) if isinstance(alpha, Tensor) else _in_place(x, "add_", y, alpha=alpha)


def addcmul_(x: Tensor, a: Tensor, b: Tensor, value) -> Tensor:
    """``x += value * a * b``."""
    return x.add_(a * b * value) if isinstance(value, Tensor) else _in_place(x, "addcmul_", a, b, value=value)


def addcdiv_(x: Tensor, a: Tensor, b: Tensor, value) -> Tensor:
    """``x += value * a / b``."""
    return x.add_(a / b * value) if isinstance(value, Tensor) else _in_place(x, "addcdiv_", a, b, value=value)


MIXED_CHUNK = 2**20


def _in_place(x: Tensor, method: str, *operands, **kwargs) -> Tensor:
    """``x.<method>(*operands, **kwargs)``. Where ``x`` is float32 and an operand of its size is not
    (a bfloat16 gradient or state updating the float32 copy of a bf16 parameter rounded
    stochastically, or of an INT8 weight), eagerly by chunks of :data:`MIXED_CHUNK` values whose
    operands are converted to ``x``'s dtype first: the same values (the mixed-dtype kernel computes
    in float32 too), without its unvectorised path (6x slower on a CPU)."""
    mixed = [o for o in operands if isinstance(o, Tensor) and o.dim() > 0 and o.dtype != x.dtype]
    if (not mixed or x.numel() <= MIXED_CHUNK or torch.compiler.is_compiling() or type(x) is not Tensor
            or not x.is_contiguous()
            or any(type(o) is not Tensor or o.shape != x.shape or not o.is_contiguous() for o in mixed)):
        return getattr(x, method)(*operands, **kwargs)
    flat = x.view(-1)
    flats = [o.view(-1) if isinstance(o, Tensor) and o.dim() > 0 else o for o in operands]
    buffers = torch.empty(len(mixed), MIXED_CHUNK, dtype=x.dtype, device=x.device)
    for start in range(0, flat.numel(), MIXED_CHUNK):
        stop = min(start + MIXED_CHUNK, flat.numel())
        parts, used = [], 0
        for o in flats:
            if isinstance(o, Tensor) and o.dim() > 0:
                part = o[start:stop]
                if part.dtype != x.dtype:
                    part = buffers[used, : stop - start].copy_(part)
                    used += 1
                o = part
            parts.append(o)
        getattr(flat[start:stop], method)(*parts, **kwargs)
    return x


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


def adam_denom(exp_avg_sq: Tensor, bias_correction2_sqrt, eps: float) -> Tensor:
    """Adam's denominator ``sqrt(v) / sqrt(1 - b2^t) + eps``, in the step's workspace (:func:`into`)."""
    return torch.sqrt(exp_avg_sq, **into(exp_avg_sq, "denom")).div_(bias_correction2_sqrt).add_(eps)


NORM_CHUNK = 2**20


def float_norm(x: Tensor) -> Tensor:
    """The Frobenius norm of ``x``, accumulated in float32 at least (no overflow for float16), and
    without a float32 copy of a bfloat16 or float16 ``x`` (``vector_norm(x, dtype=float32)`` makes
    one): eagerly, the norm of the norms of its chunks of :data:`NORM_CHUNK` values (a DTensor, a
    compiled step and a small or float32 tensor in one call)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    if dtype == x.dtype or x.numel() <= NORM_CHUNK or torch.compiler.is_compiling() or _is_dtensor(x):
        return torch.linalg.vector_norm(x, dtype=dtype)
    parts = x.reshape(-1).split(NORM_CHUNK)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(part, dtype=dtype) for part in parts]))


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
    phi, count = mask_and_count(update, grad, caution_norm, sign_of=sign_of, out=into(update, "mask").get("out"))
    if denom is None:
        addcmul_(param, phi, update, alpha)
    else:
        addcdiv_(param, phi.mul_(update), denom, alpha)
    return count
