"""Per-layer updates: every parameter is updated inside ``loss.backward()``, as soon as its gradient
is complete, and its gradient is freed at once, so the gradients of the whole model never exist
together (APOLLO's and GaLore's per-layer weight updates; torch's "optimizer step in backward").

    opt = zoo.create(model, "apollo-mini", lr=1e-2, layerwise=True)   # or zoo.layerwise(params, name)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    for batch in batches:
        opt.zero_grad()              # harmless: the gradients are gone already
        loss_fn(model, batch).backward()   # each parameter is updated here
        opt.step()                   # nothing left to do
        scheduler.step()

``Tensor.register_post_accumulate_grad_hook`` on each parameter of the optimizer runs the
optimizer's own update of that parameter's group for that one parameter
(:meth:`zoo.optimizers.base.ZooOptimizer._step_group`): the same state, the same step counter,
APOLLO's seeds and refreshes, Muon's matrices, the cautious mask. The result equals the ordinary
``backward(); step()`` for every registered name (a test). What the public versions of this
feature get wrong, and what this one does:

- **Gradient accumulation** (``accumulate=k``): a parameter is updated at every k-th backward
  pass that reaches it, on the summed gradient, as the ordinary loop with k micro-batches per
  step. Until then its gradient is kept, so the memory saving holds fully for ``k = 1``.
- **Learning-rate schedules**: the update reads ``group["lr"]`` when it runs, so one torch
  scheduler over this optimizer, stepped once per optimizer step as usual, drives every parameter.
- **Clipping**: a global gradient norm needs every gradient before the first update, which
  per-layer updates never have; there is no clipping here (the runner refuses ``--grad-clip``
  with ``--layerwise``).
- **Distributed**: under DDP the hook sees the rank's local gradient, before the all-reduce;
  attaching with more than one process is refused.

``optimizer.aligned_fraction()`` covers the parameters updated in the latest step; the optimizer
state dict is the ordinary one (resume is bit for bit); ``optimizer.per_layer.remove()`` takes the
hooks away and leaves an ordinary optimizer. A frozen parameter cannot carry a hook; once it is
unfrozen, the next ``optimizer.step()`` updates it from its gradient, as the ordinary loop does,
and hooks it for the following steps.
"""
from __future__ import annotations

from numbers import Integral

import torch
import torch.distributed as dist

from .optimizers.base import ZooOptimizer
from .registry import info

__all__ = ["PerLayer", "attach", "layerwise"]


class PerLayer:
    """The hooks that update ``optimizer``'s parameters inside backward (see the module)."""

    def __init__(self, optimizer: ZooOptimizer, accumulate: int = 1):
        if not isinstance(optimizer, ZooOptimizer):
            raise TypeError(f"per-layer updates need a zoo optimizer, got {type(optimizer).__name__}")
        if isinstance(accumulate, bool) or not isinstance(accumulate, Integral) or accumulate < 1:
            raise ValueError(f"Invalid accumulate: {accumulate!r}; allowed an int >= 1 (backward passes per update)")
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise ValueError("per-layer updates would see each rank's local gradient, before DDP's all-reduce; "
                             "they are not supported with more than one process")
        if optimizer.per_layer is not None:
            raise ValueError("this optimizer already updates its parameters in backward")
        self.optimizer, self.accumulate = optimizer, int(accumulate)
        self._passes: dict = {}      # parameter -> backward passes since its last update
        self._updated: set = set()   # parameters updated in the current optimizer step
        self._group: dict = {}       # parameter -> index of its group (group dicts change on load)
        self._handles: dict = {}     # parameter -> its hook (frozen parameters have none yet)
        optimizer.per_layer = self
        for index in range(len(optimizer.param_groups)):
            self.hook(index)

    def hook(self, index: int) -> None:
        """Hook the parameters of param group ``index`` (also called by ``add_param_group``);
        a frozen parameter (no gradient wanted) cannot have the hook until it is unfrozen."""
        for param in self.optimizer.param_groups[index]["params"]:
            self._group.setdefault(param, index)
            if param.requires_grad and param not in self._handles:
                self._handles[param] = param.register_post_accumulate_grad_hook(self._update)

    @torch.no_grad()
    def catch_up(self) -> None:
        """Called by ``optimizer.step()``: a parameter unfrozen since the hooks were made is
        updated here from the gradient it got, as the ordinary step would, and hooked for the
        next backward passes."""
        for param, index in self._group.items():
            if param.requires_grad and param not in self._handles:
                if param.grad is not None:
                    self.optimizer._step_group(self.optimizer.param_groups[index], [param])
                    param.grad = None
                self._handles[param] = param.register_post_accumulate_grad_hook(self._update)

    @torch.no_grad()
    def _update(self, param: torch.Tensor) -> None:
        passes = self._passes.get(param, 0) + 1
        if passes < self.accumulate:
            self._passes[param] = passes
            return
        self._passes[param] = 0
        if param in self._updated:   # the first update of a new optimizer step
            self._updated.clear()
            self.optimizer._aligned_counts = []
        self._updated.add(param)
        self.optimizer._step_group(self.optimizer.param_groups[self._group[param]], [param])
        param.grad = None

    def remove(self) -> None:
        """Take the hooks away: the optimizer steps in ``step()`` again."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self.optimizer.per_layer = None


def attach(optimizer: ZooOptimizer, accumulate: int = 1) -> ZooOptimizer:
    """Make ``optimizer`` update its parameters inside backward; returns it."""
    PerLayer(optimizer, accumulate)
    return optimizer


def layerwise(params, name: str, *, accumulate: int = 1, **hparams) -> ZooOptimizer:
    """The registered optimizer ``name`` over ``params`` (tensors or group dicts), updating them
    inside backward (``zoo.create(model, name, layerwise=True)`` does the same for a model)."""
    return attach(info(name).build(params, **hparams), accumulate)
