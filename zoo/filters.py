"""Which weights are the hidden matrices: the selection :func:`zoo.create` uses for the low-rank
group and Muon's matrices, and :func:`zoo.quantize_weights` for the weights it quantizes.

**By module type and role, not by name.** A model's *blocks* are its repeated layers: every element
of an ``nn.ModuleList`` whose elements are all of one (non-leaf) class (``model.layers``,
``transformer.h``, ``encoder.layer``, ``encoder.block``...), the children of an ``nn.ModuleList`` or
``nn.Sequential`` of a (non-leaf) class that repeats there (a stack mixing attention and Mamba
layers; ``nn.Sequential(embedding, Block(), Block(), head)``), and any HF transformers
``GradientCheckpointingLayer`` (every decoder or encoder layer of the library's models). The
selected matrices are the weights of the ``nn.Linear`` modules (subclasses included) and of
transformers' ``Conv1D`` (GPT-2's linears, stored (in, out)) inside a block: attention (self and
cross), MLP, shared-expert MLPs. Never selected:

- embeddings, the output head, poolers and classifiers (they are not inside a block), and any
  weight tied to an embedding;
- norms, biases, convolutions, tables inside a block (T5's ``relative_attention_bias``);
- **routers**: a module whose class name contains ``Router`` or ends with ``Gating``, a linear
  named ``*router*``, a linear named ``gate``/``router``/``wg`` next to an ``experts`` module (an
  MoE's gate; LLaMA's ``gate_proj`` is an MLP matrix), a linear with one output (a scalar gate).

A weight of two or more dimensions inside a block that is none of these is **left full-rank and
reported** (:attr:`Selection.left`, and a warning from ``zoo.create``/``quantize_weights``): fused
3-D expert weights (Mixtral, Qwen-MoE, DeepSeek, GPT-OSS in transformers 5: one (experts, out, in)
tensor per projection), for which a low-rank step per expert is not implemented, and weights held
directly by a custom module, whose layout is unknown.

A model without blocks (a plain ``nn.Sequential``) has no selection: pass
``low_rank_filter=(name, param) -> bool`` (or ``filter=`` to ``quantize_weights``).
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor, nn

__all__ = ["Selection", "select_matrices", "default_filter"]

_LEAVES = (nn.Linear, nn.Embedding, nn.EmbeddingBag, nn.modules.conv._ConvNd, nn.LayerNorm, nn.GroupNorm,
           nn.modules.batchnorm._NormBase) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


@dataclass
class Selection:
    """The outcome of :func:`select_matrices`: qualified parameter names (as
    ``model.named_parameters()`` gives them) to parameters."""

    matrices: dict[str, Tensor] = field(default_factory=dict)
    """The hidden matrices: linear weights inside the blocks."""
    routers: dict[str, Tensor] = field(default_factory=dict)
    """MoE routers and scalar gates inside the blocks, kept full-rank on purpose."""
    left: dict[str, str] = field(default_factory=dict)
    """Other weights of 2+ dimensions inside the blocks, left full-rank: name -> why."""

    def warning(self) -> str | None:
        """A sentence naming the weights left full-rank, or None when there are none."""
        if not self.left:
            return None
        reasons = sorted(set(self.left.values()))
        names = list(self.left)
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        return (f"{len(names)} weight(s) of 2+ dimensions inside the model's blocks stay full-rank: {shown} "
                f"({'; '.join(reasons)}); pass low_rank_filter= (quantize_weights: filter=) to choose yourself")


def _is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (a linear with its weight stored (in, out)), without importing it."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")


def _is_block_layer(module: nn.Module) -> bool:
    return any(c.__name__ == "GradientCheckpointingLayer" for c in type(module).__mro__)


def _blocks(model: nn.Module) -> set[int]:
    """ids of the model's blocks (module docstring)."""
    blocks = set()
    for module in model.modules():
        if _is_block_layer(module):
            blocks.add(id(module))
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module):
            layers = [m for m in module if not isinstance(m, _LEAVES) and not _is_conv1d(m)]
            counts = Counter(type(m) for m in layers)
            uniform = isinstance(module, nn.ModuleList) and len(layers) == len(module) and len(counts) == 1
            blocks.update(id(m) for m in layers if uniform or counts[type(m)] > 1)
    return blocks


def _embedding_ids(model: nn.Module) -> set[int]:
    ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            module = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            continue
        if isinstance(getattr(module, "weight", None), Tensor):
            ids.add(id(module.weight))
    return ids


def _router_class(classes: list[str]) -> bool:
    """Whether one of ``classes`` (a module's and its ancestors' inside the block) is a router's."""
    return any("Router" in c or c.endswith("Gating") for c in classes)


def _is_router(leaf: str, module: nn.Module, parent: nn.Module, classes: list[str]) -> bool:
    if _router_class(classes):
        return True
    if "router" in leaf.lower():
        return True
    if leaf in ("gate", "router", "wg") and hasattr(parent, "experts"):
        return True
    out_features = module.weight.shape[-1 if _is_conv1d(module) else 0] if hasattr(module, "weight") else None
    return out_features == 1


def select_matrices(model: nn.Module) -> Selection:
    """The hidden matrices of ``model``, its routers and what stays full-rank (module docstring)."""
    blocks, embeddings = _blocks(model), _embedding_ids(model)
    selection, seen = Selection(), set()

    def visit(module: nn.Module, prefix: str, inside: bool, classes: list[str], parent, leaf: str) -> None:
        inside = inside or id(module) in blocks
        classes = classes + [type(module).__name__] if inside else classes
        linear = isinstance(module, nn.Linear) or _is_conv1d(module)
        for pname, param in module.named_parameters(recurse=False):
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{prefix}.{pname}" if prefix else pname
            if not inside or param.dim() < 2 or id(param) in embeddings:
                continue
            if linear and pname == "weight":
                target = selection.routers if _is_router(leaf, module, parent, classes) else selection.matrices
                target[name] = param
            elif _router_class(classes):
                selection.routers[name] = param
            elif isinstance(module, _LEAVES) or linear:
                continue   # convolutions, tables, norms: not matrices of a linear map
            elif param.dim() == 3 or hasattr(module, "is_transposed"):
                selection.left[name] = "fused expert weights (experts, out, in): a low-rank step per expert is " \
                                       "not implemented"
            else:
                selection.left[name] = "held directly by a custom module, layout unknown"
        for child_name, child in module.named_children():
            visit(child, f"{prefix}.{child_name}" if prefix else child_name, inside, classes, module, child_name)

    visit(model, "", False, [], None, "")
    return selection


def default_filter(model: nn.Module, purpose: str | None = None) -> Callable[[str, Tensor], bool]:
    """``(name, param) -> bool`` accepting the hidden matrices of ``model``
    (:func:`zoo.filters.select_matrices`); with ``purpose`` (what the selection is for), warns
    naming the weights of 2+ dimensions inside the blocks that stay full-rank."""
    selection = select_matrices(model)
    message = selection.warning()
    if purpose is not None and message:
        warnings.warn(f"{purpose}: {message}", stacklevel=4)
    chosen = {id(p) for p in selection.matrices.values()}
    return lambda name, param: id(param) in chosen
