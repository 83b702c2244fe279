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

__all__ = ["is_dtensor", "replicated", "as_shard", "placed_as", "zeros_along", "computed_once", "reduced", "global_sum",
           "index_parameters", "parameter_index"]

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


def as_shard(tensor: Tensor, like: Tensor) -> Tensor:
    """``tensor``, whole and the same on every rank, as a DTensor placed as ``like`` (each rank
    keeps its own shard: no communication)."""
    return placed_as(replicated(tensor, like), like)


def placed_as(tensor: Tensor, like: Tensor) -> Tensor:
    """``tensor`` (of ``like``'s shape) laid out as ``like`` when both are DTensors: a replicated
    one is sliced locally, so an operation with ``like`` never gathers ``like``."""
    if not is_dtensor(tensor) or tensor.placements == like.placements:
        return tensor
    return tensor.redistribute(like.device_mesh, like.placements)


def zeros_along(like: Tensor, shape, dtype: torch.dtype | None = None) -> Tensor:
    """Zeros of ``shape`` (and ``dtype``, default ``like``'s) for the state of parameter ``like`` (a
    factor or a low-rank moment): ``like.new_zeros(shape)``, and for a sharded ``like`` sharded as
    it is along every axis the two shapes share (each rank holds the rows of its own rows),
    replicated along the others."""
    if not is_dtensor(like):
        return like.new_zeros(shape, dtype=dtype)
    from torch.distributed.tensor import Replicate
    placements = [p if p.is_shard() and shape[p.dim] == like.shape[p.dim] else Replicate() for p in like.placements]
    whole = replicated(torch.zeros(shape, dtype=dtype or like.dtype, device=like.to_local().device), like)
    return whole.redistribute(like.device_mesh, placements)   # each rank keeps its slice: no communication


def computed_once(fn, tensor: Tensor, owner: int, shape, dtype: torch.dtype) -> Tensor:
    """``fn(tensor)`` (of ``shape`` and ``dtype``); for a DTensor sharded over a 1-D mesh the whole
    tensor is gathered once, one rank (``owner`` modulo the ranks, so that a loop over parameters
    spreads the work) computes it and broadcasts it, and every rank holds the same result bit for
    bit, as a replicated DTensor. An SVD, for instance, is not repeated on every rank."""
    if not is_dtensor(tensor):
        return fn(tensor)
    whole = tensor.full_tensor()
    mesh = tensor.device_mesh
    if mesh.ndim != 1:
        return replicated(fn(whole), tensor)
    import torch.distributed as dist
    source = owner % mesh.size()
    result = fn(whole) if mesh.get_local_rank() == source else torch.empty(shape, dtype=dtype, device=whole.device)
    dist.broadcast(result, group=mesh.get_group(), group_src=source)
    return replicated(result, tensor)


def reduced(tensor: Tensor) -> Tensor:
    """A DTensor holding partial sums (a reduction or a product over a sharded axis) reduced
    once, its shards kept; anything else unchanged. Reduce before a value is used several times:
    each use of a partial DTensor would reduce it again."""
    if not is_dtensor(tensor) or not any(p.is_partial() for p in tensor.placements):
        return tensor
    from torch.distributed.tensor import Replicate
    return tensor.redistribute(tensor.device_mesh, [Replicate() if p.is_partial() else p for p in tensor.placements])


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
