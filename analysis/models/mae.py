"""Masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2021), the
image task of the cautious-optimizer paper (PAPERS.md §A.1), sized for 28×28 grey images.

    patches  x_1..x_L = the image cut into L = (H/p)(W/p) patches of p·p·C pixels
    masking  keep the L_keep = int(L(1 - mask_ratio)) patches with the smallest noise, noise ~ U(0,1)
    encoder  ViT over [cls; patch_embed(x_kept) + pos_kept]
    decoder  ViT over [cls; (encoder tokens, and a learned mask token at each masked position) + pos]
    loss     mean over masked patches of mean_pixels (pred - target)²,
             target = (x - mean(x)) / sqrt(var(x) + 1e-6) per patch when norm_pix_loss (var with
             Bessel's correction, as the reference code's ``target.var(-1)``), else target = x

Blocks are pre-norm: x = x + attn(LayerNorm(x)), x = x + mlp(LayerNorm(x)), with softmax
attention (``scaled_dot_product_attention``) and a GELU MLP. Position embeddings are the fixed
2-D sin-cos embeddings of the paper (zero for the cls token), not learned. Linears start
xavier-uniform with zero bias, the cls and mask tokens normal(0, 0.02), as in the reference code.

Every sample is masked independently, with the same number of masked patches, so given the
same noise the loss of a batch is the mean of the losses of equal-size parts of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MAEConfig", "CONFIGS", "MAE", "patchify", "sincos_pos_embed_2d"]


@dataclass(frozen=True)
class MAEConfig:
    """Sizes of a masked autoencoder; defaults are the "tiny" one (Fashion-MNIST, 49 patches)."""
    image_size: int = 28
    patch_size: int = 4
    in_chans: int = 1
    encoder_dim: int = 64
    encoder_depth: int = 2
    encoder_heads: int = 4
    decoder_dim: int = 32
    decoder_depth: int = 1
    decoder_heads: int = 2
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True

    def __post_init__(self):
        for name in ("image_size", "patch_size", "in_chans", "encoder_dim", "encoder_depth",
                     "encoder_heads", "decoder_dim", "decoder_depth", "decoder_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"MAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"MAEConfig.image_size ({self.image_size}) must be divisible by "
                             f"patch_size ({self.patch_size})")
        for part in ("encoder", "decoder"):
            dim, heads = getattr(self, f"{part}_dim"), getattr(self, f"{part}_heads")
            if dim % heads:
                raise ValueError(f"MAEConfig.{part}_dim ({dim}) must be divisible by {part}_heads ({heads})")
            if dim % 4:
                raise ValueError(f"MAEConfig.{part}_dim ({dim}) must be divisible by 4 "
                                 "(2-D sin-cos position embeddings)")
        if not self.mlp_ratio > 0:
            raise ValueError(f"MAEConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0 < self.num_keep < self.num_patches:
            raise ValueError(f"MAEConfig.mask_ratio {self.mask_ratio} keeps {self.num_keep} of "
                             f"{self.num_patches} patches; at least one must be kept and one masked")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def num_keep(self) -> int:
        return int(self.num_patches * (1 - self.mask_ratio))

    @property
    def patch_dim(self) -> int:
        return self.patch_size ** 2 * self.in_chans


CONFIGS: dict[str, MAEConfig] = {
    "tiny": MAEConfig(),
    "gpu": MAEConfig(encoder_dim=384, encoder_depth=8, encoder_heads=6,
                     decoder_dim=192, decoder_depth=4, decoder_heads=6),
}
""""tiny": a CPU-sized model; "gpu": a larger one for the same 28×28 grey images."""


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] -> [B, L, p·p·C]: patches in row-major order, each flattened as (row, col, channel)."""
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def sincos_pos_embed_2d(dim: int, grid_size: int) -> Tensor:
    """[grid², dim] fixed embeddings: the first half of the dims encode the row, the second the
    column, each as [sin(pos·ω), cos(pos·ω)] with ω_k = 10000^(-k / (dim/4)), k < dim/4."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    pos = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def encode(p: Tensor) -> Tensor:
        angles = torch.outer(p.flatten(), omega)
        return torch.cat((angles.sin(), angles.cos()), dim=1)

    return torch.cat((encode(rows), encode(cols)), dim=1).to(torch.get_default_dtype())


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MAE(nn.Module):
    """Masked autoencoder; ``forward`` returns (loss, pred [B, L, p·p·C], mask [B, L], 1 = masked)."""

    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.config = cfg
        D, Dd = cfg.encoder_dim, cfg.decoder_dim
        self.patch_embed = nn.Linear(cfg.patch_dim, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, cfg.grid_size), persistent=False)
        self.blocks = nn.ModuleList(Block(D, cfg.encoder_heads, cfg.mlp_ratio) for _ in range(cfg.encoder_depth))
        self.norm = nn.LayerNorm(D)

        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(Dd, cfg.grid_size), persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(Dd, cfg.decoder_heads, cfg.mlp_ratio)
                                            for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(Dd)
        self.decoder_pred = nn.Linear(Dd, cfg.patch_dim)

        self.apply(self._init_weights)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, patches: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encoder tokens [B, 1 + L_keep, D] of the kept patches, the mask [B, L] and the
        indices [B, L] that sort the patches as (kept by increasing noise, then masked)."""
        B, L, _ = patches.shape
        keep = self.config.num_keep
        order = torch.argsort(noise, dim=1, stable=True)
        kept = order[:, :keep]
        x = self.patch_embed(patches) + self.pos_embed
        x = torch.gather(x, 1, kept[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        for block in self.blocks:
            x = block(x)
        mask_dtype = torch.promote_types(patches.dtype, torch.float32)
        mask = torch.ones(B, L, dtype=mask_dtype, device=patches.device).scatter_(1, kept, 0.0)
        return self.norm(x), mask, order

    def decode(self, tokens: Tensor, order: Tensor) -> Tensor:
        """Pixel predictions [B, L, p·p·C] from encoder tokens, mask tokens at the masked positions."""
        x = self.decoder_embed(tokens)
        B, L = order.shape
        masked = self.mask_token.expand(B, L - self.config.num_keep, -1)
        shuffled = torch.cat((x[:, 1:], masked), dim=1)  # in the order of ``order``
        restore = torch.argsort(order, dim=1)
        patches = torch.gather(shuffled, 1, restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat((x[:, :1], patches + self.decoder_pos_embed), dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def target(self, patches: Tensor) -> Tensor:
        """The pixels to predict: per-patch normalised when ``norm_pix_loss``."""
        if not self.config.norm_pix_loss:
            return patches
        mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
        return (patches - mean) / (var + 1e-6).sqrt()

    def loss(self, pred: Tensor, patches: Tensor, mask: Tensor) -> Tensor:
        """Mean over masked patches (``mask`` 1) of the mean squared error to ``target(patches)``,
        computed in at least float32."""
        dtype = torch.promote_types(pred.dtype, torch.float32)
        per_patch = (pred.to(dtype) - self.target(patches.to(dtype))).pow(2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Loss, predictions and mask for ``images`` [B, C, H, W]. ``noise`` [B, L] picks the kept
        patches (smallest noise); default ``torch.rand(B, L)``. Pass it to mask deterministically."""
        cfg = self.config
        expected = (cfg.in_chans, cfg.image_size, cfg.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must have shape [B, {', '.join(map(str, expected))}], got {tuple(images.shape)}")
        B, L = images.shape[0], cfg.num_patches
        if noise is None:
            noise = torch.rand(B, L, device=images.device)
        elif tuple(noise.shape) != (B, L):
            raise ValueError(f"noise must have shape [B, L] = [{B}, {L}], got {tuple(noise.shape)}")
        patches = patchify(images, cfg.patch_size)
        tokens, mask, order = self.encode(patches, noise)
        pred = self.decode(tokens, order)
        return self.loss(pred, patches, mask), pred, mask
