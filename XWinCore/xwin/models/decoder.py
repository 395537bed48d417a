"""Projection decoder: encoder-space patch tokens → a radiograph in the [0, 1] display convention."""
from __future__ import annotations

from typing import cast

import torch
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn

from ..config import ModelConfig
from .predictor import init_weights, sincos_2d


class ProjectionDecoder(nn.Module):
    """Tokens (B, N, D) → Linear(D → width) + 2D sin-cos positions → ``decoder_depth`` ViT blocks → LayerNorm →
    Linear(width → p²·C) per patch → unpatchify (pixel shuffle) → sigmoid: image (B, C, H, W) in [0, 1].

    With ``decoder_depth = 0`` it is a per-token MLP head (no mixing between patches).
    With ``decoder_refine = K > 0`` a residual conv pair (C → K → C channels, 5 × 5, GELU) on the logits,
    zero-initialised (starts as the identity), smooths the seams the per-patch head leaves at patch borders.
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
            nn.init.zeros_(cast(torch.Tensor, self.refine[-1].weight))
            nn.init.zeros_(cast(torch.Tensor, self.refine[-1].bias))

        self.context = ContextRefiner(cfg.in_chans, cfg.decoder_context) if cfg.decoder_context else None

    def forward(self, tokens: torch.Tensor, context: torch.Tensor | None = None,
                action: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, N, D) → image (B, C, H, W); with ``model.decoder_context`` also the context radiograph
        (B, C, H, W) in [0, 1] and the action (B, 2) (Δlao, Δcran) degrees (default: the null action); without a
        context the refiner is skipped (the tokens-only decode)."""
        x = self.in_proj(tokens) + self.pos_embed.to(tokens.dtype)
        x = self.head(self.norm(self.blocks(x)))
        p = self.patch_size
        x = rearrange(x, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=self.grid_size[0], p1=p, p2=p)
        if self.refine is not None:
            x = x + self.refine(x)
        if self.context is not None and context is not None:
            if action is None:
                action = torch.zeros(len(x), 2, device=x.device)
            x = x + self.context(x, context, action)
        return torch.sigmoid(x)


class ContextRefiner(nn.Module):
    """Residual correction of the decoded logits (B, C, H, W) that sees the context radiograph and the action: input
    [logits, context, sin/cos of Δlao and Δcran as constant maps] → conv 3×3 (K) → stride-2 conv (2K) → conv (2K) →
    ×2 upsampling → conv (K), concatenated with the full-resolution features → conv (C), GELUs between; the last conv
    starts at zero (the refiner starts as the identity). The context brings back the detail (ribs, edges) that
    16 × 16 patch tokens cannot carry."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.inp = nn.Sequential(nn.Conv2d(2 * channels + 4, width, 3, padding=1), nn.GELU())
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
                                  nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
                                  nn.Upsample(scale_factor=2, mode="nearest"),
                                  nn.Conv2d(2 * width, width, 3, padding=1), nn.GELU())
        self.out = nn.Conv2d(2 * width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(cast(torch.Tensor, self.out.bias))  # a Conv2d made with its bias

    def forward(self, logits: torch.Tensor, context: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        a = torch.deg2rad(action.float())
        maps = torch.cat([a.sin(), a.cos()], dim=1)[:, :, None, None].expand(-1, -1, *logits.shape[-2:])
        x = self.inp(torch.cat([logits, context.to(logits.dtype), maps.to(logits.dtype)], dim=1))
        return self.out(torch.cat([x, self.down(x)], dim=1))
