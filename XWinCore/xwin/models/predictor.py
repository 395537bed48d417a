"""Predictors in latent space: the view predictor g_v (action-conditioned) and the I-JEPA mask predictor g_m."""
from __future__ import annotations

import math

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from ..config import ModelConfig
from .encoder import gather_tokens


def sincos_2d(grid_size: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos positional embedding (N, dim), N = rows·cols in raster order (MAE / I-JEPA).

    Half the channels encode the row, half the column; each half is [sin(p·ω_k), cos(p·ω_k)] with
    ω_k = 10000^(−k/(dim/4)), k = 0 … dim/4 − 1.
    """
    rows, cols = grid_size
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")

    def enc(p: torch.Tensor) -> torch.Tensor:
        a = p.reshape(-1, 1) * omega
        return torch.cat([a.sin(), a.cos()], dim=1)

    return torch.cat([enc(r), enc(c)], dim=1).float()


def init_weights(module: nn.Module) -> None:
    """timm ViT initialisation: truncated normal (σ = 0.02) linears, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TokenPredictor(nn.Module):
    """Narrow transformer that predicts encoder tokens at query positions from context tokens.

    Sequence = [extra tokens] + [proj(context) + pos(context positions)]
    + [mask token + pos(query positions) (+ query shift)];
    the outputs at the query tokens are normed and projected back to the encoder width D.
    """

    pos_embed: torch.Tensor  # buffer

    def __init__(self, embed_dim: int, width: int, depth: int, num_heads: int, grid_size: tuple[int, int]):
        super().__init__()
        self.grid_size = grid_size
        self.in_proj = nn.Linear(embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("pos_embed", sincos_2d(grid_size, width).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList([Block(width, num_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.out_proj = nn.Linear(width, embed_dim)
        self.apply(init_weights)
        trunc_normal_(self.mask_token, std=0.02)

    def _positions(self, batch: int, idx: torch.Tensor | None) -> torch.Tensor:
        pos = self.pos_embed.expand(batch, -1, -1)
        return pos if idx is None else gather_tokens(pos, idx)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor | None = None,
                query_idx: torch.Tensor | None = None, extra: torch.Tensor | None = None,
                query_shift: torch.Tensor | None = None) -> torch.Tensor:
        """context (B, K, D) at patch indices ``context_idx`` (B, K) (None: all N patches in order);
        queries at ``query_idx`` (B, Q) (None: all N patches); extra (B, E, width) tokens prepended;
        query_shift (B, 1, width) added to every query → predictions (B, Q, D)."""
        b = context.shape[0]
        x = self.in_proj(context) + self._positions(b, context_idx).to(context.dtype)
        q = self.mask_token.to(x.dtype) + self._positions(b, query_idx).to(x.dtype)
        if query_shift is not None:
            q = q + query_shift.to(x.dtype)
        parts = ([] if extra is None else [extra.to(x.dtype)]) + [x, q]
        x = torch.cat(parts, dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.out_proj(self.norm(x[:, -q.shape[1]:]))


class ActionEmbedding(nn.Module):
    """Relative source rotation (Δlao, Δcran in degrees) → one token of width ``width``.

    Features [sin(kΔlao), cos(kΔlao), sin(kΔcran), cos(kΔcran)] for k = 1 … F (angles in radians), then an MLP
    (Linear → GELU → Linear → LayerNorm). The harmonics make the embedding 360°-periodic and smooth in both
    angles; the final LayerNorm gives the action the scale of the positional embeddings from the first step.
    """

    freqs: torch.Tensor  # buffer

    def __init__(self, width: int, num_frequencies: int = 4):
        super().__init__()
        self.register_buffer("freqs", torch.arange(1, num_frequencies + 1, dtype=torch.float32), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(4 * num_frequencies, width), nn.GELU(), nn.Linear(width, width),
                                 nn.LayerNorm(width))
        self.apply(init_weights)

    def forward(self, d_lao: torch.Tensor, d_cran: torch.Tensor) -> torch.Tensor:
        angles = torch.stack([d_lao, d_cran], dim=-1).float() * (math.pi / 180.0)  # (B, 2)
        a = angles.unsqueeze(-1) * self.freqs  # (B, 2, F)
        feats = torch.cat([a.sin(), a.cos()], dim=-1).flatten(1)  # (B, 4F)
        return self.mlp(feats).unsqueeze(1)  # (B, 1, width)


class ViewPredictor(nn.Module):
    """g_v: context-view patch tokens + action token → the target encoder's tokens of the rotated view.

    The action embedding a enters twice: as a token of the sequence and added to every query (mask) token, so
    each query is conditioned on the rotation from the first block on.

    Any rotation is predicted directly (context → target), not by chaining small steps. Every patch of the
    target view is a query, so the output is (B, N, D) like the target encoder's.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.action = ActionEmbedding(cfg.predictor_width, cfg.action_frequencies)
        self.predictor = TokenPredictor(cfg.embed_dim, cfg.predictor_width, cfg.predictor_depth,
                                        cfg.predictor_heads, cfg.grid_size)

    def forward(self, context_tokens: torch.Tensor, d_lao: torch.Tensor, d_cran: torch.Tensor) -> torch.Tensor:
        action = self.action(d_lao, d_cran)
        return self.predictor(context_tokens, extra=action, query_shift=action)


class MaskPredictor(TokenPredictor):
    """g_m (I-JEPA predictor): visible-patch tokens + mask tokens at the masked positions → their target features."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.embed_dim, cfg.mask_predictor_width, cfg.mask_predictor_depth,
                         cfg.mask_predictor_heads, cfg.grid_size)
