"""Projection decoder: encoder-space patch tokens → a radiograph in the [0, 1] display convention."""
from __future__ import annotations

import torch
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn

from .config import ModelConfig
from .predictor import init_weights, sincos_2d


class ProjectionDecoder(nn.Module):
    """Tokens (B, N, D) → Linear(D → width) + 2D sin-cos positions → ``decoder_depth`` ViT blocks → LayerNorm →
    Linear(width → p²·C) per patch → unpatchify (pixel shuffle) → sigmoid: image (B, C, H, W) in [0, 1].

    With ``decoder_depth = 0`` it is a per-token MLP head (no mixing between patches).
    With ``decoder_refine = K > 0`` a residual conv pair (C → K → C channels, 5 × 5, GELU) on the logits, zero-initialised
    (starts as the identity), smooths the seams the per-patch head leaves at patch borders.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.grid_size = cfg.grid_size
        self.patch_size = cfg.patch_size
        self.in_proj = nn.Linear(cfg.embed_dim, cfg.decoder_width)
        self.register_buffer("pos_embed", sincos_2d(cfg.grid_size, cfg.decoder_width).unsqueeze(0),
                             persistent=False)
        self.blocks = nn.Sequential(*[Block(cfg.decoder_width, cfg.decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                      for _ in range(cfg.decoder_depth)])
        self.norm = nn.LayerNorm(cfg.decoder_width)
        self.head = nn.Linear(cfg.decoder_width, cfg.patch_size**2 * cfg.in_chans)
        self.refine = None
        if cfg.decoder_refine:
            c = cfg.in_chans
            self.refine = nn.Sequential(nn.Conv2d(c, cfg.decoder_refine, 5, padding=2), nn.GELU(),
                                        nn.Conv2d(cfg.decoder_refine, c, 5, padding=2))
        self.apply(init_weights)
        if self.refine is not None:
            nn.init.zeros_(self.refine[-1].weight)
            nn.init.zeros_(self.refine[-1].bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(tokens) + self.pos_embed.to(tokens.dtype)
        x = self.head(self.norm(self.blocks(x)))
        p = self.patch_size
        x = rearrange(x, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=self.grid_size[0], p1=p, p2=p)
        if self.refine is not None:
            x = x + self.refine(x)
        return torch.sigmoid(x)
