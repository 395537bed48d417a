"""File-type helpers shared by the readers: known extensions, DICOM sniffing, readable SimpleITK errors."""
from __future__ import annotations

import gzip
import io
import math
import struct
from pathlib import Path

ITK_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
RASTER_EXTENSIONS = (".png", ".jpg", ".jpeg")


def has_extension(path: Path, extensions: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(extensions)


def is_dicom_file(path: Path) -> bool:
    """True when the file carries the DICOM Part 10 marker ('DICM' after the 128-byte preamble)."""
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def itk_reason(error: RuntimeError) -> str:
    """The readable last part of a SimpleITK/ITK error message (drops source-file locations)."""
    lines = str(error).strip().splitlines()
    text = lines[-1] if lines else "unknown error"
    for marker in ("ERROR:", "Description:"):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip()


def file_format(path: Path) -> str:
    """'NII.GZ', 'NRRD', 'PNG'...: the known extension ``path`` ends with, upper case, without the dot."""
    name = path.name.lower()
    return next((ext[1:].upper() for ext in ITK_EXTENSIONS + RASTER_EXTENSIONS if name.endswith(ext)), "")


def nifti_layout(path: Path) -> tuple[int, int, int, int, str, int] | None:
    """(vox_offset, bytes after it, bytes the header declares, bytes of one k slice, byte order, datatype) of a
    .nii/.nii.gz; None when the header cannot be read or the gzip stream is cut short or damaged (CRC, length).

    Decompresses no further than a slice past the declared data (what tells a longer stream apart): a small
    .nii.gz of gigabytes of zeros after its voxels is refused without inflating them all."""
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
            header = f.read(540)
            parsed = _nifti_fields(header)
            if parsed is None:
                return None
            offset, declared, slice_bytes, order, datatype = parsed
            compressed = isinstance(f, gzip.GzipFile)
            length = f.seek(offset + declared + max(slice_bytes, 1) if compressed else 0,
                            io.SEEK_SET if compressed else io.SEEK_END)
    except (EOFError, OSError):
        return None
    return offset, length - offset, declared, slice_bytes, order, datatype


def _nifti_fields(header: bytes) -> tuple[int, int, int, str, int] | None:
    """(vox_offset, declared bytes, bytes of one k slice, byte order, datatype) of a NIfTI-1/2 header, or None."""
    for order in "<>":
        if len(header) < 348:
            return None
        size = struct.unpack(order + "i", header[:4])[0]
        if size == 348:  # NIfTI-1: dim int16[8] @40, datatype, bitpix int16 @70, @72, vox_offset float32 @108
            dim = struct.unpack(order + "8h", header[40:56])
            datatype, bitpix = struct.unpack(order + "2h", header[70:74])
            offset = struct.unpack(order + "f", header[108:112])[0]
        elif size == 540 and len(header) == 540:  # NIfTI-2: datatype, bitpix int16 @12, dim int64[8] @16, vox_offset
            datatype, bitpix = struct.unpack(order + "2h", header[12:16])
            dim = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
        else:
            continue
        if not 1 <= dim[0] <= 7 or not math.isfinite(offset):
            return None
        shape = dim[1 : dim[0] + 1]
        declared = math.prod(shape) * bitpix // 8
        return int(offset), declared, math.prod(shape[:2]) * bitpix // 8, order, datatype
    return None
