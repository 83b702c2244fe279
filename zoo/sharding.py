"""Parameters sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``) are DTensors: what the
optimizers need to treat them as whole tensors. ``torch.distributed.tensor`` is only imported
once something else has (no tensor can be a DTensor before), so ``import zoo`` stays light."""
from __future__ import annotations

import sys

import torch
from torch import Tensor

__all__ = ["is_dtensor", "replicated", "whole_norm", "global_sum"]


def is_dtensor(tensor) -> bool:
    """Whether ``tensor`` is a DTensor (without importing ``torch.distributed.tensor``)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def replicated(tensor: Tensor, like: Tensor) -> Tensor:
    """``tensor`` (the same on every rank) as a replicated DTensor on ``like``'s device mesh when
    ``like`` is a DTensor, else ``tensor`` itself."""
    if not is_dtensor(like):
        return tensor
    from torch.distributed.tensor import DTensor, Replicate
    return DTensor.from_local(tensor, like.device_mesh, [Replicate()] * like.device_mesh.ndim, run_check=False)


def whole_norm(norm: Tensor) -> Tensor:
    """A norm reduced over a sharded tensor (partial on each rank) made whole and replicated;
    anything else unchanged."""
    if not is_dtensor(norm):
        return norm
    from torch.distributed.tensor import Replicate
    return norm.redistribute(placements=[Replicate()] * norm.device_mesh.ndim)


def global_sum(counts: list[Tensor]) -> float:
    """The sum of 0-d DTensors (partial sums over shards, or replicated values) over all ranks,
    with one all-reduce: each rank adds its partial sums and the replicated values once."""
    from torch.distributed.tensor import DTensor, Partial
    mesh = counts[0].device_mesh
    coordinate = mesh.get_coordinate()
    shares = []
    for count in counts:
        local = count.to_local().double()
        once = all(not placement.is_replicate() or index == 0
                   for placement, index in zip(count.placements, coordinate))
        shares.append(local if once else torch.zeros_like(local))
    return DTensor.from_local(torch.stack(shares).sum(), mesh, [Partial()] * mesh.ndim).full_tensor().item()
