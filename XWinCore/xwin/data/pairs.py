"""Training batches from a DRR bank: (context view, target view, action) pairs plus real CXRs.

The action is the relative rotation from the context to the target view: Δlao (yaw) and Δcran (pitch), degrees.
Image augmentation (noise, blur) reuses MONAI's random intensity transforms.
"""
from __future__ import annotations

import numpy as np
import torch
from monai.transforms import Compose, RandGaussianNoise, RandGaussianSmooth

from .bank import Bank


def image_augmentation(noise_std: float = 0.02, blur_sigma: float = 0.8) -> Compose:
    """Random Gaussian noise and blur on one [1, H, W] image in [0, 1]."""
    return Compose([RandGaussianSmooth(sigma_x=(0.0, blur_sigma), sigma_y=(0.0, blur_sigma), prob=0.5),
                    RandGaussianNoise(prob=0.5, std=noise_std)])


class PairSampler:
    """Draws batches of view pairs from a bank (and real CXRs when given).

    context: 'any' (any view is a context) or 'pa' (context always the LAO = CRAN = 0 view, as at prediction time);
    pa_fraction mixes the two. real: optional (R, H, W) array of real CXRs in [0, 1].
    """

    def __init__(self, bank: Bank, real: np.ndarray | None = None, pa_fraction: float = 0.5, augment: bool = True,
                 seed: int = 0):
        self.bank, self.real = bank, real
        self.pa_fraction = pa_fraction
        self.rng = np.random.default_rng(seed)
        self.draws = 0
        self.augment = image_augmentation() if augment else None
        if self.augment is not None:
            self.augment.set_random_state(seed)
        nominal = bank.poses[0]
        self.pa_view = int(np.argmin(np.abs(nominal).sum(axis=1)))
        self.groups = bank.groups
        self.seed = seed

    @property
    def epoch_size(self) -> int:
        """Number of distinct images in the bank (one 'epoch' of samples)."""
        return int(np.prod(self.bank.images.shape[:2]))

    def state(self) -> dict:
        """JSON-serialisable sampler state (the pair generator), for checkpoints."""
        return {"rng": self.rng.bit_generator.state, "draws": self.draws}

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.draws = state["draws"]
        if self.augment is not None:
            self.augment.set_random_state(self.seed + self.draws)

    def _images(self, array: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(array, dtype=np.float32))[:, None]
        if self.augment is not None:
            x = torch.stack([torch.as_tensor(self.augment(im)).clamp(0, 1) for im in x]).float()
        return x

    def sample(self, batch_size: int, real_size: int = 0) -> dict[str, torch.Tensor]:
        """One batch: context/target (B, 1, H, W), d_lao/d_cran (B,) degrees, group (B,), real (R, 1, H, W)."""
        n_inst, n_views = self.bank.images.shape[:2]
        self.draws += 1
        inst = self.rng.integers(n_inst, size=batch_size)
        ctx = np.where(self.rng.random(batch_size) < self.pa_fraction, self.pa_view,
                       self.rng.integers(n_views, size=batch_size))
        tgt = self.rng.integers(n_views, size=batch_size)
        poses = self.bank.poses
        d = poses[inst, tgt] - poses[inst, ctx]
        order = np.argsort(inst, kind="stable")  # memory-mapped reads in file order
        inst, ctx, tgt, d = inst[order], ctx[order], tgt[order], d[order]
        batch = {
            "context": self._images(self.bank.images[inst, ctx]),
            "target": self._images(self.bank.images[inst, tgt]),
            "d_lao": torch.from_numpy(d[:, 0].astype(np.float32)),
            "d_cran": torch.from_numpy(d[:, 1].astype(np.float32)),
            "group": torch.from_numpy(self.groups[inst]),
        }
        if self.real is not None and len(self.real) and real_size > 0:
            pick = self.rng.integers(len(self.real), size=real_size)
            batch["real"] = self._images(self.real[pick])
        return batch
