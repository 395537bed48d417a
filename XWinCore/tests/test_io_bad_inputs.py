"""A generated corpus of bad inputs: every one must raise XWinInputError naming the input and the problem."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from synthetic_dicom import ct_series, radiograph

from xwin.errors import XWinInputError
from xwin.io import Volume, read_ct, read_radiograph, write_image, write_volume


def _cut(path: Path, keep: float | int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])


def _nrrd(path: Path, spacings: str) -> Path:
    """Hand-written 4×4×4 NRRD (SimpleITK refuses to write such spacings)."""
    header = (f"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nspacings: {spacings}\nencoding: raw\n"
              "endian: little\n\n")
    path.write_bytes(header.encode() + np.zeros(64, np.int16).tobytes())
    return path


def _image(path: Path, array: np.ndarray, vector: bool = False) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))
    return path


def _with_bad_voxel(path: Path, value: float) -> Path:
    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = value
    return _image(path, array)


def _series(folder: Path, **kw) -> Path:
    ct_series(folder, **kw)
    return folder


def _mixed(folder: Path) -> Path:
    ct_series(folder, n=3, series_uid="1.2.3.111")
    ct_series(folder, n=2, series_uid="1.2.3.222", names=["other_a.dcm", "other_b.dcm"])
    return folder


def _damaged_series(folder: Path, keep: float | int) -> Path:
    ct_series(folder)
    _cut(folder / "slice002.dcm", keep)
    return folder


def _tilted(folder: Path) -> Path:
    ct_series(folder)
    ds = pydicom.dcmread(folder / "slice003.dcm")
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
    ds.save_as(folder / "slice003.dcm")
    return folder


def _non_dicom_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "picture.png")
    return folder


def _4d(path: Path) -> Path:
    volumes = [sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)) for _ in range(3)]
    sitk.WriteImage(sitk.JoinSeries(volumes), str(path))
    return path


def _truncated_nifti(path: Path) -> Path:
    _image(path, np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32))
    _cut(path, 0.5)
    return path


def _truncated_cr(path: Path) -> Path:
    radiograph(path, np.arange(64 * 64).reshape(64, 64))
    _cut(path, 0.6)
    return path


def _garbage(path: Path, head: bytes = b"") -> Path:
    path.write_bytes(head + bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8)))
    return path


def _png(path: Path) -> Path:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return path


def _single_dicom(path: Path) -> Path:
    return ct_series(path.parent / "one_file_series")[0][0].rename(path)


# (id, reader, make(path) -> input, words that the message must contain)
CASES = [
    ("series_truncated_pixels", read_ct, lambda p: _damaged_series(p, -40), ["slice002.dcm", "truncated"]),
    ("series_truncated_header", read_ct, lambda p: _damaged_series(p, 400), ["slice002.dcm", "truncated"]),
    ("cr_truncated.dcm", read_radiograph, _truncated_cr, ["truncated"]),
    ("corrupt.dcm", read_radiograph, _garbage, ["not a dicom"]),
    ("corrupt_ct.dcm", read_ct, _garbage, ["corrupt"]),
    ("corrupt.nii.gz", read_ct, lambda p: _garbage(p, b"\x1f\x8b"), ["corrupt"]),
    ("corrupt.nrrd", read_ct, lambda p: _garbage(p, b"NRRD0004\n"), ["corrupt"]),
    ("corrupt.png", read_radiograph, lambda p: _garbage(p, b"\x89PNG\r\n\x1a\n"), ["corrupt"]),
    ("truncated.nii.gz", read_ct, _truncated_nifti, ["truncated"]),
    ("flat.png", read_ct, _png, ["2d"]),
    ("flat.nii.gz", read_ct, lambda p: _image(p, np.zeros((6, 7), np.float32)), ["2d"]),
    ("one_slice.nrrd", read_ct, lambda p: _image(p, np.zeros((1, 6, 7), np.float32)), ["2d"]),
    ("nan.nrrd", read_ct, lambda p: _with_bad_voxel(p, np.nan), ["nan"]),
    ("inf.mha", read_ct, lambda p: _with_bad_voxel(p, np.inf), ["infinite"]),
    ("zero_spacing.nrrd", read_ct, lambda p: _nrrd(p, "1 1 0"), ["spacing"]),
    ("negative_spacing.nrrd", read_ct, lambda p: _nrrd(p, "1 -0.5 2"), ["spacing"]),
    ("four_d.nii.gz", read_ct, _4d, ["4d"]),
    ("vector.nrrd", read_ct, lambda p: _image(p, np.zeros((4, 5, 6, 3), np.float32), vector=True), ["components"]),
    ("empty_folder", read_ct, lambda p: p.mkdir() or p, ["empty"]),
    ("no_dicom_folder", read_ct, _non_dicom_folder, ["no dicom images"]),
    ("missing_slice", read_ct, lambda p: _series(p, positions=[0, 2.5, 5, 10, 12.5]), ["missing", "slice002.dcm"]),
    ("uneven_spacing", read_ct, lambda p: _series(p, positions=[0, 2.5, 5, 8, 10.5]), ["uneven"]),
    ("duplicate_position", read_ct, lambda p: _series(p, positions=[0, 2.5, 2.5, 5]), ["duplicate"]),
    ("mixed_series", read_ct, _mixed, ["mixed", "1.2.3.111 (3 files)", "1.2.3.222 (2 files)"]),
    ("mr_series", read_ct, lambda p: _series(p, modality="MR"), ["modality", "mr", "not ct"]),
    ("single_slice", read_ct, lambda p: _series(p, n=1), ["single 2d slice"]),
    ("tilted_slice", read_ct, _tilted, ["inconsistent orientation", "slice003.dcm"]),
    ("slice.dcm", read_ct, _single_dicom, ["single dicom file"]),
    ("ct_slice.dcm", read_radiograph, _single_dicom, ["modality ct", "not a radiograph"]),
    ("folder_as_radiograph", read_radiograph, lambda p: p.mkdir() or p, ["folder"]),
    ("nonexistent.nii.gz", read_ct, lambda p: p, ["does not exist"]),
    ("nonexistent.png", read_radiograph, lambda p: p, ["does not exist"]),
    ("scan.xyz", read_ct, lambda p: _garbage(p), ["unknown file type"]),
]


@pytest.mark.parametrize("name, reader, make, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_named_error(tmp_path, name, reader, make, words):
    target = make(tmp_path / name)
    with pytest.raises(XWinInputError) as info:
        reader(target)
    message = str(info.value)
    assert name in message, message
    for word in words:
        assert word in message.lower(), f"{word!r} not in {message!r}"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read a chmod 000 file")
@pytest.mark.parametrize("reader", [read_ct, read_radiograph])
def test_unreadable_file(tmp_path, reader):
    path = _image(tmp_path / "locked.nrrd", np.zeros((4, 5, 6), np.float32))
    path.chmod(0)
    try:
        with pytest.raises(XWinInputError, match="locked.nrrd.*permission denied"):
            reader(path)
    finally:
        path.chmod(0o644)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can list a chmod 000 folder")
def test_unreadable_folder(tmp_path):
    folder = _series(tmp_path / "locked_series")
    folder.chmod(0)
    try:
        with pytest.raises(XWinInputError, match="locked_series.*cannot be read"):
            read_ct(folder)
    finally:
        folder.chmod(0o755)


def test_multiframe_radiograph(tmp_path):
    path = radiograph(tmp_path / "cine.dcm", np.zeros((2, 4, 4)), NumberOfFrames=2)
    with pytest.raises(XWinInputError, match="cine.dcm.*multi-frame"):
        read_radiograph(path)


def test_writers_reject_bad_targets(tmp_path):
    volume = Volume(np.zeros((2, 3, 4)), np.ones(3), np.zeros(3))
    with pytest.raises(XWinInputError, match=r"out\.tiff.*extension"):
        write_volume(volume, tmp_path / "out.tiff")
    with pytest.raises(XWinInputError, match=r"out\.nrrd.*does not exist"):
        write_volume(volume, tmp_path / "no_such_folder" / "out.nrrd")
    with pytest.raises(XWinInputError, match=r"img\.png.*2D"):
        write_image(np.zeros((2, 3, 4)), tmp_path / "img.png")
    assert list(tmp_path.iterdir()) == []
