"""LLaMA, the decoder the GaLore / APOLLO / cautious-optimizer papers pretrain (PAPERS.md §C).

Per layer, on the residual stream x of shape [B, T, dim]:

    x = x + o_proj(attention(rope(q_proj(h)), rope(k_proj(h)), v_proj(h))),  h = RMSNorm(x)
    x = x + down_proj(silu(gate_proj(h)) * up_proj(h)),                      h = RMSNorm(x)

with RMSNorm(x) = w * x / sqrt(mean(x²) + eps), causal softmax(q kᵀ / sqrt(head_dim)) v attention
and rotary position embeddings in the "rotate half" layout of HF transformers' Llama: for the
head vector split as x = [x1, x2] (halves), rope(x) = x * cos(pθ) + [-x2, x1] * sin(pθ), with
θ_j = rope_theta^(-2j / head_dim), j < head_dim / 2, repeated over both halves, at position p.
No biases; the input embedding and lm_head are separate matrices.

Parameter names are HF's (without its "model." prefix), so a state dict copies across, the
shapes match ``zoo.memory.llama_shapes`` and ``zoo.create``'s default low-rank filter picks the
q, k, v, o, gate, up, down weights (their names contain "attn" or "mlp").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from zoo.memory import LLAMA_CONFIGS

__all__ = ["LlamaConfig", "CONFIGS", "Llama"]


@dataclass(frozen=True)
class LlamaConfig:
    """Sizes of a LLaMA model. ``vocab_size`` 256 means byte tokens."""
    vocab_size: int = 256
    dim: int = 128            # hidden size (width of the residual stream)
    n_layers: int = 4
    n_heads: int = 4          # head_dim = dim // n_heads
    mlp_hidden: int = 344     # SwiGLU intermediate size
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "mlp_hidden", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"LlamaConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ValueError(f"LlamaConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim; dim {self.dim} / n_heads "
                             f"{self.n_heads} = {self.head_dim}")
        if not (self.rope_theta > 0 and self.norm_eps > 0):
            raise ValueError(f"LlamaConfig.rope_theta and norm_eps must be > 0, got "
                             f"{self.rope_theta} and {self.norm_eps}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


CONFIGS: dict[str, LlamaConfig] = {
    "tiny": LlamaConfig(),  # ~1.0M parameters with byte tokens
    **{size: LlamaConfig(dim=hidden, mlp_hidden=mlp, n_heads=heads, n_layers=layers)
       for size, (hidden, mlp, heads, layers) in LLAMA_CONFIGS.items()},
}
""""tiny" plus the papers' sizes (PAPERS.md §C), taken from ``zoo.memory.LLAMA_CONFIGS``, with
byte tokens (vocab 256) and sequence length 256 (the papers' pretraining runs). The papers'
32000-token vocabulary: ``dataclasses.replace(CONFIGS["60M"], vocab_size=32000)``."""


class RMSNorm(nn.Module):
    """w * x / sqrt(mean(x²) + eps) over the last dimension, computed in at least float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.to(torch.promote_types(x.dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotary_cos_sin(seq_len: int, head_dim: int, theta: float, like: Tensor) -> tuple[Tensor, Tensor]:
    """cos(pθ) and sin(pθ) of shape [seq_len, head_dim] (θ repeated over both halves), computed
    in at least float32 and returned in ``like``'s dtype."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=dtype, device=like.device) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=dtype, device=like.device), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(like.dtype), angles.sin().to(like.dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """rope(x) = x * cos + rotate_half(x) * sin, with rotate_half([x1, x2]) = [-x2, x1]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.o_proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = (proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """A LLaMA language model. Weights are drawn from the global torch RNG: normal(0, 0.02)
    for every linear and the embedding, ones for the norms.

    ``checkpointing=True`` (an attribute, may be switched any time) recomputes each block's
    activations in backward instead of keeping them (``torch.utils.checkpoint``, non-reentrant):
    only the blocks' inputs are kept. The results are the same."""

    def __init__(self, cfg: LlamaConfig, checkpointing: bool = False):
        super().__init__()
        self.config = cfg
        self.checkpointing = checkpointing
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def num_params(self) -> int:
        """Number of parameter values (embedding and lm_head both counted: they are untied)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits [B, T, vocab] for token ids ``idx`` [B, T] and, given ``targets`` [B, T] (the
        next token at each position), the mean cross-entropy over positions (targets equal to
        -100 are ignored, as in ``F.cross_entropy``); the loss is None without targets."""
        T = idx.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.config.max_seq_len}")
        x = self.embed_tokens(idx)
        cos, sin = rotary_cos_sin(T, self.config.head_dim, self.config.rope_theta, like=x)
        for layer in self.layers:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())
