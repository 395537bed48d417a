"""Threshold-and-connectivity masks of a CT-like volume in HU: body, lungs (left/right), bone.

Rules (HU thresholds are module constants; volumes in mL use the voxel spacing):

* body: voxels > `BODY_HU` (−500), the largest 26-connected component, holes filled in every axial (k) slice —
  the table and air outside drop out, lungs and bowel gas are inside;
* lungs: voxels < `LUNG_HU` (−400) inside the filled body and not connected to the air outside it (the filled
  body excludes that air), components ≥ `LUNG_MIN_ML` (50 mL); the two largest are kept. When the trachea joins
  both lungs into one component it is split by eroding until two large parts appear and giving every voxel the
  label of its nearest part. Vessels (< −400 HU holes) are filled per slice. Left/right: by the LPS x of each
  lung's centroid (+x = patient's left);
* bone: voxels > `BONE_HU` (250) inside the body, components ≥ `BONE_MIN_ML` (0.1 mL). Iodinated contrast above
  250 HU (CTA) is labelled bone too.

All masks are boolean ``[k, j, i]`` arrays on the volume's grid.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..errors import XWinInputError
from ..io.image import Volume

BODY_HU = -500.0
LUNG_HU = -400.0
BONE_HU = 250.0
LUNG_MIN_ML = 50.0
BONE_MIN_ML = 0.1
SEGMENTS = ("body", "lungs", "lung_left", "lung_right", "bone")
_FULL = np.ones((3, 3, 3), bool)


def _voxel_ml(volume: Volume) -> float:
    return float(np.prod(volume.spacing)) / 1000.0


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for k in range(mask.shape[0]):
        out[k] = ndi.binary_fill_holes(mask[k])
    return out


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask, _FULL)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(sizes.argmax()) + 1)


def body_mask(volume: Volume) -> np.ndarray:
    """Largest component above `BODY_HU`, holes filled slice by slice."""
    return _fill_slices(_largest(volume.array > BODY_HU))


def _components(mask: np.ndarray, min_voxels: float) -> list[np.ndarray]:
    lab, n = ndi.label(mask, _FULL)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    order = np.argsort(sizes)[::-1]
    return [lab == (i + 1) for i in order if sizes[i] >= min_voxels]


def _split(component: np.ndarray, min_voxels: float, max_erosions: int = 12) -> list[np.ndarray]:
    """Split one air component into two large parts by erosion + nearest-seed labelling (or return it whole)."""
    eroded = component
    for _ in range(max_erosions):
        eroded = ndi.binary_erosion(eroded, _FULL)
        parts = _components(eroded, min_voxels / 8)
        if len(parts) >= 2:
            seeds = np.zeros(component.shape, np.int32)
            seeds[parts[0]], seeds[parts[1]] = 1, 2
            _, idx = ndi.distance_transform_edt(seeds == 0, return_indices=True)
            nearest = seeds[tuple(idx)]
            return [component & (nearest == 1), component & (nearest == 2)]
        if not eroded.any():
            break
    return [component]


def lung_masks(volume: Volume, body: np.ndarray | None = None) -> list[np.ndarray]:
    """Up to two lung masks (largest first) of air inside the body."""
    body = body_mask(volume) if body is None else body
    min_vox = LUNG_MIN_ML / _voxel_ml(volume)
    parts = _components((volume.array < LUNG_HU) & body, min_vox)
    if len(parts) == 1:
        parts = _split(parts[0], min_vox)
    parts = sorted(parts, key=lambda m: -int(m.sum()))[:2]
    return [_fill_slices(p) & body for p in parts]


def left_right(volume: Volume, lungs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """{'lung_left', 'lung_right'} from two lung masks by the LPS x of their centroids (+x = left)."""
    empty = np.zeros(volume.array.shape, bool)
    if len(lungs) < 2:
        return {"lung_left": lungs[0] if lungs else empty, "lung_right": empty}
    xs = []
    for m in lungs[:2]:
        k, j, i = (np.mean(a) for a in np.nonzero(m))
        xs.append((volume.lps_from_ijk @ np.array([i, j, k, 1.0]))[0])
    left, right = (lungs[0], lungs[1]) if xs[0] > xs[1] else (lungs[1], lungs[0])
    return {"lung_left": left, "lung_right": right}


def bone_mask(volume: Volume, body: np.ndarray | None = None) -> np.ndarray:
    """Voxels above `BONE_HU` inside the body, specks below `BONE_MIN_ML` removed."""
    body = body_mask(volume) if body is None else body
    mask = (volume.array > BONE_HU) & body
    lab, n = ndi.label(mask, _FULL)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= BONE_MIN_ML / _voxel_ml(volume)
    keep[0] = False
    return keep[lab]


def segment(volume: Volume, names=("lungs", "body", "bone")) -> dict[str, np.ndarray]:
    """Masks for the requested segment names (any of `SEGMENTS`), in the order given."""
    names = [n.strip().lower().replace("-", "_") for n in names if n.strip()]
    if not names:
        raise XWinInputError(None, f"no segment requested; choose from {', '.join(SEGMENTS)}", parameters=("segment",))
    bad = [n for n in names if n not in SEGMENTS]
    if bad:
        raise XWinInputError(None, f"unknown segment(s) {', '.join(bad)}; choose from {', '.join(SEGMENTS)}",
                             parameters=("segment",))
    if len(set(names)) != len(names):
        raise XWinInputError(None, "each segment may be requested once", parameters=("segment",))
    body = body_mask(volume)
    out: dict[str, np.ndarray] = {}
    lungs = lung_masks(volume, body) if any(n.startswith("lung") for n in names) else []
    sides = left_right(volume, lungs) if lungs else {}
    for n in names:
        if n == "body":
            out[n] = body
        elif n == "lungs":
            out[n] = np.any(lungs, axis=0) if lungs else np.zeros(body.shape, bool)
        elif n in ("lung_left", "lung_right"):
            out[n] = sides.get(n, np.zeros(body.shape, bool))
        elif n == "bone":
            out[n] = bone_mask(volume, body)
    return out


def labelmap(masks: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, int]]:
    """One uint8 label array (labels 1..n in the order of ``masks``; 0 = background) and {name: label}.

    Where masks overlap the more specific one wins: body is painted first, then the others in the given order."""
    names = list(masks)
    shape = next(iter(masks.values())).shape
    lab = np.zeros(shape, np.uint8 if len(names) < 256 else np.uint16)
    values = {n: i + 1 for i, n in enumerate(names)}
    for n in sorted(names, key=lambda n: (n != "body", names.index(n))):
        lab[masks[n]] = values[n]
    return lab, values
