"""Which weights are the hidden matrices: the rule :func:`zoo.create` uses for the low-rank group
and Muon's matrices, and :func:`zoo.quantize_weights` for the weights it quantizes."""
from __future__ import annotations

from torch import Tensor

__all__ = ["default_low_rank_filter"]

_LOW_RANK_BLOCKS = ("attn", "attention", "mlp")


def default_low_rank_filter(name: str, param: Tensor) -> bool:
    """The reference scripts' rule: a 2-D weight whose qualified name contains "attn",
    "attention" or "mlp" (the q, k, v, o, gate, up, down linears of LLaMA): the hidden matrices,
    which :func:`zoo.create` gives the low-rank optimizers' projection and Muon's orthogonalisation."""
    return (name.endswith("weight") and param.dim() == 2
            and any(block in name.lower() for block in _LOW_RANK_BLOCKS))
