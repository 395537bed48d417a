"""`xwin info FILE`: what XWin reads from a CT or a radiograph, as a dict and as text."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import XWinInputError
from .ct import read_ct
from .cxr import read_radiograph
from .formats import ITK_EXTENSIONS, has_extension
from .validate import file_problem, open_header


def _is_volume(p: Path) -> bool:
    """A folder (DICOM series) or a 3D image file (every axis ≥ 2 voxels) is a CT; anything else a radiograph."""
    if p.is_dir() or file_problem(p):
        return True  # read_ct reports why (a FIFO or a device is never opened)
    if not has_extension(p, ITK_EXTENSIONS):
        return False
    try:
        reader = open_header(p)
    except XWinInputError:
        return True  # read_ct reports why
    return reader.GetDimension() >= 3 and min(reader.GetSize()[:3]) >= 2


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Kind, size, geometry (mm, LPS) and value range of a CT (HU) or a radiograph ([0, 1], bone bright).

    ``direction_axes_ijk`` lists the LPS unit vectors of the i, j and k axes (the columns of ``Volume.direction``).
    """
    p = Path(path)
    if _is_volume(p):
        v = read_ct(p)
        return {"path": str(p), "kind": "CT volume", "format": v.meta.get("format", ""),
                "modality": v.meta.get("modality", ""), "size_ijk": list(v.shape_ijk),
                "spacing_mm": v.spacing.tolist(), "origin_lps_mm": v.origin.tolist(),
                "direction_axes_ijk": v.direction.T.tolist(), "hu_range": [float(v.array.min()), float(v.array.max())],
                **{k: v.meta[k] for k in ("orientation", "series_uid", "patient_id", "slices") if k in v.meta}}
    r = read_radiograph(p)
    return {"path": str(p), "kind": "radiograph", "format": r.meta.get("format", ""),
            "modality": r.meta.get("modality", ""), "size_rows_cols": list(r.array.shape),
            "pixel_spacing_mm": None if r.pixel_spacing is None else list(r.pixel_spacing),
            "value_range": [float(r.array.min()), float(r.array.max())],
            **{k: r.meta[k] for k in ("photometric_interpretation", "view_position", "original_dtype", "bits_stored",
                                      "transfer_syntax", "decoder_warning") if k in r.meta}}


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "(not given)"
    if isinstance(value, list):
        return "(" + ", ".join(f"{x:.6g}" if isinstance(x, float) else _fmt(x) for x in value) + ")"
    return str(value)


def format_description(d: dict[str, Any]) -> str:
    """One ``key: value`` line per entry of `describe`'s dict, keys aligned."""
    width = max(len(k) for k in d)
    return "\n".join(f"{k.replace('_', ' '):<{width}}  {_fmt(v)}" for k, v in d.items())
