"""The zoo inside the training stacks users train with; each module imports its client library,
so ``import zoo`` never does.

- :mod:`zoo.integrations.transformers`: a HF Trainer callback (Schedule-Free's average around
  checkpoints, the cautious fraction, state bytes and per-layer gradient norm in the logs) and the
  ``zoo-int8`` quantization method, so that ``from_pretrained`` rebuilds INT8 weights.
- :mod:`zoo.integrations.lightning`: the same callback for Lightning.
"""
from __future__ import annotations

import math
import warnings

from ..memory import state_bytes
from ..optimizers.base import ZooOptimizer, unwrap

__all__ = ["figures", "check_per_layer", "switch"]


def switch(optimizer, mode: str) -> None:
    """``eval()`` or ``train()`` (``mode``) of the zoo optimizer inside ``optimizer`` (a client's
    wrapper looked through), where it has them (Schedule-Free)."""
    inner = unwrap(optimizer) if optimizer is not None else None
    if isinstance(inner, ZooOptimizer) and callable(getattr(inner, mode, None)):
        getattr(inner, mode)()


def figures(optimizer) -> dict:
    """The zoo's figures of ``optimizer`` (a zoo optimizer, or one inside a client's wrapper):
    ``cautious_fraction`` (when the mask acted), ``optimizer_state_bytes``, ``per_layer_grad_norm``
    (with per-layer updates, after a step)."""
    inner = unwrap(optimizer) if optimizer is not None else None
    if not isinstance(inner, ZooOptimizer):
        return {}
    out = {"optimizer_state_bytes": state_bytes(inner)}
    fraction = inner.aligned_fraction()
    if not math.isnan(fraction):
        out["cautious_fraction"] = fraction
    if inner.per_layer is not None and not math.isnan(inner.per_layer.grad_norm):
        out["per_layer_grad_norm"] = inner.per_layer.grad_norm
    return out


def check_per_layer(optimizer, *, accumulation: str, steps: int, clipping: str, clip, off: str, client: str) -> None:
    """For a client about to train with ``optimizer``: with per-layer updates, raise when the client
    runs ``steps`` backward passes per optimizer step (its setting ``accumulation``) and the
    optimizer's ``accumulate`` is another number, and warn when the client clips (its setting
    ``clipping`` is ``clip``; ``off`` turns it off), which it cannot."""
    per_layer = getattr(unwrap(optimizer) if optimizer is not None else None, "per_layer", None)
    if per_layer is None:
        return
    if steps != per_layer.accumulate:
        raise ValueError(f"{accumulation}={steps}) with per-layer updates of accumulate={per_layer.accumulate}: build "
                         f"the optimizer with zoo.create(..., layerwise=True, accumulate={steps})")
    if clip:
        warnings.warn(f"{clipping}={clip}) cannot clip per-layer updates (the gradients are applied inside backward, "
                      f"before {client} clips): set {off} and pass clip_grad_norm= to zoo.create(..., layerwise=True)",
                      stacklevel=3)
