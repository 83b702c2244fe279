"""Optimizer-state memory, measured from the tensors an optimizer holds."""
from __future__ import annotations

from torch import Tensor
from torch.optim import Optimizer

__all__ = ["state_bytes"]


def state_bytes(optimizer: Optimizer) -> int:
    """Bytes held by the tensors in ``optimizer.state`` (each storage counted once).

    Python numbers in the state (step counters, scalars) are not tensors and count 0; an
    optimizer that has not stepped yet usually holds no state.
    """
    seen: set = set()
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor):
                key = (value.untyped_storage().data_ptr(), value.device) if value.numel() else id(value)
                if key in seen:
                    continue
                seen.add(key)
                total += value.untyped_storage().nbytes()
    return total
