"""CT volumes for training through MONAI transforms: load (XWin reader), resample, clip HU, deform.

MONAI works on channel-first tensors ``[C, i, j, k]`` with a RAS affine; XWin volumes are ``[k, j, i]`` with an LPS
affine. `LoadCTd` and `to_volume` convert between the two exactly (RAS = diag(−1, −1, 1) · LPS); nothing is
reoriented. HU are shifted by +1024 while MONAI resamples so that zero padding means air.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Hashable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    Rand3DElasticd,
    RandAffined,
    RandomizableTransform,
    ScaleIntensityRanged,
    ShiftIntensityd,
    Spacingd,
    SpatialCrop,
)
from scipy import ndimage

from ..errors import XWinInputError
from ..io import read_ct
from ..io.formats import ITK_EXTENSIONS, has_extension, is_dicom_file
from ..io.image import Volume
from ..io.tables import read_csv_rows
from ..io.validate import file_problem


def find_cts(folder: str | os.PathLike) -> list[Path]:
    """CTs under ``folder``, sorted: volume files (NIfTI, NRRD, MHA/MHD) and every folder that directly holds DICOM
    files (one series each, its folder name the patient id). ``folder`` itself counts when it holds DICOM files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise XWinInputError(folder, "not a folder of CTs")
    found = set()
    for p in folder.rglob("*"):
        if not p.is_file():
            problem = None if p.is_dir() else file_problem(p)
            if problem and problem != "does not exist" and has_extension(p, ITK_EXTENSIONS):
                raise XWinInputError(p, problem)  # a FIFO or a device named like a CT: refused, not skipped
            continue
        if has_extension(p, ITK_EXTENSIONS):
            found.add(p)
        elif p.parent not in found and is_dicom_file(p):
            found.add(p.parent)
    if not found:
        raise XWinInputError(folder, "contains no CT (NIfTI, NRRD, MHA files or DICOM series folders)")
    return sorted(found)


def split_cts(cases: str | Path, split: str) -> list[Path]:
    """The CT files of a cases CSV (columns ``file``, ``split``; files relative to the CSV's folder) whose split is
    ``split`` (e.g. ../shared/data/ct/cases.csv: ``train`` may train a shipped model, ``eval`` only evaluates)."""
    cases = Path(cases)
    rows = read_csv_rows(cases, "cases CSV")
    if not rows or not {"file", "split"} <= set(rows[0]):
        raise XWinInputError(cases, "a cases CSV needs the columns 'file' and 'split'")
    short = next((n for n, r in enumerate(rows, 1) if not r["file"] or r["split"] is None), None)
    if short is not None:
        raise XWinInputError(cases, f"data row {short} has no value in column 'file' or 'split'")
    first: dict[str, int] = {}
    for n, r in enumerate(rows, 1):
        n0 = first.setdefault(os.path.normpath(r["file"]), n)
        if n0 != n:
            raise XWinInputError(cases, f"data rows {n0} and {n} both list the CT {r['file']!r}: each CT belongs to "
                                        "one split, once")
    files = [cases.parent / r["file"] for r in rows if r["split"] == split]
    if not files:
        raise XWinInputError(cases, f"no CT has split '{split}'")
    return files


def training_cts(cfg, config: str | os.PathLike | None = None) -> list[dict]:
    """CTs to train on: every path of ``data.ct`` and, with ``data.cases``, every CT of split ``data.split``, minus
    held-out patients (splits are by patient). ``config``: the file ``cfg`` came from, named when none is left."""
    held = set(cfg.data.holdout)
    listed = [Path(p) for p in cfg.data.ct]
    seen: dict[str, int] = {}
    for n, p in enumerate(listed):  # one CT twice would weigh that patient double
        first = seen.setdefault(os.path.realpath(p), n)
        if first != n:
            raise XWinInputError(config, f"config key 'data.ct': entries {first + 1} and {n + 1} name the same CT "
                                         f"({listed[first]}): list each CT once")
    if cfg.data.cases:
        listed += [p for p in split_cts(cfg.data.cases, cfg.data.split) if p not in listed]
    cts = []
    for p in listed:
        if not p.exists():
            raise XWinInputError(p, "training CT not found (config key 'data.ct' or 'data.cases')")
        patient = p.name.split(".")[0]
        if patient in held or str(p) in held:
            continue
        cts.append({"path": str(p), "patient_id": patient})
    if not listed:
        raise XWinInputError(config, "config key 'data.ct': no training CT given (data.ct and data.cases list none)")
    unknown = [h for h in held if not any(h in (Path(p).name.split(".")[0], str(p)) for p in listed)]
    if unknown:  # campaign 12: a misspelt patient trained on everyone, without a word
        names = ", ".join(repr(h[:60]) for h in sorted(unknown)[:3]) + (", ..." if len(unknown) > 3 else "")
        raise XWinInputError(config, f"config key 'data.holdout': {names} names no training CT (give a patient as "
                                     "its file name without extension, or the path as listed)")
    if not cts:
        raise XWinInputError(config, f"config key 'data.holdout': every training CT ({len(listed)}) is held out")
    return cts


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
HU_OFFSET = 1024.0
HU_RANGE = (-1024.0, 3071.0)


def from_volume(volume: Volume) -> MetaTensor:
    """Volume (``[k, j, i]``, LPS) → MONAI MetaTensor ``[1, i, j, k]`` with its RAS affine (mm)."""
    data = torch.from_numpy(np.ascontiguousarray(volume.array.transpose(2, 1, 0)))[None]
    return MetaTensor(data, affine=torch.from_numpy(LPS_TO_RAS @ volume.lps_from_ijk),
                      meta={k: v for k, v in volume.meta.items() if isinstance(v, (str, int, float))})


def to_volume(image: MetaTensor, meta: dict | None = None) -> Volume:
    """MONAI MetaTensor ``[1, i, j, k]`` (RAS affine) → Volume in HU (LPS affine)."""
    affine = LPS_TO_RAS @ np.asarray(image.affine, dtype=np.float64)  # RAS→LPS is the same flip
    lin = affine[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    array = np.asarray(image.detach().cpu().numpy()[0], dtype=np.float32).transpose(2, 1, 0)
    return Volume(array, spacing, affine[:3, 3], lin / spacing, meta=dict(meta or {}))


class LoadCTd(MapTransform):
    """Read the CT whose path is under ``keys`` with `xwin.io.read_ct` (or take the `Volume` given) into a
    MetaTensor (HU)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = from_volume(d[key] if isinstance(d[key], Volume) else read_ct(d[key]))
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


class FeatherBordersd(MapTransform):
    """Fade a resampled CT to air over ``width_mm`` at each of its six faces, so that no DRR shows the scan box.

    On a MetaTensor ``[1, i, j, k]`` in HU: (HU + 1024) is multiplied by w(d) = sin²(π d / 2 width) for the distance d
    (mm, voxel centres, spacing from the affine) to the nearest face along each axis, 1 beyond ``width_mm``.
    """

    def __init__(self, keys, width_mm: float):
        super().__init__(keys)
        self.width_mm = width_mm

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if self.width_mm <= 0:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            spacing = np.linalg.norm(np.asarray(image.affine, dtype=np.float64)[:3, :3], axis=0)
            weight = torch.ones(image.shape[1:], dtype=torch.float32)
            for axis, (n, step) in enumerate(zip(image.shape[1:], spacing)):
                edge = (np.minimum(np.arange(n), np.arange(n)[::-1]) + 0.5) * step  # mm from the nearest face
                ramp = np.sin(np.pi / 2 * np.clip(edge / self.width_mm, 0.0, 1.0)) ** 2
                shape = [1, 1, 1]
                shape[axis] = n
                weight = weight * torch.from_numpy(ramp.astype(np.float32)).reshape(shape)
            d[key] = (image + HU_OFFSET) * weight - HU_OFFSET
        return d


class RandCropZd(MapTransform, RandomizableTransform):
    """Keep a random run of the slices along k (the CT's z), a fraction uniform in ``fraction`` of them: the DRRs of one
    patient then end at many heights, so no scan border is a constant of the patient."""

    def __init__(self, keys, fraction: tuple[float, float] = (0.8, 1.0)):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.fraction = fraction

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if self.fraction[0] >= 1.0:
            return d
        f = self.R.uniform(*self.fraction)
        for key in self.key_iterator(d):
            n = d[key].shape[-1]
            keep = max(1, int(round(f * n)))
            start = int(self.R.randint(0, n - keep + 1))
            d[key] = SpatialCrop(roi_start=(0, 0, start), roi_end=(d[key].shape[1], d[key].shape[2], start + keep))(
                d[key])
        return d


def deformation_transforms(key: str = "ct", scale: float = 0.08, rotate_deg: float = 4.0,
                           elastic_sigma: tuple[float, float] = (6.0, 9.0),
                           elastic_magnitude: tuple[float, float] = (20.0, 60.0)) -> Compose:
    """Random anatomy: body habitus (an independent scale factor per axis, uniform in 1 ± ``scale``), a small rotation
    and a smooth 3D elastic deformation.

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


class RandArmsDownd(MapTransform, RandomizableTransform):
    """Arms down at the sides of the chest, on a fraction ``prob`` of volumes: the training CTs are scanned arms up
    (or cut at the sides), while films and some CTs (LUNG1-003) hold the arms beside the thorax, where oblique and
    lateral views see them across the chest.

    On a MetaTensor ``[1, i, j, k]`` in HU whose grid axes follow the patient's left-right, anterior-posterior and
    head-foot directions (an axial CT, RAS affine, mm; a grid more than 45° oblique, or one without a body, is left as
    it is): in every slice the body's lateral edges within ±40 mm of its AP centre (`_body_edges`); beside them each
    arm is an elliptic cylinder of muscle (20–60 HU) under a 4–8 mm fat rim (−100 HU) around a humerus (cortex
    1000–1500 HU, marrow −50–150 HU). The arm sizes (semi-axes 25–40 mm left-right, 32–48 mm AP), the gap to the body
    (−5 to 10 mm), the AP offset and the humerus are drawn per arm. Arms only replace air (< −500 HU) outside the
    body; the grid grows along left-right with air where they need the room (the affine keeps every voxel's position
    in mm). Measured on top of stage 12 (`data.arms` 0.5): no gain on the eval split (docs/results.md).
    """

    def __init__(self, keys, prob: float):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=prob)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        arms = [{"r_lr": self.R.uniform(25, 40), "r_ap": self.R.uniform(32, 48), "gap": self.R.uniform(-5, 10),
                 "offset_ap": self.R.uniform(-15, 15), "fat": self.R.uniform(4, 8), "muscle": self.R.uniform(20, 60),
                 "bone_r": self.R.uniform(9, 13), "cortex": self.R.uniform(2.5, 4),
                 "cortex_hu": self.R.uniform(1000, 1500), "marrow_hu": self.R.uniform(-50, 150)} for _ in (0, 1)]
        for key in self.key_iterator(d):
            d[key] = _with_arms(d[key], arms)
        return d


def _body_edges(hu: np.ndarray, spacing: np.ndarray) -> tuple[float, np.ndarray, np.ndarray] | None:
    """The body in ``hu`` (left-right, AP, head-foot; HU): its AP centre (mm from the first voxel centre), (slices, 2)
    left and right edges (mm, median over 7 slices) and its mask, each slice's largest region > −400 HU with its
    holes (the lungs) filled, opened over 10 mm. None when no slice holds a body."""
    mask = np.zeros(hu.shape, dtype=bool)
    opening = np.ones([max(1, int(round(10.0 / s))) for s in spacing[:2]], dtype=bool)
    for k in range(hu.shape[2]):
        filled = ndimage.binary_fill_holes(hu[:, :, k] > -400)  # the lungs are body
        labels, n = ndimage.label(ndimage.binary_opening(filled, structure=opening))  # thin table shells cut off
        if n:
            mask[:, :, k] = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    if not mask.any():
        return None
    centre_ap = np.nonzero(mask)[1].mean() * spacing[1]
    band = np.abs(np.arange(hu.shape[1]) * spacing[1] - centre_ap) <= 40.0
    cols = np.any(mask[:, band, :], axis=1)  # (left-right, slices): body within the band
    found = np.any(cols, axis=0)
    if not found.any():
        return None
    first, last = cols.argmax(axis=0), cols.shape[0] - 1 - cols[::-1].argmax(axis=0)
    edges = np.stack([first, last], axis=1)[found] * spacing[0]
    edges = np.stack([np.interp(np.arange(len(found)), np.nonzero(found)[0], edges[:, side]) for side in (0, 1)], 1)
    return centre_ap, ndimage.median_filter(edges, size=(7, 1), mode="nearest"), mask


def _with_arms(image: MetaTensor, arms: list[dict]) -> MetaTensor:
    """``image`` (``[1, i, j, k]``, HU, RAS affine) with the arms of `RandArmsDownd` (parameters in mm and HU)."""
    lin = np.asarray(image.affine, dtype=np.float64)[:3, :3]
    axes = [int(np.argmax(np.abs(lin[row]))) for row in range(3)]  # grid axis along R-L, A-P, S-I
    if sorted(axes) != [0, 1, 2]:  # a grid more than 45° oblique: no axis runs along the arms
        return image
    spacing = np.linalg.norm(lin, axis=0)[axes]
    hu = torch.as_tensor(image.array[0]).permute(*axes)  # (left-right, AP, head-foot); no MetaTensor
    found = _body_edges(hu.numpy(), spacing)
    if found is None:
        return image
    centre_ap, edges, body = found
    width = [a["gap"] + 2 * a["r_lr"] + 10.0 for a in arms]  # mm beyond the body edge, 10 mm of air to spare
    before = max(0, int(np.ceil((width[0] - edges[:, 0].min()) / spacing[0])))
    after = max(0, int(np.ceil((edges[:, 1].max() + width[1]) / spacing[0])) - hu.shape[0] + 1)
    hu = F.pad(hu.permute(2, 1, 0), (before, after), value=HU_RANGE[0]).permute(2, 1, 0)
    outside = ~F.pad(torch.from_numpy(body).permute(2, 1, 0), (before, after)).permute(2, 1, 0)
    x = (torch.arange(hu.shape[0], dtype=torch.float32)[:, None, None] - before) * spacing[0]
    y = torch.arange(hu.shape[1], dtype=torch.float32)[None, :, None] * spacing[1]
    step = float(min(spacing[:2]))
    for side, a in zip((0, 1), arms):
        sign = 1.0 if side else -1.0
        cx = torch.from_numpy(edges[:, side] + sign * (a["gap"] + a["r_lr"])).float()[None, None, :]
        cy = centre_ap + a["offset_ap"]
        mean_r = (a["r_lr"] + a["r_ap"]) / 2
        q = torch.sqrt(((x - cx) / a["r_lr"]) ** 2 + ((y - cy) / a["r_ap"]) ** 2)  # 1 on the skin
        skin = torch.clamp(0.5 - (q - 1) * mean_r / step, 0, 1)
        muscle = torch.clamp(0.5 - (q - 1 + a["fat"] / mean_r) * mean_r / step, 0, 1)
        r_bone = torch.sqrt((x - cx - sign * 0.15 * a["r_lr"]) ** 2 + (y - cy + 0.1 * a["r_ap"]) ** 2)
        bone = torch.clamp(0.5 - (r_bone - a["bone_r"]) / step, 0, 1)
        marrow = torch.clamp(0.5 - (r_bone - a["bone_r"] + a["cortex"]) / step, 0, 1)
        arm = -100.0 + muscle * (a["muscle"] + 100.0)
        arm = arm + bone * (a["cortex_hu"] - arm) + marrow * (a["marrow_hu"] - a["cortex_hu"])
        hu = hu + skin * (outside & (hu < -500)).float() * (arm - hu)
    affine = torch.as_tensor(np.asarray(image.affine, dtype=np.float64)).clone()
    affine[:3, 3] -= before * affine[:3, axes[0]]
    return MetaTensor(hu.permute(*np.argsort(axes))[None].contiguous(), affine=affine)
