"""Checks on a volume file (NIfTI, NRRD, MetaImage) before any voxel is read: one layer for every volume reader path.

`open_header` refuses anything that is not a regular file, checks the raw header fields that ITK would silently
repair or ignore (NIfTI pixdim, bitpix, qform, sform, scl_slope/scl_inter, vox_offset; NRRD spacings and space
fields; MetaImage element type, spacing, offset and matrix), refuses detached data files outside the header's folder
(and MetaImage slice-file lists of the wrong length), and then reads the header (never the voxels) with SimpleITK.
`validate_header` checks what SimpleITK reports against what XWin accepts: a 3D scalar grid, positive finite spacing,
a finite origin, orthonormal direction cosines (one tolerance, `ORTHONORMAL_TOL`, for every format) and a declared
size whose reading fits the memory budget (``XWIN_MAX_VOLUME_GB``, GiB, default 4); `check_voxel_data` then checks
that the data is all there as declared (NIfTI length, compressed MetaImage stream) and no more of it (a slice or more
beyond the declared size in a NIfTI, raw NRRD/MetaImage file, or a gzip NRRD stream: wrong sizes), and that float
NIfTI voxels are finite (ITK reads NaN as 0). `check_png` walks a PNG's chunks (CRCs, one frame, nothing after IEND),
`check_png_data` its image data (exactly the rows declared).
`itk_reading` is the state every SimpleITK read runs in: no ITK warnings, and whatever ITK's C/C++ libraries print
to stderr is captured instead of shown (the CLI's only output is its line). The DICOM checks (`dicom_numbers`,
`dicom_rescale`, `dicom_pixel_module`, `dicom_pixels`) serve the CT series and the radiograph readers alike: numbers
that are numbers, a usable rescale, a known transfer syntax, pixel data that matches its header and fits in its
file, a JPEG 2000 codestream whose structure is sound (`xwin.io.j2k`), and a decode without a complaint from
pydicom's decoder plugins, within the same memory budget. `check_float32`: values that XWin's float32 images cannot
hold are refused, not turned into ±inf.
"""
from __future__ import annotations

import gzip
import math
import os
import re
import stat
import struct
import sys
import tempfile
import threading
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import SimpleITK as sitk

from ..errors import XWinInputError
from .formats import has_extension, itk_reason, nifti_layout
from .j2k import CodestreamError, check_codestream

if TYPE_CHECKING:
    import pydicom

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")  # the grey-scale PhotometricInterpretations (PS3.3 C.7.6.3.1.2)
ORTHONORMAL_TOL = 1e-3  # max |cos| between two axes (0.057° off 90°); also the relative pixdim vs sform scale
MEMORY_ENV = "XWIN_MAX_VOLUME_GB"
DEFAULT_MEMORY_GB = 4.0
_MAX_HEADER_BYTES = 1 << 20  # NRRD / MetaImage text headers larger than this are not parsed further
_MAX_DATA_FILES = 100_000
_NIFTI = (".nii", ".nii.gz")
_NIFTI_BITS = {2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64,
               1536: 128, 1792: 128, 2048: 256, 2304: 32}  # NIfTI-1 datatype code: bits per voxel (nifti1.h)
_META_TYPES = {f"MET_{t}" for t in ("CHAR", "UCHAR", "SHORT", "USHORT", "INT", "UINT", "LONG", "ULONG", "LONG_LONG",
                                    "ULONG_LONG", "FLOAT", "DOUBLE")}  # numeric MetaIO element types (and _ARRAY)
_NRRD = (".nrrd", ".nhdr")
_META = (".mha", ".mhd")
_IMAGE_IO = ((_NIFTI, "NiftiImageIO"), (_NRRD, "NrrdImageIO"), (_META, "MetaImageIO"))
ITK_EXTENSIONS = _NIFTI + _NRRD + _META  # the formats SimpleITK reads and writes for XWin
_KINDS = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` (after symlinks) is not a regular file, or None. Only stats it: opening a FIFO or a device
    would block or stream forever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    except ValueError:  # os.stat refuses an embedded NUL, which no file name can hold
        return "its name holds a NUL character (\\0), which no file name can contain"
    if not stat.S_ISREG(mode):
        return f"is {_KINDS.get(stat.S_IFMT(mode), 'a special file')}, not a regular file"
    return None


def check_name_encoding(path: Path) -> None:
    """Refuse a path whose name is not valid UTF-8 (its undecodable bytes arrive as surrogates) before SimpleITK
    sees it: ITK cannot take such a name and aborts the process (std::logic_error, exit 134, no message)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise XWinInputError(path, "its name is not valid UTF-8: ITK cannot open or write such a name (rename it)") \
            from None


def check_regular_file(path: Path) -> None:
    """Refuse anything but a regular file before it is opened."""
    problem = file_problem(path)
    if problem:
        raise XWinInputError(path, problem)


class _Stray:
    """What ITK's libraries printed to stderr inside `itk_reading` (filled in when the block ends)."""
    text = ""


_lock = threading.Lock()
_readers = 0  # threads inside itk_reading: the first one saves ITK's global state, the last one restores it
_saved: dict = {}
_capturing = False


@contextmanager
def itk_reading() -> Iterator[_Stray]:
    """Run SimpleITK reads with ITK warnings off and, in the main thread, fd 2 captured; all restored afterwards.

    ITK_NIFTI_SFORM_PERMISSIVE is on meanwhile: XWin checks the sform itself (`ORTHONORMAL_TOL`, one tolerance for
    every format) before ITK sees it, so ITK only has to accept float rounding it would otherwise refuse.
    """
    global _readers, _capturing
    stray = _Stray()
    with _lock:
        if _readers == 0:
            _saved["display"] = sitk.ProcessObject.GetGlobalWarningDisplay()
            _saved["permissive"] = os.environ.get("ITK_NIFTI_SFORM_PERMISSIVE")
            sitk.ProcessObject.SetGlobalWarningDisplay(False)
            os.environ["ITK_NIFTI_SFORM_PERMISSIVE"] = "1"
        _readers += 1
        capture = threading.current_thread() is threading.main_thread() and not _capturing
        _capturing = _capturing or capture
    saved_fd = sink = None
    try:
        if capture:
            try:
                sys.stderr.flush()
                saved_fd = os.dup(2)
                sink = tempfile.TemporaryFile()
                os.dup2(sink.fileno(), 2)
            except (OSError, ValueError, AttributeError):  # no usable fd 2 (some GUIs): nothing to protect
                pass
        yield stray
    finally:
        if saved_fd is not None:
            if sink is not None:
                os.dup2(saved_fd, 2)
            os.close(saved_fd)
        if sink is not None:
            sink.seek(0)
            stray.text = " ".join(sink.read(4096).decode("utf-8", "replace").split())
            sink.close()
        with _lock:
            _capturing = _capturing and not capture
            _readers -= 1
            if _readers == 0:
                sitk.ProcessObject.SetGlobalWarningDisplay(_saved["display"])
                if _saved["permissive"] is None:
                    os.environ.pop("ITK_NIFTI_SFORM_PERMISSIVE", None)
                else:
                    os.environ["ITK_NIFTI_SFORM_PERMISSIVE"] = _saved["permissive"]


def open_header(path: Path) -> sitk.ImageFileReader:
    """A SimpleITK reader whose header (only) has been read, after the raw checks of this module."""
    check_regular_file(path)
    if has_extension(path, _NIFTI):
        _check_nifti(path)
    elif has_extension(path, _NRRD):
        _check_nrrd(path)
    elif has_extension(path, _META):
        _check_metaimage(path)
    check_name_encoding(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    io = next((name for extensions, name in _IMAGE_IO if has_extension(path, extensions)), None)
    if io:  # ITK finds MetaImage by a lower-case suffix only: X.MHA would be "no reader"
        reader.SetImageIO(io)
    itk_read(path, reader.ReadImageInformation, "is truncated, corrupt or not an image file")
    return reader


def itk_read(path: Path, call, problem: str):
    """``call()`` (a SimpleITK read) under `itk_reading`; its failure becomes one `XWinInputError` naming ``path``:
    ``problem`` and the readable cause (`reason`)."""
    error = None
    with itk_reading() as stray:
        try:
            return call()
        except RuntimeError as e:
            error = e
    raise XWinInputError(path, f"{problem} ({reason(error, stray)})")


def reason(error: RuntimeError, stray: _Stray) -> str:
    """The readable cause of a failed SimpleITK read: ITK's message, plus what its libraries printed."""
    text = itk_reason(error)
    if not stray.text or stray.text in text:
        return text
    if text.startswith("Reason:"):  # only a stale errno (e.g. MetaIO): what the library printed says more
        return stray.text[:300]
    return f"{text}; {stray.text[:300]}"


def validate_header(path: Path, reader: sitk.ImageFileReader) -> None:
    """What SimpleITK read from the header must be a 3D scalar CT grid (trailing axes of one voxel allowed: NRRD and
    MetaImage keep them, `three_d` drops them) with sane geometry that fits in memory."""
    size, dim = reader.GetSize(), reader.GetDimension()
    if dim > 3 and max(size[3:]) > 1:
        raise XWinInputError(path, f"is a {dim}D image (size {size}); XWin needs a single 3D CT volume")
    if dim < 3 or min(size[:3]) < 2:
        raise XWinInputError(path, f"is a 2D image (size {size}), not a 3D CT volume")
    if reader.GetNumberOfComponents() != 1:
        raise XWinInputError(path, f"has {reader.GetNumberOfComponents()} components per voxel (vector or colour "
                                   "image); a CT needs one HU value per voxel")
    spacing = np.array(reader.GetSpacing()[:3], dtype=float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise XWinInputError(path, f"voxel spacing must be positive, got {_fmt(spacing)} mm")
    if not np.all(np.isfinite(reader.GetOrigin()[:3])):
        raise XWinInputError(path, f"origin is not finite: {_fmt(reader.GetOrigin()[:3])}")
    axes = np.array(reader.GetDirection(), dtype=float).reshape(dim, dim)[:3, :3]
    check_orthonormal(path, axes, "direction cosines")
    check_memory(path, size, reader.GetPixelID(), reader.GetNumberOfComponents())


def three_d(reader: sitk.ImageFileReader) -> sitk.ImageFileReader:
    """``reader`` set to read the 3D grid alone of a header that `validate_header` passed with trailing axes of one
    voxel (a NRRD or MetaImage of size (x, y, z, 1)); ITK's NIfTI reader drops them itself."""
    if reader.GetDimension() > 3:
        reader.SetExtractSize([*reader.GetSize()[:3], *[0] * (reader.GetDimension() - 3)])
    return reader


def check_orthonormal(path: Path, axes: np.ndarray, what: str) -> None:
    """The columns of ``axes`` (one per grid axis, any length) must be at right angles within `ORTHONORMAL_TOL`."""
    if not np.all(np.isfinite(axes)):
        raise XWinInputError(path, f"{what} are not finite: {_fmt(axes.T.ravel())}")
    norms = np.linalg.norm(axes, axis=0)
    if np.any(norms == 0):
        raise XWinInputError(path, f"{what}: axis {'ijk'[int(np.argmin(norms))]} has length 0")
    unit = axes / norms
    cos = unit.T @ unit - np.eye(axes.shape[1])
    a, b = np.unravel_index(int(np.argmax(np.abs(cos))), cos.shape)
    if abs(cos[a, b]) > ORTHONORMAL_TOL:
        angle = math.degrees(math.acos(float(np.clip(cos[a, b], -1.0, 1.0))))
        raise XWinInputError(path, f"{what} are not orthonormal: axes {'ijk'[a]} and {'ijk'[b]} are {angle:.3f}° "
                                   f"apart (tolerance {math.degrees(ORTHONORMAL_TOL):.3f}° off 90°); a sheared grid "
                                   "(gantry tilt?) must be resampled first")


def memory_budget() -> float:
    """Bytes XWin may spend reading one volume: ``XWIN_MAX_VOLUME_GB`` GiB (default 4)."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if not text:
        return DEFAULT_MEMORY_GB * 2**30
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise XWinInputError(None, f"{MEMORY_ENV} must be a positive number of GiB, got {text!r}")
    return value * 2**30


def _voxel_bytes(pixel_id: int, components: int) -> int:
    """Bytes per voxel of a SimpleITK pixel type with ``components`` components."""
    name = sitk.GetPixelIDValueAsString(pixel_id)
    bits = re.search(r"(\d+)-bit", name)
    return (int(bits.group(1)) // 8 if bits else 8) * (2 if "complex" in name else 1) * max(components, 1)


def check_memory(path: Path, size, pixel_id: int, components: int = 1) -> None:
    """Refuse a declared grid whose reading would need more than the budget (checked before any voxel is read).

    Reading holds the file's buffer (NIfTI: twice, nifti_clib's and ITK's) and the float32 HU copy at once.
    """
    name = sitk.GetPixelIDValueAsString(pixel_id)
    nbytes = _voxel_bytes(pixel_id, components)
    voxels = math.prod(int(s) for s in size)
    check_budget(path, f"{' x '.join(str(int(s)) for s in size)} voxels of {name}", voxels * nbytes,
                 voxels * (2 * nbytes + 4))


def check_budget(path: Path, declared: str, data_bytes: float, need: float) -> None:
    """Refuse a read of ``data_bytes`` of declared data that needs ``need`` bytes of memory beyond the budget."""
    budget = memory_budget()
    if need > budget:
        raise XWinInputError(path, f"declares {declared} ({data_bytes / 2**30:.1f} GiB); reading it needs about "
                                   f"{need / 2**30:.1f} GiB of memory, more than the {budget / 2**30:g} GiB allowed "
                                   f"(set {MEMORY_ENV} to raise the limit)")


def check_voxel_data(path: Path, reader: sitk.ImageFileReader, what: str = "voxels") -> None:
    """Once the header passed and its size fits the budget, before ITK reads the data: it must all be there as
    declared, which ITK does not check (it zero-fills or reads leftovers without a word): a NIfTI file holds every
    voxel its header announces, and the zlib stream of a compressed MetaImage inflates to exactly the declared bytes
    (streamed, never held; in the header file, CompressedDataSize must say where it ends)."""
    if has_extension(path, _NIFTI):
        _check_nifti_data(path, what)
    if has_extension(path, _NRRD):
        _check_nrrd_data(path, reader, what)
    if not has_extension(path, _META):
        return
    fields, _ = _metaimage_fields(path)
    if fields.get("compresseddata", "").lower() not in ("true", "1"):
        _check_metaimage_raw(path, fields, reader, what)
        return
    name = fields.get("elementdatafile", "")
    if name.upper() == "LOCAL" and "compresseddatasize" not in fields:  # MetaIO fails to inflate it, reads garbage
        raise XWinInputError(path, "is corrupt: CompressedData = True without CompressedDataSize, which MetaIO needs "
                                   "to inflate voxel data stored in the header file (LOCAL)")
    if name.upper() == "LOCAL":
        with open(path, "rb") as f:
            head = f.read(_MAX_HEADER_BYTES)
        line = re.search(rb"^[ \t]*ElementDataFile[ \t]*=[^\n]*\n", head, re.IGNORECASE | re.MULTILINE)
        data, offset = path, line.end() if line else len(head)
    elif len(name.split()) == 1:
        data, offset = path.parent / name, 0
    else:
        return  # a LIST or pattern of compressed files: MetaIO's own checks only
    declared = math.prod(reader.GetSize()) * _voxel_bytes(reader.GetPixelID(), reader.GetNumberOfComponents())
    try:
        size = int(fields["compresseddatasize"]) if "compresseddatasize" in fields else None
    except ValueError:
        size = -1
    if size is not None and size < 0:
        raise XWinInputError(path, f"is corrupt: CompressedDataSize is {fields['compresseddatasize']!r}, not a "
                                   "number of bytes")
    inflated, complete, error = _inflate(data, offset, size, declared)
    if error or not complete or inflated != declared:
        cause = (f"zlib: {error}" if error else f"it ends after {inflated} bytes" if not complete
                 else f"it inflates to {'more than ' if inflated > declared else ''}{inflated} bytes")
        raise XWinInputError(path, f"is truncated or corrupt: its compressed voxel data does not inflate to the "
                                   f"{declared} bytes the header declares ({cause})")


def _excess(path: Path, available: int, declared: int, slice_bytes: int, what: str, unit: str = "bytes") -> None:
    """Data beyond what the header declares, by a slice or more, means the header's sizes are wrong (or the file
    holds more than one image): ITK would read the first part without a word. Less than a slice is left alone
    (padding)."""
    if available - declared >= max(slice_bytes, 1):
        raise XWinInputError(path, f"holds {available} {unit} of {what} where its header declares {declared}: the "
                                   "header's sizes do not describe the data (or the file holds more than one image)")


def _count_text_values(path: Path, offset: int, limit: int) -> int:
    """Numbers (separated by white space or commas) in ``path`` from ``offset``, streamed; stops past ``limit``."""
    count, inside = 0, False
    separators = bytes.maketrans(b",", b" ")
    with open(path, "rb") as f:
        f.seek(offset)
        while count <= limit:
            chunk = f.read(1 << 20).translate(separators)
            if not chunk:
                break
            count += len(chunk.split()) - (inside and not chunk[:1].isspace())  # a number cut by the chunk border
            inside = not chunk[-1:].isspace()
    return count


_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _check_nifti_data(path: Path, what: str) -> None:
    """Exactly the data the header declares: not less (ITK would zero-fill it; a gzip stream cut short or damaged
    counts as truncated), not more by a slice (see `_excess`), and no NaN/inf among float voxels: ITK's NIfTI reader
    turns them into 0 without a word (streamed: never the whole file in memory)."""
    layout = nifti_layout(path)
    if layout is None and path.name.lower().endswith(".gz"):
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                raise XWinInputError(path, "is named .gz but is not gzip-compressed (a plain .nii renamed?)")
    if layout is None or layout[1] < layout[2]:
        raise XWinInputError(path, f"is truncated: the file holds fewer {what} than its header announces")
    offset, available, declared, slice_bytes, order, datatype = layout
    _excess(path, available, declared, slice_bytes, what)
    if datatype not in _NIFTI_FLOATS:
        return
    dtype = np.dtype(order + _NIFTI_FLOATS[datatype])
    bad, left = 0, declared
    with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
        f.seek(offset)
        while left > 0:
            chunk = f.read(min(left, 1 << 24))
            if not chunk:
                break
            left -= len(chunk)
            values = np.frombuffer(chunk[: len(chunk) // dtype.itemsize * dtype.itemsize], dtype)
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise XWinInputError(path, f"{bad} {what} are NaN or infinite (ITK would read them as 0)")


def _nrrd_data_start(path: Path) -> int | None:
    """Byte offset of the data attached to a NRRD header (after its first blank line), None when there is none."""
    with open(path, "rb") as f:
        head = f.read(_MAX_HEADER_BYTES)
    match = re.search(rb"\r?\n\r?\n", head)
    return match.end() if match else None


def _check_nrrd_data(path: Path, reader: sitk.ImageFileReader, what: str) -> None:
    """Raw or gzip NRRD data (attached, or one detached file) must hold what the header declares: no more raw bytes
    (`_excess`), a gzip stream that inflates to exactly the declared bytes and nothing but gzip after it. Headers
    with line or byte skips are left to teem."""
    fields, _ = _nrrd_fields(path)
    if fields is None:
        return
    encoding = fields.get("encoding", "").lower()
    skips = [fields.get(k, "0").strip() for k in ("line skip", "lineskip", "byte skip", "byteskip")]
    if encoding not in ("raw", "gzip", "gz", "ascii", "text", "txt") or any(s != "0" for s in skips):
        return
    data = fields.get("data file", fields.get("datafile"))
    if data is None:
        start = _nrrd_data_start(path)
        if start is None:
            return
        source, offset = path, start
    elif len(data.split()) == 1 and data.split()[0].upper() != "LIST":
        source, offset = path.parent / data, 0
    else:
        return
    size = reader.GetSize()
    declared = math.prod(size) * _voxel_bytes(reader.GetPixelID(), reader.GetNumberOfComponents())
    if encoding == "raw":
        _excess(path, os.path.getsize(source) - offset, declared, declared // max(size[-1], 1), what)
        return
    if encoding in ("ascii", "text", "txt"):  # teem reads the values it needs and ignores the rest
        values = math.prod(size) * reader.GetNumberOfComponents()
        slice_values = values // max(size[-1], 1)
        _excess(path, _count_text_values(source, offset, values + slice_values), values, slice_values, what,
                "values")
        return
    inflated, junk, error = _inflate_members(source, offset, declared)
    if error or junk or inflated > declared:
        cause = (f"zlib: {error}" if error else f"{junk} bytes that are not gzip data follow the stream" if junk
                 else f"it inflates to more than the {declared} bytes the header declares")
        raise XWinInputError(path, f"is corrupt: its gzip voxel data does not match the header ({cause})")


def _inflate_members(path: Path, offset: int, limit: int) -> tuple[int, int, str]:
    """(bytes inflated, stopping past ``limit``; bytes after the last gzip member that are not gzip; zlib's error
    or '') of the gzip members from ``offset`` of ``path`` to its end."""
    total = 0
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            pending = f.read(1 << 20)
            while pending and total <= limit:
                stream = zlib.decompressobj(31)
                while not stream.eof and total <= limit:
                    chunk = stream.unconsumed_tail or pending
                    pending = b""
                    if not chunk:
                        chunk = f.read(1 << 20)
                        if not chunk:
                            return total, 0, ""  # cut short: teem says how much it got
                    total += len(stream.decompress(chunk, 1 << 20))
                if not stream.eof:
                    break
                pending = stream.unused_data + (f.read(1 << 20) if len(stream.unused_data) < 2 else b"")
                if pending.strip(b"\0\n\r\t ") and not pending.startswith(b"\x1f\x8b"):
                    rest = len(pending) + (os.path.getsize(path) - f.tell())
                    return total, rest, ""
                if not pending.startswith(b"\x1f\x8b"):
                    break
    except zlib.error as e:
        return total, 0, str(e)
    return total, 0, ""


def _check_metaimage_raw(path: Path, fields: dict[str, str], reader: sitk.ImageFileReader, what: str) -> None:
    """Uncompressed MetaImage data (LOCAL, or one data file without HeaderSize) holds no more than declared."""
    name = fields.get("elementdatafile", "")
    if fields.get("headersize", "0").strip() != "0" or fields.get("binarydata", "true").lower() in ("false", "0"):
        return
    if name.upper() == "LOCAL":
        with open(path, "rb") as f:
            head = f.read(_MAX_HEADER_BYTES)
        line = re.search(rb"^[ \t]*ElementDataFile[ \t]*=[^\n]*\n", head, re.IGNORECASE | re.MULTILINE)
        if line is None:
            return
        source, offset = path, line.end()
    elif len(name.split()) == 1 and name.upper() != "LIST":
        source, offset = path.parent / name, 0
    else:
        return  # a LIST or pattern of slice files: their count is checked (`_check_slice_files`)
    size = reader.GetSize()
    declared = math.prod(size) * _voxel_bytes(reader.GetPixelID(), reader.GetNumberOfComponents())
    _excess(path, os.path.getsize(source) - offset, declared, declared // max(size[-1], 1), what)


def _inflate(path: Path, offset: int, compressed: int | None, limit: int) -> tuple[int, bool, str]:
    """(bytes inflated, stopping past ``limit``; whether the zlib/gzip stream ended; zlib's error or '') of the
    ``compressed`` bytes (None: to the end of the file) from ``offset`` of ``path``, read and inflated in chunks."""
    stream = zlib.decompressobj(47)  # zlib or gzip header, as MetaIO
    total, left = 0, compressed
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while not stream.eof and total <= limit:
                chunk = stream.unconsumed_tail
                if not chunk:
                    chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
                    if not chunk:
                        break
                    left = None if left is None else left - len(chunk)
                total += len(stream.decompress(chunk, 1 << 20))
    except zlib.error as e:
        return total, False, str(e)
    return total, stream.eof, ""


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in np.ravel(values)) + ")"


# --- NIfTI-1 -------------------------------------------------------------------------------------------------------

def _nifti_header(path: Path) -> bytes:
    """The 348-byte header and the 4 extension bytes after it, decompressed as a stream (never more); b"" when they
    cannot be read (ITK says why)."""
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as f:
            return f.read(352)
    except (OSError, EOFError, zlib.error):
        return b""


def _nifti_byte_order(header: bytes) -> str | None:
    """'<' or '>' for a NIfTI-1 header (sizeof_hdr 348 in that byte order), None for anything else."""
    return next((o for o in "<>" if len(header) >= 348 and struct.unpack(o + "i", header[:4])[0] == 348), None)


def orientation_given(path: Path) -> bool:
    """Whether a volume file says how its axes lie in the patient. A NIfTI with qform_code and sform_code 0 and a NRRD
    without space directions do not: ITK then reads them in its default frame (i→L, j→P, k→S), which may mirror
    them. MetaImage's default (no TransformMatrix) is that frame by the format's definition."""
    if has_extension(path, _NIFTI):
        h = _nifti_header(path)
        order = _nifti_byte_order(h)
        return order is None or struct.unpack_from(order + "2h", h, 252) != (0, 0)
    if has_extension(path, _NRRD):
        fields, _ = _nrrd_fields(path)
        return fields is None or "space directions" in fields
    return True


def _check_nifti(path: Path) -> None:
    """NIfTI-1 fields that ITK replaces or ignores without a word (NIfTI-2 and non-NIfTI data are left to ITK)."""
    h = _nifti_header(path)
    if len(h) >= 12 and h[4:8] == b"n+2\0" and 540 in struct.unpack("<i", h[:4]) + struct.unpack(">i", h[:4]):
        raise XWinInputError(path, "is a NIfTI-2 file, which XWin's reader (ITK's NIfTI-1 library) cannot read; "
                                   "save it as NIfTI-1, NRRD or MetaImage")
    order = _nifti_byte_order(h)
    if order is None:
        return

    def get(fmt: str, offset: int):
        return struct.unpack_from(order + fmt, h, offset)

    dim = get("8h", 40)
    if not 1 <= dim[0] <= 7 or min(dim[1 : dim[0] + 1]) < 1:
        raise XWinInputError(path, f"is corrupt: NIfTI dim is {dim}")
    pixdim = np.array(get("8f", 76), dtype=float)
    spatial = min(dim[0], 3)
    if not np.all(np.isfinite(pixdim[1 : spatial + 1])) or np.any(pixdim[1 : spatial + 1] <= 0):
        raise XWinInputError(path, f"voxel spacing (NIfTI pixdim) must be positive and finite, got "
                                   f"{_fmt(pixdim[1 : spatial + 1])} mm")
    if get("B", 123)[0] & 0x07 == 1 and np.max(pixdim[1 : spatial + 1]) >= 0.05:  # xyzt_units: metres
        raise XWinInputError(path, f"NIfTI xyzt_units says metres, which makes pixdim {_fmt(pixdim[1 : spatial + 1])} "
                                   f"voxels of {_fmt(pixdim[1 : spatial + 1] * 1000)} mm: the numbers look like "
                                   "millimetres; set the header's spatial units to mm (xyzt_units 2)")
    datatype, bitpix = get("2h", 70)
    if datatype in _NIFTI_BITS and bitpix != _NIFTI_BITS[datatype]:  # nifti_clib reads datatype's size, not bitpix
        raise XWinInputError(path, f"is corrupt: NIfTI bitpix is {bitpix}, but datatype {datatype} has "
                                   f"{_NIFTI_BITS[datatype]} bits per voxel")
    (vox_offset,) = get("f", 108)
    if not math.isfinite(vox_offset) or vox_offset < 0 or vox_offset != int(vox_offset):  # nifti_clib: int(352.5)
        raise XWinInputError(path, f"is corrupt: NIfTI vox_offset is {vox_offset}, not a byte offset")
    if has_extension(path, _NIFTI) and h[344:348] != b"n+1\0":  # ITK reads it as Analyze 7.5: no orientation
        raise XWinInputError(path, f"is corrupt: NIfTI magic is {h[344:348]!r}, not b'n+1\\x00' (a single-file "
                                   "NIfTI-1); without it the header's orientation would be ignored")
    if h[344:348] == b"n+1\0" and vox_offset < 352:  # one file: ITK would read the header's last bytes as voxels
        raise XWinInputError(path, f"is corrupt: NIfTI vox_offset is {vox_offset:g}, inside the 352-byte header "
                                   "(the voxels of a .nii start at 352 or later)")
    if h[344:348] == b"n+1\0" and h[348:349] not in (b"", b"\0") and vox_offset < 352 + 16:
        # nifti_clib reads no extension then (none fits) and takes the extension's bytes for voxels
        raise XWinInputError(path, f"is corrupt: its NIfTI extension flag is set, but vox_offset {vox_offset:g} "
                                   "leaves no room for an extension before the voxels")
    slope, inter = get("2f", 112)
    if math.isinf(slope) or math.isinf(inter):
        raise XWinInputError(path, f"scaling must be finite: scl_slope {slope}, scl_inter {inter}")
    if (slope == 0 or math.isnan(slope)) and not (inter == 0 or math.isnan(inter)):
        # NIfTI: slope 0 (or nibabel's NaN) means "no scaling"; ITK still adds the intercept. Which did the writer mean?
        raise XWinInputError(path, f"ambiguous scaling: scl_slope is {slope} (no scaling in NIfTI) but scl_inter is "
                                   f"{inter}; the HU values cannot be known")
    if not math.isnan(slope) and math.isnan(inter):
        raise XWinInputError(path, f"scaling must be finite: scl_slope {slope}, scl_inter {inter}")
    qform_code, sform_code = get("2h", 252)
    if qform_code > 0:
        quatern, qoffset = np.array(get("3f", 256), dtype=float), np.array(get("3f", 268), dtype=float)
        if not np.all(np.isfinite(quatern)) or not np.all(np.isfinite(qoffset)):
            raise XWinInputError(path, f"NIfTI qform is not finite: quatern_bcd {_fmt(quatern)}, qoffset "
                                       f"{_fmt(qoffset)}")
        if float(quatern @ quatern) > 1 + ORTHONORMAL_TOL:
            raise XWinInputError(path, f"NIfTI qform is not a rotation: quatern_b² + c² + d² = "
                                       f"{float(quatern @ quatern):.4f} > 1")
    if sform_code > 0:
        srow = np.array(get("12f", 280), dtype=float).reshape(3, 4)
        if not np.all(np.isfinite(srow)):
            raise XWinInputError(path, f"NIfTI sform is not finite: srow {_fmt(srow)}")
        axes = srow[:, :spatial]
        check_orthonormal(path, axes, "NIfTI sform axes")
        norms, step = np.linalg.norm(axes, axis=0), pixdim[1 : spatial + 1]
        if np.any(np.abs(norms - step) > ORTHONORMAL_TOL * step):
            raise XWinInputError(path, f"voxel spacing is contradictory: NIfTI pixdim says {_fmt(step)} mm, the "
                                       f"sform {_fmt(norms)} mm")
        if qform_code == sform_code and spatial == 3:  # two placements in the same space: they must agree
            _check_qform_matches_sform(path, quatern, qoffset, pixdim, srow, qform_code)


def _check_qform_matches_sform(path: Path, quatern: np.ndarray, qoffset: np.ndarray, pixdim: np.ndarray,
                               srow: np.ndarray, code: int) -> None:
    """A qform and an sform of the same code place the grid in the same space: their axes must point the same way
    (`ORTHONORMAL_TOL`) and their origins lie within a tenth of a voxel. ITK takes one of them without a word;
    which one the writer meant cannot be known (a qform and an sform of different codes may differ: other spaces)."""
    b, c, d = quatern
    a = math.sqrt(max(0.0, 1.0 - float(b * b + c * c + d * d)))
    rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                         [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                         [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])  # nifti1.h
    rotation[:, 2] *= -1.0 if pixdim[0] < 0 else 1.0  # qfac
    unit = srow[:, :3] / np.linalg.norm(srow[:, :3], axis=0)
    turn = float(np.max(np.linalg.norm(unit - rotation, axis=0)))
    shift = float(np.linalg.norm(srow[:, 3] - qoffset))
    if turn > ORTHONORMAL_TOL or shift > 0.1 * float(np.min(pixdim[1:4])):
        angle = math.degrees(2 * math.asin(min(1.0, turn / 2)))
        raise XWinInputError(path, f"NIfTI qform and sform (both code {code}, the same space) disagree: their axes "
                                   f"differ by up to {angle:.3f}° and their origins by {shift:.3g} mm; which one "
                                   "places the CT cannot be known")


# --- NRRD and MetaImage text headers -------------------------------------------------------------------------------

def _header_lines(path: Path, last: re.Pattern) -> tuple[list[str], list[str]]:
    """(header lines up to and including the one matching ``last`` or a blank line, the lines after it that are not
    blank: file names of a LIST). Reads at most `_MAX_HEADER_BYTES`; stops at the first undecodable byte."""
    with open(path, "rb") as f:
        raw = f.read(_MAX_HEADER_BYTES)
    lines, rest = [], []
    chunks = raw.split(b"\n")
    for n, chunk in enumerate(chunks):
        line = chunk.decode("latin-1").rstrip("\r")
        if not line.strip() or last.match(line):
            if line.strip():
                lines.append(line)
            for more in chunks[n + 1 :]:
                name = more.decode("latin-1").strip()
                if not name or not name.isprintable():
                    break
                rest.append(name)
            return lines, rest
        lines.append(line)
    return lines, []


def _numbers(path: Path, field: str, text: str) -> np.ndarray:
    try:
        return np.array([float(t) for t in text.split()], dtype=float)
    except ValueError:
        raise XWinInputError(path, f"is corrupt: {field} is {text.strip()!r}") from None


def _nrrd_fields(path: Path) -> tuple[dict[str, str] | None, list[str]]:
    """(lower-case field: value of a NRRD header, None when not NRRD; the file names after ``data file: LIST``)."""
    lines, rest = _header_lines(path, re.compile(r"^data ?file\s*:\s*LIST\b"))
    if not lines or not lines[0].startswith("NRRD"):
        return None, rest
    fields = {}
    for line in lines[1:]:
        key, colon, value = line.partition(": ")
        if colon and not line.startswith("#"):
            fields[key.strip().lower()] = value.strip()
    return fields, rest


def _check_whole_sizes(path: Path, field: str, text: str | None) -> None:
    """A header's grid size must be whole numbers of voxels: the readers cut 4.5 to 4 without a word."""
    if text is not None and not all(re.fullmatch(r"\+?\d+", t) for t in text.split()):
        raise XWinInputError(path, f"is corrupt: {field} is {text!r}, not whole numbers of voxels")


def _check_nrrd(path: Path) -> None:
    fields, rest = _nrrd_fields(path)
    if fields is None:
        return  # not NRRD: ITK says why
    _check_whole_sizes(path, "NRRD sizes", fields.get("sizes"))
    kinds = fields.get("kinds", "").split()
    spatial = [n for n, kind in enumerate(kinds) if kind.lower() in ("domain", "space")] if kinds else None
    if "spacings" in fields:  # teem reads "nan" as "unknown" and ITK then says 1 mm
        spacings = _numbers(path, "spacings", fields["spacings"])
        on_grid = spacings if spatial is None else spacings[[n for n in spatial if n < spacings.size]]
        if not np.all(np.isfinite(on_grid)) or np.any(on_grid <= 0):
            raise XWinInputError(path, f"voxel spacing (NRRD spacings) must be positive and finite, got "
                                       f"{_fmt(spacings)} mm")
    ranges = [k for k in ("axis mins", "axismins", "axis maxs", "axismaxs") if k in fields]
    if ranges and "spacings" not in fields and "space directions" not in fields:  # ITK reads them as 1 mm voxels
        raise XWinInputError(path, f"gives its grid by NRRD {ranges[0]} only, which the reader ignores (it would "
                                   "read 1 mm voxels): give spacings, or space directions and a space origin")
    for key in ("space directions", "space origin"):
        if re.search(r"nan|inf", fields.get(key, ""), re.IGNORECASE):
            raise XWinInputError(path, f"NRRD {key} is not finite: {fields[key]}")
    vectors = fields.get("space directions", "").split()
    nones = [n for n, v in enumerate(vectors) if v.lower() == "none" and (spatial is None or n in spatial)]
    if nones:  # ITK would invent 1 mm and an axis for it
        raise XWinInputError(path, f"NRRD space directions give no vector ('none') for grid axis {nones[0] + 1}: "
                                   f"{fields['space directions']}")
    for key in ("space units", "units"):  # ITK ignores both: a "cm" grid would be read 10× too small
        given = fields.get(key, "")
        units = re.findall(r'"([^"]*)"', given) or given.split()  # quoted as the format says, or bare words
        if any(u.strip().lower() not in ("", "mm") for u in units):
            raise XWinInputError(path, f"NRRD {key} are {units}; XWin reads millimetres only")
    data = fields.get("data file", fields.get("datafile"))
    if data is not None:
        _check_data_files(path, _data_file_names(path, data, rest))


def _metaimage_fields(path: Path) -> tuple[dict[str, str], list[str]]:
    """(lower-case key: value of a MetaImage header, the file names listed after ``ElementDataFile = LIST``)."""
    lines, rest = _header_lines(path, re.compile(r"^\s*ElementDataFile\s*=", re.IGNORECASE))
    fields = {}
    for line in lines:
        key, eq, value = line.partition("=")
        if eq:
            fields[key.strip().lower()] = value.strip()
    return fields, rest


def _check_metaimage(path: Path) -> None:
    fields, rest = _metaimage_fields(path)
    if "elementdatafile" not in fields:
        return  # not a MetaImage header: ITK says why
    for key in ("elementbyteordermsb", "binarydatabyteordermsb", "binarydata", "compresseddata"):
        if key in fields and fields[key].lower() not in ("true", "false", "1", "0"):  # MetaIO takes it for False
            raise XWinInputError(path, f"is corrupt: MetaImage {key} is {fields[key]!r}, not True or False")
    _check_whole_sizes(path, "MetaImage DimSize", fields.get("dimsize"))  # MetaIO reads 6.5 as 6
    kind = fields.get("elementtype", "").upper()
    if kind and kind.removesuffix("_ARRAY") not in _META_TYPES:  # MetaIO reads MET_STRING & co. as bytes
        raise XWinInputError(path, f"ElementType {fields['elementtype']} is not a number type (MET_SHORT, "
                                   "MET_FLOAT...): no voxel values can be read from it")
    for key in ("elementspacing", "elementsize"):  # MetaIO reads "nan" as 0
        if key in fields:
            spacing = _numbers(path, key, fields[key])
            if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
                raise XWinInputError(path, f"voxel spacing (MetaImage {key}) must be positive and finite, got "
                                           f"{_fmt(spacing)} mm")
    for key, what in (("offset", "origin"), ("origin", "origin"), ("position", "origin"),
                      ("transformmatrix", "direction"), ("rotation", "direction"), ("orientation", "direction")):
        if key in fields and not np.all(np.isfinite(_numbers(path, key, fields[key]))):  # MetaIO: nan becomes 0
            raise XWinInputError(path, f"{what} (MetaImage {key}) is not finite: {fields[key]}")
    for key, neutral in (("elementtointensityfunctionslope", 1.0), ("elementtointensityfunctionoffset", 0.0)):
        if key in fields and not np.array_equal(_numbers(path, key, fields[key]), [neutral]):  # MetaIO ignores it
            raise XWinInputError(path, f"MetaImage {key} = {fields[key]}: a rescale of the stored values that the "
                                       "reader does not apply (they would be read unscaled): apply it to the data")
    _check_metaimage_counts(path, fields)
    data = fields["elementdatafile"]
    if data.upper() != "LOCAL":
        names = _data_file_names(path, data, rest)
        _check_data_files(path, names)
        _check_slice_files(path, fields, data, names)


def _check_metaimage_counts(path: Path, fields: dict[str, str]) -> None:
    """Every geometry field holds NDims values (NDims² for a matrix), Color and SequenceID four: MetaIO reads
    ``Offset = 0 0`` of a 3D image as origin (0, 0, 0) and a short ElementSpacing as spacing 1 without a word, and a
    short CenterOfRotation (or Color) swallows the next line's key as its missing value, losing that field (the
    spacing or the origin)."""
    try:
        ndims = int(fields.get("ndims", ""))
    except ValueError:
        return  # MetaIO refuses a header without a readable NDims itself
    for key, count in (("dimsize", ndims), ("elementspacing", ndims), ("elementsize", ndims), ("offset", ndims),
                       ("origin", ndims), ("position", ndims), ("transformmatrix", ndims * ndims),
                       ("rotation", ndims * ndims), ("orientation", ndims * ndims), ("centerofrotation", ndims),
                       ("color", 4), ("sequenceid", 4)):
        if key in fields and len(fields[key].split()) != count:
            raise XWinInputError(path, f"is corrupt: MetaImage {key} holds {len(fields[key].split())} value(s), "
                                       f"NDims = {ndims} needs {count}")


def _check_slice_files(path: Path, fields: dict[str, str], data: str, names: list[str]) -> None:
    """A MetaImage LIST or file pattern must name one file per slice (MetaIO reads too few without a word): as many
    as the DimSize axes above the files' own dimension (``LIST 2D``, the pattern's fifth field; default NDims - 1)."""
    tokens = data.split()
    if len(names) < 2 and not (tokens and tokens[0].upper() == "LIST"):
        return  # one data file: its length is checked by MetaIO
    sub = tokens[1] if tokens[0].upper() == "LIST" and len(tokens) > 1 else tokens[4] if len(tokens) > 4 else ""
    try:
        dims = [int(t) for t in fields.get("dimsize", "").split()]
        per_file = int(sub.upper().removesuffix("D")) if sub else len(dims) - 1
    except ValueError:
        return  # MetaIO refuses these itself
    needed = math.prod(dims[per_file:]) if 0 < per_file <= len(dims) else None
    if needed is not None and len(names) != needed:
        raise XWinInputError(path, f"data file {'LIST' if tokens[0].upper() == 'LIST' else 'pattern'} names "
                                   f"{len(names)} file(s), but DimSize {fields.get('dimsize')} in {per_file}D files "
                                   f"needs {needed}")


def _data_file_names(path: Path, value: str, listed: list[str]) -> list[str]:
    """Data files a detached header names: one file, ``LIST`` (names on the following lines) or a printf pattern
    ``fmt min max step [subdim]`` (NRRD and MetaIO agree on these three forms)."""
    tokens = value.split()
    if tokens and tokens[0].upper() == "LIST":
        if not listed:
            raise XWinInputError(path, "is corrupt: data file LIST names no files")
        return listed
    if len(tokens) >= 4 and "%" in tokens[0] and all(re.fullmatch(r"-?\d+", t) for t in tokens[1:4]):
        first, last, step = (int(t) for t in tokens[1:4])
        if step == 0 or (last - first) / step + 1 > _MAX_DATA_FILES:
            raise XWinInputError(path, f"is corrupt: data file pattern {value!r}")
        try:
            return [tokens[0] % n for n in range(first, last + (1 if step > 0 else -1), step)]
        except (TypeError, ValueError):
            raise XWinInputError(path, f"is corrupt: data file pattern {value!r}") from None
    return [value]


def _check_data_files(path: Path, names: list[str]) -> None:
    """Every data file must be a regular file inside the header's folder (after symlinks): a header must not make
    XWin read ../../etc/passwd, a device or a pipe as voxels."""
    folder = os.path.realpath(path.parent)
    for name in names:
        target = os.path.realpath(os.path.join(path.parent, name))
        if os.path.commonpath([folder, target]) != folder:
            raise XWinInputError(path, f"data file {name!r} is outside the header's folder ({target}); keep the "
                                       "voxel data beside its header")
        problem = file_problem(target)
        if problem:
            raise XWinInputError(path, f"data file {name!r} {problem}")


# --- DICOM images (CT slices and radiographs) ----------------------------------------------------------------------
# pydicom is imported inside these functions, where a dataset in hand means it is loaded already: the volume file
# checks above, and so `xwin render` of a NIfTI/NRRD CT, never import it (issue 15: a tenth of a second).

def dicom_numbers(path: Path, ds: pydicom.Dataset, keyword: str, count: int, positive: bool = False) -> np.ndarray:
    """The ``count`` finite numbers (positive ones with ``positive``) of a DICOM attribute, else an error naming the
    file: pydicom hands back text it cannot parse (``'abc'``) and any number of values unchanged."""
    from pydicom.multival import MultiValue

    try:
        value = ds[keyword].value
    except Exception as e:  # pydicom raises on a binary value of the wrong length for its VR (and more types)
        raise XWinInputError(path, f"{keyword} cannot be read: {' '.join(str(e).split())[:200]}") from None
    items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    shown = "\\".join(str(v) for v in items)
    try:
        numbers = np.array([float(v) for v in items], dtype=float)
    except (TypeError, ValueError):
        numbers = np.array([math.nan])
    if numbers.size != count or not np.all(np.isfinite(numbers)) or (positive and np.any(numbers <= 0)):
        kind = f"{count} {'positive ' if positive else ''}finite number{'s' if count > 1 else ''}"
        raise XWinInputError(path, f"{keyword} must be {kind}, got '{shown}'")
    return numbers


def dicom_rescale(path: Path, ds: pydicom.Dataset) -> tuple[float, float]:
    """(slope, intercept) of the Modality LUT (stored value → HU or output units); (1, 0) when absent.

    A slope of 0 would map every pixel to the intercept: refused, as are values that are not finite numbers."""
    slope = float(dicom_numbers(path, ds, "RescaleSlope", 1)[0]) if "RescaleSlope" in ds else 1.0
    intercept = float(dicom_numbers(path, ds, "RescaleIntercept", 1)[0]) if "RescaleIntercept" in ds else 0.0
    if slope == 0:
        raise XWinInputError(path, "RescaleSlope is 0: every pixel would have the value of RescaleIntercept")
    return slope, intercept


def check_not_multiframe_volume(path: Path, ds: pydicom.Dataset) -> None:
    """Refuse a multi-frame cross-sectional image (an Enhanced CT/MR object: a whole series in one file) with what to
    do: XWin reads classic series, one slice per file."""
    frames = str(ds.get("NumberOfFrames", "") or "").strip()
    if frames.isdigit() and int(frames) > 1:
        raise XWinInputError(path, f"is a multi-frame (Enhanced) {ds.get('Modality', '')} image of {frames} frames: "
                                   "XWin reads classic series, one slice per file (convert it to NIfTI with "
                                   "dcm2niix, or export it as classic slices)")


def dicom_pixel_module(path: Path, ds: pydicom.Dataset) -> dict[str, int]:
    """Rows, Columns, SamplesPerPixel, BitsAllocated, BitsStored, PixelRepresentation of a single-frame image,
    checked against each other (no pixel data is read)."""
    if "PixelData" not in ds:
        raise XWinInputError(path, "has no pixel data: truncated, or not an image object")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about a value that is not an IS: refused below, by name
        value = ds.get("NumberOfFrames")
    frames = "" if value is None else str(value).strip()
    try:
        count = int(frames or 1)
    except ValueError:
        count = 0
    if count < 1:  # 0 is no image at all (it was taken for "absent")
        raise XWinInputError(path, f"NumberOfFrames is {frames[:60]!r}, not a number of frames")
    if count != 1:
        raise XWinInputError(path, f"is multi-frame ({frames} frames); XWin reads single-frame images only")
    m = {}
    for keyword, allowed in (("Rows", None), ("Columns", None), ("SamplesPerPixel", (1, 3)),
                             ("BitsAllocated", (8, 16, 32)), ("BitsStored", None), ("PixelRepresentation", (0, 1))):
        if keyword not in ds:
            raise XWinInputError(path, f"{keyword} is missing")
        value = float(dicom_numbers(path, ds, keyword, 1)[0])
        if value != int(value) or value < (0 if keyword == "PixelRepresentation" else 1) or \
                (allowed and value not in allowed):
            raise XWinInputError(path, f"{keyword} is {ds[keyword].value}, expected "
                                       f"{' or '.join(map(str, allowed)) if allowed else 'a positive integer'}")
        m[keyword] = int(value)
    if m["BitsStored"] > m["BitsAllocated"]:
        raise XWinInputError(path, f"BitsStored ({m['BitsStored']}) is larger than BitsAllocated "
                                   f"({m['BitsAllocated']})")
    if "HighBit" in ds:  # absent (a Type 1 omission): readers take BitsStored - 1, as XWin does
        high = dicom_numbers(path, ds, "HighBit", 1)[0]
        if high != m["BitsStored"] - 1:
            raise XWinInputError(path, f"HighBit is {ds.HighBit}, but BitsStored = {m['BitsStored']} needs HighBit "
                                       f"{m['BitsStored'] - 1}: the stored bits are not where every reader takes "
                                       "them (low-order, from bit 0)")
    return m


def dicom_pixels(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """Stored values ``[row, col]`` (``[row, col, sample]`` for colour) of a single-frame DICOM image, checked.

    Native data must hold exactly Rows × Columns × SamplesPerPixel × BitsAllocated bits (plus one pad byte) and no
    value beyond BitsStored (readers mask those bits away silently); compressed data is decoded by pydicom's plugins,
    whose errors and warnings are refused, and must decode to Rows × Columns within BitsStored. The declared size is
    checked against the memory budget first.
    """
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, JPEGTransferSyntaxes

    from .dicom_compat import read_little_endian

    m = dicom_pixel_module(path, ds)
    rows, cols, samples, allocated = m["Rows"], m["Columns"], m["SamplesPerPixel"], m["BitsAllocated"]
    expected = rows * cols * samples * allocated // 8
    check_budget(path, f"{rows} x {cols} pixels of {samples} x {allocated} bits", expected,
                 expected + rows * cols * samples * 16)  # decoded buffer, a float64 and a float32 copy
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and not syntax.is_transfer_syntax:
        raise XWinInputError(path, f"TransferSyntaxUID {syntax} is not a transfer syntax XWin knows: its pixel data "
                                   "cannot be read")
    _check_declared_length(path, ds)
    native = syntax is None or not syntax.is_encapsulated
    if native:
        data = ds.PixelData or b""  # an empty element reads as None
        dims = f"Rows x Columns x SamplesPerPixel x BitsAllocated = {rows} x {cols} x {samples} x {allocated} bits"
        if len(data) < expected:
            raise XWinInputError(path, f"pixel data is truncated: {len(data)} bytes, but {dims} need {expected}")
        if len(data) > expected + expected % 2:
            raise XWinInputError(path, f"pixel data holds {len(data)} bytes, but {dims} make {expected}: the image "
                                       "size or bit depth in the header is wrong")
    if native and samples == 1:  # as stored: pydicom would mask the bits above BitsStored away
        little = read_little_endian(ds)
        dtype = np.dtype(f"{'<' if little else '>'}{'iu'[m['PixelRepresentation'] == 0]}{allocated // 8}")
        pixels = np.frombuffer(data, dtype, count=rows * cols).reshape(rows, cols)
    else:
        if syntax in JPEG2000TransferSyntaxes:
            check_j2k(path, ds, rows, cols, samples)
        elif syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
            check_jpeg_end(path, ds)
        pixels = _decoded(path, ds)
        shape = (rows, cols) if samples == 1 else (rows, cols, samples)
        if pixels.shape != shape:
            raise XWinInputError(path, f"pixel data decodes to {pixels.shape}, not Rows x Columns = {shape}")
    return check_bits_stored(path, pixels, m["BitsStored"], m["PixelRepresentation"])


def _check_declared_length(path: Path, ds: pydicom.Dataset) -> None:
    """Pixel data not read yet (deferred) must fit in the file: reading a declared 4 GiB would allocate it first."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from .dicom_compat import stored_element

    if getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) == DeflatedExplicitVRLittleEndian:
        return  # Deflated Explicit VR Little Endian: offsets are in the inflated stream, not the file
    raw = stored_element(ds, 0x7FE00010)
    length, start = getattr(raw, "length", None), getattr(raw, "value_tell", None)
    if getattr(raw, "value", b"") is not None or length in (None, 0xFFFFFFFF) or start is None:
        return
    size = os.path.getsize(path)
    if start + length > size:
        raise XWinInputError(path, f"pixel data is truncated: its header declares {length} bytes, the file ends "
                                   f"{size - start} bytes after its start")


def check_j2k(path: Path, ds: pydicom.Dataset, rows: int, cols: int, samples: int) -> None:
    """The JPEG 2000 codestream of a single-frame image must be sound (`xwin.io.j2k.check_codestream`: markers,
    segment and tile-part lengths, every tile, EOC at the end, no marker code inside the compressed data) and declare
    Rows x Columns x SamplesPerPixel, before it is decoded. Damage inside the compressed data that keeps all of these
    cannot be seen (see `xwin.io.j2k`)."""
    try:
        siz = check_codestream(_first_frame(path, ds))
    except CodestreamError as e:
        raise XWinInputError(path, f"pixel data cannot be decoded: the JPEG 2000 codestream is damaged: {e}") from None
    except (ValueError, struct.error) as e:
        raise XWinInputError(path, f"pixel data cannot be decoded: the encapsulated (compressed) pixel data is "
                                   f"damaged ({' '.join(str(e).split())[:200]})") from None
    if (siz.rows, siz.columns, siz.components) != (rows, cols, samples):
        raise XWinInputError(path, f"pixel data cannot be decoded as declared: its JPEG 2000 codestream holds "
                                   f"{siz.rows} x {siz.columns} pixels of {siz.components} component(s), but Rows x "
                                   f"Columns x SamplesPerPixel are {rows} x {cols} x {samples}")


def _first_frame(path: Path, ds: pydicom.Dataset) -> bytes:
    """The compressed bytes of a single-frame image's encapsulated pixel data."""
    from .dicom_compat import frames

    try:
        return next(frames(ds.PixelData, number_of_frames=1))
    except (ValueError, StopIteration, struct.error) as e:  # the encapsulation (items, offset table) is broken
        raise XWinInputError(path, f"pixel data cannot be decoded: the encapsulated (compressed) pixel data is "
                                   f"damaged ({' '.join(str(e).split())[:200]})") from None


def check_jpeg_end(path: Path, ds: pydicom.Dataset) -> None:
    """A JPEG or JPEG-LS frame must end with its EOI marker (0xFFD9; then at most padding): decoders fill a stream
    cut short with grey without a word. A JPEG frame must also pass `check_jpeg_stream`."""
    frame = _first_frame(path, ds)
    if not frame.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise XWinInputError(path, "pixel data cannot be decoded: its JPEG stream is cut short or damaged (it does "
                                   "not end with the EOI marker 0xFFD9)")
    if frame[:2] == b"\xff\xd8":
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        process = _jpeg_frame_marker(frame)
        allowed = _JPEG_FRAMES.get(syntax)
        if allowed is not None and process is not None and process not in allowed:
            raise XWinInputError(path, f"pixel data cannot be decoded: its JPEG frame is SOF{process - 0xC0}, which "
                                       f"transfer syntax {syntax} does not allow (SOF"
                                       + "/".join(str(m - 0xC0) for m in allowed) + "): the stream is damaged")
        check_jpeg_stream(path, frame)


_JPEG_FRAMES = {"1.2.840.10008.1.2.4.50": (0xC0,), "1.2.840.10008.1.2.4.51": (0xC0, 0xC1),  # Huffman, DCT
                "1.2.840.10008.1.2.4.57": (0xC3,), "1.2.840.10008.1.2.4.70": (0xC3,)}  # Huffman, lossless
# (PS3.5 A.4.1: DICOM's JPEG processes are Huffman-coded; SOF9–SOF15, arithmetic coding, belong to none of them)


def _jpeg_frame_marker(stream: bytes) -> int | None:
    """The SOFn marker (0xC0–0xCF but DHT 0xC4, JPG 0xC8, DAC 0xCC) of a JPEG stream's first frame, None if none."""
    at = 2
    while at + 4 <= len(stream) and stream[at] == 0xFF:
        marker = stream[at + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        if marker == 0xDA:  # the scan starts before any frame header: not a stream of ours to judge
            return None
        at += 2 + int.from_bytes(stream[at + 2:at + 4], "big")
    return None


JPEG_DECODER_TOLERANCE = 4  # grey levels two sound decoders of one 8-bit JPEG differ by at most (IDCT rounding: 1)


def check_jpeg_stream(path: Path, data: bytes) -> None:
    """An 8-bit greyscale JPEG stream decoded by two decoders (Pillow's libjpeg-turbo, pylibjpeg's libjpeg) must
    give the same image. JPEG carries no checksum: damaged entropy-coded data (a changed Huffman table, a baseline
    frame marked arithmetic-coded) decodes to noise without an error in one decoder, while the other stops or reads
    it differently. Colour and 12/16-bit streams, which Pillow does not decode alike, are left to the reader."""
    import io

    from PIL import Image

    try:
        from libjpeg import decode
    except ImportError:  # pylibjpeg-libjpeg is a dependency; without it this check is skipped
        return
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
            if im.mode != "L":
                return
            first = np.asarray(im, dtype=np.int16)
    except Exception:  # Pillow cannot read it: the reader that follows says why
        return
    try:
        second = np.asarray(decode(data))
    except Exception as e:  # libjpeg raises RuntimeError with its own error text
        raise XWinInputError(path, f"its JPEG data is damaged (libjpeg: {' '.join(str(e).split())[:200]})") from None
    if second.shape != first.shape:
        raise XWinInputError(path, f"its JPEG data is damaged: two decoders read {first.shape} and {second.shape}")
    apart = int(np.abs(first - second).max())
    if apart > JPEG_DECODER_TOLERANCE:
        raise XWinInputError(path, f"its JPEG data is damaged: two decoders read pixels up to {apart} grey levels "
                                   f"apart (sound data: at most {JPEG_DECODER_TOLERANCE})")


def _decoded(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """``ds.pixel_array``; what pydicom or its decoder plugin raises or warns about is an error naming the file."""
    error: Exception | str | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pixels = ds.pixel_array
        except Exception as e:  # pydicom and its decoder plugins raise many types
            error = e
    if error is None and caught:
        error = caught[0].message
    if error is not None:
        text = " ".join(str(error).split())
        raise XWinInputError(path, f"pixel data cannot be decoded: truncated or corrupt ({text[:300]})")
    return pixels


def check_bits_stored(path: Path, values: np.ndarray, bits_stored: int, signed: int) -> np.ndarray:
    """The stored values as numbers: each must fit in BitsStored bits (two's complement when PixelRepresentation is
    1). Signed values whose bits above HighBit are all zero (-1000 in 12 bits stored as 3096, not sign-extended) are
    sign-extended: PS3.5 §8.1.1 leaves the bits above HighBit unused, and readers mask them (Orthanc's
    DicomIntegerPixelAccessor.cpp, DCMTK). Anything else outside the range is refused: BitsStored is wrong."""
    lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    vmin, vmax = int(values.min()), int(values.max())
    if signed and values.dtype.kind == "i" and vmin >= 0 and hi < vmax < 2**bits_stored <= np.iinfo(values.dtype).max:
        return np.where(values > hi, values - 2**bits_stored, values).astype(values.dtype)
    if vmin < lo or vmax > hi:
        outside = int(np.count_nonzero((values < lo) | (values > hi)))
        raise XWinInputError(path, f"{outside} pixels hold values outside the BitsStored = {bits_stored} "
                                   f"{'signed' if signed else 'unsigned'} range {lo}…{hi} (found {vmin}…{vmax}): "
                                   "BitsStored does not describe the data")
    return values


def check_float32(path: Path, values: np.ndarray, what: str) -> None:
    """``values`` (float64) must fit XWin's float32 images: larger ones would become ±inf without a word."""
    beyond = np.abs(values) > np.finfo(np.float32).max
    if beyond.any():
        raise XWinInputError(path, f"{int(np.count_nonzero(beyond))} {what} lie beyond the float32 range (±3.4e38), "
                                   f"e.g. {float(values[beyond].flat[0]):g}")


# --- PNG -----------------------------------------------------------------------------------------------------------
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CRITICAL = (b"IHDR", b"PLTE", b"IDAT", b"IEND")  # upper-case first letter: critical (PNG 5.4)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type → samples per pixel (PNG 11.2.2)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_raw_bytes(width: int, height: int, depth: int, colour: int, interlace: int) -> int | None:
    """Bytes of the filtered scanlines a PNG's IHDR declares (a filter byte per row, Adam7 passes summed), or None
    for a colour type PNG does not define."""
    if colour not in _PNG_CHANNELS:
        return None
    bits = _PNG_CHANNELS[colour] * depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            total += h * (1 + -(-w * bits // 8))
    return total


def check_png_data(path: Path) -> None:
    """The image data of a PNG (after `check_png`, and after the decoded size passed the memory budget): its IDAT
    chunks must inflate to exactly the scanlines its IHDR declares, with nothing after the zlib stream. Pillow fills
    missing rows without a word and ignores what follows the stream. Inflated in bounded pieces, nothing kept."""
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return
        inflate, size, expected = zlib.decompressobj(), 0, None
        while True:
            head = f.read(8)
            if len(head) < 8:
                return  # `check_png` has refused a truncated file already
            length, kind = struct.unpack(">I", head[:4])[0], head[4:]
            body = f.read(length)
            f.read(4)
            if kind == b"IHDR" and len(body) == 13:
                width, height, depth, colour = struct.unpack(">IIBB", body[:10])
                expected = _png_raw_bytes(width, height, depth, colour, body[12])
            elif kind == b"IDAT" and expected is not None:
                try:
                    while body and not inflate.eof and size <= expected:
                        size += len(inflate.decompress(body, 1 << 22))
                        body = inflate.unconsumed_tail
                except zlib.error as exc:
                    raise XWinInputError(path, f"is corrupt: its PNG image data does not inflate ({exc})") from None
                if inflate.eof and (body or inflate.unused_data):
                    raise XWinInputError(path, "is corrupt: data follows the end of its PNG image stream")
                if size > expected:
                    raise XWinInputError(path, f"is corrupt: its PNG image data holds more than the {expected} bytes "
                                               "its header declares")
            elif kind == b"IEND":
                break
    if expected is not None and (size != expected or not inflate.eof):
        raise XWinInputError(path, f"is corrupt or truncated: its PNG image data holds {size} of the {expected} "
                                   "bytes its header declares (missing rows)")


def check_png(path: Path) -> None:
    """The chunks of a PNG, read in 1 MiB pieces before Pillow decodes it: IHDR first and only there, every CRC must
    match (Pillow does not check those of the image data, so a damaged byte that zlib still inflates would become
    wrong pixels), the file must end with IEND and nothing may follow it (Pillow reads a file cut between two chunks
    without a word), a critical chunk other than IHDR, PLTE, IDAT and IEND is refused (the PNG standard forbids showing
    such an image), and an animated PNG (acTL of more than one frame) is refused: a radiograph is one image."""
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return  # not a PNG (a JPEG, or something Pillow refuses)
        first = True
        while True:
            head = f.read(8)
            length, kind = (struct.unpack(">I", head[:4])[0], head[4:]) if len(head) == 8 else (0, b"")
            crc, left = zlib.crc32(kind), length
            body = b""
            while left > 0:
                piece = f.read(min(left, 1 << 20))
                if not piece:
                    break
                crc, left = zlib.crc32(piece, crc), left - len(piece)
                if kind == b"acTL" and not body:
                    body = piece
            stored = f.read(4)
            if len(head) < 8 or left > 0 or len(stored) < 4:
                raise XWinInputError(path, "is truncated: the PNG ends before its IEND chunk")
            name = kind.decode("latin-1")
            if struct.unpack(">I", stored)[0] != crc:
                raise XWinInputError(path, f"is corrupt: the CRC of its PNG chunk {name!r} does not match its data")
            if (kind == b"IHDR") != first:
                where = f"its first PNG chunk is {name!r}" if first else "it has a second IHDR chunk"
                raise XWinInputError(path, f"is corrupt: {where} (a PNG holds one IHDR, first)")
            first = False
            if not kind[0] & 0x20 and kind not in _PNG_CRITICAL:  # PNG: a decoder must refuse what it cannot read
                raise XWinInputError(path, f"is corrupt or not a standard PNG: unknown critical chunk {name!r} (a "
                                           "PNG reader must not show an image it cannot fully decode)")
            if kind == b"acTL" and len(body) >= 4 and struct.unpack(">I", body[:4])[0] > 1:
                raise XWinInputError(path, f"is an animated PNG of {struct.unpack('>I', body[:4])[0]} frames; a "
                                           "radiograph is a single image")
            if kind == b"IEND":
                extra = len(f.read(1 << 20))
                if extra:
                    raise XWinInputError(path, "is corrupt: data follows the PNG's end (IEND chunk)")
                return
