"""``zoo.create``: build a registered optimizer over a model with sensible parameter groups;
``zoo.describe``: which parameters went where."""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn
from torch.optim import Optimizer

from .filters import default_filter
from .optimizers.base import unwrap
from .registry import info
from .sharding import index_parameters

__all__ = ["create", "param_groups", "describe", "aligned_fraction"]

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
          nn.modules.batchnorm._NormBase) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def param_groups(model: nn.Module, weight_decay: float,
                 low_rank_filter: Callable[[str, Tensor], bool] | None = None, *,
                 selected: str = "low_rank") -> list[dict]:
    """Split ``model``'s parameters into groups, each with ``"name"`` and ``"param_names"``
    (empty groups are left out):

    - ``selected`` (``"low_rank"``, or ``"muon"`` for Muon; only when ``low_rank_filter`` is
      given): the parameters it accepts, decayed;
    - ``"decay"``: the other weights of rank >= 2;
    - ``"no_decay"``: biases, norm weights, embeddings, any tensor of rank < 2 (weight decay 0).

    Frozen parameters (``requires_grad=False``) are grouped like the others, as
    ``torch.optim`` keeps every parameter it is given: they have no gradient and are skipped
    until they are unfrozen, and are then updated like the rest of their group.
    """
    items: dict[str, list] = {selected: [], "decay": [], "no_decay": []}
    seen = set()
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{pname}" if module_name else pname
            if low_rank_filter is not None and low_rank_filter(full, p):
                kind = selected
            elif p.dim() < 2 or isinstance(module, (nn.Embedding, nn.EmbeddingBag) + _NORMS):
                kind = "no_decay"
            else:
                kind = "decay"
            items[kind].append((full, p))
    return [{"name": kind, "weight_decay": 0.0 if kind == "no_decay" else weight_decay,
             "params": [p for _, p in pairs], "param_names": [n for n, _ in pairs]}
            for kind, pairs in items.items() if pairs]


def create(model_or_params, name: str, *, low_rank_filter=None, muon_filter=None, layerwise: bool = False,
           accumulate: int = 1, clip_grad_norm: float | None = None, **hparams) -> Optimizer:
    """Build the optimizer ``name`` with ``hparams``.

    Given an ``nn.Module``, the parameters are grouped by :func:`param_groups`: no weight decay
    on biases, norms and embeddings. For a low-rank optimizer (``zoo.info(name).low_rank``) the
    parameters accepted by ``low_rank_filter(name, param)`` (default :func:`zoo.filters.default_filter`:
    the linear weights inside the model's blocks, by module type and role) form
    the low-rank group, with ``rank=`` if given; every other group has ``rank=None`` and is updated
    by AdamW. For Muon, the parameters accepted by ``muon_filter(name, param)`` (default the same
    hidden matrices) form the ``"muon"`` group and are orthogonalised; every other group
    (embeddings, the output head, norms, biases, routers) has ``use_muon=False`` and is updated by
    Muon's AdamW, as in the reference setups. With the default selection, weights of 2+
    dimensions inside the blocks that it leaves full-rank (fused MoE experts) are named in a
    warning. ``zoo.describe(opt)`` shows the split. Frozen parameters are
    grouped too (:func:`param_groups`). Given tensors or param-group dicts, they are passed
    through unchanged.

    ``layerwise=True`` updates each parameter inside ``backward`` and frees its gradient
    (:mod:`zoo.layerwise`), once every ``accumulate`` backward passes, clipping by the previous
    step's global norm with ``clip_grad_norm``.
    """
    rec = info(name)
    if not layerwise:
        if accumulate != 1:
            raise ValueError("accumulate is for layerwise=True (an ordinary loop accumulates by calling "
                             "backward several times before step)")
        if clip_grad_norm is not None:
            raise ValueError("clip_grad_norm is for layerwise=True (an ordinary loop clips between backward and "
                             "step: torch.nn.utils.clip_grad_norm_, or the client's setting)")
        return _build(rec, model_or_params, low_rank_filter, muon_filter, hparams)
    from .layerwise import attach
    return attach(_build(rec, model_or_params, low_rank_filter, muon_filter, hparams), accumulate, clip_grad_norm)


def _build(rec, model_or_params, low_rank_filter, muon_filter, hparams: dict) -> Optimizer:
    muon = "use_muon" in rec.defaults
    if not isinstance(model_or_params, nn.Module):
        if low_rank_filter is not None or muon_filter is not None:
            raise ValueError("low_rank_filter and muon_filter need an nn.Module (they select parameters by name)")
        return rec.cls(model_or_params, **hparams)
    if low_rank_filter is not None and not rec.low_rank:
        raise ValueError(f"low_rank_filter is for low-rank optimizers; {rec.name!r} is not one "
                         f"(low-rank: {', '.join(_low_rank_names())})")
    if muon_filter is not None and not muon:
        raise ValueError(f"muon_filter is for muon and c-muon; {rec.name!r} is neither")
    model = model_or_params
    weight_decay = hparams.pop("weight_decay", rec.defaults.get("weight_decay", 0.0))
    if rec.low_rank:
        groups = param_groups(model, weight_decay, low_rank_filter or default_filter(model, rec.name))
    elif muon:
        groups = param_groups(model, weight_decay, muon_filter or default_filter(model, rec.name), selected="muon")
    else:
        groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError(f"model {type(model).__name__} has no parameters")
    if rec.low_rank:
        if not any(g["name"] == "low_rank" for g in groups):
            raise ValueError(f"no parameter of {type(model).__name__} matched the low-rank filter (default: the "
                             "linear weights inside its blocks, the elements of an nn.ModuleList of layers of one "
                             f"class), so {rec.name!r} would be plain AdamW; pass low_rank_filter=(name, param) -> "
                             "bool to choose the low-rank weights")
        rank = {"rank": hparams.pop("rank")} if "rank" in hparams else {}
        if rank.get("rank", 0) is None:
            raise ValueError(f"rank=None would make {rec.name!r} plain AdamW on every group; pass an "
                             "int rank (or use 'adamw')")
        for group in groups:
            group.update(rank if group["name"] == "low_rank" else {"rank": None})
    if muon:
        if not any(g["name"] == "muon" for g in groups):
            raise ValueError(f"no parameter of {type(model).__name__} matched the Muon filter (default: the linear "
                             "weights inside its blocks, the elements of an nn.ModuleList of layers of one class), so "
                             f"{rec.name!r} would be plain AdamW; pass muon_filter=(name, param) -> bool to choose "
                             "the matrices to orthogonalise")
        for group in groups:
            group["use_muon"] = group["name"] == "muon"
    index_parameters(groups)   # APOLLO's projection seeds, also under ZeroRedundancyOptimizer
    return rec.cls(groups, weight_decay=weight_decay, **hparams)


def _low_rank_names() -> list[str]:
    from .registry import names
    return names(low_rank=True)


def aligned_fraction(optimizer) -> float:
    """The fraction of coordinates the cautious mask kept at the last step
    (:meth:`ZooOptimizer.aligned_fraction`) of ``optimizer``, or of the zoo optimizer inside a
    client's wrapper (accelerate, Lightning: :func:`zoo.optimizers.base.unwrap`)."""
    inner = unwrap(optimizer)
    if not hasattr(inner, "aligned_fraction"):
        raise TypeError(f"aligned_fraction needs a zoo optimizer, got {type(inner).__name__}")
    return inner.aligned_fraction()


def describe(optimizer: Optimizer) -> str:
    """A text table of the optimizer's groups: name, size, the hyper-parameters that route
    them (rank, use_muon, lr, weight_decay) and their parameters' names and shapes (a client's
    wrapper looked through)."""
    optimizer = unwrap(optimizer)
    lines = []
    for i, group in enumerate(optimizer.param_groups):
        names = group.get("param_names") or [f"param{j}" for j in range(len(group["params"]))]
        numel = sum(p.numel() for p in group["params"])
        keys = ", ".join(f"{k}={group[k]}" for k in ("rank", "use_muon", "lr", "weight_decay") if k in group)
        lines.append(f"group {i} {group.get('name', '')!s}: {len(names)} tensors, {numel:,} values; {keys}")
        lines += [f"    {n} {tuple(p.shape)}" for n, p in zip(names, group["params"])]
    return "\n".join(lines)
