"""Readers and writers of `xwin.io`: synthetic round trips and DICOM, real data in ../shared/data, demo data."""
from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from synthetic_dicom import INTERCEPT, SLOPE, ct_series, radiograph

from xwin.errors import XWinInputError
from xwin.io import (
    Radiograph,
    Volume,
    atomic_output,
    describe,
    format_description,
    read_ct,
    read_radiograph,
    write_image,
    write_volume,
)
from xwin.sample_data import demo_ct_path, demo_cxr_path

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data not found: real-data test skipped")
    return SHARED.resolve()


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


# ------------------------------------------------------------------------------------------------ synthetic files
@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz", ".mha"])
def test_volume_round_trip_keeps_geometry(tmp_path, ext):
    rng = np.random.default_rng(3)
    # origin values exact in float32: NIfTI stores geometry in single precision
    volume = Volume(rng.integers(-1024, 3000, (5, 6, 7)).astype(np.float32), np.array([0.7, 1.3, 2.5]),
                    np.array([-120.5, 33.25, -400.125]), _rotation(0.3, -0.2, 0.5))
    back = read_ct(write_volume(volume, tmp_path / f"oblique{ext}"))
    np.testing.assert_array_equal(back.array, volume.array)
    for name in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(back, name), getattr(volume, name), atol=1e-6, err_msg=name)
    assert back.meta["source"] == str(tmp_path / f"oblique{ext}")
    assert [p.name for p in tmp_path.iterdir()] == [f"oblique{ext}"]


@pytest.mark.parametrize("ext", [".nrrd", ".mha", ".nii", ".nii.gz"])
def test_volume_metadata_is_written_and_read_back_by_simpleitk(tmp_path, ext):
    """Volume.meta reaches the file: NRRD/MHA key/value fields, the NIfTI descrip field (``description``); DICOM
    patient identifiers, reserved keys and line breaks do not."""
    import SimpleITK as sitk
    meta = {"description": "learned estimate, not a CT", "method": "sart", "views": 5, "note": "two\nlines",
            "patient_id": "JOHN^DOE", "series_uid": "1.2.3", "NRRD_space": "RAS"}
    path = write_volume(Volume(np.zeros((2, 3, 4), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), meta=meta),
                        tmp_path / f"v{ext}")
    image = sitk.ReadImage(str(path))
    keys = set(image.GetMetaDataKeys())
    if ext.startswith(".nii"):
        assert image.GetMetaData("descrip") == "learned estimate, not a CT"
    else:
        assert {k: image.GetMetaData(k) for k in ("description", "method", "views", "note")} == {
            "description": "learned estimate, not a CT", "method": "sart", "views": "5", "note": "two lines"}
        assert not keys & {"patient_id", "series_uid"}
    np.testing.assert_array_equal(image.GetDirection(), np.eye(3).ravel())  # NRRD_space did not become LPS → RAS
    assert "JOHN" not in path.read_bytes().decode("latin-1")
    # without a description, NIfTI's descrip lists the entries (cut to the field's 79 characters)
    nii = write_volume(Volume(np.zeros((2, 2, 2), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                              meta={"method": "fdk", "views": "180", "long": "x" * 100}), tmp_path / "plain.nii")
    assert sitk.ReadImage(str(nii)).GetMetaData("descrip") == ("method=fdk; views=180; long=" + "x" * 100)[:79]


def test_dicom_series_hu_sorting_and_geometry(tmp_path):
    iop = np.concatenate(_rotation(0.2, 0.1, -0.4)[:, :2].T)  # oblique row and column cosines
    names = [f"{n}.dcm" for n in random.Random(7).sample(range(100, 200), 5)]  # name order ≠ slice order
    files, stored = ct_series(tmp_path / "series", n=5, size=(6, 8), step=1.25, iop=iop, pixel_spacing=(0.6, 0.5),
                              names=names)
    volume = read_ct(tmp_path / "series")
    np.testing.assert_array_equal(volume.array, SLOPE * stored.astype(np.float32) + INTERCEPT)
    row, col = iop[:3], iop[3:]
    np.testing.assert_allclose(volume.direction, np.stack([row, col, np.cross(row, col)], 1), atol=1e-12)
    np.testing.assert_allclose(volume.spacing, [0.5, 0.6, 1.25])
    np.testing.assert_allclose(volume.origin, [-10.0, -20.0, 30.0])
    k, j, i = 3, 4, 7  # voxel (i, j, k) lies at IPP_k + i·Δcol·row + j·Δrow·col
    expected = np.array([-10.0, -20.0, 30.0]) + 3 * 1.25 * np.cross(row, col) + i * 0.5 * row + j * 0.6 * col
    np.testing.assert_allclose((volume.lps_from_ijk @ [i, j, k, 1])[:3], expected, atol=1e-9)
    assert volume.meta["modality"] == "CT" and volume.meta["patient_id"] == "XWIN-TEST"
    assert volume.meta["series_uid"] and volume.meta["source"] == str(tmp_path / "series")


def test_dicom_series_step_is_the_extent_over_the_gaps_like_simpleitk(tmp_path):
    """Campaign 9: 200 slices of 0.625 mm with positions rounded to 0.01 mm (as scanners write them) were read with
    the median gap, 0.63 mm: the last slice 1 mm from where its header puts it. The step is the extent / gaps."""
    positions = [round(k * 0.625, 2) for k in range(200)]
    ct_series(tmp_path / "s", n=200, size=(4, 4), positions=positions)
    volume = read_ct(tmp_path / "s")
    reference = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    assert volume.spacing[2] == pytest.approx(reference.GetSpacing()[2], abs=1e-6)
    assert volume.spacing[2] == pytest.approx(positions[-1] / 199, abs=1e-9)
    last = (volume.lps_from_ijk @ [0, 0, 199, 1])[:3]
    np.testing.assert_allclose(last, np.array([-10.0, -20.0, 30.0 + positions[-1]]), atol=1e-6)


def test_dicom_series_descending_positions_ignores_other_files(tmp_path):
    ct_series(tmp_path / "s", n=4, positions=[7.5, 5.0, 2.5, 0.0])
    (tmp_path / "s" / "README.txt").write_text("not DICOM")
    volume = read_ct(tmp_path / "s")
    assert volume.array.shape == (4, 8, 8) and volume.array[0, 0, 0] == SLOPE * 300 + INTERCEPT


def test_dicom_series_declaring_huge_slices_is_refused_before_allocating(tmp_path, monkeypatch):
    """Campaign 8: 4 slices of 20 KB declaring 60000 x 60000 pixels, with the memory budget raised, made read_ct
    allocate 53.6 GiB (a MemoryError) before it compared a slice's pixel data with its Rows x Columns."""
    files, _ = ct_series(tmp_path / "series", n=4, size=(6, 8))
    for f in files:
        ds = pydicom.dcmread(f)
        ds.Rows = ds.Columns = 60000
        ds.save_as(f)
    monkeypatch.setenv("XWIN_MAX_VOLUME_GB", "1e30")
    with pytest.raises(XWinInputError) as info:
        read_ct(tmp_path / "series")
    assert Path(info.value.path).parent == tmp_path / "series" and "60000" in info.value.problem


def test_dicom_series_per_slice_rescale(tmp_path):
    files, stored = ct_series(tmp_path / "s", n=3)
    ds = pydicom.dcmread(files[1])
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, -1000.25
    ds.save_as(files[1])
    volume = read_ct(tmp_path / "s")
    np.testing.assert_array_equal(volume.array[1], 0.5 * stored[1] - 1000.25)
    np.testing.assert_array_equal(volume.array[2], SLOPE * stored[2] + INTERCEPT)


def test_monochrome1_is_inverted_and_window_applied(tmp_path):
    pixels = np.arange(16 * 16).reshape(16, 16) * 10  # 0 … 2550
    mono2 = read_radiograph(radiograph(tmp_path / "m2.dcm", pixels, PixelSpacing=[0.2, 0.3]))
    mono1 = read_radiograph(radiograph(tmp_path / "m1.dcm", pixels, "MONOCHROME1", PixelSpacing=[0.2, 0.3]))
    np.testing.assert_allclose(mono2.array, pixels / pixels.max(), atol=1e-6)
    np.testing.assert_allclose(mono1.array, 1.0 - mono2.array, atol=1e-6)
    assert mono1.pixel_spacing == (0.2, 0.3) and mono1.meta["photometric_interpretation"] == "MONOCHROME1"
    windowed = read_radiograph(radiograph(tmp_path / "w.dcm", pixels, WindowCenter=1000.5, WindowWidth=1001))
    expected = np.clip((pixels - 500.0) / 1000.0, 0.0, 1.0)  # DICOM LINEAR window mapped to [0, 1]
    np.testing.assert_allclose(windowed.array, expected, atol=1e-6)
    lut = np.linspace(0, 4095, 256).astype("<u2")
    item = pydicom.Dataset()
    item.LUTDescriptor, item.LUTData = [256, 1000, 12], lut.tobytes()
    item["LUTData"].VR = "OW"
    voi = read_radiograph(radiograph(tmp_path / "lut.dcm", pixels, VOILUTSequence=[item]))
    np.testing.assert_allclose(voi.array, lut[np.clip(pixels - 1000, 0, 255)] / 4095.0, atol=1e-6)


@pytest.mark.parametrize("tags, spacing", [({"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.15, 0.16]}, (0.15, 0.16)),
                                           ({"PixelSpacing": [0, 0]}, None), ({}, None)])
def test_radiograph_spacing_fallbacks(tmp_path, tags, spacing):
    assert read_radiograph(radiograph(tmp_path / "s.dcm", np.eye(4) * 100, **tags)).pixel_spacing == spacing


@pytest.mark.parametrize("dtype, mode", [(np.uint8, "L"), (np.uint16, "I;16"), (np.uint8, "RGB")])
def test_png_read(tmp_path, dtype, mode):
    top = np.iinfo(dtype).max
    pixels = (np.linspace(0, 1, 12 * 10).reshape(12, 10) * top).astype(dtype)
    image = Image.fromarray(pixels)
    (image.convert("RGB") if mode == "RGB" else image).save(tmp_path / "x.png")
    result = read_radiograph(tmp_path / "x.png")
    assert result.array.dtype == np.float32 and result.pixel_spacing is None
    np.testing.assert_allclose(result.array, pixels / top, atol=1.5 / 255 if mode == "RGB" else 1e-7)
    assert result.meta["bits_stored"] == ("16" if dtype == np.uint16 else "8")


def test_write_image_formats(tmp_path):
    ramp = np.linspace(0, 1, 6 * 5, dtype=np.float32).reshape(6, 5)
    nrrd = read_radiograph(write_image(Radiograph(ramp, (0.4, 0.25)), tmp_path / "d.nrrd", meta={"xwin_lao_deg": 30}))
    np.testing.assert_array_equal(nrrd.array, ramp)
    assert nrrd.pixel_spacing == (0.4, 0.25) and nrrd.meta["xwin_lao_deg"] == "30"
    png8 = read_radiograph(write_image(ramp, tmp_path / "d.png"))
    np.testing.assert_allclose(png8.array, ramp, atol=0.5 / 255 + 1e-7)
    png16 = read_radiograph(write_image(ramp, tmp_path / "d16.png", bits=16))
    np.testing.assert_allclose(png16.array, ramp, atol=0.5 / 65535 + 1e-7)
    line = read_radiograph(write_image(ramp * 40 - 3, tmp_path / "line.png"))  # outside [0, 1]: min-max scaled
    np.testing.assert_allclose(line.array, ramp, atol=0.5 / 255 + 1e-6)
    assert Image.open(tmp_path / "d.png").mode == "L" and Image.open(tmp_path / "d16.png").mode.startswith("I")


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "result.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz")
            tmp.write_text("partial")
            raise RuntimeError("writer crashed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["result.nii.gz"]
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["result.nii.gz"]


def test_describe(tmp_path):
    volume = Volume(np.full((3, 4, 5), -1000.0), np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0, 7.0]))
    ct = describe(write_volume(volume, tmp_path / "v.nrrd"))
    assert ct["kind"] == "CT volume" and ct["size_ijk"] == [5, 4, 3] and ct["hu_range"] == [-1000.0, -1000.0]
    assert ct["spacing_mm"] == [1.0, 2.0, 3.0] and ct["origin_lps_mm"] == [5.0, 6.0, 7.0]
    cxr = describe(write_image(np.eye(4, 6), tmp_path / "c.png"))
    assert cxr["kind"] == "radiograph" and cxr["size_rows_cols"] == [4, 6] and cxr["pixel_spacing_mm"] is None
    text = format_description(cxr)
    assert "radiograph" in text and "pixel spacing mm" in text and "(not given)" in text
    assert describe(write_image(np.eye(4, 6), tmp_path / "c.nrrd", spacing=(1, 2)))["kind"] == "radiograph"


# ------------------------------------------------------------------------------------------------------ real data
def test_lidc_dicom_series_matches_nifti(shared):
    series = read_ct(shared / "dicom" / "lidc_idri_0001_ct_series")
    full = read_ct(shared / "ct" / "lidc_idri_0001_ct.nii.gz")
    assert series.array.shape == (32, 512, 512) and series.meta["patient_id"] == "LIDC-IDRI-0001"
    np.testing.assert_allclose(series.spacing, full.spacing, atol=1e-4)
    # DICOM voxel (i, j, k) → NIfTI voxel: a signed permutation (here a y flip) plus an integer shift
    m = full.ijk_from_lps @ series.lps_from_ijk
    np.testing.assert_allclose(m, np.round(m), atol=1e-3)
    m = np.round(m).astype(int)
    assert np.count_nonzero(m[:3, :3]) == 3 and np.all(np.diag(m[:3, :3]) != 0)
    index = tuple(slice(m[a, 3], m[a, 3] + m[a, a] * n if m[a, 3] + m[a, a] * n >= 0 else None, m[a, a])
                  for a, n in zip((2, 1, 0), series.array.shape))
    assert full.array[index].shape == series.array.shape
    assert np.abs(full.array[index] - series.array).max() == 0  # slices matched by z position: instances 27–58


def test_jpeg2000_series_loads(shared):
    volume = read_ct(shared / "dicom" / "totalseg_ct_series_j2k")
    assert volume.array.shape[0] == 20 and volume.meta["modality"] == "CT"
    assert -1100 <= volume.array.min() < -900 and 1000 < volume.array.max() < 4000


def test_real_cxr_dicoms(shared):
    folder = shared / "dicom" / "cxr"
    mono2 = read_radiograph(next(folder.glob("siim_1.2.276*.dcm")))
    mono1 = read_radiograph(folder / "siim_Fake_MONOHR1.dcm")
    # same pixel data, only the tag differs: the MONOCHROME1 reading is the inverse of the MONOCHROME2 reading
    np.testing.assert_allclose(mono1.array, 1.0 - mono2.array, atol=1e-6)
    assert mono2.pixel_spacing == (0.168, 0.168) and mono2.meta["view_position"] == "PA"
    rg1 = read_radiograph(folder / "nema_wg04_RG1_UNCR.dcm")
    assert rg1.pixel_spacing is None and rg1.array.shape == (1955, 1841)  # header says PixelSpacing 0\0
    # MONOCHROME1 under its window (centre 15000, width 30000), worked by hand from the stored values with the linear
    # VOI function of DICOM PS3.3 C.11.2.1.2.1, y = (x − (c − 0.5)) / (w − 1) + 0.5, then inverted
    stored = pydicom.dcmread(folder / "nema_wg04_RG1_UNCR.dcm").pixel_array.astype(np.float64)
    assert stored[0, 0] == 18889 and (stored.min(), stored.max()) == (874, 26479)
    np.testing.assert_allclose(rg1.array, 1.0 - ((stored - 14999.5) / 29999 + 0.5), atol=1e-6)
    assert float(rg1.array[0, 0]) == pytest.approx(1 - (3889.5 / 29999 + 0.5), abs=1e-6)  # 0.370346


# ------------------------------------------------------------------------------------------------------ demo data
def test_demo_ct():
    path = demo_ct_path()
    assert path.is_file() and path.stat().st_size <= 3 * 1024 * 1024
    volume = read_ct(path)
    assert volume.array.shape == (133, 128, 128)
    assert volume.array.min() == -1024 and 1000 < volume.array.max() <= 3071
    assert (volume.array < -900).mean() > 0.2 and (volume.array > 0).mean() > 0.1  # air/lung and soft tissue
    # same physical extent (edge to edge) as the 512×512×133 original at 0.703125×0.703125×2.5 mm
    lo = volume.lps_from_ijk @ [-0.5, -0.5, -0.5, 1]
    hi = volume.lps_from_ijk @ [*(np.array(volume.shape_ijk) - 0.5), 1]
    np.testing.assert_allclose(lo[:3], [-166.3515625, 187.9484, -341.25], atol=1e-3)
    np.testing.assert_allclose(hi[:3], [193.6484375, -172.0516, -8.75], atol=1e-3)


def test_demo_cxr():
    cxr = read_radiograph(demo_cxr_path())
    assert cxr.array.shape == (1955, 1841) and cxr.pixel_spacing is None
    assert cxr.meta["modality"] == "CR" and cxr.meta["photometric_interpretation"] == "MONOCHROME1"
    assert "2000" in cxr.meta["transfer_syntax"]
    rows, cols = cxr.array.shape  # bone bright: the spine (centre column) is brighter than the lung fields
    spine = cxr.array[rows // 3: rows // 2, cols // 2 - 40: cols // 2 + 40].mean()
    lung = cxr.array[rows // 3: rows // 2, cols // 4 - 40: cols // 4 + 40].mean()
    assert spine > lung + 0.1


def test_damaged_exif_is_reported_in_the_metadata_not_on_stderr(tmp_path, capsys):
    """A JPEG whose EXIF block ends inside a tag: Pillow skips the tag with a UserWarning, which reached stderr on a
    successful `xwin info` (campaign 5); it is now the film's ``decoder_warning``, shown by info."""
    from xwin.cli import main

    exif = Image.Exif()
    exif[0x0112], exif[0x010E] = 1, "x" * 100  # Orientation, ImageDescription
    path = tmp_path / "film.jpg"
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(path, exif=exif.tobytes()[:-60])
    assert "Skipping tag 270" in read_radiograph(path).meta["decoder_warning"]
    assert main(["info", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "decoder warning" in out and "Skipping tag 270" in out


def _png(path: Path, pixels: np.ndarray, colour_type: int) -> Path:
    """A PNG written by hand (Pillow cannot write 16-bit grey+alpha): ``pixels`` (rows, columns, channels) uint16."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows, cols = pixels.shape[:2]
    data = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", cols, rows, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(data))
                     + chunk(b"IEND", b""))
    return path


def test_a_16_bit_grey_and_alpha_png_says_it_was_read_at_8_bits(tmp_path):
    """Campaign 6's judgement call: Pillow reads a 16-bit grey+alpha PNG at 8 bits without a word; the film now says so
    in its decoder_warning (a 16-bit grey PNG keeps its 16 bits and no warning)."""
    grey = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000 + 7)
    la = _png(tmp_path / "la16.png", np.stack([grey, np.full_like(grey, 65535)], -1), colour_type=4)
    film = read_radiograph(la)
    assert "read at 8 bits" in film.meta["decoder_warning"] and film.meta["bits_stored"] == "8"
    np.testing.assert_allclose(film.array, (grey >> 8) / 255, atol=1 / 255)
    full = read_radiograph(_png(tmp_path / "g16.png", grey[..., None], colour_type=0))
    assert "decoder_warning" not in full.meta and full.meta["bits_stored"] == "16"
    np.testing.assert_allclose(full.array, grey / 65535, atol=1e-6)


@pytest.mark.parametrize("ext", ["nrrd", "mha"])
def test_a_2d_film_is_turned_upright_as_its_direction_says(tmp_path, ext):
    """Campaign 12: a 2D NRRD stored bottom-up (direction (1, 0, 0, −1)) was read upside down: the direction of a
    film was ignored. Flipped and transposed storage now read as the upright film; oblique cosines are refused."""
    film = np.random.default_rng(0).integers(0, 65535, (30, 40)).astype(np.uint16)  # rows top to bottom
    spacing = (0.2, 0.3)  # ITK (x, y) mm: columns 0.2 mm apart, rows 0.3 mm

    def stored(name: str, array: np.ndarray, direction, spacing_xy) -> Path:
        image = sitk.GetImageFromArray(array)
        image.SetDirection(direction)
        image.SetSpacing(spacing_xy)
        sitk.WriteImage(image, str(tmp_path / f"{name}.{ext}"))
        return tmp_path / f"{name}.{ext}"

    upright = read_radiograph(stored("upright", film, (1, 0, 0, 1), spacing))
    for name, array, direction, spacing_xy in [("bottom_up", film[::-1], (1, 0, 0, -1), spacing),
                                               ("right_to_left", film[:, ::-1], (-1, 0, 0, 1), spacing),
                                               ("transposed", film.T, (0, 1, 1, 0), spacing[::-1])]:
        turned = read_radiograph(stored(name, array, direction, spacing_xy))
        assert np.array_equal(turned.array, upright.array), name
        assert turned.pixel_spacing is not None and upright.pixel_spacing is not None
        assert np.allclose(turned.pixel_spacing, upright.pixel_spacing), name
    assert np.allclose(upright.pixel_spacing, (0.3, 0.2))
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    with pytest.raises(XWinInputError, match="direction cosines .* are oblique"):
        read_radiograph(stored("oblique", film, (c, s, -s, c), spacing))
