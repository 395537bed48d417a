"""View pairs rendered on the fly, on the training device: the GPU path of `xwin train` (config ``data.online``).

The training CTs and their deformed copies (`deformed_instances`, the same instances a bank would hold) stay on the
device as attenuation volumes; every draw renders its context and target views with the XWin projector (torch on
CUDA, numba on the CPU) at continuous poses: target LAO and CRAN uniform over the config's angle ranges, context the
PA view with probability ``pa_fraction`` else uniform too (CRAN 0 with probability ``context_cran0_fraction``; the
target's CRAN is 0 with probability ``target_cran0_fraction``), and per pair a fresh isocenter shift (LPS mm, σ
``iso_shift_mm``) and detector roll (degrees, σ ``roll_deg``) shared by its two views; with ``shared_rendering`` the
``pairs_per_instance`` pairs of one draw share one shift, roll and zoom (their views differ by angle alone) and form one
group, and a view they repeat (the PA context of every pair) is rendered once. Angles are in degrees; the action is
target − context.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..drr import Projector
from .bank import BankSpec, deformed_instances, roll_pose
from .pairs import _Sampler


class OnlineDrrSampler(_Sampler):
    """Draws batches like `PairSampler`, rendering each pair on ``device`` instead of reading a bank."""

    def __init__(self, cts: list[dict], spec: BankSpec, real: np.ndarray | None = None, pa_fraction: float = 0.5,
                 augment: bool = True, seed: int = 0, device: str | torch.device = "cpu", quiet: bool = True,
                 pairs_per_instance: int = 1, zoom: tuple[float, float] = (1.0, 1.0),
                 context_cran0_fraction: float = 0.0, target_cran0_fraction: float = 0.0,
                 shared_rendering: bool = False):
        super().__init__(real, pa_fraction, augment, seed, pairs_per_instance, zoom, context_cran0_fraction,
                         target_cran0_fraction, shared_rendering)
        self.spec = spec
        self.geometry = spec.geometry()
        instances = list(deformed_instances(cts, spec, quiet))
        self.projectors = [Projector(i["volume"], self.geometry, device=device) for i in instances]
        self.patient = np.array([i["ct_index"] for i in instances], dtype=np.int64)
        self.lao_range = (min(spec.lao), max(spec.lao))
        self.cran_range = (min(spec.cran), max(spec.cran))

    @property
    def epoch_size(self) -> int:
        """Instances × the views of the nominal pose grid (the images a bank of this spec would hold)."""
        return len(self.projectors) * len(self.spec.poses())

    def _angles(self, n: int, cran0_fraction: float) -> np.ndarray:
        """(n, 2) (lao, cran) degrees, uniform over the ranges; CRAN 0 with probability ``cran0_fraction``."""
        cran = np.where(self.rng.random(n) < cran0_fraction, 0.0, self.rng.uniform(*self.cran_range, n))
        return np.stack([self.rng.uniform(*self.lao_range, n), cran], axis=1)

    def sample(self, batch_size: int, real_size: int = 0) -> dict[str, torch.Tensor]:
        """One batch: context/target (B, 1, H, W) on the device, d_lao/d_cran (B,) degrees, group (B,)
        instance ids (with ``shared_rendering``: run ids), pose (B, 2) the context view's nominal (lao, cran) degrees,
        real."""
        self.draws += 1
        inst, runs = self._runs(len(self.projectors), batch_size)
        if not self.shared_rendering:
            inst = np.sort(inst)
        ctx = np.where((self.rng.random(batch_size) < self.pa_fraction)[:, None], 0.0,
                       self._angles(batch_size, self.context_cran0_fraction))
        tgt = self._angles(batch_size, self.target_cran0_fraction)
        n = runs[-1] + 1 if self.shared_rendering else batch_size  # one jitter per run, or per pair
        each = runs if self.shared_rendering else np.arange(batch_size)
        roll = self.rng.normal(0.0, self.spec.roll_deg, n)[each]
        shift = self.rng.normal(0.0, self.spec.iso_shift_mm, (n, 3))[each]
        size = self.spec.img_size
        context, target = torch.empty(2, batch_size, size, size, device=self.projectors[0].device)
        for i in np.unique(inst):
            rows = np.flatnonzero(inst == i)
            views = np.concatenate([np.column_stack([angles[rows], roll[rows], shift[rows]]) for angles in (ctx, tgt)])
            distinct, which = np.unique(views, axis=0, return_inverse=True)  # render a repeated view once
            poses = torch.stack([roll_pose(lao, cran, r, np.array(s)) for lao, cran, r, *s in distinct])
            with torch.no_grad():
                images = self.projectors[i].render(pose=poses, mode="radiograph")
                images = F.avg_pool2d(images[:, None].float(), self.spec.supersample)[:, 0][which.ravel()]
            context[rows], target[rows] = images[:len(rows)], images[len(rows):]
        d = (tgt - ctx).astype(np.float32)
        context, target = self._zoomed(context, target, runs if self.shared_rendering else None)
        batch = {"context": self._images(context), "target": self._images(target),
                 "d_lao": torch.from_numpy(d[:, 0]), "d_cran": torch.from_numpy(d[:, 1]),
                 "group": torch.from_numpy(runs if self.shared_rendering else inst),
                 "patient": torch.from_numpy(self.patient[inst]),
                 "pose": torch.from_numpy(ctx.astype(np.float32))}
        return self._add_real(batch, real_size)
