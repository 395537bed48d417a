"""CT volumes for training through MONAI transforms: load (XWin reader), resample, clip HU, deform.

MONAI works on channel-first tensors ``[C, i, j, k]`` with a RAS affine; XWin volumes are ``[k, j, i]`` with an LPS
affine. `LoadCTd` and `to_volume` convert between the two exactly (RAS = diag(−1, −1, 1) · LPS); nothing is
reoriented. HU are shifted by +1024 while MONAI resamples so that zero padding means air.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (Compose, MapTransform, Rand3DElasticd, RandAffined, ScaleIntensityRanged,
                              ShiftIntensityd, Spacingd)

from ..errors import XWinInputError
from ..io import read_ct
from ..io.formats import ITK_EXTENSIONS, has_extension, is_dicom_file
from ..io.image import Volume


def find_cts(folder: str | os.PathLike) -> list[Path]:
    """CTs under ``folder``, sorted: volume files (NIfTI, NRRD, MHA/MHD) and every folder that directly holds DICOM
    files (one series each, its folder name the patient id). ``folder`` itself counts when it holds DICOM files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise XWinInputError(folder, "not a folder of CTs")
    found = set()
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        if has_extension(p, ITK_EXTENSIONS):
            found.add(p)
        elif p.parent not in found and is_dicom_file(p):
            found.add(p.parent)
    if not found:
        raise XWinInputError(folder, "contains no CT (NIfTI, NRRD, MHA files or DICOM series folders)")
    return sorted(found)


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
HU_OFFSET = 1024.0
HU_RANGE = (-1024.0, 3071.0)


def from_volume(volume: Volume) -> MetaTensor:
    """Volume (``[k, j, i]``, LPS) → MONAI MetaTensor ``[1, i, j, k]`` with its RAS affine (mm)."""
    data = torch.from_numpy(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))[None]
    return MetaTensor(data, affine=torch.from_numpy(LPS_TO_RAS @ volume.lps_from_ijk),
                      meta={k: v for k, v in volume.meta.items() if isinstance(v, (str, int, float))})


def to_volume(image: torch.Tensor, meta: dict | None = None) -> Volume:
    """MONAI MetaTensor ``[1, i, j, k]`` (RAS affine) → Volume in HU (LPS affine)."""
    affine = LPS_TO_RAS @ np.asarray(image.affine, dtype=np.float64)  # RAS→LPS is the same flip
    lin = affine[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    array = np.asarray(image.detach().cpu().numpy()[0], dtype=np.float32).transpose(2, 1, 0)
    return Volume(array, spacing, affine[:3, 3], lin / spacing, meta=dict(meta or {}))


class LoadCTd(MapTransform):
    """Read the CT whose path is under ``keys`` with `xwin.io.read_ct` into a MetaTensor (HU)."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = from_volume(read_ct(d[key]))
        return d


def ct_transforms(key: str = "ct", spacing_mm: float = 2.0) -> Compose:
    """Load → resample to ``spacing_mm`` isotropic (bilinear, air outside) → clip HU to [−1024, 3071]."""
    return Compose([
        LoadCTd(key),
        ShiftIntensityd(key, HU_OFFSET),
        Spacingd(key, pixdim=(spacing_mm,) * 3, mode="bilinear", padding_mode="zeros"),
        ShiftIntensityd(key, -HU_OFFSET),
        ScaleIntensityRanged(key, *HU_RANGE, *HU_RANGE, clip=True),
    ])


def deformation_transforms(key: str = "ct", scale: float = 0.08, rotate_deg: float = 4.0,
                           elastic_sigma: tuple[float, float] = (6.0, 9.0),
                           elastic_magnitude: tuple[float, float] = (20.0, 60.0)) -> Compose:
    """Random anatomy: isotropic-ish scaling (±scale), small rotation and a smooth 3D elastic deformation.

    Sigma and magnitude are in voxels of the resampled grid (2 mm by default). Multiplies the few patients we have.
    """
    rot = float(np.radians(rotate_deg))
    return Compose([
        ShiftIntensityd(key, HU_OFFSET),
        RandAffined(key, prob=1.0, rotate_range=(rot, rot, rot), scale_range=(scale, scale, scale),
                    padding_mode="zeros", mode="bilinear"),
        Rand3DElasticd(key, sigma_range=elastic_sigma, magnitude_range=elastic_magnitude, prob=1.0,
                       padding_mode="zeros", mode="bilinear"),
        ShiftIntensityd(key, -HU_OFFSET),
        ScaleIntensityRanged(key, *HU_RANGE, *HU_RANGE, clip=True),
    ])
