"""CXR encoder: a timm ViT without class token that returns patch tokens, optionally of visible patches only."""
from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..config import ModelConfig


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Tokens ``x`` (B, N, C) at patch indices ``idx`` (B, K) → (B, K, C)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class XWinEncoder(nn.Module):
    """ViT-{tiny,small,base,large}/16 on single-channel radiographs (``in_chans=1``, no class token, no head).

    ``forward(images)`` returns the final-normed patch tokens (B, N, D) in raster order of the
    (img_size/16)² patch grid. With ``keep`` (B, K) patch indices, only those patches enter the transformer
    (I-JEPA context encoding) and the output is (B, K, D), in the order of ``keep``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.vit = VisionTransformer(
            img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=0,
            global_pool="", class_token=False, embed_dim=cfg.embed_dim, depth=cfg.depth,
            num_heads=cfg.num_heads, drop_path_rate=cfg.drop_path,
        )
        vit = self.vit
        # forward() adds the positions itself, with the model's public modules, instead of calling timm's private
        # VisionTransformer._pos_embed: the same sum for this layout only (no class or register tokens, fixed grid)
        if vit.cls_token is not None or vit.reg_token is not None or vit.dynamic_img_size or vit.pos_embed is None:
            raise RuntimeError("timm's VisionTransformer no longer has the layout XWinEncoder.forward expects")
        self.embed_dim = cfg.embed_dim
        self.grid_size = tuple(vit.patch_embed.grid_size)
        self.num_patches = vit.patch_embed.num_patches

    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        vit = self.vit
        x = vit.pos_drop(vit.patch_embed(images) + vit.pos_embed)  # (B, N, D): no prefix tokens, positions added
        if keep is not None:
            x = gather_tokens(x, keep)
        x = vit.norm_pre(vit.patch_drop(x))
        return vit.norm(vit.blocks(x))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Image embedding (B, D): mean of the patch tokens."""
        return self(images).mean(dim=1)
