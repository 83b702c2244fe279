"""``zoo.create``: build a registered optimizer over a model with sensible parameter groups."""
from __future__ import annotations

from torch import nn
from torch.optim import Optimizer

from .registry import info

__all__ = ["create", "param_groups"]

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
          nn.modules.batchnorm._NormBase) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split ``model``'s trainable parameters into a decayed group (matrices and other weights of
    rank >= 2) and a decay-free group (biases, norm weights, embeddings, any tensor of rank < 2).

    Each group carries ``"name"`` ("decay" / "no_decay") and ``"param_names"``; empty groups are
    left out.
    """
    decay, no_decay = [], []
    seen = set()
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{pname}" if module_name else pname
            free = p.dim() < 2 or isinstance(module, (nn.Embedding, nn.EmbeddingBag) + _NORMS)
            (no_decay if free else decay).append((full, p))
    groups = [{"name": "decay", "weight_decay": weight_decay, "items": decay},
              {"name": "no_decay", "weight_decay": 0.0, "items": no_decay}]
    return [{"name": g["name"], "weight_decay": g["weight_decay"],
             "params": [p for _, p in g["items"]], "param_names": [n for n, _ in g["items"]]}
            for g in groups if g["items"]]


def create(model_or_params, name: str, **hparams) -> Optimizer:
    """Build the optimizer ``name`` with ``hparams``.

    Given an ``nn.Module``, the parameters are grouped by :func:`param_groups` (no weight decay
    on biases, norms and embeddings). Muon-family optimizers also keep the decay-free group out
    of orthogonalisation (``use_muon=False``: AdamW updates it). Given tensors or param-group
    dicts, they are passed through unchanged.
    """
    rec = info(name)
    if not isinstance(model_or_params, nn.Module):
        return rec.build(model_or_params, **hparams)
    weight_decay = hparams.pop("weight_decay", rec.defaults.get("weight_decay", 0.0))
    groups = param_groups(model_or_params, weight_decay)
    if not groups:
        raise ValueError(f"model {type(model_or_params).__name__} has no trainable parameters")
    if "use_muon" in rec.defaults:
        for group in groups:
            if group["name"] == "no_decay":
                group["use_muon"] = False
    return rec.build(groups, weight_decay=weight_decay, **hparams)
