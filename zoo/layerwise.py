"""Per-layer updates: every parameter is updated inside ``loss.backward()``, as soon as its gradient
is complete, and its gradient is freed at once, so the gradients of the whole model never exist
together (APOLLO's and GaLore's per-layer weight updates; torch's "optimizer step in backward").

    opt = zoo.create(model, "apollo-mini", lr=1e-2, layerwise=True, clip_grad_norm=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    for batch in batches:
        opt.zero_grad()
        loss_fn(model, batch).backward()   # each parameter is updated here
        opt.step()                   # ends the optimizer step (required, as in the ordinary loop)
        scheduler.step()

``Tensor.register_post_accumulate_grad_hook`` on each parameter of the optimizer runs the
optimizer's own update of that parameter's group for that one parameter
(:meth:`zoo.optimizers.base.ZooOptimizer._step_group`): the same state, the same step counter,
APOLLO's seeds and refreshes, Muon's matrices, the cautious mask. The result equals the ordinary
``backward(); step()`` for every registered name (a test). What the public versions of this
feature get wrong, and what this one does:

- **Gradient accumulation** (``accumulate=k``): a parameter is updated at every k-th backward
  pass that reaches it, on the summed gradient, as the ordinary loop with k micro-batches per
  step. Until then its gradient is kept, so the memory saving holds fully for ``k = 1``. A
  ``step()`` before the k-th pass (the last, short accumulation of an epoch) applies what has
  accumulated, as the ordinary step would. A parameter reached by more backward passes between two
  ``step()`` calls than ``accumulate`` allows raises ``RuntimeError`` naming ``accumulate=k``:
  without it each pass would be an optimizer step of its own (HF Trainer's
  ``gradient_accumulation_steps=k`` needs ``accumulate=k``).
- **Learning-rate schedules**: the update reads ``group["lr"]`` when it runs, so one torch
  scheduler over this optimizer, stepped once per optimizer step as usual, drives every parameter.
- **Clipping** (``clip_grad_norm=c``): a global gradient norm needs every gradient before the first
  update, which per-layer updates never have. They clip by **the previous step's global norm**:
  every gradient of step t is multiplied by ``min(1, c / (norm_{t-1} + 1e-6))`` (torch's
  ``clip_grad_norm_`` formula), where ``norm_{t-1}`` is the global norm of step t-1's gradients,
  summed in the hooks. So the threshold means what the client's would, one coefficient scales the
  whole gradient (its direction is kept, as with global clipping), and nothing is computed twice;
  the price is a step's lag: a spike in the gradient norm goes through unclipped, and the step
  after it is clipped by the spike's norm. The first step has no
  previous norm: each tensor stands in for the global norm with its own norm scaled to the whole,
  ``norm_i * sqrt(N / n_i)`` (``n_i`` its size, ``N`` the optimizer's: the global norm if every
  tensor's gradient had the same RMS), so each tensor is at most its share ``c * sqrt(n_i / N)``
  of the threshold and the global norm stays <= c. Where the gradients' RMS is the same in every
  tensor and their global norm the same at every step, this is global clipping at every step.
  :attr:`PerLayer.grad_norm` is the last step's global norm (before clipping), for logging.
- **A client's clipping cannot act**: after backward, a parameter's ``.grad`` is a
  :class:`SpentGradient`, which holds no values, only the norm of the gradient that was applied.
  ``torch.nn.utils.clip_grad_norm_`` (HF Trainer's ``max_grad_norm``, Lightning's
  ``gradient_clip_val``, accelerate's ``clip_grad_norm_``) gets the true global norm from it (so
  it is logged right), and its rescaling, which cannot act, warns where it would have changed the
  gradient (a factor other than 1), naming the settings to change; any other use of the spent
  gradient (a GradScaler's unscaling, reading values) raises, saying why. ``zero_grad`` (either
  kind) clears it.
- **Moving the model** (``module.to()``, which HF Trainer does) swaps an INT8 weight for a new
  tensor, and autograd then forgets its hooks: they are registered again at every step
  (:meth:`PerLayer._rehook`), and a gradient no hook saw is applied by ``step()``, as the ordinary
  step would.
- **Distributed**: under DDP the hook sees the rank's local gradient, before the all-reduce;
  attaching with more than one process is refused.

``optimizer.aligned_fraction()`` covers the parameters updated in the latest step; the optimizer
state dict is the ordinary one (resume is bit for bit); ``optimizer.per_layer.remove()`` takes the
hooks away and leaves an ordinary optimizer. A frozen parameter cannot carry a hook; once it is
unfrozen, the next ``optimizer.step()`` updates it from its gradient, as the ordinary loop does,
and hooks it for the following steps.
"""
from __future__ import annotations

import math
import warnings
import weakref
from numbers import Integral, Real

import torch
import torch.distributed as dist
from torch import Tensor

from .optimizers.base import ZooOptimizer
from .optimizers.blocks import float_norm
from .registry import info

__all__ = ["PerLayer", "SpentGradient", "attach", "layerwise"]

aten = torch.ops.aten

_CLIENT_CLIPPING = ("set the client's clipping off (HF Trainer: TrainingArguments(max_grad_norm=0); Lightning: "
                    "Trainer(gradient_clip_val=None); your own loop: no clip_grad_norm_) and clip inside the hooks "
                    "with zoo.create(..., layerwise=True, clip_grad_norm=c)")
_SCALING = {aten.mul_.Tensor, aten.mul_.Scalar, aten.div_.Tensor, aten.div_.Scalar, aten.clamp_.default,
            aten.clamp_.Tensor, aten.clamp_min_.default, aten.clamp_max_.default, aten._foreach_mul_.Tensor,
            aten._foreach_mul_.Scalar, aten._foreach_mul_.List, aten._foreach_mul_.ScalarList,
            aten._foreach_div_.Tensor, aten._foreach_div_.Scalar, aten._foreach_clamp_min_.Scalar,
            aten._foreach_clamp_max_.Scalar}
_ZEROING = {aten.zero_.default, aten._foreach_zero_.default}


class SpentGradient(Tensor):
    """What a parameter's ``.grad`` is after its per-layer update: the gradient was applied and
    freed; this holds no values (no storage of the gradient's size), only the gradient's 2-norm
    (``norm``, float32 at least). It has the gradient's shape, dtype and device. The 2-norm of it is that
    norm (so ``clip_grad_norm_`` returns the true global norm); an in-place rescaling (clipping)
    warns that it cannot act; zeroing does nothing; anything else raises."""

    norm: Tensor

    @staticmethod
    def __new__(cls, norm: Tensor, like: Tensor | tuple):
        shape, dtype, device = (like.shape, like.dtype, like.device) if isinstance(like, Tensor) else like
        return Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device)

    def __init__(self, norm: Tensor, like: Tensor | tuple):
        self.norm = norm

    def __repr__(self, *, tensor_contents=None) -> str:
        return (f"SpentGradient(shape={tuple(self.shape)}, dtype={self.dtype}: applied and freed by per-layer "
                f"updates, norm {float(self.norm):.6g})")

    def __tensor_flatten__(self):
        return ["norm"], (tuple(self.shape), self.dtype, self.device)

    @staticmethod
    def __tensor_unflatten__(inner: dict, meta: tuple, outer_size, outer_stride):
        return SpentGradient(inner["norm"], meta)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (aten.detach.default, aten.alias.default):
            return SpentGradient(args[0].norm, args[0])
        if func in (aten.linalg_vector_norm.default, aten._foreach_norm.Scalar):
            order = args[1] if len(args) > 1 else kwargs.get("ord", 2)
            if order == 2 and not kwargs.get("dim") and not (len(args) > 2 and args[2]):
                if func is aten.linalg_vector_norm.default:
                    return args[0].norm.to(kwargs.get("dtype") or args[0].dtype)
                return [t.norm.to(t.dtype) if isinstance(t, SpentGradient) else torch.linalg.vector_norm(t)
                        for t in args[0]]
        if func in _SCALING or func in _ZEROING:
            if func in _SCALING and not _identity(func, args):
                warnings.warn("a gradient rescaling (clipping) after backward cannot act with per-layer updates: "
                              "the gradients were applied and freed inside backward; " + _CLIENT_CLIPPING,
                              stacklevel=2)
            lists = args[0] if isinstance(args[0], (list, tuple)) else None
            if lists is not None:   # foreach over a mix: the real tensors get the operation
                real = [(i, t) for i, t in enumerate(lists) if not isinstance(t, SpentGradient)]
                if real:
                    rest = [[a[i] for i, _ in real] if isinstance(a, (list, tuple)) else a for a in args[1:]]
                    func([t for _, t in real], *rest, **kwargs)
            return args[0]
        raise RuntimeError(f"{func} on the gradient of a parameter updated by per-layer updates (zoo.layerwise): the "
                           "gradient was applied and freed inside backward, so nothing after backward can read or "
                           "change it (a GradScaler cannot unscale it: use bf16, not fp16 with a scaler; for "
                           "clipping, " + _CLIENT_CLIPPING + ")")


_FACTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # factor tensor -> is it 1


def _identity(func, args) -> bool:
    """Whether a rescaling multiplies or divides by exactly 1 (``clip_grad_norm_`` always rescales,
    by ``min(1, max_norm / norm)``: a call with nothing to clip, such as HF Trainer's norm for its logs
    with clipping off, changes nothing and is no loss). A tensor factor is read once."""
    if func.__name__.startswith(("clamp", "_foreach_clamp")):
        return False
    factor = args[1]
    if isinstance(factor, (list, tuple)):
        return all(_identity(func, (None, f)) for f in factor)
    if isinstance(factor, Tensor):
        if factor.numel() != 1:
            return False
        if factor not in _FACTORS:
            _FACTORS[factor] = bool(factor == 1)
        return _FACTORS[factor]
    return factor == 1


class PerLayer:
    """The hooks that update ``optimizer``'s parameters inside backward (see the module)."""

    def __init__(self, optimizer: ZooOptimizer, accumulate: int = 1, clip_grad_norm: float | None = None):
        if not isinstance(optimizer, ZooOptimizer):
            raise TypeError(f"per-layer updates need a zoo optimizer, got {type(optimizer).__name__}")
        if isinstance(accumulate, bool) or not isinstance(accumulate, Integral) or accumulate < 1:
            raise ValueError(f"Invalid accumulate: {accumulate!r}; allowed an int >= 1 (backward passes per update)")
        if clip_grad_norm is not None and (isinstance(clip_grad_norm, bool) or not isinstance(clip_grad_norm, Real)
                                           or not 0 < clip_grad_norm < math.inf):
            raise ValueError(f"Invalid clip_grad_norm: {clip_grad_norm!r}; allowed a number > 0, or None for no "
                             "clipping")
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError("per-layer updates would see each rank's local gradient, before DDP's all-reduce; "
                             "they are not supported with more than one process")
        if optimizer.per_layer is not None:
            raise ValueError("this optimizer already updates its parameters in backward")
        self.optimizer, self.accumulate, self.clip_grad_norm = optimizer, int(accumulate), clip_grad_norm
        self._passes: dict = {}      # parameter -> backward passes since its last update
        self._updated: set = set()   # parameters updated since the last step()
        self._stepped = True         # step() was called since the last update
        self._group: dict = {}       # parameter -> index of its group (group dicts change on load)
        self._handles: dict = {}     # parameter -> its hooks (frozen parameters have none yet)
        self._squares: Tensor | None = None   # sum of the squared gradient norms of this step
        self._last_norm: Tensor | None = None  # the global gradient norm of the last step
        optimizer.per_layer = self
        for index in range(len(optimizer.param_groups)):
            self.hook(index)

    @property
    def grad_norm(self) -> float:
        """The global 2-norm of the gradients of the last completed step (before clipping), summed
        in the hooks; nan before the first ``step()``."""
        return math.nan if self._last_norm is None else float(self._last_norm)

    def _numel(self) -> int:
        return sum(p.numel() for p in self._group if p.requires_grad)

    def hook(self, index: int) -> None:
        """Hook the parameters of param group ``index`` (also called by ``add_param_group``);
        a frozen parameter (no gradient wanted) cannot have the hook until it is unfrozen."""
        for param in self.optimizer.param_groups[index]["params"]:
            self._group.setdefault(param, index)
            if param.requires_grad and param not in self._handles:
                self._hook(param)

    def _hook(self, param: Tensor) -> None:
        self._handles[param] = (param.register_hook(lambda grad, param=param: _clear_spent(param)),
                                param.register_post_accumulate_grad_hook(self._update))

    def _rehook(self) -> None:
        """Register the hooks with autograd again (idempotent): ``module.to()`` (HF Trainer moves the
        model it is given) swaps a tensor subclass parameter (an INT8 weight) with a new one by
        ``torch.utils.swap_tensors``, after which the parameter still lists its hooks but autograd
        no longer calls them; assigning a tensor's hook dict registers it anew."""
        for param in self._handles:
            param._backward_hooks = param._backward_hooks
            param._post_accumulate_grad_hooks = param._post_accumulate_grad_hooks

    @torch.no_grad()
    def catch_up(self) -> None:
        """Called by ``optimizer.step()``, which ends the optimizer step: applies what is still
        accumulating (fewer than ``accumulate`` passes, as the ordinary step would), updates a
        parameter unfrozen since the hooks were made from the gradient it got and hooks it, and
        closes the step's global gradient norm."""
        for param, passes in self._passes.items():
            if passes and param.grad is not None:
                self._apply(param)
        self._passes.clear()
        for param in self._handles:   # a gradient no hook saw (its hooks were lost: _rehook), as the ordinary step
            if param.grad is not None and not isinstance(param.grad, SpentGradient):
                self._apply(param)
        self._rehook()
        for param, index in self._group.items():
            if param.requires_grad and param not in self._handles:
                if param.grad is not None:
                    self._apply(param)
                self.hook(index)
        if self._squares is not None:
            self._last_norm, self._squares = self._squares.sqrt(), None
        self._stepped = True

    @torch.no_grad()
    def _update(self, param: Tensor) -> None:
        passes = self._passes.get(param, 0) + 1
        if passes < self.accumulate:
            self._passes[param] = passes
            return
        self._passes[param] = 0
        if param in self._updated and not self._stepped:
            group = self.optimizer.param_groups[self._group[param]]
            names = dict(zip(map(id, group["params"]), group.get("param_names", ())))
            raise RuntimeError(
                f"parameter {names.get(id(param), 'of shape ' + str(tuple(param.shape)))} got a gradient from more "
                f"backward passes than accumulate="
                f"{self.accumulate} between two optimizer.step() calls: per-layer updates apply each gradient inside "
                "backward, so k backward passes per optimizer step (gradient accumulation, HF Trainer's "
                "gradient_accumulation_steps=k) need accumulate=k (zoo.create(..., layerwise=True, accumulate=k)), "
                "and each optimizer step needs its optimizer.step() call")
        self._apply(param)

    def _apply(self, param: Tensor) -> None:
        """Update ``param`` from its gradient (clipped as the module says) and spend the gradient."""
        if self._stepped:   # the first update of a new optimizer step
            self._stepped = False
            self._updated.clear()
            self.optimizer._aligned_counts = []
            self._rehook()   # before the gradients of parameters whose hooks were lost arrive
        self._updated.add(param)
        grad = param.grad
        norm = float_norm(grad)   # float32 at least, without a float32 copy of a bf16 gradient
        self._squares = norm.square() if self._squares is None else self._squares + norm.square()
        if self.clip_grad_norm is not None:
            whole = self._last_norm if self._last_norm is not None else norm * math.sqrt(self._numel() / param.numel())
            coefficient = self.clip_grad_norm / (whole + 1e-6)
            grad.mul_(coefficient.clamp(max=1.0).to(grad.dtype))
        self.optimizer._step_group(self.optimizer.param_groups[self._group[param]], [param])
        param.grad = SpentGradient(norm, grad)

    def clear(self) -> None:
        """Set every spent gradient to None (``optimizer.zero_grad`` does) and make sure autograd
        calls the hooks (:meth:`_rehook`)."""
        for param in self._group:
            _clear_spent(param)
        self._rehook()

    def remove(self) -> None:
        """Take the hooks away: the optimizer steps in ``step()`` again."""
        for handles in self._handles.values():
            for handle in handles:
                handle.remove()
        self._handles.clear()
        self.clear()
        self.optimizer.per_layer = None


def _clear_spent(param: Tensor) -> None:
    """Set ``param.grad`` to None if it is a :class:`SpentGradient` (before the next backward pass
    accumulates into it, or on ``zero_grad``)."""
    if isinstance(param.grad, SpentGradient):
        param.grad = None


def attach(optimizer: ZooOptimizer, accumulate: int = 1, clip_grad_norm: float | None = None) -> ZooOptimizer:
    """Make ``optimizer`` update its parameters inside backward; returns it."""
    PerLayer(optimizer, accumulate, clip_grad_norm)
    return optimizer


def layerwise(params, name: str, *, accumulate: int = 1, clip_grad_norm: float | None = None,
              **hparams) -> ZooOptimizer:
    """The registered optimizer ``name`` over ``params`` (tensors or group dicts), updating them
    inside backward (``zoo.create(model, name, layerwise=True)`` does the same for a model)."""
    return attach(info(name).cls(params, **hparams), accumulate, clip_grad_norm)
