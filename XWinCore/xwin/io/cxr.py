"""Read a chest radiograph as a `Radiograph`: float32 ``[row, col]`` in [0, 1], bone bright and air dark.

DICOM (any transfer syntax pydicom can decode, incl. JPEG baseline and JPEG 2000), PNG/JPEG (Pillow), and 2D
NRRD/MetaImage/NIfTI files such as XWin's own DRRs (SimpleITK).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from ..errors import XWinInputError
from .formats import ITK_EXTENSIONS, RASTER_EXTENSIONS, file_format, has_extension, itk_reason, nifti_truncated
from .image import Radiograph

CROSS_SECTIONAL = {"CT", "MR", "PT", "NM", "US"}
_LUMA = np.array([0.299, 0.587, 0.114])


def read_radiograph(path: str | os.PathLike) -> Radiograph:
    """Radiograph in [0, 1] (bone bright) with pixel_spacing (row, col) in mm, or None when the file has none.

    DICOM: Modality LUT, then the first VOI LUT or window (else the full range), MONOCHROME1 inverted.
    PNG/JPEG: colour → luma, divided by the dtype maximum (255 or 65535). NRRD/MHA/NIfTI 2D: integers divided by their
    dtype maximum, floats kept as stored; spacing from the file.
    """
    p = Path(path)
    if not p.exists():
        raise XWinInputError(p, "does not exist")
    if p.is_dir():
        raise XWinInputError(p, "is a folder; a radiograph must be a single image file")
    if not os.access(p, os.R_OK):
        raise XWinInputError(p, "cannot be read: permission denied")
    if has_extension(p, RASTER_EXTENSIONS):
        return _read_raster(p)
    if has_extension(p, ITK_EXTENSIONS):
        return _read_itk_2d(p)
    return _read_dicom(p)


def _read_dicom(p: Path) -> Radiograph:
    try:
        ds = pydicom.dcmread(p)
    except InvalidDicomError:
        raise XWinInputError(p, "is not a DICOM, PNG or JPEG file") from None
    except Exception as e:  # pydicom raises many types for damaged files
        raise XWinInputError(p, f"is a truncated or corrupt DICOM file ({type(e).__name__}: {e})") from None
    modality = str(ds.get("Modality", ""))
    if modality in CROSS_SECTIONAL:
        raise XWinInputError(p, f"modality {modality} is a cross-sectional slice, not a radiograph (pass the "
                                "folder of a CT series to read it as a volume)")
    if "PixelData" not in ds:
        raise XWinInputError(p, "has no pixel data: truncated, or not an image object")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise XWinInputError(p, f"is multi-frame ({frames} frames); XWin needs a single radiograph")
    try:
        pixels = ds.pixel_array
    except Exception as e:  # decoder errors: truncated data, missing plugin...
        raise XWinInputError(p, f"pixel data cannot be decoded: truncated or corrupt ({type(e).__name__}: {e})"
                             ) from None
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric.startswith("MONOCHROME"):
        image = _display_values(apply_modality_lut(pixels, ds), ds, p)
        if photometric == "MONOCHROME1":
            image = 1.0 - image
    elif pixels.ndim == 3 and pixels.shape[-1] == 3:  # pydicom returns YBR data converted to RGB
        image = pixels.astype(np.float64) @ _LUMA / np.iinfo(pixels.dtype).max
    else:
        raise XWinInputError(p, f"unsupported photometric interpretation {photometric!r}")
    meta = {"source": str(p), "format": "DICOM", "modality": modality, "photometric_interpretation": photometric,
            "view_position": str(ds.get("ViewPosition", "")), "original_dtype": str(pixels.dtype),
            "bits_stored": str(ds.get("BitsStored", "")), "transfer_syntax": str(ds.file_meta.TransferSyntaxUID.name)}
    return Radiograph(image.astype(np.float32), _dicom_spacing(ds), meta)


def _display_values(values: np.ndarray, ds: pydicom.Dataset, p: Path) -> np.ndarray:
    """Modality-LUT output → [0, 1] through the first VOI LUT / window, else the image's own min…max.

    The VOI output range is found by passing the lowest and highest possible inputs through the same VOI transform.
    """
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        try:
            shown = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
            lo, hi = np.asarray(apply_voi_lut(np.array([-(2**31), 2**31 - 1]), ds), dtype=np.float64)
        except (ValueError, IndexError, TypeError, KeyError) as e:
            raise XWinInputError(p, f"invalid VOI LUT or window ({e})") from None
        if hi != lo:
            return np.clip((shown - lo) / (hi - lo), 0.0, 1.0)
        values = shown
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def _dicom_spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(row, col) mm from PixelSpacing, else ImagerPixelSpacing; None when absent or zero (e.g. ``0\\0``)."""
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            spacing = tuple(float(v) for v in ds.get(tag) or ())
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2 and all(np.isfinite(spacing)) and min(spacing) > 0:
            return spacing
    return None


def _read_raster(p: Path) -> Radiograph:
    """PNG/JPEG (8 or 16 bit, grey or colour) via Pillow, divided by the dtype maximum."""
    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(im, dtype=np.int64)
                depth = 16
            else:
                pixels = np.asarray(im.convert("L"))
                depth = 8
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise XWinInputError(p, f"is truncated, corrupt or not a PNG/JPEG image ({e})") from None
    if pixels.min() < 0 or pixels.max() >= 2 ** depth:
        raise XWinInputError(p, f"pixel values outside the {depth}-bit range")
    meta = {"source": str(p), "format": file_format(p), "original_mode": mode,
            "original_dtype": f"uint{depth}", "bits_stored": str(depth)}
    return Radiograph(pixels.astype(np.float32) / (2 ** depth - 1), None, meta)


def _read_itk_2d(p: Path) -> Radiograph:
    """A 2D (or single-slice 3D) scalar image via SimpleITK; spacing (row, col) = ITK (y, x)."""
    if has_extension(p, (".nii", ".nii.gz")) and nifti_truncated(p):
        raise XWinInputError(p, "is truncated: the file holds fewer pixels than its header announces")
    try:
        image = sitk.ReadImage(str(p))
    except RuntimeError as e:
        raise XWinInputError(p, f"is truncated, corrupt or not an image file ({itk_reason(e)})") from None
    size = image.GetSize()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise XWinInputError(p, f"has {image.GetNumberOfComponentsPerPixel()} components per pixel; expected grey")
    if image.GetDimension() == 3 and size[2] == 1:
        image = image[:, :, 0]
    if image.GetDimension() != 2:
        raise XWinInputError(p, f"is a {image.GetDimension()}D image of size {size}, not a 2D radiograph")
    pixels = sitk.GetArrayFromImage(image)
    values = pixels / np.iinfo(pixels.dtype).max if np.issubdtype(pixels.dtype, np.integer) else pixels
    sx, sy = image.GetSpacing()
    meta = {"source": str(p), "format": file_format(p), "original_dtype": str(pixels.dtype)}
    meta.update({k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if k.startswith("xwin_")})
    return Radiograph(values.astype(np.float32), (sy, sx), meta)
