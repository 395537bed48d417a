"""A generated corpus of bad DICOM CT series and radiographs (issue 16), each run through the real CLI.

Every bad case must end in exit status 2 with exactly one line on stderr naming the culprit file (the slice, not
only its folder), no traceback, no warning, no new file anywhere, in bounded time — for `xwin info` and for a command
that writes (`render` for a CT, `reconstruct` for a radiograph; both read their input before anything else). Cases
that could hang or allocate (FIFOs, sockets, devices, decompression bombs) run in a subprocess with a timeout and an
address-space limit; the others call `xwin.cli.main` in this process. The real series and films in
../shared/data/dicom and values at the edge must still be read.
"""
from __future__ import annotations

import io
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit
from synthetic_dicom import ct_series, radiograph

from xwin.cli import main
from xwin.errors import XWinInputError
from xwin.io import read_ct, read_radiograph
from xwin.io.dicom_compat import frames
from xwin.sample_data import demo_cxr_path

pytestmark = pytest.mark.skipif(os.name != "posix", reason="FIFOs, sockets, /dev/zero and RLIMIT_AS are POSIX")

ADDRESS_SPACE = 2 << 30  # bytes: every subprocess run must stay within this much virtual memory
TIMEOUT_S = 30
MODEL_TIMEOUT_S = 300  # `reconstruct` loads torch and the model before it reads the radiograph (minutes on a busy CPU)


# --- CT series makers: each returns (path given to the CLI, path the error line must name) -----------------------

def _patch_bytes(path: Path, old: bytes, new: bytes) -> None:
    """Replace a placeholder value in the file by bytes pydicom would refuse to write (same length)."""
    data = path.read_bytes()
    assert len(old) == len(new) and data.count(old) == 1, (old, new)
    path.write_bytes(data.replace(old, new))


def series(folder: Path, edit=None, slices=(2,), raw: tuple[bytes, bytes] | None = None, **kw) -> tuple[Path, Path]:
    """A 5-slice 8×8 CT series (synthetic_dicom.ct_series) with ``edit(ds)`` applied to the given slices, then an
    optional raw byte patch of the first of them (the culprit; slice000 when every slice is wrong)."""
    files, _ = ct_series(folder / "ct", **kw)
    for k in slices if edit else ():
        ds = pydicom.dcmread(files[k])
        edit(ds)
        ds.save_as(files[k])
    if raw:
        _patch_bytes(files[slices[0]], *raw)
    return folder / "ct", files[slices[0] if slices else 0]


def _alone(made: tuple[Path, Path]) -> tuple[Path, Path]:
    """The series folder with only its culprit file left in it."""
    folder, culprit = made
    for f in folder.iterdir():
        if f != culprit:
            f.unlink()
    return folder, culprit


def one(**tags):
    """An edit that sets DICOM attributes (valid values only: pydicom refuses the rest)."""
    return lambda ds: [setattr(ds, k, v) for k, v in tags.items()]


def patched(tag: str, placeholder, old: bytes, new: bytes):
    """A maker whose culprit slice holds ``new`` where ``placeholder`` was written (text, NaN, wrong counts)."""
    return lambda d: series(d, one(**{tag: placeholder}), raw=(old, new))


def drop(*tags):
    return lambda ds: [delattr(ds, t) for t in tags]


def j2k_series(folder: Path, frame_edit=None, edit=None, slices=(2,)) -> tuple[Path, Path]:
    """A 5-slice 32×32 series compressed to JPEG 2000 (lossless); ``frame_edit(codestream)`` replaces the
    codestream of the given slices, ``edit(ds)`` their header."""
    files, _ = ct_series(folder / "ct", size=(32, 32))
    for n, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.compress(JPEG2000Lossless)
        if n in slices:
            if frame_edit:
                frame = frame_edit(next(frames(ds.PixelData, number_of_frames=1)))
                ds.PixelData = encapsulate([frame + b"\0" * (len(frame) % 2)])
            if edit:
                edit(ds)
        ds.save_as(f)
    return folder / "ct", files[slices[0] if slices else 0]


def _flip(frame: bytes, start: int, stop: int) -> bytes:
    return frame[:start] + bytes(b ^ 0xFF for b in frame[start:stop]) + frame[stop:]


# Damage inside a JPEG 2000 codestream that keeps its length (no truncation): offsets found from its markers.
# SIZ sits at offset 2: Xsiz at 8, Ysiz at 12, XTsiz at 24, YTsiz at 28; SOT + 6 is Psot, SOT + 10 TPsot.

def _put(frame: bytes, at: int, new: bytes) -> bytes:
    return frame[:at] + new + frame[at + len(new):]


def _sot(frame: bytes) -> int:
    return frame.index(b"\xff\x90\x00\x0a")


def _psot_plus(delta: int):
    return lambda f: _put(f, _sot(f) + 6, struct.pack(">I", struct.unpack_from(">I", f, _sot(f) + 6)[0] + delta))


def _marker_code_in_data(frame: bytes) -> bytes:
    """Two bytes in the middle of the compressed tile data replaced by 0xFFA5, a code the coder never writes."""
    return _put(frame, (frame.index(b"\xff\x93") + len(frame)) // 2, b"\xff\xa5")


def _renamed(old: bytes, new: bytes):
    return lambda f: _put(f, f.index(old), new)


def _sample_cr(path: Path, frame_edit) -> tuple[Path, Path]:
    """The repo's own JPEG 2000 CR (xwin.sample_data, 1841 x 1955) with its codestream edited by ``frame_edit``."""
    ds = pydicom.dcmread(demo_cxr_path())
    frame = frame_edit(next(frames(ds.PixelData, number_of_frames=1)))
    ds.PixelData = encapsulate([frame + b"\0" * (len(frame) % 2)])
    ds.save_as(path)
    return path, path


def _sheared(degrees: float) -> list[float]:
    t = np.deg2rad(degrees)
    return [1.0, 0.0, 0.0, float(np.sin(t)), float(np.cos(t)), 0.0]


# --- radiograph makers -------------------------------------------------------------------------------------------

RAMP = np.arange(64 * 64).reshape(64, 64) % 4000 + 100  # stored values 100…4099


def cr(path: Path, pixels=RAMP, raw: tuple[bytes, bytes] | None = None, edit=None, **tags) -> tuple[Path, Path]:
    """A 64×64 uncompressed CR (synthetic_dicom.radiograph) with tags set, then ``edit(ds)`` and a raw patch."""
    radiograph(path, pixels, **tags)
    if edit:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)
    if raw:
        _patch_bytes(path, *raw)
    return path, path


def voi_lut(descriptor, data, vr: str = "US") -> pydicom.Sequence:
    item = pydicom.Dataset()
    item.LUTDescriptor = list(descriptor)
    item.add_new("LUTData", vr, data if vr == "US" else np.asarray(data, "<u2").tobytes())
    return pydicom.Sequence([item])


def huge_cr(path: Path, rows: int, cols: int) -> tuple[Path, Path]:
    """A JPEG 2000 CR of 32×32 pixels whose header declares ``rows`` × ``cols``: a DICOM decompression bomb."""
    radiograph(path, RAMP[:32, :32])
    ds = pydicom.dcmread(path)
    ds.compress(JPEG2000Lossless)
    ds.Rows, ds.Columns = rows, cols
    ds.save_as(path)
    return path, path


def png_declaring(path: Path, width: int, height: int) -> tuple[Path, Path]:
    """A PNG of a few hundred bytes whose IHDR declares width × height 8-bit grey pixels (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(4096), 9))
                     + chunk(b"IEND", b""))
    return path, path


def jpeg_declaring(path: Path, width: int, height: int) -> tuple[Path, Path]:
    """A small JPEG whose SOF0 frame header is patched to declare width × height pixels."""
    Image.fromarray((RAMP % 256).astype(np.uint8)).save(path, quality=90)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    path.write_bytes(bytes(data))
    return path, path


def written(path: Path, data: bytes) -> tuple[Path, Path]:
    path.write_bytes(data)
    return path, path


def flat_image(path: Path, value: int = 128) -> tuple[Path, Path]:
    Image.fromarray(np.full((32, 40), value, np.uint8)).save(path)
    return path, path


def raster_as(path: Path, kind: str) -> tuple[Path, Path]:
    """A film saved as ``kind`` (TIFF, BMP...) under the PNG/JPEG name ``path``."""
    Image.fromarray((RAMP % 256).astype(np.uint8)).save(path, format=kind)
    return path, path


def slice_replaced(d: Path, data: bytes, name: str = "slice004.dcm") -> tuple[Path, Path]:
    """A sound series whose slice ``name`` is then overwritten by ``data`` (emptied, or not DICOM any more)."""
    folder, _ = series(d, slices=())
    (folder / name).write_bytes(data)
    return folder, folder / name


def noisy_png(path: Path, mode: str = "L") -> Path:
    rng = np.random.default_rng(3)
    values = rng.integers(0, 65535 if mode == "I;16" else 255, (64, 80))
    Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.uint8)).save(path)
    return path


def png_crc_flipped(path: Path) -> tuple[Path, Path]:
    """A 16-bit PNG whose IDAT CRC (only) is wrong: the data inflates, Pillow reads it without a word."""
    data = bytearray(noisy_png(path, "I;16").read_bytes())
    at = data.index(b"IDAT")
    data[at + 4 + struct.unpack(">I", data[at - 4:at])[0]] ^= 0xFF
    path.write_bytes(bytes(data))
    return path, path


def animated_png(path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    return path, path


def png_after_iend(path: Path) -> tuple[Path, Path]:
    body = zlib.compress(bytes(100))
    extra = struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body))
    path.write_bytes(noisy_png(path).read_bytes() + extra)
    return path, path


def nrrd_2d(path: Path, kind: str, values: np.ndarray, fields: str = "") -> tuple[Path, Path]:
    """A 2D NRRD film of ``values`` (C order) of NRRD type ``kind``."""
    shape = " ".join(map(str, values.shape[::-1]))
    header = f"NRRD0004\ntype: {kind}\ndimension: 2\nsizes: {shape}\nencoding: raw\nendian: little\n{fields}\n"
    path.write_bytes(header.encode() + values.tobytes())
    return path, path


def detached_2d(folder: Path, data_file: str) -> tuple[Path, Path]:
    (folder / "hdr").mkdir()
    header = folder / "hdr" / "cxr.nhdr"
    header.write_text(f"NRRD0004\ntype: uchar\ndimension: 2\nsizes: 4 4\nencoding: raw\ndata file: {data_file}\n")
    return header, header


# --- non-regular files -------------------------------------------------------------------------------------------

def fifo(path: Path) -> tuple[Path, Path]:
    os.mkfifo(path)
    return path, path


def unix_socket(path: Path) -> tuple[Path, Path]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the socket file stays
    return path, path


def device(path: Path, target: str = "/dev/zero") -> tuple[Path, Path]:
    os.symlink(target, path)
    return path, path


def colour_slice(ds: pydicom.Dataset) -> None:
    """An RGB slice whose pixel data has the size its header declares."""
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = ds.PixelData * 3


# the meta header's TransferSyntaxUID (Explicit VR Little Endian) and an unknown UID of the same length; a CT slice's
# and a 64×64 CR's PixelData element (OW) with its true length, and with 4294967280 bytes declared
TS_KNOWN, TS_UNKNOWN = b"1.2.840.10008.1.2.1\0", b"1.2.3.4.5.6.7.8.9.1\0"
PIXEL_DATA = b"\xe0\x7f\x10\x00OW\x00\x00"
CT_PIXEL_DATA = (PIXEL_DATA + (128).to_bytes(4, "little"), PIXEL_DATA + (0xFFFFFFF0).to_bytes(4, "little"))
CR_PIXEL_DATA = (PIXEL_DATA + (8192).to_bytes(4, "little"), PIXEL_DATA + (0xFFFFFFF0).to_bytes(4, "little"))


def series_with(folder: Path, special) -> tuple[Path, Path]:
    """A good series whose folder also holds a FIFO, socket or device named like a slice."""
    files, _ = ct_series(folder / "ct")
    return folder / "ct", special(folder / "ct" / "slice005.dcm")[0]


def same_sop_uid(d: Path) -> tuple[Path, Path]:
    """A series whose slice003 carries the SOPInstanceUID of slice001 (other position, other pixels)."""
    folder, _ = series(d, slices=())
    uid = pydicom.dcmread(folder / "slice001.dcm").SOPInstanceUID
    ds = pydicom.dcmread(folder / "slice003.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.save_as(folder / "slice003.dcm")
    return folder, folder / "slice003.dcm"


def as_arithmetic(jpeg: bytes) -> bytes:
    """A baseline JPEG whose frame marker says arithmetic coding (SOF0 → SOF9): its Huffman-coded data then decodes
    to noise in libjpeg-turbo (Pillow) without an error."""
    return jpeg.replace(b"\xff\xc0", b"\xff\xc9", 1)


def swapped_huffman(jpeg: bytes) -> bytes:
    """A JPEG whose AC Huffman table (its second DHT segment) has its first two symbols swapped: Pillow decodes the
    scan to noise without an error."""
    at = jpeg.index(b"\xff\xc4", jpeg.index(b"\xff\xc4") + 2) + 4 + 17
    return jpeg[:at] + jpeg[at + 1:at + 2] + jpeg[at:at + 1] + jpeg[at + 2:]


def film_jpeg(size: int = 128, quality: int = 90) -> bytes:
    """A size × size 8-bit film-like JPEG: a smooth ramp with noise."""
    ramp = np.add.outer(np.arange(size), np.arange(size)) + np.random.default_rng(0).normal(0, 8, (size, size))
    buf = io.BytesIO()
    Image.fromarray(np.clip(ramp, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def jpeg_cr(path: Path, cut: bool, arithmetic: bool = False) -> tuple[Path, Path]:
    """An 8-bit CR stored as JPEG Baseline; ``cut``: its JPEG stream cut in half (the decoders fill the rest with
    grey, without a word); ``arithmetic``: its frame marked arithmetic-coded (`as_arithmetic`)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    frame = buf.getvalue()[: len(buf.getvalue()) // 2] if cut else buf.getvalue()
    frame = as_arithmetic(film_jpeg(64)) if arithmetic else frame

    def edit(ds):
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([frame + b"\0" * (len(frame) % 2)])
    return cr(path, edit=edit)


def png_with_chunk(path: Path, kind: bytes) -> tuple[Path, Path]:
    """A film PNG with a chunk of type ``kind`` (valid CRC) before its image data."""
    data = noisy_png(path).read_bytes()
    at = data.index(b"IDAT") - 4
    chunk = struct.pack(">I", 5) + kind + b"hello" + struct.pack(">I", zlib.crc32(kind + b"hello"))
    path.write_bytes(data[:at] + chunk + data[at:])
    return path, path


def png_rechunked(path: Path, edit) -> tuple[Path, Path]:
    """A film PNG whose list of (type, data) chunks ``edit`` rewrites (CRCs recomputed)."""
    data, chunks, at = noisy_png(path).read_bytes(), [], 8
    while at < len(data):
        n = struct.unpack(">I", data[at:at + 4])[0]
        chunks.append((data[at + 4:at + 8], data[at + 8:at + 8 + n]))
        at += 12 + n
    path.write_bytes(data[:8] + b"".join(struct.pack(">I", len(b)) + k + b + struct.pack(">I", zlib.crc32(k + b))
                                         for k, b in edit(chunks)))
    return path, path


def png_idat_inflated(path: Path, change) -> tuple[Path, Path]:
    """A film PNG (64 rows of 1 + 80 bytes) whose image data, inflated, ``change`` rewrites (then one IDAT)."""
    def edit(chunks):
        data = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
        idat = [(b"IDAT", change(data))]
        return [c for c in chunks if c[0] not in (b"IDAT", b"IEND")] + idat + [(b"IEND", b"")]
    return png_rechunked(path, edit)


# (id, make(folder) -> (input, culprit), words the message must hold (lower case), extra environment)
CT = "ct"
CT_HEADERS = [
    ("ipp_two_values", lambda d: series(d, one(ImagePositionPatient=[1.0, 2.0])),
     ["imagepositionpatient", "3 finite numbers", "1.0\\2.0"]),
    ("ipp_four_values", lambda d: series(d, one(ImagePositionPatient=[1.0, 2.0, 3.0, 4.0])),
     ["imagepositionpatient", "3 finite"]),
    ("ipp_text", patched("ImagePositionPatient", [777.5, 0, 0], b"777.5", b"abc  "), ["imagepositionpatient", "abc"]),
    ("ipp_nan", patched("ImagePositionPatient", [777.5, 0, 0], b"777.5", b"NaN  "), ["imagepositionpatient", "nan"]),
    ("ipp_inf", patched("ImagePositionPatient", [777.5, 0, 0], b"777.5", b"-inf "), ["imagepositionpatient", "inf"]),
    ("pixel_spacing_one_value", lambda d: series(d, one(PixelSpacing=[0.6])), ["pixelspacing", "2 positive"]),
    ("pixel_spacing_text", patched("PixelSpacing", [7.75, 0.5], b"7.75", b"wide"), ["pixelspacing", "wide"]),
    ("pixel_spacing_zero", lambda d: series(d, one(PixelSpacing=[0.0, 0.5])), ["pixelspacing", "positive"]),
    ("pixel_spacing_negative", lambda d: series(d, one(PixelSpacing=[0.6, -0.5])), ["pixelspacing", "-0.5"]),
    ("pixel_spacing_nan", patched("PixelSpacing", [7.75, 0.5], b"7.75", b"nan "), ["pixelspacing", "nan"]),
    ("iop_five_values", lambda d: series(d, one(ImageOrientationPatient=[1, 0, 0, 0, 1])),
     ["imageorientationpatient", "6 finite"]),
    ("iop_nan", patched("ImageOrientationPatient", [1, 0, 0, 0, 1, 0.125], b"0.125", b"nan  "),
     ["imageorientationpatient", "nan"]),
    ("iop_shear_2deg", lambda d: series(d, iop=_sheared(2.0), slices=()),
     ["imageorientationpatient", "not orthonormal", "88.000"]),
    ("iop_not_unit", lambda d: series(d, iop=(2, 0, 0, 0, 2, 0), slices=()),
     ["imageorientationpatient", "unit vectors", "lengths 2"]),
    ("iop_zero_vector", lambda d: series(d, one(ImageOrientationPatient=[0, 0, 0, 0, 1, 0])),
     ["imageorientationpatient", "unit vectors", "lengths 0"]),
    ("rescale_slope_zero", lambda d: series(d, one(RescaleSlope=0)), ["rescaleslope is 0"]),
    ("rescale_slope_nan", patched("RescaleSlope", 7.75, b"7.75", b"NaN "), ["rescaleslope", "nan"]),
    ("rescale_slope_inf", patched("RescaleSlope", 7.75, b"7.75", b"inf "), ["rescaleslope", "inf"]),
    ("rescale_slope_text", patched("RescaleSlope", 7.75, b"7.75", b"one "), ["rescaleslope", "one"]),
    ("rescale_intercept_nan", patched("RescaleIntercept", -1024.5, b"-1024.5", b"nan    "),
     ["rescaleintercept", "nan"]),
    # campaign 4: a binary value of the wrong length for its VR (Rows as a 2-byte UL) was a pydicom traceback
    ("rows_ul_of_2_bytes", lambda d: series(d, raw=(b"\x28\x00\x10\x00US\x02\x00", b"\x28\x00\x10\x00UL\x02\x00")),
     ["rows cannot be read"]),
    # finite, but no CT: a pixel of 5e-324 mm, slices 1e300 mm apart (the series folder is named: all slices agree)
    ("pixel_spacing_subnormal", lambda d: (series(d, pixel_spacing=(5e-324, 0.5), slices=())[0],) * 2,
     ["spacing", "between 0.0001 and 10000 mm"]),
    ("slices_1e300_mm_apart", lambda d: (series(d, step=1e300, slices=())[0],) * 2,
     ["spacing", "between 0.0001 and 10000 mm", "1e+300"]),
    # campaign 3: positions ±1.7e308 overflowed in the slice geometry: numpy's RuntimeWarnings before the line
    ("slice_positions_overflow", lambda d: (series(d, n=3, positions=[0.0, 1.7e308, -1.7e308], slices=())[0],) * 2,
     ["spacing"]),
]
CT_IDENTITY = [
    ("other_patient", lambda d: series(d, one(PatientID="SOMEONE-ELSE")),
     ["patientid", "someone-else (1 files)", "another patient"]),
    ("other_study", lambda d: series(d, one(StudyInstanceUID="1.2.3.4")),
     ["studyinstanceuid", "1.2.3.4 (1 files)", "another study"]),
    ("other_series", lambda d: series(d, one(SeriesInstanceUID="1.2.3.5")),
     ["seriesinstanceuid", "1.2.3.5 (1 files)", "another series"]),
    ("other_frame_of_reference", lambda d: series(d, one(FrameOfReferenceUID="1.2.3.6")),
     ["frameofreferenceuid", "another frame of reference"]),
    ("frame_of_reference_missing_in_one", lambda d: series(d, drop("FrameOfReferenceUID")),
     ["frameofreferenceuid", "(none) (1 files)"]),
    ("patient_missing_in_two", lambda d: series(d, drop("PatientID"), slices=(2, 3)),
     ["patientid", "(none) (2 files)"]),
    ("one_slice_mr", lambda d: series(d, one(Modality="MR")), ["modality is mr, not ct"]),
    # campaign 3: two files with one SOPInstanceUID (and other positions) were read as two slices
    ("sop_instance_uid_twice", same_sop_uid, ["sopinstanceuid", "also that of slice001.dcm"]),
]
CT_PIXELS = [
    # campaign 2: a slice file emptied or overwritten was skipped as "not DICOM" (a series one slice short, read)
    ("last_slice_emptied", lambda d: slice_replaced(d, b""), ["empty (0 bytes)"]),
    ("slice_dcm_not_dicom", lambda d: slice_replaced(d, b"hello" * 50), ["named like a dicom slice", "no dicm"]),
    ("rows_larger_than_data", lambda d: series(d, one(Rows=9), slices=range(5)),
     ["truncated", "9 x 8 x 1 x 16", "128 bytes"]),
    ("columns_smaller_than_data", lambda d: series(d, one(Columns=7), slices=range(5)), ["128 bytes", "make 112"]),
    ("bits_allocated_8_of_16bit_data", lambda d: series(d, one(BitsAllocated=8, BitsStored=8, HighBit=7)),
     ["128 bytes", "8 x 8 x 1 x 8 bits make 64"]),
    ("bits_allocated_12", lambda d: series(d, one(BitsAllocated=12)), ["bitsallocated is 12"]),
    ("bits_stored_above_allocated", lambda d: series(d, one(BitsStored=20, HighBit=19)),
     ["bitsstored (20)", "bitsallocated (16)"]),
    ("bits_stored_8_of_larger_values", lambda d: series(d, one(BitsStored=8, HighBit=7)),
     ["bitsstored = 8", "outside", "-128…127"]),
    ("bits_stored_unsigned_8", lambda d: series(d, one(BitsStored=8, HighBit=7, PixelRepresentation=0)),
     ["bitsstored = 8", "0…255", "found 200…277"]),
    ("pixel_representation_2", lambda d: series(d, one(PixelRepresentation=2)), ["pixelrepresentation is 2"]),
    ("high_bit_below_bits_stored", lambda d: series(d, one(HighBit=11)), ["highbit is 11", "bitsstored = 16",
                                                                           "needs highbit 15"]),
    ("high_bit_above_bits_stored", lambda d: series(d, one(BitsStored=12, HighBit=15)),
     ["highbit is 15", "bitsstored = 12", "needs highbit 11"]),
    ("samples_per_pixel_3", lambda d: series(d, one(SamplesPerPixel=3)), ["truncated", "8 x 8 x 3 x 16"]),
    ("no_pixel_data", lambda d: series(d, drop("PixelData")), ["no pixel data"]),
    ("multi_frame", lambda d: series(d, one(NumberOfFrames=2)), ["multi-frame"]),
    # campaign 6: an Enhanced CT (the series in one file) was "a single 2D slice; a CT volume needs at least 2"
    ("enhanced_ct_in_one_file", lambda d: _alone(series(d, one(NumberOfFrames=5), slices=(0,))),
     ["multi-frame (enhanced) ct image of 5 frames", "dcm2niix"]),
    ("pixel_data_cut_short", lambda d: series(d, one(PixelData=bytes(100))), ["truncated", "100 bytes"]),
    ("series_declares_40000_squared", lambda d: (series(d, one(Rows=40000, Columns=40000), slices=range(5))[0],) * 2,
     ["5 slices of 40000 x 40000", "xwin_max_volume_gb"]),
    ("one_slice_rgb", lambda d: series(d, colour_slice), ["photometricinterpretation is rgb", "3 sample(s)",
                                                          "monochrome1 or monochrome2"]),
    ("one_slice_palette_color", lambda d: series(d, one(PhotometricInterpretation="PALETTE COLOR")),
     ["photometricinterpretation is palette color"]),
    ("transfer_syntax_unknown", lambda d: series(d, raw=(TS_KNOWN, TS_UNKNOWN)),
     ["transfersyntaxuid 1.2.3.4.5.6.7.8.9.1", "not a transfer syntax"]),
    ("pixel_data_declares_4gib", lambda d: series(d, raw=CT_PIXEL_DATA), ["pixel data is truncated",
                                                                            "declares 4294967280 bytes"]),
    ("number_of_frames_text", patched("NumberOfFrames", -7531, b"-7531", b"abcde"), ["numberofframes is 'abcde'"]),
    # campaign 4: NumberOfFrames 0 was taken for "absent"; MONOCHROME3 passed for a grey image
    ("number_of_frames_zero", lambda d: series(d, one(NumberOfFrames=0)), ["numberofframes is '0'"]),
    ("one_slice_monochrome3", lambda d: series(d, one(PhotometricInterpretation="MONOCHROME3")),
     ["photometricinterpretation is monochrome3"]),
    ("rescale_slope_beyond_float32", lambda d: series(d, one(RescaleSlope=3e38)),
     ["hu values", "beyond the float32 range"]),
]
CT_COMPRESSED = [
    ("j2k_truncated", lambda d: j2k_series(d, lambda f: f[: len(f) // 2]), ["cannot be decoded"]),
    ("j2k_header_garbage", lambda d: j2k_series(d, lambda f: _flip(f, 4, 40)), ["cannot be decoded"]),
    ("j2k_not_a_codestream", lambda d: j2k_series(d, lambda f: bytes(range(256)) * 2), ["cannot be decoded"]),
    ("j2k_rows_larger_than_codestream", lambda d: j2k_series(d, edit=one(Rows=64), slices=range(5)),
     ["cannot be decoded"]),
    ("j2k_bits_stored_too_small", lambda d: j2k_series(d, edit=one(BitsStored=8, HighBit=7)), ["bitsstored"]),
    ("j2k_psot_8_bytes_long", lambda d: j2k_series(d, _psot_plus(8)), ["cannot be decoded", "psot", "claims"]),
    ("j2k_psot_8_bytes_short", lambda d: j2k_series(d, _psot_plus(-8)),
     ["cannot be decoded", "where a tile-part (sot) or the eoc"]),
    ("j2k_eoc_overwritten", lambda d: j2k_series(d, lambda f: f[:-2] + b"\x12\x34"), ["does not end with the eoc"]),
    ("j2k_bytes_after_eoc", lambda d: j2k_series(d, lambda f: f + b"\x01\x02"), ["does not end with the eoc"]),
    ("j2k_marker_code_in_data", lambda d: j2k_series(d, _marker_code_in_data),
     ["marker code 0xffa5 inside its compressed tile data"]),
    ("j2k_cod_missing", lambda d: j2k_series(d, _renamed(b"\xff\x52", b"\xff\x64")), ["has no cod marker"]),
    ("j2k_qcd_renamed_to_unknown_marker", lambda d: j2k_series(d, _renamed(b"\xff\x5c", b"\xff\x30")),
     ["0xff30 at offset", "main header"]),
    ("j2k_cod_length_past_end", lambda d: j2k_series(d, lambda f: _put(f, f.index(b"\xff\x52") + 2, b"\xff\xf0")),
     ["cod marker segment", "claims 65520 bytes"]),
    ("j2k_siz_declares_4_tiles_holds_1", lambda d: j2k_series(d, lambda f: _put(f, 24, struct.pack(">II", 16, 16))),
     ["lacks tile 1 of the 4 tiles"]),
    ("j2k_siz_other_width", lambda d: j2k_series(d, lambda f: _put(f, 8, struct.pack(">I", 30))),
     ["32 x 30 pixels", "32 x 32 x 1"]),
    ("j2k_tile_part_index_1", lambda d: j2k_series(d, lambda f: _put(f, _sot(f) + 10, b"\x01")),
     ["tile-part 1 of tile 0", "out of order"]),
    ("j2k_high_bit_7_of_16_bits", lambda d: j2k_series(d, edit=one(HighBit=7)), ["highbit is 7", "needs highbit 15"]),
]
CXR_DICOM = [
    # campaign 3: a JPEG Baseline CR cut in half decoded to a half-grey film without a word
    ("cr_jpeg_baseline_cut_short", lambda d: jpeg_cr(d / "cxr.dcm", cut=True), ["jpeg stream is cut short",
                                                                              "eoi marker"]),
    # campaign 8: a frame marked arithmetic-coded decoded to noise (off by 118 of 255 on average) without a word
    ("cr_jpeg_baseline_marked_arithmetic", lambda d: jpeg_cr(d / "cxr.dcm", cut=False, arithmetic=True),
     ["jpeg frame is sof9", "does not allow (sof0)"]),
    ("cr_pixel_data_empty", lambda d: cr(d / "cxr.dcm", edit=lambda ds: setattr(ds, "PixelData", b"")),
     ["pixel data is truncated", "0 bytes"]),  # campaign 2: a TypeError traceback before
    ("enhanced_ct_file_as_a_film", lambda d: cr(d / "ct.dcm", Modality="CT", NumberOfFrames=3),
     ["multi-frame (enhanced) ct image of 3 frames"]),  # campaign 6: "pass the folder" led to "a single 2D slice"
    ("cr_slope_zero", lambda d: cr(d / "cxr.dcm", RescaleSlope=0, RescaleIntercept=0), ["rescaleslope is 0"]),
    ("cr_slope_nan", lambda d: cr(d / "cxr.dcm", RescaleSlope=7.75, RescaleIntercept=0, raw=(b"7.75", b"nan ")),
     ["rescaleslope", "nan"]),
    ("cr_intercept_text", lambda d: cr(d / "cxr.dcm", RescaleSlope=1, RescaleIntercept=7.75, raw=(b"7.75", b"low ")),
     ["rescaleintercept", "low"]),
    ("cr_voi_lut_count_mismatch", lambda d: cr(d / "cxr.dcm", VOILUTSequence=voi_lut((4096, 0, 12), list(range(100)))),
     ["voi lut is broken", "4096 entries", "holds 100"]),
    ("cr_voi_lut_flat", lambda d: cr(d / "cxr.dcm", VOILUTSequence=voi_lut((256, 0, 12), [2048] * 256)),
     ["voi lut is broken", "all its 256 entries are 2048"]),
    ("cr_voi_lut_flat_ow", lambda d: cr(d / "cxr.dcm", VOILUTSequence=voi_lut((256, 0, 16), [7] * 256, "OW")),
     ["voi lut is broken", "entries are 7"]),
    ("cr_voi_lut_bits_9", lambda d: cr(d / "cxr.dcm", VOILUTSequence=voi_lut((256, 0, 9), list(range(256)))),
     ["voi lut is broken", "9 bits per entry"]),
    ("cr_voi_lut_no_data", lambda d: cr(d / "cxr.dcm", VOILUTSequence=voi_lut((256, 0, 12), list(range(256))),
                                        edit=lambda ds: delattr(ds.VOILUTSequence[0], "LUTData")),
     ["voi lut is broken", "missing"]),
    ("cr_voi_lut_outside_data", lambda d: cr(d / "cxr.dcm", VOILUTSequence=voi_lut((256, 8000, 12), list(range(256)))),
     ["same value", "flat grey"]),
    ("cr_modality_lut_count_mismatch",
     lambda d: cr(d / "cxr.dcm", ModalityLUTSequence=voi_lut((4096, 0, 16), list(range(10)))),
     ["modality lut is broken", "holds 10"]),
    ("cr_window_width_zero", lambda d: cr(d / "cxr.dcm", WindowCenter=2000, WindowWidth=0),
     ["windowwidth", "at least 1"]),
    ("cr_window_width_negative", lambda d: cr(d / "cxr.dcm", WindowCenter=2000, WindowWidth=-50),
     ["windowwidth", "-50"]),
    ("cr_window_center_nan", lambda d: cr(d / "cxr.dcm", WindowCenter=7.75, WindowWidth=400, raw=(b"7.75", b"nan ")),
     ["windowcenter", "finite"]),
    ("cr_window_without_width", lambda d: cr(d / "cxr.dcm", WindowCenter=2000), ["without windowwidth"]),
    ("cr_window_function_unknown", lambda d: cr(d / "cxr.dcm", WindowCenter=2000, WindowWidth=400,
                                                VOILUTFunction="GAMMA"), ["voilutfunction", "gamma"]),
    ("cr_modality_lut_12_bits", lambda d: cr(d / "cxr.dcm", ModalityLUTSequence=voi_lut((4096, 0, 12),
                                                                                        list(range(4096)))),
     ["modality lut is broken", "12 bits"]),
    ("cr_window_above_data", lambda d: cr(d / "cxr.dcm", WindowCenter=60000, WindowWidth=100),
     ["same value", "flat grey"]),
    ("cr_blank", lambda d: cr(d / "cxr.dcm", np.full((64, 64), 1234)), ["blank", "1234"]),
    ("cr_rows_larger_than_data", lambda d: cr(d / "cxr.dcm", Rows=80), ["truncated", "80 x 64 x 1 x 16"]),
    ("cr_columns_smaller_than_data", lambda d: cr(d / "cxr.dcm", Columns=60), ["8192 bytes", "make 7680"]),
    ("cr_bits_stored_10", lambda d: cr(d / "cxr.dcm", BitsStored=10, HighBit=9), ["bitsstored = 10", "0…1023"]),
    ("cr_bits_stored_above_allocated", lambda d: cr(d / "cxr.dcm", BitsStored=17, HighBit=16), ["bitsstored (17)"]),
    ("cr_high_bit_above_bits_stored", lambda d: cr(d / "cxr.dcm", BitsStored=13, HighBit=15),
     ["highbit is 15", "bitsstored = 13", "needs highbit 12"]),
    ("cr_j2k_garbage", lambda d: cr(d / "cxr.dcm", RAMP[:32, :32], edit=lambda ds: (
        ds.compress(JPEG2000Lossless), setattr(ds, "PixelData", encapsulate([bytes(range(200))])))),
     ["cannot be decoded"]),
    ("cr_sample_j2k_psot_damaged", lambda d: _sample_cr(d / "cxr.dcm", _psot_plus(-100)),
     ["cannot be decoded", "where a tile-part (sot) or the eoc"]),
    ("cr_sample_j2k_marker_code_in_data", lambda d: _sample_cr(d / "cxr.dcm", _marker_code_in_data),
     ["marker code 0xffa5"]),
    ("cr_sample_j2k_eoc_overwritten", lambda d: _sample_cr(d / "cxr.dcm", lambda f: f[:-2] + b"\x00\x01"),
     ["does not end with the eoc"]),
    ("cr_j2k_declares_50000_squared", lambda d: huge_cr(d / "cxr.dcm", 50000, 50000),
     ["50000 x 50000", "xwin_max_volume_gb"]),
    ("cr_native_declares_40000_squared", lambda d: cr(d / "cxr.dcm", Rows=40000, Columns=40000),
     ["40000 x 40000", "xwin_max_volume_gb"]),
    ("cr_pixel_spacing_negative", lambda d: cr(d / "cxr.dcm", PixelSpacing=[-0.1, -0.1]),
     ["pixelspacing", "positive", "-0.1"]),
    ("cr_imager_pixel_spacing_text", lambda d: cr(d / "cxr.dcm", ImagerPixelSpacing=[7.75, 7.75],
                                                  raw=(b"7.75\\7.75", b"wide\\tall")),
     ["imagerpixelspacing", "wide"]),
    ("cr_slope_beyond_float32", lambda d: cr(d / "cxr.dcm", RescaleSlope=777.5, RescaleIntercept=0,
                                             raw=(b"777.5", b"1e308")), ["modality lut", "beyond the float32 range"]),
    ("cr_transfer_syntax_unknown", lambda d: cr(d / "cxr.dcm", raw=(TS_KNOWN, TS_UNKNOWN)),
     ["not a transfer syntax"]),
    # campaign 4: read as if fine (an unknown MONOCHROME3; two window centres for one width: which pair?)
    ("cr_photometric_monochrome3", lambda d: cr(d / "cxr.dcm", PhotometricInterpretation="MONOCHROME3"),
     ["unsupported photometric interpretation 'monochrome3'"]),
    ("cr_window_two_centres_one_width", lambda d: cr(d / "cxr.dcm", WindowCenter=[2000, 1000], WindowWidth=4000),
     ["windowcenter holds 2", "windowwidth 1"]),
]
CXR_RASTER = [
    # campaign 3: a critical chunk Pillow does not know was skipped (the PNG standard says: do not show the image)
    ("png_unknown_critical_chunk", lambda d: png_with_chunk(d / "cxr.png", b"ZZZZ"), ["unknown critical chunk 'zzzz'"]),
    # campaign 2: read as if fine before (Pillow checks no IDAT CRC, reads the first frame, stops at IEND)
    ("png16_idat_crc_wrong", lambda d: png_crc_flipped(d / "cxr.png"), ["crc", "'idat'"]),
    ("png_animated_3_frames", lambda d: animated_png(d / "cxr.png"), ["animated png of 3 frames"]),
    ("png_data_after_iend", lambda d: png_after_iend(d / "cxr.png"), ["follows the png's end"]),
    # campaign 4: Pillow read a second IHDR's image and a file cut between two chunks (no IEND) without a word
    ("png_second_ihdr", lambda d: png_rechunked(d / "cxr.png", lambda c: [c[0], (b"IHDR", struct.pack(">II", 8, 8)
                                                                                + c[0][1][8:]), *c[1:]]),
     ["second ihdr"]),
    ("png_without_iend", lambda d: png_rechunked(d / "cxr.png", lambda c: c[:-1]), ["truncated", "iend"]),
    # campaign 12: Pillow filled 10 missing rows, and ignored a second zlib stream after the image, without a word
    ("png_rows_missing", lambda d: png_idat_inflated(d / "cxr.png", lambda raw: zlib.compress(raw[:-10 * 81])),
     ["holds 4374 of the 5184 bytes", "missing rows"]),
    ("png_stream_after_the_image", lambda d: png_idat_inflated(d / "cxr.png", lambda raw: zlib.compress(raw)
                                                               + zlib.compress(bytes(500))),
     ["data follows the end of its png image stream"]),
    ("png_blank", lambda d: flat_image(d / "cxr.png"), ["blank"]),
    ("png_black", lambda d: flat_image(d / "cxr.png", 0), ["blank", "value 0"]),
    ("jpeg_blank", lambda d: flat_image(d / "cxr.jpg", 200), ["blank"]),
    # campaign 8: a film whose Huffman table was changed decoded to noise without a word
    ("jpeg_huffman_table_changed", lambda d: written(d / "cxr.jpg", swapped_huffman(film_jpeg())),
     ["jpeg data is damaged", "libjpeg"]),
    ("nhdr_2d_data_outside", lambda d: detached_2d(d, "../../../../../../../../etc/passwd"),
     ["outside the header's folder"]),
    ("png_holding_a_tiff", lambda d: raster_as(d / "cxr.png", "TIFF"), ["not a png/jpeg image"]),
    ("jpeg_holding_a_bmp", lambda d: raster_as(d / "cxr.jpg", "BMP"), ["not a png/jpeg image"]),
    ("nrrd_2d_double_beyond_float32", lambda d: nrrd_2d(d / "cxr.nrrd", "double", np.linspace(0, 1e300, 64)
                                                        .reshape(8, 8)), ["pixel values", "float32 range"]),
    ("nrrd_2d_spacing_1e5", lambda d: nrrd_2d(d / "cxr.nrrd", "uchar", RAMP[:8, :8].astype(np.uint8),
                                              "spacings: 1e5 1e5\n"), ["pixel spacing", "between 0.0001 and 10000 mm"]),
]
# run in a subprocess: they would hang, or allocate gigabytes, if a check were missing
CXR_BOMBS = [
    ("png_declares_30000_squared", lambda d: png_declaring(d / "cxr.png", 30000, 30000),
     ["too many pixels", "900000000"], {}),
    ("png_declares_12000_squared", lambda d: png_declaring(d / "cxr.png", 12000, 12000),
     ["too many pixels", "144000000"], {}),
    ("png_over_budget", lambda d: png_declaring(d / "cxr.png", 9000, 9000),
     ["9000 x 9000", "xwin_max_volume_gb", "0.5 gib"], {"XWIN_MAX_VOLUME_GB": "0.5"}),
    ("jpeg_declares_65000_squared", lambda d: jpeg_declaring(d / "cxr.jpg", 65000, 65000),
     ["too many pixels"], {}),
    ("cr_pixel_data_declares_4gib", lambda d: cr(d / "cxr.dcm", raw=CR_PIXEL_DATA),
     ["pixel data is truncated", "declares 4294967280 bytes"], {}),
]
SPECIAL = [
    ("fifo_cxr_png", "cxr", lambda d: fifo(d / "cxr.png"), ["fifo", "not a regular file"]),
    ("fifo_cxr_dcm", "cxr", lambda d: fifo(d / "cxr.dcm"), ["fifo", "not a regular file"]),
    ("socket_cxr", "cxr", lambda d: unix_socket(d / "cxr.dcm"), ["socket", "not a regular file"]),
    ("dev_zero_cxr", "cxr", lambda d: device(d / "cxr.dcm"), ["character device"]),
    ("dev_null_cxr_png", "cxr", lambda d: device(d / "cxr.png", "/dev/null"), ["character device"]),
    ("fifo_in_series", CT, lambda d: series_with(d, fifo), ["fifo", "not a regular file"]),
    ("socket_in_series", CT, lambda d: series_with(d, unix_socket), ["socket", "not a regular file"]),
    ("dev_zero_in_series", CT, lambda d: series_with(d, device), ["character device"]),
]

IN_PROCESS = [(c[0], CT, *c[1:]) for c in CT_HEADERS + CT_IDENTITY + CT_PIXELS + CT_COMPRESSED] + \
             [(c[0], "cxr", *c[1:]) for c in CXR_DICOM + CXR_RASTER]
# `reconstruct` loads the model (seconds) before it reads the radiograph: one case per kind of problem runs it
CXR_WRITTEN = {"png16_idat_crc_wrong", "cr_jpeg_baseline_cut_short",
               "cr_slope_zero", "cr_voi_lut_count_mismatch", "cr_window_width_zero", "cr_blank",
               "cr_rows_larger_than_data", "cr_j2k_garbage", "png_blank", "nhdr_2d_data_outside",
               "cr_high_bit_above_bits_stored", "cr_sample_j2k_marker_code_in_data", "png_holding_a_tiff",
               "cr_pixel_spacing_negative"}
RUNS = [(command, *c) for c in IN_PROCESS for command in ("info", "write")
        if command == "info" or c[1] == CT or c[0] in CXR_WRITTEN]
SUBPROCESS = [(c[0], "cxr", *c[1:]) for c in CXR_BOMBS] + [(*c, {}) for c in SPECIAL]


def _args(command: str, kind: str, target: Path, out: Path) -> list[str]:
    if command == "info":
        return ["info", str(target)]
    if kind == CT:
        return ["render", str(target), "--lao", "0", "--cran", "0", "--size", "8", "8", "--out", str(out / "drr.png")]
    return ["reconstruct", str(target), "--views", "3", "--out", str(out / "estimate.nrrd")]


def _time_limit(command: str, kind: str) -> float:
    return TIMEOUT_S if command == "info" or kind == CT else MODEL_TIMEOUT_S


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _check_one_line(stderr: str, command: str, culprit: Path, words: list[str]) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    assert lines[0].startswith(f"xwin {command}: error: {culprit}"), (lines[0], str(culprit))
    for word in words:
        assert word in lines[0].lower(), f"{word!r} not in {lines[0]!r}"


def _setup(tmp_path: Path, make) -> tuple[Path, Path, Path, set[str]]:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    target, culprit = make(inputs)
    return target, culprit, out, _tree(tmp_path)


@pytest.mark.parametrize("command, name, kind, make, words", RUNS, ids=[f"{c[1]}-{c[0]}" for c in RUNS])
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capfd, command, name, kind, make, words):
    target, culprit, out, before = _setup(tmp_path, make)
    capfd.readouterr()
    monkeypatch.chdir(out)
    monkeypatch.delenv("XWIN_MAX_VOLUME_GB", raising=False)
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:  # a warning would be one more line on stderr
        warnings.simplefilter("always")
        status = main(_args(command, kind, target, out))
    seconds = time.monotonic() - start
    captured = capfd.readouterr()
    assert status == 2, captured.err[-2000:]
    _check_one_line(captured.err, "info" if command == "info" else _args(command, kind, target, out)[0], culprit,
                    words)
    assert captured.out == "" and [str(w.message) for w in caught] == []
    assert _tree(tmp_path) == before
    assert seconds < _time_limit(command, kind)


# Runs the command in a small Python process that reports its child's peak RSS. Linux starts a child's ru_maxrss at
# the peak of the memory it execs from (fs/exec.c, exec_mmap: setmax_mm_hiwater_rss), so a child forked straight from
# this pytest process reports pytest's own peak (2.04 GiB in CI, whichever tests ran before); forked from the
# launcher, it starts at the launcher's ~10 MiB. The launcher also applies the RLIMIT_AS (0: none) the child inherits.
_LAUNCHER = """
import resource, subprocess, sys
limit, report, *command = sys.argv[1:]
if int(limit):
    resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
code = subprocess.call(command)
with open(report, "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
sys.exit(128 - code if code < 0 else code)
"""


def _run_xwin(args: list[str], *, cwd: Path, timeout: float, limited: bool, env: dict[str, str]
              ) -> tuple[int, str, str, int]:
    """Run ``python -m xwin ARGS`` through _LAUNCHER, killed (with the launcher) after ``timeout`` s; returns (exit
    status, stdout, stderr, peak RSS of the xwin process in bytes; 0 when it was killed)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as report:
        child = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(ADDRESS_SPACE if limited else 0), report.name,
                                  sys.executable, "-m", "xwin", *args], stdout=out, stderr=err, cwd=cwd,
                                 start_new_session=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1", "XWIN_MAX_VOLUME_GB": "", **env})
        timer = threading.Timer(timeout, os.killpg, (child.pid, signal.SIGKILL))
        timer.start()
        try:
            status = child.wait()
        finally:
            timer.cancel()
        out.seek(0)
        err.seek(0)
        return status, out.read().decode(), err.read().decode(), int(report.read() or 0)


@pytest.mark.parametrize("command", ["info", "write"])
@pytest.mark.parametrize("name, kind, make, words, env", SUBPROCESS, ids=[c[0] for c in SUBPROCESS])
def test_hang_or_bomb_is_one_line_exit_2(tmp_path, command, name, kind, make, words, env):
    """In a subprocess with a timeout; within ADDRESS_SPACE of virtual memory, except `reconstruct`, which maps
    torch and the model (more address space than that) before it reads the radiograph: its peak RSS is checked."""
    target, culprit, out, before = _setup(tmp_path, make)
    args = _args(command, kind, target, out)
    start = time.monotonic()
    status, stdout, stderr, peak = _run_xwin(args, cwd=out, timeout=_time_limit(command, kind),
                                             limited=command == "info" or kind == CT, env=env)
    assert status == 2, (status, stderr[-2000:])
    _check_one_line(stderr, args[0], culprit, words)
    assert stdout == ""
    assert _tree(tmp_path) == before
    assert time.monotonic() - start < _time_limit(command, kind)
    assert peak < ADDRESS_SPACE, f"peak RSS {peak / 2**30:.2f} GiB"


def test_corpus_size():
    """Issue 16 asks for at least 40 generated DICOM / radiograph / special-file cases here."""
    assert len(IN_PROCESS) + len(SUBPROCESS) >= 40


# --- what must still be read -------------------------------------------------------------------------------------

def test_edge_series_are_read(tmp_path):
    """Near the limits: 0.01° off orthogonal, signed 12-bit values within BitsStored, a non-integer slope, one
    extra pad byte of pixel data, and a JPEG 2000 series, each read with the HU the header says."""
    folder, _ = series(tmp_path / "shear", iop=_sheared(0.01), slices=())
    assert read_ct(folder).array.shape == (5, 8, 8)
    folder, _ = series(tmp_path / "bits", one(BitsStored=12, HighBit=11), slices=range(5))
    assert read_ct(folder).array.max() == 2 * 477 - 1024
    folder, _ = series(tmp_path / "slope", one(RescaleSlope=0.5, RescaleIntercept=-10.25), slices=range(5))
    assert read_ct(folder).array.max() == 0.5 * 477 - 10.25
    folder, _ = j2k_series(tmp_path / "j2k", slices=())
    volume = read_ct(folder)
    assert volume.array.shape == (5, 32, 32) and volume.array.max() == 2 * (400 + 310 + 31) - 1024


def test_signed_12_bit_values_without_sign_extension_are_read(tmp_path):
    """Campaign 6: signed 12-bit values whose unused high bits are zero (-300 stored as 3796) were refused as outside
    BitsStored; read as the sign-extended series is. High bits that are neither are still refused."""
    def signed(high_bits: int | None):
        def edit(ds):
            values = np.frombuffer(ds.PixelData, "<u2").astype(np.int32) - 300
            ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 12, 11
            stored = values if high_bits is None else (values & 0x0FFF) | high_bits  # None: sign-extended
            ds.PixelData = stored.astype("<i2").tobytes()
        return edit

    padded = read_ct(series(tmp_path / "padded", signed(0), slices=range(5))[0])
    extended = read_ct(series(tmp_path / "extended", signed(None), slices=range(5))[0])
    assert padded.array.min() <= 2 * -300 - 1024  # the negative values came through as negative
    np.testing.assert_array_equal(padded.array, extended.array)
    with pytest.raises(XWinInputError, match="BitsStored does not describe the data"):
        read_ct(series(tmp_path / "garbage", signed(0x1000), slices=range(5))[0])


def test_edge_radiographs_are_read(tmp_path):
    """A window inside the data, a valid VOI LUT (US and OW), a non-integer rescale under a VOI LUT, a SIGMOID window
    (its output range is found far from the centre, where exp overflows) and a PNG that is not blank: read without
    warnings."""
    lut = np.linspace(0, 4095, 4096).astype(int).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        window = read_radiograph(cr(tmp_path / "w.dcm", WindowCenter=2000, WindowWidth=1000)[0])
        us = read_radiograph(cr(tmp_path / "us.dcm", VOILUTSequence=voi_lut((4096, 0, 12), lut))[0])
        ow = read_radiograph(cr(tmp_path / "ow.dcm", VOILUTSequence=voi_lut((4096, 0, 16), lut, "OW"))[0])
        scaled = read_radiograph(cr(tmp_path / "s.dcm", RescaleSlope=0.5, RescaleIntercept=0.25,
                                    VOILUTSequence=voi_lut((4096, 0, 12), lut))[0])
        sigmoid = read_radiograph(cr(tmp_path / "sg.dcm", WindowCenter=2000, WindowWidth=500,
                                     VOILUTFunction="SIGMOID")[0])
        Image.fromarray(np.eye(8, dtype=np.uint8) * 9).save(tmp_path / "p.png")
        png = read_radiograph(tmp_path / "p.png")
        Image.fromarray(np.stack([np.eye(8, dtype=np.uint8) * 9, np.full((8, 8), 255, np.uint8)], -1),
                        mode="LA").save(tmp_path / "la.png")  # grey + alpha: chunks and CRCs checked, read as grey
        assert read_radiograph(tmp_path / "la.png").array.max() == pytest.approx(9 / 255)
    assert window.array.min() == 0 and window.array.max() == 1
    assert 0 < sigmoid.array.min() < 0.01 and 0.99 < sigmoid.array.max() < 1
    np.testing.assert_allclose(us.array, ow.array, atol=1e-6)
    assert 0 < scaled.array.max() <= 1 and png.array.max() == pytest.approx(9 / 255)


def test_edge_films_campaign_3(tmp_path):
    """Campaign 3: a JPEG film stored sideways with EXIF Orientation 6 is read as shown (turned 90° clockwise), a
    whole JPEG Baseline CR and a PNG with an unknown ancillary chunk are read; the same JPEG CR cut short is not."""
    stored = np.zeros((40, 64), np.uint8)
    stored[:, :10] = 255  # a bright band at the left of the stored pixels: at the top once turned clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=95)
    turned = read_radiograph(tmp_path / "photo.jpg").array
    assert turned.shape == (64, 40) and turned[:10].mean() > 0.9 and turned[20:].mean() < 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole = read_radiograph(jpeg_cr(tmp_path / "whole.dcm", cut=False)[0])
        assert whole.array.shape == (64, 64)
        assert read_radiograph(png_with_chunk(tmp_path / "anc.png", b"zzZZ")[0]).array.shape == (64, 80)


def test_real_dicom_still_reads(shared_data, capfd):
    """The real series (native and JPEG 2000) and films of ../shared/data/dicom pass every check of `xwin info`."""
    folder = shared_data / "dicom"
    targets = [folder / "lidc_idri_0001_ct_series", folder / "totalseg_ct_series_j2k", *sorted(folder.glob("cxr/*"))]
    for target in targets:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert main(["info", str(target)]) == 0, target
        captured = capfd.readouterr()
        assert captured.err == "" and str(target) in captured.out


def test_real_j2k_slice_damaged_mid_stream_is_refused(shared_data, tmp_path, capfd):
    """A real JPEG 2000 CT series (../shared/data/dicom) with one slice damaged in place, its length kept: a marker
    code inside the compressed data, then a Psot 40 bytes short. Each is one line naming that slice, exit 2."""
    source = shared_data / "dicom" / "totalseg_ct_series_j2k"
    for n, damage in enumerate((_marker_code_in_data, _psot_plus(-40))):
        folder = tmp_path / f"ct{n}"
        folder.mkdir()
        files = sorted(source.iterdir())
        for f in files:
            (folder / f.name).write_bytes(f.read_bytes())
        culprit = folder / files[len(files) // 2].name
        ds = pydicom.dcmread(culprit)
        frame = damage(next(frames(ds.PixelData, number_of_frames=1)))
        ds.PixelData = encapsulate([frame + b"\0" * (len(frame) % 2)])
        ds.save_as(culprit)
        assert main(["info", str(folder)]) == 2
        captured = capfd.readouterr()
        _check_one_line(captured.err, "info", culprit, ["jpeg 2000 codestream"])
        assert captured.out == ""


def _flip_one_bit_mid(frame: bytes) -> bytes:
    """One bit changed in the middle of the compressed data, where it creates no marker code."""
    at = (frame.index(b"\xff\x93") + len(frame)) // 2
    while frame[at - 1] == 0xFF or frame[at] in (0xFE, 0xFF):
        at += 1
    return _put(frame, at, bytes([frame[at] ^ 0x01]))


@pytest.mark.xfail(strict=True, reason="JPEG 2000 carries no checksum: a bit changed inside the entropy-coded data, "
                                       "lengths and markers intact, decodes to wrong voxels unseen (xwin/io/j2k.py)")
def test_j2k_damage_inside_entropy_data_is_not_detectable(tmp_path):
    """The known limit, pinned: the damaged series must be refused or read unchanged; today it reads, changed."""
    clean = read_ct(j2k_series(tmp_path / "clean", slices=())[0]).array
    folder, _ = j2k_series(tmp_path / "damaged", _flip_one_bit_mid)
    try:
        damaged = read_ct(folder).array
    except XWinInputError:
        return
    assert np.array_equal(damaged, clean), f"{np.count_nonzero(damaged != clean)} voxels changed, no error"
