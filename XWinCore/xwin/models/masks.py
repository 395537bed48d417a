"""I-JEPA multi-block masking on the patch grid (Assran et al., 2023)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..config import MaskConfig, block_size


class MaskBatch(NamedTuple):
    """Patch indices (raster order of the grid): ``context`` (B, Kc) visible to the context encoder and
    ``targets`` (M, B, Kt), one set per target block; every target index is absent from that sample's context."""

    context: torch.Tensor
    targets: torch.Tensor

    def to(self, device: torch.device | str) -> MaskBatch:
        return MaskBatch(self.context.to(device), self.targets.to(device))


class MultiBlockMaskGenerator:
    """Samples M target blocks and one context block per image, the context minus the union of the targets.

    As in I-JEPA, block *sizes* are drawn once per batch (scale s and aspect ratio r uniform in their ranges:
    h = round(√(s·HW·r)), w = round(√(s·HW/r)), clamped to [1, grid]) and block *positions* per image.
    A context with fewer than ``min_keep`` patches is redrawn (up to ``max_tries``), then falls back to all
    non-target patches. Counts are truncated to the batch minimum so the indices stack.
    """

    def __init__(self, grid_size: tuple[int, int], cfg: MaskConfig | None = None, max_tries: int = 20):
        self.height, self.width = grid_size
        self.cfg = MaskConfig() if cfg is None else cfg
        self.max_tries = max_tries

    def _block_size(self, scale: tuple[float, float], aspect: tuple[float, float],
                    generator: torch.Generator | None) -> tuple[int, int]:
        u = torch.rand(2, generator=generator).tolist()
        s = scale[0] + u[0] * (scale[1] - scale[0])
        r = aspect[0] + u[1] * (aspect[1] - aspect[0])
        return block_size((self.height, self.width), s, r)

    def _block(self, size: tuple[int, int], generator: torch.Generator | None) -> torch.Tensor:
        h, w = size
        top = int(torch.randint(0, self.height - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, self.width - w + 1, (1,), generator=generator))
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        mask[top:top + h, left:left + w] = True
        return mask.flatten()

    def _sample_one(self, t_size, c_size, generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # after max_tries: the draw that left most patches uncovered, all of them as context
        best: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        for _ in range(self.max_tries):
            targets = [self._block(t_size, generator) for _ in range(self.cfg.num_targets)]
            covered = torch.stack(targets).any(0)
            context = self._block(c_size, generator) & ~covered
            if int(context.sum()) >= self.cfg.min_keep:
                break
            if best is None or int((~covered).sum()) > int((~best[0]).sum()):
                best = covered, targets
        else:
            assert best is not None  # max_tries ≥ 1: the loop kept its best draw
            covered, targets = best
            context = ~covered
        if not context.any():  # every draw covered the grid: a config for a larger grid (see MaskConfig.check_grid)
            raise ValueError(f"mask: in {self.max_tries} draws the target blocks covered the whole patch grid; "
                             "lower mask.num_targets or mask.target_scale")
        return context.nonzero().squeeze(1), [t.nonzero().squeeze(1) for t in targets]

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> MaskBatch:
        cfg = self.cfg
        t_size = self._block_size(cfg.target_scale, cfg.target_aspect, generator)
        c_size = self._block_size(cfg.context_scale, (1.0, 1.0), generator)
        samples = [self._sample_one(t_size, c_size, generator) for _ in range(batch_size)]
        kc = min(len(c) for c, _ in samples)
        kt = min(len(t) for _, ts in samples for t in ts)
        context = torch.stack([c[:kc] for c, _ in samples])
        targets = torch.stack([torch.stack([ts[m][:kt] for _, ts in samples]) for m in range(cfg.num_targets)])
        return MaskBatch(context, targets)
