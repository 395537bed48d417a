"""Read a chest radiograph as a `Radiograph`: float32 ``[row, col]`` in [0, 1], bone bright and air dark.

DICOM (any transfer syntax pydicom can decode, incl. JPEG baseline and JPEG 2000), PNG/JPEG (Pillow), and 2D
NRRD/MetaImage/NIfTI files such as XWin's own DRRs (SimpleITK).
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import cast

import numpy as np
import pydicom
import SimpleITK as sitk
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from ..errors import XWinInputError
from .dicom_compat import apply_modality_lut, apply_voi_lut, read_little_endian
from .formats import ITK_EXTENSIONS, RASTER_EXTENSIONS, file_format, has_extension
from .image import Radiograph
from .validate import (
    MONOCHROME,
    check_budget,
    check_float32,
    check_jpeg_stream,
    check_memory,
    check_not_multiframe_volume,
    check_png,
    check_png_data,
    check_regular_file,
    check_voxel_data,
    dicom_numbers,
    dicom_pixels,
    dicom_rescale,
    itk_read,
    open_header,
)

CROSS_SECTIONAL = {"CT", "MR", "PT", "NM", "US"}
_LUMA = np.array([0.299, 0.587, 0.114])
_EXIF_ORIENTATION = 0x0112  # EXIF tag: how the stored pixels must be turned for display (1: as stored)
_HEADER_BYTES = 4096  # DICOM element values longer than this (pixel data) are read only once their size is checked


def read_radiograph(path: str | os.PathLike) -> Radiograph:
    """Radiograph in [0, 1] (bone bright) with pixel_spacing (row, col) in mm, or None when the file has none.

    DICOM: Modality LUT, then the first VOI LUT or window (else the full range), MONOCHROME1 inverted.
    PNG/JPEG: colour → luma, divided by the dtype maximum (255 or 65535). NRRD/MHA/NIfTI 2D: integers divided by their
    dtype maximum, floats kept as stored; spacing from the file. Anything but a regular file is refused unopened, the
    declared size is checked against the memory budget (``XWIN_MAX_VOLUME_GB``) before decoding, and an image whose
    pixels all have one value (blank, or flattened by its own VOI LUT) is refused.
    """
    p = Path(path)
    if p.is_dir():
        raise XWinInputError(p, "is a folder; a radiograph must be a single image file")
    check_regular_file(p)  # a FIFO or a device would block or never end
    if not os.access(p, os.R_OK):
        raise XWinInputError(p, "cannot be read: permission denied")
    if has_extension(p, RASTER_EXTENSIONS):
        image = _read_raster(p)
    elif has_extension(p, ITK_EXTENSIONS):
        image = _read_itk_2d(p)
    else:
        image = _read_dicom(p)
    if np.ptp(image.array) == 0:
        raise XWinInputError(p, f"is a blank image: every pixel has the value {float(image.array.flat[0]):g}")
    return image


def _read_dicom(p: Path) -> Radiograph:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # values XWin uses are checked below, by name
        try:
            ds = pydicom.dcmread(p, defer_size=_HEADER_BYTES)  # pixel data read once its size is checked
        except InvalidDicomError:
            raise XWinInputError(p, "is not a DICOM, PNG or JPEG file") from None
        except Exception as e:  # pydicom raises many types for damaged files
            raise XWinInputError(p, f"is a truncated or corrupt DICOM file ({type(e).__name__}: {e})") from None
    modality = str(ds.get("Modality", ""))
    if modality in CROSS_SECTIONAL:
        check_not_multiframe_volume(p, ds)
        raise XWinInputError(p, f"modality {modality} is a cross-sectional slice, not a radiograph (pass the "
                                "folder of a CT series to read it as a volume)")
    pixels = dicom_pixels(p, ds)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric in MONOCHROME:
        if np.ptp(pixels) == 0:
            raise XWinInputError(p, f"is a blank image: every stored pixel value is {pixels.flat[0]}")
        image = _display_values(_modality_values(pixels, ds, p), ds, p)
        if photometric == "MONOCHROME1":
            image = 1.0 - image
    elif pixels.ndim == 3 and pixels.shape[-1] == 3:  # pydicom returns YBR data converted to RGB
        image = pixels.astype(np.float64) @ _LUMA / np.iinfo(pixels.dtype).max
    else:
        raise XWinInputError(p, f"unsupported photometric interpretation {photometric!r}")
    meta: dict[str, object] = {
        "source": str(p), "format": "DICOM", "modality": modality, "photometric_interpretation": photometric,
        "view_position": str(ds.get("ViewPosition", "")), "original_dtype": str(pixels.dtype),
        "bits_stored": str(ds.get("BitsStored", "")), "transfer_syntax": str(ds.file_meta.TransferSyntaxUID.name)}
    distance = _source_detector_mm(ds)
    if distance is not None:
        meta["distance_source_to_detector_mm"] = distance
    return Radiograph(image.astype(np.float32), _dicom_spacing(p, ds), meta)


def _source_detector_mm(ds: pydicom.Dataset) -> float | None:
    """Distance Source to Detector (0018,1110) in mm when the film states a plausible one (100 mm to 10 m), else None:
    an optional attribute, so an unreadable value is ignored rather than refused."""
    try:
        value = float(ds.get("DistanceSourceToDetector"))
    except (TypeError, ValueError):
        return None
    return value if 100.0 <= value <= 10_000.0 else None


def _modality_values(pixels: np.ndarray, ds: pydicom.Dataset, p: Path) -> np.ndarray:
    """Stored values through the Modality LUT (table, or RescaleSlope/RescaleIntercept: finite, slope not 0)."""
    if ds.get("ModalityLUTSequence"):
        _check_lut(p, ds, ds.ModalityLUTSequence[0], "Modality LUT", (8, 16))
    else:
        dicom_rescale(p, ds)
    with np.errstate(over="ignore"):  # a huge slope: refused just below
        values = apply_modality_lut(pixels, ds)
    check_float32(p, values, "values out of the Modality LUT (RescaleSlope x stored value + RescaleIntercept)")
    return values


def _display_values(values: np.ndarray, ds: pydicom.Dataset, p: Path) -> np.ndarray:
    """Modality-LUT output → [0, 1] through the first VOI LUT / window, else the image's own min…max.

    The VOI LUT (or, without one, the first window) must be well formed: a LUT whose entry count matches its
    descriptor and that is not flat, a finite centre and a width of at least 1 (PS3.3 C.11.2.1.2). A broken one is
    refused, never replaced by a guess, and so is one that maps every pixel of this image to the same value. The VOI
    output range is found by passing the lowest and highest possible inputs through the same VOI transform.
    """
    if ds.get("VOILUTSequence"):
        _check_lut(p, ds, ds.VOILUTSequence[0], "VOI LUT", (8, *range(10, 17)))
        values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers (pydicom warns on floats)
    elif "WindowCenter" in ds or "WindowWidth" in ds:
        _check_window(p, ds)
    else:
        values = np.asarray(values, dtype=np.float64)
        return (values - values.min()) / np.ptp(values)
    with np.errstate(over="ignore"):  # SIGMOID far from its centre: exp overflows to inf, the output to its limit
        shown = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        lo, hi = np.asarray(apply_voi_lut(np.array([-(2**31), 2**31 - 1]), ds), dtype=np.float64)
    if np.ptp(shown) == 0:
        raise XWinInputError(p, f"its VOI LUT or window maps every pixel to the same value {shown.flat[0]:g}: the "
                                "film would be one flat grey")
    if hi != lo:
        return np.clip((shown - lo) / (hi - lo), 0.0, 1.0)
    return (shown - shown.min()) / np.ptp(shown)


def _check_lut(p: Path, ds: pydicom.Dataset, item: pydicom.Dataset, what: str, bits_allowed: tuple[int, ...]) -> None:
    """A Modality or VOI LUT item: LUTData holds as many entries as its LUTDescriptor announces (0 means 65536),
    of an allowed bit depth, and not all the same (that would flatten the film)."""
    if "LUTDescriptor" not in item or "LUTData" not in item:
        raise XWinInputError(p, f"{what} is broken: LUTDescriptor or LUTData is missing")
    count, _, bits = (int(v) for v in dicom_numbers(p, item, "LUTDescriptor", 3))
    count = count or 2**16
    if bits not in bits_allowed:
        raise XWinInputError(p, f"{what} is broken: {bits} bits per entry (allowed: "
                                f"{', '.join(map(str, bits_allowed))})")
    data = item.LUTData
    if isinstance(data, bytes):  # VR OW: 16-bit words in the dataset's byte order
        little = read_little_endian(ds)
        entries = np.frombuffer(data[: len(data) // 2 * 2], dtype="<u2" if little else ">u2")
    else:
        entries = np.atleast_1d(np.asarray(data, dtype=np.int64))
    if entries.size != count:
        raise XWinInputError(p, f"{what} is broken: LUTDescriptor announces {count} entries, LUTData holds "
                                f"{entries.size}")
    if np.ptp(entries) == 0:
        raise XWinInputError(p, f"{what} is broken: all its {count} entries are {int(entries[0])}")


def _check_window(p: Path, ds: pydicom.Dataset) -> None:
    """The first WindowCenter/WindowWidth pair (as many centres as widths): finite numbers, width at least 1 (above 0
    for LINEAR_EXACT and SIGMOID, the other VOI LUT functions of PS3.3 C.11.2.1.3)."""
    first, counts = {}, []
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword not in ds:
            raise XWinInputError(p, f"has a window without {keyword}")
        value = ds[keyword].value
        items = list(value) if isinstance(value, MultiValue) else [value]
        counts.append(len(items))
        try:
            first[keyword] = float(items[0])
        except (TypeError, ValueError, IndexError):
            first[keyword] = math.nan
        if not math.isfinite(first[keyword]):
            raise XWinInputError(p, f"{keyword} must be a finite number, got {value!r}")
    if counts[0] != counts[1]:  # PS3.3 C.11.2.1.2: the n-th centre goes with the n-th width
        raise XWinInputError(p, f"WindowCenter holds {counts[0]} value(s) but WindowWidth {counts[1]}: its windows "
                                "cannot be paired")
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise XWinInputError(p, f"VOILUTFunction {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID")
    exact = function != "LINEAR"
    if first["WindowWidth"] <= 0 or (not exact and first["WindowWidth"] < 1):
        raise XWinInputError(p, f"WindowWidth must be {'above 0' if exact else 'at least 1'}, got "
                                f"{first['WindowWidth']:g}")


def _dicom_spacing(p: Path, ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(row, col) mm from PixelSpacing, else ImagerPixelSpacing; None when absent, empty or zero (``0\\0``: not
    known). Any other value must be two positive numbers (`dicom_numbers`): one XWin cannot read is refused, not
    taken for "not known"."""
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        if tag not in ds or not ds[tag].value or not np.any(dicom_numbers(p, ds, tag, 2)):
            continue
        return cast("tuple[float, float]", tuple(float(v) for v in dicom_numbers(p, ds, tag, 2, positive=True)))
    return None


def _read_raster(p: Path) -> Radiograph:
    """PNG/JPEG (8 or 16 bit, grey or colour) via Pillow, divided by the dtype maximum, turned as its EXIF
    Orientation says (a photo of a film: the stored pixels are sideways). Pillow reads a 16-bit PNG with colour or
    alpha at 8 bits: said in ``meta["decoder_warning"]``.

    The size the header declares is checked against the memory budget before anything is decoded; Pillow's own
    decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) applies as well, as an error instead of a warning. What
    Pillow warns of otherwise (damaged EXIF tags it skipped) goes into ``meta["decoder_warning"]`` (`xwin info` shows
    it), not onto stderr.
    """
    check_png(p)
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p, formats=("PNG", "JPEG")) as im:  # not TIFF, BMP... whatever the name says
                width, height = im.size
                decoded = width * height * len(im.getbands()) * (4 if im.mode[0] in "IF" else 1)
                check_budget(p, f"{width} x {height} pixels of mode {im.mode}", decoded,
                             decoded + width * height * 16)  # decoded, int64 or 8-bit grey, float32 result
                reduced = any(";16" in str(tile[3]) for tile in im.tile) and not im.mode.startswith("I")
                if im.format == "JPEG":
                    check_jpeg_stream(p, p.read_bytes())
                else:
                    check_png_data(p)
                im.load()
                mode = im.mode
                shown = im if im.getexif().get(_EXIF_ORIENTATION, 1) == 1 else ImageOps.exif_transpose(im)
                if mode in ("I;16", "I;16B", "I;16L", "I"):  # as every viewer shows it: EXIF orientation applied
                    pixels = np.asarray(shown, dtype=np.int64)
                    depth = 16
                else:
                    pixels = np.asarray(shown.convert("L"))
                    depth = 8
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise XWinInputError(p, f"declares too many pixels to decode safely (Pillow: {e})") from None
    except XWinInputError:  # the budget or the JPEG check: already one line naming the file
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise XWinInputError(p, f"is truncated, corrupt or not a PNG/JPEG image ({e})") from None
    if pixels.min() < 0 or pixels.max() >= 2 ** depth:
        raise XWinInputError(p, f"pixel values outside the {depth}-bit range")
    meta = {"source": str(p), "format": file_format(p), "original_mode": mode,
            "original_dtype": f"uint{depth}", "bits_stored": str(depth)}
    notes = [str(w.message) for w in warned]
    if reduced:  # Pillow decodes 16-bit grey+alpha and colour PNGs to 8 bits per channel
        notes.append("a 16-bit PNG with colour or alpha channels, read at 8 bits (save the film as 16-bit greyscale "
                     "PNG or DICOM to keep its depth)")
    if notes:
        meta["decoder_warning"] = "; ".join(dict.fromkeys(notes))
    return Radiograph(pixels.astype(np.float32) / (2 ** depth - 1), None, meta)


def _display_orientation(p: Path, pixels: np.ndarray, direction, spacing) -> tuple[np.ndarray, tuple[float, float]]:
    """``pixels`` (rows, cols) = ITK (j, i) and ``spacing`` (row, col) mm turned as the 2×2 ``direction`` says, so that
    columns run along +x (left to right on screen) and rows along +y (top to bottom), as every film XWin reads and
    writes (identity direction). Only axis flips and a transpose; oblique cosines are refused."""
    d = np.asarray(direction, dtype=np.float64).reshape(2, 2)  # columns: the physical direction of i and of j
    if np.allclose(np.abs(d), np.eye(2), atol=1e-6):
        signs = np.diag(d)
    elif np.allclose(np.abs(d), np.eye(2)[::-1], atol=1e-6):
        pixels, spacing, signs = pixels.T, spacing[::-1], np.array([d[0, 1], d[1, 0]])
    else:
        raise XWinInputError(p, f"its direction cosines {_cosines(d)} are oblique: a radiograph's rows and columns "
                                "must run along the image axes (resample it upright)")
    if signs[0] < 0:  # columns run right to left
        pixels = pixels[:, ::-1]
    if signs[1] < 0:  # rows run bottom to top
        pixels = pixels[::-1]
    return np.ascontiguousarray(pixels), (float(spacing[0]), float(spacing[1]))


def _cosines(d: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in d.T.ravel()) + ")"


def _read_itk_2d(p: Path) -> Radiograph:
    """A 2D (or single-slice 3D) scalar image via SimpleITK, turned upright as its direction says
    (`_display_orientation`); spacing (row, col) = ITK (y, x).

    The header passes the same checks as a CT file's (`open_header`: data files beside the header, raw fields) and
    its size the memory budget before any pixel is read."""
    reader = open_header(p)
    check_memory(p, reader.GetSize(), reader.GetPixelID(), reader.GetNumberOfComponents())
    check_voxel_data(p, reader, "pixels")
    image = itk_read(p, reader.Execute, "is truncated, corrupt or not an image file")
    size = image.GetSize()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise XWinInputError(p, f"has {image.GetNumberOfComponentsPerPixel()} components per pixel; expected grey")
    if image.GetDimension() == 3 and size[2] == 1:
        image = image[:, :, 0]
    if image.GetDimension() != 2:
        raise XWinInputError(p, f"is a {image.GetDimension()}D image of size {size}, not a 2D radiograph")
    pixels, (sy, sx) = _display_orientation(p, sitk.GetArrayFromImage(image), image.GetDirection(),
                                            image.GetSpacing()[::-1])
    if pixels.dtype == np.float64:
        check_float32(p, pixels, "pixel values")
    values = pixels / np.iinfo(pixels.dtype).max if np.issubdtype(pixels.dtype, np.integer) else pixels
    meta = {"source": str(p), "format": file_format(p), "original_dtype": str(pixels.dtype)}
    meta.update({k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if k.startswith("xwin_")})
    return Radiograph(values.astype(np.float32), (sy, sx), meta)
