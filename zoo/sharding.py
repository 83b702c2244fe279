"""What the optimizers need under torch.distributed.

Parameters sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``) are DTensors, to be treated
as whole tensors. ``torch.distributed.tensor`` is only imported once something else has (no
tensor can be a DTensor before), so ``import zoo`` stays light.

``ZeroRedundancyOptimizer`` gives each rank's optimizer a subset of the parameters (sorted by
size), so a parameter's position in its optimizer is not the one it has in one process:
:func:`index_parameters` numbers the parameters on the tensors themselves, and APOLLO seeds its
random projections from that number."""
from __future__ import annotations

import sys

import torch
from torch import Tensor

__all__ = ["is_dtensor", "replicated", "whole_norm", "global_sum", "index_parameters", "parameter_index"]

INDEX = "zoo_index"


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


def index_parameters(params) -> None:
    """Number the parameters 1, 2, ... in the order an optimizer given ``params`` (a module, an
    iterable of tensors, or of param-group dicts) would hold them, and keep each number on its
    tensor (attribute ``zoo_index``), so it travels with the tensor into any optimizer.

    APOLLO's random projections are seeded by the group's ``seed`` plus this index (else the
    parameter's position in its optimizer, the same in one process). Call it before wrapping a
    model's parameters in ``torch.distributed.optim.ZeroRedundancyOptimizer``, whose per-rank
    optimizers hold subsets, so that every rank draws the projections of one process;
    :func:`zoo.create` calls it on the groups it builds."""
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    tensors = []
    for item in params:
        if isinstance(item, dict):
            group = item["params"]
            tensors += [group] if isinstance(group, Tensor) else list(group)
        else:
            tensors.append(item)
    for index, tensor in enumerate(tensors, start=1):
        setattr(tensor, INDEX, index)


def parameter_index(param: Tensor) -> int | None:
    """The number :func:`index_parameters` gave ``param``, or None."""
    return getattr(param, INDEX, None)
