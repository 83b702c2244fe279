"""The memory of one training step, by what holds it, measured with torch's own tracker.

:func:`measure_step` runs warm-up steps (they allocate the optimizer state), then one step —
forward, backward, ``optimizer.step()``, ``optimizer.zero_grad(set_to_none=True)`` — inside
``torch.distributed._tools.mem_tracker.MemTracker``, which sees every tensor storage created or
touched (a ``TorchDispatchMode`` plus module, gradient and optimizer hooks) and files it as a
parameter, gradient, optimizer state, activation (forward), temporary (backward, optimizer
temporaries included where they are allocated in backward) or buffer/other. It works on real
tensors (CPU, CUDA) and under ``FakeTensorMode``, where nothing is allocated: the same call plans
a 13B model on a laptop (:mod:`analysis.memory.plan`).

MemTracker is a private API; what this module relies on is pinned by tests: its categories,
fake equal to real, the parameter, gradient and optimizer-state figures equal to the formulas,
per-layer updates leaving (almost) no gradient. It keeps only the snapshot at the peak of the
total; :class:`Tracker` adds each category's own maximum and drops the per-module peaks, which
cost a pass over every module at every operation (a 7B step took 15-25 s instead of a few).

The figures are bytes of tensor storages: not the allocator's caching or fragmentation, not the
CUDA context, not the Python process (:func:`max_resident_bytes` gives the process's maximum).
"""
from __future__ import annotations

import resource
import sys
import warnings
from contextlib import contextmanager
from typing import Callable

import pandas as pd
import torch
from torch import nn
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker

__all__ = ["CATEGORIES", "Tracker", "measure_step", "train_step", "max_resident_bytes", "default_dtype"]

CATEGORIES = {"Parameter": "parameters", "Gradient": "gradients", "Optstate": "optimizer state",
              "Activation": "activations", "Temp": "temporaries", "Buffer": "buffers", "Other": "other"}
"""MemTracker's reference types -> the names of this project's tables, in their order."""


class Tracker(MemTracker):
    """MemTracker recording the peak of the total and each category's maximum, and nothing per
    module; ``external`` (modules, optimizers, tensors made before it) are tracked from the start."""

    def __init__(self, *external):
        super().__init__()
        self.maxima: dict[str, int] = {}
        if external:
            self.track_external(*external)

    def peak_bytes(self) -> int:
        """The largest total seen so far (summed over devices)."""
        return sum(self._peak_mem.values())

    def __enter__(self) -> "Tracker":
        # per-layer updates free a gradient before MemTracker's own hook looks at it, which warns
        self._quiet = warnings.catch_warnings()
        self._quiet.__enter__()
        warnings.filterwarnings("ignore", message="Expected a tensor or a traceable wrapper-subclass")
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._quiet.__exit__(*exc)

    def _update_peak_stats(self, peak_state) -> None:   # after every operation
        for key, value in _by_category(self._curr_mem_snap).items():
            self.maxima[key] = max(self.maxima.get(key, 0), value)
        for device, snap in self._curr_mem_snap.items():
            if snap[_TOTAL_KEY] > self._peak_mem.get(device, 0):
                self._peak_mem[device] = snap[_TOTAL_KEY]
                self._peak_mem_snap[device] = dict(snap)


def _by_category(snapshot: dict) -> dict[str, int]:
    """A MemTracker snapshot (device -> reference type or "Total" -> bytes) summed over devices,
    keyed by :data:`CATEGORIES`' names plus "total"."""
    out = dict.fromkeys([*CATEGORIES.values(), "total"], 0)
    for snap in snapshot.values():
        for key, value in snap.items():
            name = getattr(key, "value", key)   # the reference types are str enums
            out["total" if name == _TOTAL_KEY else CATEGORIES[name]] += value
    return out


def _model_loss(model: nn.Module, batch) -> torch.Tensor:
    """The loss of ``model(*batch)``: the output itself when it is a scalar, else the first scalar
    tensor of the output tuple (the LLaMA's (logits, loss), the MAE's (loss, ...))."""
    out = model(*batch)
    if isinstance(out, torch.Tensor):
        return out
    return next(t for t in out if isinstance(t, torch.Tensor) and t.dim() == 0)


def train_step(model: nn.Module, optimizer, batch, loss_fn: Callable = _model_loss) -> torch.Tensor:
    """Forward, backward, ``optimizer.step()``, ``zero_grad(set_to_none=True)``; the loss."""
    loss = loss_fn(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def measure_step(model: nn.Module, optimizer, batch, loss_fn: Callable = _model_loss, *,
                 warmup: int = 1, losses: list | None = None) -> pd.DataFrame:
    """Bytes of one training step of ``model`` with ``optimizer`` on ``batch`` (a tuple of
    tensors), by category, after ``warmup`` untracked steps.

    Rows: :data:`CATEGORIES` and "total". Columns: ``at_peak`` (what each category holds when the
    total peaks; they sum to the peak), ``max`` (each category's own largest value during the
    step; for "total", the peak) and ``after`` (what stays when the step is over: parameters and
    optimizer state, buffers). ``loss_fn(model, batch)`` defaults to the model's scalar output.
    Works on real tensors and under ``FakeTensorMode`` (build model, optimizer and batch inside it).
    The tracked step's loss is appended to ``losses`` when a list is given.
    """
    if warmup < 0:
        raise ValueError(f"Invalid warmup: {warmup!r}; allowed an int >= 0")
    for _ in range(warmup):
        train_step(model, optimizer, batch, loss_fn)
    tracker = Tracker(model, optimizer, *[t for t in batch if isinstance(t, torch.Tensor)])
    with tracker:
        loss = train_step(model, optimizer, batch, loss_fn)
    frame = pd.DataFrame({"at_peak": _by_category(tracker.get_tracker_snapshot("peak")),
                          "max": {**dict.fromkeys(CATEGORIES.values(), 0), **tracker.maxima},
                          "after": _by_category(tracker.get_tracker_snapshot("current"))})
    frame.index.name = "category"
    if losses is not None:
        losses.append(loss)
    return frame


def max_resident_bytes() -> int:
    """The process's maximum resident set size so far, in bytes (``getrusage``)."""
    kilobytes_or_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kilobytes_or_bytes if sys.platform == "darwin" else kilobytes_or_bytes * 1024


def resident_bytes() -> int:
    """The process's resident set size now, in bytes."""
    import psutil

    return psutil.Process().memory_info().rss


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules directly in ``dtype`` (no float32 copy first; ``Module.to`` cannot convert
    fake parameters in place)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
