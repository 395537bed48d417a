"""Training batches of (context view, target view, action) pairs plus real CXRs: from a DRR bank (`PairSampler`) or
rendered on the fly (`xwin.data.online.OnlineDrrSampler`).

The action is the relative rotation from the context to the target view: Δlao (yaw) and Δcran (pitch), degrees.
Image augmentation (noise, blur) reuses MONAI's random intensity transforms. The optional zoom narrows the detector
field of a pair (both views alike) so that the DRRs also look like films collimated to the chest.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, RandGaussianNoise, RandGaussianSmooth
from monai.utils import convert_to_tensor

from .bank import Bank


def image_augmentation(noise_std: float = 0.02, blur_sigma: float = 0.8) -> Compose:
    """Random Gaussian noise and blur on one [1, H, W] image in [0, 1]."""
    return Compose([RandGaussianSmooth(sigma_x=(0.0, blur_sigma), sigma_y=(0.0, blur_sigma), prob=0.5),
                    RandGaussianNoise(prob=0.5, std=noise_std)])


class _Sampler:
    """What every pair sampler shares: the random generator (checkpointed), image augmentation and real CXRs."""

    def __init__(self, real: np.ndarray | None, pa_fraction: float, augment: bool, seed: int,
                 pairs_per_instance: int = 1, zoom: tuple[float, float] = (1.0, 1.0),
                 context_cran0_fraction: float = 0.0, target_cran0_fraction: float = 0.0,
                 shared_rendering: bool = False):
        self.real, self.pa_fraction, self.seed = real, pa_fraction, seed
        self.pairs_per_instance, self.zoom, self.shared_rendering = pairs_per_instance, zoom, shared_rendering
        self.context_cran0_fraction, self.target_cran0_fraction = context_cran0_fraction, target_cran0_fraction
        self.rng = np.random.default_rng(seed)
        self.draws = 0
        self.augment = image_augmentation() if augment else None
        if self.augment is not None:
            self.augment.set_random_state(seed)

    def state(self) -> dict:
        """JSON-serialisable sampler state, for checkpoints: the seed, the pair generator, the number of batches drawn
        and, with augmentation, the numpy RandomState (MT19937) of the MONAI Compose and of each of its random
        transforms, so that a restored sampler draws exactly what this one draws next."""
        state: dict[str, Any] = {"seed": self.seed, "rng": self.rng.bit_generator.state, "draws": self.draws}
        if self.augment is not None:
            state["augment"] = []
            for transform in (self.augment, *self.augment.transforms):
                name, key, pos, has_gauss, cached = transform.R.get_state()
                state["augment"].append([name, key.tolist(), int(pos), int(has_gauss), float(cached)])
        return state

    def restore(self, state: dict) -> None:
        """Continue from a `state()`: the next batches equal those the saved sampler would have drawn.

        A state saved by a sampler of another seed (another DDP rank's: a checkpoint holds rank 0's) is not copied,
        so ranks keep distinct streams: the generators are reseeded from (own seed, draws). A checkpoint written
        before the augmentation state was saved reseeds the augmentation at seed + draws, as then."""
        self.draws = state["draws"]
        if state.get("seed", self.seed) != self.seed:
            self.rng = np.random.default_rng([self.seed, self.draws])
            if self.augment is not None:
                self.augment.set_random_state(int(np.random.default_rng([self.seed, self.draws, 1]).integers(2**31)))
            return
        self.rng.bit_generator.state = state["rng"]
        if self.augment is None:
            return
        saved = state.get("augment")
        transforms = (self.augment, *self.augment.transforms)
        if saved is None or len(saved) != len(transforms):
            self.augment.set_random_state(self.seed + self.draws)
            return
        for transform, (name, key, pos, has_gauss, cached) in zip(transforms, saved):
            transform.R.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached))

    def _runs(self, count: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(instance (B,) indices among ``count``, run (B,) ids 0, 0, …, 1, …): runs of ``pairs_per_instance`` pairs
        of one instance, run r being the r-th instance draw. The other pairs of the same anatomy at other angles are
        the alignment loss's hardest negatives (graded by their affinity)."""
        k = self.pairs_per_instance
        runs = np.repeat(np.arange(-(-batch_size // k)), k)[:batch_size]
        return self.rng.integers(count, size=runs[-1] + 1)[runs], runs

    def _zoomed(self, *views: torch.Tensor, runs: np.ndarray | None = None) -> tuple[torch.Tensor, ...]:
        """(B, H, W) view stacks (a pair: context, target) magnified about the detector centre (the isocenter's
        projection) by one factor z per row (``runs`` (B,) given: one per run), uniform in ``zoom``: the field
        becomes field_mm / z (bilinear resampling). Off (no random draw) when ``zoom`` is (1, 1)."""
        if self.zoom[1] <= 1.0:
            return views
        draws = self.rng.uniform(*self.zoom, size=len(views[0]) if runs is None else int(runs.max()) + 1)
        z = torch.from_numpy((draws if runs is None else draws[runs]).astype(np.float32))
        theta = torch.zeros(len(z), 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / z
        stack = torch.stack(views, dim=1).float()  # (B, V, H, W): one grid serves every view of a row
        grid = F.affine_grid(theta.to(stack.device), list(stack.shape), align_corners=False)
        zoomed = F.grid_sample(stack, grid, mode="bilinear", align_corners=False)
        return tuple(zoomed.unbind(1))

    def _images(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W) images in [0, 1] → (N, 1, H, W) float32, augmented when enabled. Always a plain `torch.Tensor`:
        MONAI's transforms return a `MetaTensor`, whose Python ``__torch_function__`` would otherwise run (and carry
        metadata) for every operation of the training step on the batch."""
        x = x.float()[:, None]
        if self.augment is not None:
            x = torch.stack([convert_to_tensor(self.augment(im), track_meta=False).clamp(0, 1) for im in x]).float()
        return x

    def _add_real(self, batch: dict, real_size: int) -> dict:
        if self.real is not None and len(self.real) and real_size > 0:
            pick = self.rng.integers(len(self.real), size=real_size)
            batch["real"] = self._images(torch.from_numpy(np.asarray(self.real[pick], np.float32)))
        return batch


class PairSampler(_Sampler):
    """Draws batches of view pairs from a bank (and real CXRs when given).

    The context is the PA view (LAO = CRAN = 0, as at prediction time) with probability ``pa_fraction``, else a view
    at CRAN 0 with probability ``context_cran0_fraction``, else any view of the grid; the target is a view at CRAN 0
    with probability ``target_cran0_fraction``, else any view. ``pairs_per_instance`` pairs share a (deformed) CT;
    with ``shared_rendering`` they also share the zoom (a bank instance has one isocenter shift and roll) and form one
    group, so that the views of a group differ by their angle alone.
    real: optional (R, H, W) array of real CXRs in [0, 1].
    """

    def __init__(self, bank: Bank, real: np.ndarray | None = None, pa_fraction: float = 0.5, augment: bool = True,
                 seed: int = 0, pairs_per_instance: int = 1, zoom: tuple[float, float] = (1.0, 1.0),
                 context_cran0_fraction: float = 0.0, target_cran0_fraction: float = 0.0,
                 shared_rendering: bool = False):
        super().__init__(real, pa_fraction, augment, seed, pairs_per_instance, zoom, context_cran0_fraction,
                         target_cran0_fraction, shared_rendering)
        self.bank = bank
        nominal = bank.poses[0]
        self.pa_view = int(np.argmin(np.abs(nominal).sum(axis=1)))
        self.cran0_views = np.flatnonzero(nominal[:, 1] == 0)
        instances = bank.manifest.get("instances") or [{"ct_index": i} for i in range(len(bank.images))]
        self.patient = np.array([inst["ct_index"] for inst in instances], dtype=np.int64)

    def _views(self, n_views: int, size: int, cran0_fraction: float) -> np.ndarray:
        """(size,) view indices: at CRAN 0 with probability ``cran0_fraction``, else any view."""
        return np.where(self.rng.random(size) < cran0_fraction, self.rng.choice(self.cran0_views, size=size),
                        self.rng.integers(n_views, size=size))

    @property
    def epoch_size(self) -> int:
        """Number of distinct images in the bank (one 'epoch' of samples)."""
        return int(np.prod(self.bank.images.shape[:2]))

    def sample(self, batch_size: int, real_size: int = 0) -> dict[str, torch.Tensor]:
        """One batch: context/target (B, 1, H, W), d_lao/d_cran (B,) degrees, group (B,) instance ids (one CT or one
        deformed copy: the volume both views were rendered from; with ``shared_rendering`` run ids), patient (B,) the
        CT's index, pose (B, 2) the context view's (lao, cran) degrees, real (R, 1, H, W)."""
        n_inst, n_views = self.bank.images.shape[:2]
        self.draws += 1
        inst, runs = self._runs(n_inst, batch_size)
        ctx = np.where(self.rng.random(batch_size) < self.pa_fraction, self.pa_view,
                       self._views(n_views, batch_size, self.context_cran0_fraction))
        tgt = self._views(n_views, batch_size, self.target_cran0_fraction)
        poses = self.bank.poses
        d = poses[inst, tgt] - poses[inst, ctx]
        order = np.argsort(inst, kind="stable")  # memory-mapped reads in file order
        inst, runs, ctx, tgt, d = inst[order], runs[order], ctx[order], tgt[order], d[order]
        images = lambda idx: torch.from_numpy(np.asarray(self.bank.images[inst, idx], np.float32))  # noqa: E731
        context, target = self._zoomed(images(ctx), images(tgt), runs=runs if self.shared_rendering else None)
        batch = {
            "context": self._images(context),
            "target": self._images(target),
            "d_lao": torch.from_numpy(d[:, 0].astype(np.float32)),
            "d_cran": torch.from_numpy(d[:, 1].astype(np.float32)),
            "group": torch.from_numpy(runs if self.shared_rendering else inst),
            "patient": torch.from_numpy(self.patient[inst]),
            "pose": torch.from_numpy(poses[inst, ctx].astype(np.float32)),
        }
        return self._add_real(batch, real_size)
