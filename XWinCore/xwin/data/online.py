"""View pairs rendered on the fly, on the training device: the GPU path of `xwin train` (config ``data.online``).

The training CTs and their deformed copies (`deformed_instances`, the same instances a bank would hold) stay on the
device as attenuation volumes; every draw renders its context and target views with the XWin projector (torch on
CUDA, numba on the CPU) at continuous poses: target LAO and CRAN uniform over the config's angle ranges, context the
PA view with probability ``pa_fraction`` else uniform too (CRAN 0 with probability ``context_cran0_fraction``; the
target's CRAN is 0 with probability ``target_cran0_fraction``), and per pair a fresh isocenter shift (LPS mm, σ
``iso_shift_mm``) and detector roll (degrees, σ ``roll_deg``) shared by its two views; with ``shared_rendering`` the
``pairs_per_instance`` pairs of one draw share one shift, roll and zoom (their views differ by angle alone) and form one
group, and a view they repeat (the PA context of every pair) is rendered once. With ``rejitter`` every target is also
rendered under a second, independent jitter (shift, roll, zoom; one per run): ``target_rejittered``, the same view
of the same anatomy placed elsewhere on the detector. Angles are in degrees; the action is target − context.
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
                 shared_rendering: bool = False, rejitter: bool = False):
        super().__init__(real, pa_fraction, augment, seed, pairs_per_instance, zoom, context_cran0_fraction,
                         target_cran0_fraction, shared_rendering)
        self.spec, self.rejitter = spec, rejitter
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
        group = runs if self.shared_rendering else None
        context, target = self._render(inst, group, ctx, tgt)
        d = (tgt - ctx).astype(np.float32)
        context, target = self._zoomed(context, target, runs=group)
        batch = {"context": self._images(context), "target": self._images(target),
                 "d_lao": torch.from_numpy(d[:, 0]), "d_cran": torch.from_numpy(d[:, 1]),
                 "group": torch.from_numpy(runs if self.shared_rendering else inst),
                 "patient": torch.from_numpy(self.patient[inst]),
                 "pose": torch.from_numpy(ctx.astype(np.float32))}
        if self.rejitter:  # the targets again under an independent jitter
            (again,) = self._render(inst, group, tgt)
            (again,) = self._zoomed(again, runs=group)
            batch["target_rejittered"] = self._images(again)
        return self._add_real(batch, real_size)

    def _render(self, inst: np.ndarray, runs: np.ndarray | None, *angles: np.ndarray) -> list[torch.Tensor]:
        """One (B, H, W) image stack per (B, 2) array of (lao, cran) degrees, row b from instance ``inst[b]``, under a
        fresh jitter (roll degrees, isocenter shift LPS mm) per run of ``runs`` (None: per row) shared by the stacks;
        a view repeated within an instance is rendered once."""
        b = len(inst)
        each = np.arange(b) if runs is None else runs
        roll = self.rng.normal(0.0, self.spec.roll_deg, each.max() + 1)[each]
        shift = self.rng.normal(0.0, self.spec.iso_shift_mm, (each.max() + 1, 3))[each]
        size = self.spec.img_size
        out = torch.empty(len(angles), b, size, size, device=self.projectors[0].device)
        for i in np.unique(inst):
            rows = np.flatnonzero(inst == i)
            views = np.concatenate([np.column_stack([a[rows], roll[rows], shift[rows]]) for a in angles])
            distinct, which = np.unique(views, axis=0, return_inverse=True)  # render a repeated view once
            poses = torch.stack([roll_pose(lao, cran, r, np.array(s)) for lao, cran, r, *s in distinct])
            with torch.no_grad():
                images = self.projectors[i].render(pose=poses, mode="radiograph")
                images = F.avg_pool2d(images[:, None].float(), self.spec.supersample)[:, 0][which.ravel()]
            out[:, rows] = images.reshape(len(angles), len(rows), size, size)
        return list(out)
