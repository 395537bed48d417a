"""Read a CT volume (HU, LPS mm) from a DICOM series folder or a NIfTI / NRRD / MetaImage file.

Geometry is taken as stored: ``Volume.direction`` is the file's direction cosines (no reorientation), ``spacing`` in
mm along i, j, k and ``origin`` the LPS position (mm) of voxel (0, 0, 0). Every problem with the input is reported as
an `XWinInputError` naming the file or folder.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from ..errors import XWinInputError
from .formats import ITK_EXTENSIONS, RASTER_EXTENSIONS, file_format, has_extension, is_dicom_file
from .image import Volume
from .validate import (
    MONOCHROME,
    ORTHONORMAL_TOL,
    check_budget,
    check_float32,
    check_not_multiframe_volume,
    check_orthonormal,
    check_regular_file,
    check_voxel_data,
    dicom_numbers,
    dicom_pixel_module,
    dicom_pixels,
    dicom_rescale,
    file_problem,
    itk_read,
    open_header,
    orientation_given,
    three_d,
    validate_header,
)

if TYPE_CHECKING:  # pydicom is imported by the DICOM series functions only (issue 15: NIfTI/NRRD start faster)
    import pydicom

_POSITION_TOL_MM = 0.01
_SPACING_TOL = 0.01
_HEADER_BYTES = 4096  # element values longer than this (pixel data) are not read with the headers
_IDENTITY = (("SeriesInstanceUID", "series"), ("PatientID", "patient"), ("StudyInstanceUID", "study"),
             ("FrameOfReferenceUID", "frame of reference"))


def read_ct(path: str | os.PathLike) -> Volume:
    """CT volume in HU from a DICOM series folder or a .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd file.

    The result maps voxel (i, j, k) to LPS mm exactly as the input does; ``array`` is float32 HU in ``[k, j, i]``.
    """
    p = Path(path)
    if not p.exists():
        raise XWinInputError(p, file_problem(p) or "does not exist")  # a link loop: "Too many levels of..."
    if p.is_dir():
        from .dicom_compat import lenient_values  # pydicom: not imported for a volume file (`xwin render` start-up)

        with lenient_values():
            return _checked_hu(p, _read_dicom_series(p))
    check_regular_file(p)  # a FIFO or a device would block or never end
    if not os.access(p, os.R_OK):
        raise XWinInputError(p, "cannot be read: permission denied")
    if has_extension(p, ITK_EXTENSIONS):
        return _checked_hu(p, _read_image_file(p))
    if has_extension(p, RASTER_EXTENSIONS):
        raise XWinInputError(p, "is a 2D PNG/JPEG image, not a 3D CT volume")
    if is_dicom_file(p):
        raise XWinInputError(p, "is a single DICOM file; pass the folder that holds the whole CT series")
    if has_extension(p, (".dcm", ".dicom")):
        raise XWinInputError(p, "is not a valid DICOM file (no DICM marker): truncated or corrupt")
    raise XWinInputError(p, "unknown file type: expected a DICOM series folder or " + ", ".join(ITK_EXTENSIONS))


HU_RANGE = (-32768.0, 65535.0)  # what any CT stores (16 bits, signed or not, slope 1): beyond, not HU


def _checked_hu(p: Path, volume: Volume) -> Volume:
    """``volume`` when its values are finite HU within `HU_RANGE` (a scaling gone wrong — slope 1e30 — or a map of
    something else is refused: its DRRs are white and an export would clip it without a word)."""
    lo, hi = float(volume.array.min()), float(volume.array.max())  # finite: `Volume` refuses NaN and inf
    if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
        raise XWinInputError(p, f"voxel values span {lo:g} … {hi:g}, beyond any CT's range ({HU_RANGE[0]:g} … "
                                f"{HU_RANGE[1]:g} HU): a wrong rescale slope or intercept, or not a CT in HU")
    return volume


NO_ORIENTATION = "not in the file: read in ITK's default frame (i→L, j→P, k→S); left and right may be swapped"


def _read_image_file(p: Path) -> Volume:
    """NIfTI / NRRD / MetaImage via SimpleITK, once `validate` has passed its header (no voxel read before)."""
    reader = open_header(p)
    validate_header(p, reader)
    check_voxel_data(p, reader)
    image = itk_read(p, three_d(reader).Execute, "is truncated or corrupt")
    view = sitk.GetArrayViewFromImage(image)  # shares ITK's buffer
    if view.dtype == np.float64:
        check_float32(p, view, "voxel values")
    array = view.astype(np.float32)  # one copy
    meta = {"source": str(p), "format": file_format(p)}
    if not orientation_given(p):
        meta["orientation"] = NO_ORIENTATION
    return Volume(array, np.array(image.GetSpacing()), np.array(image.GetOrigin()),
                  np.array(image.GetDirection()).reshape(3, 3), meta)


def _read_dicom_series(folder: Path) -> Volume:
    """One CT series from a folder (not recursive): headers and pixels read and checked with pydicom.

    Slices are sorted by ImagePositionPatient projected on the slice normal (row × column cosines). Geometry comes
    from the headers: i along the rows (column index), j down the columns, k along the normal; HU = slope·v + intercept
    with each slice's own RescaleSlope/RescaleIntercept.
    """
    headers = _series_headers(folder)
    ordered, spacing, origin, direction = _series_geometry(folder, headers)
    first = ordered[0][1]
    rows, cols, n = int(first.Rows), int(first.Columns), len(ordered)
    check_budget(folder, f"{n} slices of {rows} x {cols} pixels", n * rows * cols * 4, n * rows * cols * 4)
    array = None  # allocated once the first slice's pixel data has matched its Rows x Columns
    for k, (f, header) in enumerate(ordered):
        slope, intercept = dicom_rescale(f, header)
        pixels = dicom_pixels(f, _read_slice(f))
        photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip()
        if pixels.ndim != 2 or photometric not in MONOCHROME:
            raise XWinInputError(f, f"PhotometricInterpretation is {photometric or '(empty)'} with "
                                    f"{header.SamplesPerPixel} sample(s) per pixel; a CT slice holds one grey value "
                                    "(HU) per pixel (MONOCHROME1 or MONOCHROME2)")
        hu = pixels * slope + intercept
        check_float32(f, hu, "HU values (RescaleSlope x stored value + RescaleIntercept)")
        if array is None:
            array = np.empty((n, rows, cols), np.float32)
        array[k] = hu
    assert array is not None  # a series holds at least one slice
    meta = {"source": str(folder), "format": "DICOM series", "modality": str(first.get("Modality", "")),
            "series_uid": str(first.get("SeriesInstanceUID", "")), "patient_id": str(first.get("PatientID", "")),
            "slices": str(n)}
    return Volume(array, spacing, origin, direction, meta)


def _read_slice(f: Path) -> pydicom.Dataset:
    """The whole file, its pixel data read on first use (`dicom_pixels` checks its declared length first); pydicom's
    warnings are dropped: `dicom_pixels` says what is wrong."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(f, defer_size=_HEADER_BYTES)
        except OSError as e:
            raise XWinInputError(f, f"cannot be read: {e.strerror or e}") from None
        except Exception as e:  # pydicom raises many types for damaged files
            raise XWinInputError(f, f"is a truncated or corrupt DICOM file ({type(e).__name__}: {e})") from None


def _series_headers(folder: Path) -> list[tuple[Path, pydicom.Dataset]]:
    """(file, header) of every DICOM image in ``folder``; exactly one CT series or an XWinInputError.

    One series means one SeriesInstanceUID, PatientID, StudyInstanceUID and FrameOfReferenceUID: a file that differs
    from the others is named. Entries that are neither files nor folders (FIFOs, sockets, devices) are refused
    without being opened.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        entries = sorted(f for f in folder.iterdir() if not f.name.startswith("."))
    except OSError as e:
        raise XWinInputError(folder, f"cannot be read: {e.strerror or e}") from None
    files = []
    for f in entries:
        problem = file_problem(f)
        if problem is None:
            files.append(f)
        elif not f.is_dir() and problem != "does not exist":  # a dangling link holds no slice: skipped
            raise XWinInputError(f, problem)
    if not files:
        raise XWinInputError(folder, "is an empty folder: no DICOM files (subfolders are not searched)")
    headers: list[tuple[Path, pydicom.Dataset]] = []
    for f in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid values are refused below, by name
            try:
                ds = pydicom.dcmread(f, defer_size=_HEADER_BYTES)
            except InvalidDicomError:
                if _dicom_named(f):  # a slice damaged or emptied, not some other file beside the series
                    raise XWinInputError(f, "is empty (0 bytes) where a DICOM slice is expected" if f.stat().st_size
                                         == 0 else "is named like a DICOM slice but is not a DICOM file (no DICM "
                                         "marker): truncated or corrupt") from None
                continue
            except OSError as e:
                raise XWinInputError(f, f"cannot be read: {e.strerror or e}") from None
            except Exception as e:  # pydicom raises many types for damaged headers
                raise XWinInputError(f, f"is a truncated or corrupt DICOM file ({type(e).__name__}: {e})") from None
        if "Rows" in ds:
            headers.append((f, ds))
        elif _image_sop_class(ds):
            raise XWinInputError(f, "is a truncated or corrupt DICOM file: its header ends before the image "
                                    "attributes")
    if not headers:
        raise XWinInputError(folder, f"contains no DICOM images among its {len(files)} files (subfolders are not "
                                     "searched)")
    for keyword, what in _IDENTITY:
        values = Counter(str(ds.get(keyword, "")) for _, ds in headers)
        if len(values) > 1:
            common = values.most_common(1)[0][0]
            f = next(f for f, ds in headers if str(ds.get(keyword, "")) != common)
            listing = ", ".join(f"{v or '(none)'} ({n} files)" for v, n in values.most_common(3))
            listing += ", ..." if len(values) > 3 else ""
            raise XWinInputError(f, f"mixed series: {len(values)} {keyword}s in the folder ({listing}): this file "
                                    f"belongs to another {what}; put one series per folder")
    seen: dict[str, Path] = {}
    for f, header in headers:  # one image stored twice under two names (with other positions: a damaged series)
        uid = str(header.get("SOPInstanceUID", "") or "").strip()
        if uid and seen.setdefault(uid, f) != f:
            raise XWinInputError(f, f"SOPInstanceUID {uid[:64]} is also that of {seen[uid].name}: two files claim to "
                                    "be the same image (a copy, or a damaged series)")
    other = [(f, str(ds.get("Modality", "unknown"))) for f, ds in headers if str(ds.get("Modality", "")) != "CT"]
    if other:  # the folder when no file is CT, else the first file that is not
        raise XWinInputError(folder if len(other) == len(headers) else other[0][0],
                             f"modality is {other[0][1]}, not CT")
    check_not_multiframe_volume(*headers[0])  # a whole series in one file
    if len(headers) == 1:
        raise XWinInputError(folder, f"holds a single 2D slice ({headers[0][0].name}); a CT volume needs at least 2")
    return headers


def _series_geometry(folder: Path, headers: list[tuple[Path, pydicom.Dataset]]):
    """Sorted (file, header) list, spacing (i, j, k) mm, origin LPS mm, direction (columns i, j, k) of a series.

    Every header is checked first: ImagePositionPatient 3 finite numbers, ImageOrientationPatient two unit vectors
    at right angles (`ORTHONORMAL_TOL`, as for every volume format), PixelSpacing 2 positive numbers, a usable
    RescaleSlope/RescaleIntercept and consistent pixel attributes.
    """
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        missing = [f.name for f, ds in headers if tag not in ds]
        if missing:
            raise XWinInputError(folder, f"{tag} is missing in {len(missing)} files (e.g. {missing[0]})")
    positions, iop, pixel = [], [], []
    for f, ds in headers:
        positions.append(dicom_numbers(f, ds, "ImagePositionPatient", 3))
        iop.append(_orientation(f, ds))
        pixel.append(dicom_numbers(f, ds, "PixelSpacing", 2, positive=True))  # (between rows, between columns)
        dicom_rescale(f, ds)
        dicom_pixel_module(f, ds)
    f0, ds0 = headers[0]
    for (f, ds), cosines, spacing in zip(headers[1:], iop[1:], pixel[1:]):
        if not np.allclose(cosines, iop[0], atol=1e-4):
            raise XWinInputError(folder, f"inconsistent orientation: ImageOrientationPatient of {f.name} differs "
                                         f"from {f0.name}")
        if not np.allclose(spacing, pixel[0]):
            raise XWinInputError(folder, f"inconsistent PixelSpacing: {f.name} differs from {f0.name}")
        for tag in ("Rows", "Columns"):
            if int(ds[tag].value) != int(ds0[tag].value):
                raise XWinInputError(folder, f"inconsistent {tag}: {f.name} differs from {f0.name}")
    row, col = iop[0][:3], iop[0][3:]
    normal = np.cross(row, col)
    with np.errstate(over="ignore", invalid="ignore"):  # positions ~1e308 apart: refused (spacing), no warning
        ipp = np.array(positions)
        order = np.argsort(ipp @ normal, kind="stable")
        ordered, ipp = [headers[n] for n in order], ipp[order]
        along = ipp @ normal
        steps = np.diff(along)
        names = [f.name for f, _ in ordered]
        if np.min(steps) < _POSITION_TOL_MM:
            n = int(np.argmin(steps))
            raise XWinInputError(folder, f"duplicate slice position: {names[n]} and {names[n + 1]} are at the same "
                                         "place")
        step = float(np.median(steps))
        tol = max(_POSITION_TOL_MM, _SPACING_TOL * step)
        bad = np.flatnonzero(np.abs(steps - step) > tol)
        if bad.size:
            n = int(bad[0])
            gap = float(steps[n])
            if np.isfinite(gap / step) and abs(gap / step - round(gap / step)) * step <= tol and round(gap / step) >= 2:
                problem = f"missing slices: gap of {gap:.3f} mm ({round(gap / step) - 1} slice(s) missing)"
            else:
                problem = f"uneven slice spacing: {gap:.3f} mm"
            raise XWinInputError(folder, f"{problem} between {names[n]} and {names[n + 1]}; the other slices are "
                                         f"{step:.3f} mm apart")
        shear = np.abs((ipp - ipp[0]) @ np.stack([row, col], 1)).max()
        if shear > tol:
            raise XWinInputError(folder, f"slices are sheared (gantry tilt?): positions drift {shear:.3f} mm "
                                         "in-plane")
        # The slices are even (checked against the median gap above); the grid's step is their extent over the
        # gaps, so that the first and last slices sit where their headers put them: positions rounded to 0.01 mm
        # (0.625 mm slices written as 0.63 or 0.62) make the median gap 0.63, 1 mm off at slice 200 (SimpleITK/GDCM
        # take the extent too). A series holds at least 2 slices (`_headers`).
        step = float((along[-1] - along[0]) / (len(along) - 1))
    spacing = np.array([pixel[0][1], pixel[0][0], step])
    return ordered, spacing, ipp[0], np.stack([row, col, normal], axis=1)


def _orientation(f: Path, ds: pydicom.Dataset) -> np.ndarray:
    """ImageOrientationPatient as (row cosines, column cosines), each made exactly unit length once checked."""
    cosines = dicom_numbers(f, ds, "ImageOrientationPatient", 6).reshape(2, 3)
    norms = np.linalg.norm(cosines, axis=1)
    if np.any(np.abs(norms - 1) > ORTHONORMAL_TOL):
        raise XWinInputError(f, f"ImageOrientationPatient must hold two unit vectors, got lengths "
                                f"{norms[0]:.6g} and {norms[1]:.6g}")
    check_orthonormal(f, cosines.T, "ImageOrientationPatient row and column cosines")
    return (cosines / norms[:, None]).ravel()


def _dicom_named(f: Path) -> bool:
    """A name that only a DICOM slice would have: .dcm, .dicom or .ima (any case), or no suffix and no bytes."""
    suffix = f.suffix.lower()
    return suffix in (".dcm", ".dicom", ".ima") or (not suffix and f.stat().st_size == 0)


def _image_sop_class(ds: pydicom.Dataset) -> bool:
    """True for an image storage object (or one whose header is too short to say), False for DICOMDIR, SR..."""
    sop = ds.file_meta.get("MediaStorageSOPClassUID") if hasattr(ds, "file_meta") else None
    return sop is None or "Image Storage" in sop.name
