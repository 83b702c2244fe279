"""Optimizer-state memory: measured from the tensors an optimizer holds, and predicted by each
optimizer's analytical formula (PAPERS.md §B.2), with a table for the papers' LLaMA sizes."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.optim import Optimizer

from .optimizers.base import unwrap
from .registry import info
from .sharding import is_dtensor

__all__ = ["state_bytes", "expected_state_bytes", "LLAMA_CONFIGS", "llama_shapes", "is_llama_block_matrix",
           "state_table"]


def state_bytes(optimizer: Optimizer) -> int:
    """Bytes held by the tensors in ``optimizer.state`` (each storage counted once).

    Python numbers in the state (step counters, scalars) are not tensors and count 0; an
    optimizer that has not stepped yet usually holds no state. Tensors on the ``meta`` device
    count their size as if they were real; a sparse tensor (SGD's momentum with sparse gradients)
    its indices and values. A client's wrapper (accelerate, Lightning, ZeRO) is looked through
    (:func:`zoo.optimizers.base.unwrap`). A DTensor (parameters sharded by FSDP2) counts the
    shard this rank holds.
    """
    seen: set = set()
    total = 0
    for state in unwrap(optimizer).state.values():
        if not isinstance(state, dict):   # torch.optim allows any entry in the state
            continue
        for value in state.values():
            if not isinstance(value, Tensor):
                continue
            if is_dtensor(value):
                value = value.to_local()
            for part in (value._indices(), value._values()) if value.is_sparse else (value,):
                storage = part.untyped_storage()
                key = (part.device, storage.data_ptr()) if storage.data_ptr() else id(part)
                if key not in seen:
                    seen.add(key)
                    total += storage.nbytes()
    return total


def expected_state_bytes(optimizer: Optimizer) -> int:
    """Bytes the optimizer's formula predicts for the state of every parameter that has one (a
    client's wrapper looked through)."""
    optimizer = unwrap(optimizer)
    return sum(optimizer.expected_state_bytes(p, group)
               for group in optimizer.param_groups for p in group["params"] if p in optimizer.state)


# PAPERS.md §C: hidden, MLP (intermediate), heads, layers; vocab 32000, untied embeddings
LLAMA_CONFIGS = {
    "60M": (512, 1376, 8, 8), "130M": (768, 2048, 12, 12), "350M": (1024, 2736, 16, 24),
    "1B": (2048, 5461, 32, 24), "7B": (4096, 11008, 32, 32), "13B": (5120, 13824, 40, 40),
}
LLAMA_VOCAB = 32000
LOW_RANK_RANKS = {"60M": 128, "130M": 256, "350M": 256, "1B": 512, "7B": 1024, "13B": 1280}
"""Ranks of the GaLore / Fira / APOLLO pretraining scripts for each size (PAPERS.md §B.1); 13B,
which no script pretrains with a rank, gets a quarter of its width, the papers' rule."""


def llama_shapes(config: str) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of a LLaMA model of ``config`` (PAPERS.md §C), named as
    :mod:`analysis.models.llama` and HF's Llama name them (:func:`is_llama_block_matrix`)."""
    hidden, mlp, _, layers = LLAMA_CONFIGS[config]
    shapes = {"embed_tokens.weight": (LLAMA_VOCAB, hidden), "norm.weight": (hidden,),
              "lm_head.weight": (LLAMA_VOCAB, hidden)}
    for i in range(layers):
        for proj in "qkvo":
            shapes[f"layers.{i}.self_attn.{proj}_proj.weight"] = (hidden, hidden)
        shapes[f"layers.{i}.mlp.gate_proj.weight"] = (mlp, hidden)
        shapes[f"layers.{i}.mlp.up_proj.weight"] = (mlp, hidden)
        shapes[f"layers.{i}.mlp.down_proj.weight"] = (hidden, mlp)
        shapes[f"layers.{i}.input_layernorm.weight"] = (hidden,)
        shapes[f"layers.{i}.post_attention_layernorm.weight"] = (hidden,)
    return shapes


def is_llama_block_matrix(name: str) -> bool:
    """Whether ``name`` (of :func:`llama_shapes`) is one of the q, k, v, o, gate, up, down weights: the
    matrices :func:`zoo.filters.select_matrices` selects in a LLaMA model."""
    return ".self_attn." in name or ".mlp." in name


def state_table(names=("adamw", "galore", "fira", "apollo", "apollo-mini"),
                configs=("60M", "130M", "350M", "1B"), dtype=torch.bfloat16) -> list[dict]:
    """Optimizer-state bytes by formula and as measured, for each optimizer and LLaMA size.

    Each model is built on the ``meta`` device (shapes only, no memory) with ``dtype`` weights;
    the optimizer takes two steps and :func:`state_bytes` reads its state. Low-rank optimizers
    get the q/k/v/o/gate/up/down weights in a group with the size's rank (apollo-mini: rank 1),
    everything else in a group without a rank (AdamW), as the reference scripts do.
    Returns one dict per (config, optimizer): params, weight bytes, formula and measured state
    bytes.
    """
    rows = []
    for config in configs:
        shapes = llama_shapes(config)
        for name in names:
            params = {n: torch.empty(s, device="meta", dtype=dtype, requires_grad=True) for n, s in shapes.items()}
            for p in params.values():
                p.grad = torch.empty_like(p)
            if info(name).low_rank:
                low = [p for n, p in params.items() if is_llama_block_matrix(n)]
                rest = [p for n, p in params.items() if not is_llama_block_matrix(n)]
                rank = {} if "rank" in info(name).fixed else {"rank": LOW_RANK_RANKS[config]}
                groups = [{"params": low, **rank}, {"params": rest, "rank": None}]
            else:
                groups = list(params.values())
            opt = info(name).cls(groups)
            for _ in range(2):
                opt.step()
            numel = sum(p.numel() for p in params.values())
            rows.append({"model": config, "optimizer": name, "params": numel,
                         "weight_bytes": numel * params["norm.weight"].element_size(),
                         "state_bytes_formula": expected_state_bytes(opt),
                         "state_bytes_measured": state_bytes(opt)})
    return rows
