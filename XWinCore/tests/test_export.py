"""Export: threshold masks (synthetic torso + a real chest CT), NIfTI/labels.json, Slicer .seg.nrrd, DICOM CT series
round trip (SimpleITK and pydicom against the original), DICOM SEG (when highdicom is installed) and `xwin export`."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from xwin.cli import main
from xwin.errors import XWinInputError
from xwin.export import export_segmentation, labelmap, read_seg_nrrd_header, segment, write_ct_series
from xwin.export.dicom_seg import available as highdicom_available
from xwin.io import write_volume
from xwin.io.image import Volume


def torso(bridge: bool = False, noise: float = 20.0) -> tuple[Volume, dict[str, np.ndarray]]:
    """80×64×40 grid of 4 mm: body ellipse (40 HU, semi-axes 140 × 100 mm) along z, two lung ellipsoids (−850 HU,
    45 × 60 × 60 mm at x = ±65 mm), a 'spine' cylinder (700 HU, r 15 mm, posterior); optionally a 6 mm 'trachea'
    tube joining the lungs. Returns the volume and the true masks."""
    sp = 4.0
    shape_ijk = (80, 64, 40)
    origin = -(np.array(shape_ijk) - 1) / 2 * sp
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_ijk[::-1]), indexing="ij")
    x, y, z = origin[0] + i * sp, origin[1] + j * sp, origin[2] + k * sp
    body = (x / 140) ** 2 + (y / 100) ** 2 <= 1
    left = ((x - 65) / 45) ** 2 + ((y + 10) / 60) ** 2 + (z / 60) ** 2 <= 1
    right = ((x + 65) / 45) ** 2 + ((y + 10) / 60) ** 2 + (z / 60) ** 2 <= 1
    spine = (x ** 2 + (y - 60) ** 2 <= 15 ** 2) & body
    hu = np.full(body.shape, -1000.0)
    hu[body] = 40
    hu[left | right] = -850
    if bridge:
        hu[(np.abs(x) <= 40) & ((y + 10) ** 2 + (z - 20) ** 2 <= 6 ** 2)] = -900
    hu[spine] = 700
    hu += np.random.default_rng(0).normal(0, noise, hu.shape)
    vol = Volume(hu.astype(np.float32), (sp,) * 3, origin)
    return vol, {"body": body, "lungs": left | right, "lung_left": left, "lung_right": right, "bone": spine}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_masks_match_the_synthetic_torso():
    vol, truth = torso()
    masks = segment(vol, ["body", "lungs", "lung_left", "lung_right", "bone"])
    for name, mask in masks.items():
        assert dice(mask, truth[name]) > 0.95, name


def test_lungs_joined_by_a_trachea_are_split():
    vol, truth = torso(bridge=True)
    masks = segment(vol, ["lung_left", "lung_right"])
    assert dice(masks["lung_left"], truth["lung_left"]) > 0.95
    assert dice(masks["lung_right"], truth["lung_right"]) > 0.95


def test_unknown_segment_is_refused(tmp_path, capsys):
    """A readable volume with an unknown segment name: exit 2, the message names the segment, nothing is written."""
    vol, _ = torso()
    path = write_volume(vol, tmp_path / "torso.nrrd")
    assert main(["export", str(path), "--segment", "lungs,liver", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown segment(s) liver;" in err and "lungs" in err.split("choose from")[1]  # the valid names offered
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
    with pytest.raises(XWinInputError, match=r"unknown segment\(s\) liver;"):
        segment(vol, ["liver"])


def _oblique(left_handed: bool = False) -> Volume:
    d = Rotation.from_euler("zyx", [20.0, -10.0, 15.0], degrees=True).as_matrix()
    if left_handed:
        d[:, 2] *= -1
    hu = np.random.default_rng(3).normal(-200, 600, (6, 9, 11)).astype(np.float32)
    return Volume(hu, (0.7, 0.85, 2.5), (-120.123456, 33.5, -301.25), d)


@pytest.mark.parametrize("left_handed", [False, True])
def test_dicom_series_round_trip(tmp_path, left_handed):
    vol = _oblique(left_handed)
    files = write_ct_series(vol, tmp_path / "ct")
    assert len(files) == vol.array.shape[0] and all(f.is_file() for f in files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "ct")))
    img = reader.Execute()
    hu = sitk.GetArrayFromImage(img).astype(np.float64)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    expected = np.rint(vol.array.astype(np.float64))
    lps = vol.lps_from_ijk
    if left_handed:  # written with k reversed: the same voxels in space
        expected = expected[::-1]
        np.testing.assert_allclose(d[:, 2], -vol.direction[:, 2], atol=1e-6)
        np.testing.assert_allclose(img.GetOrigin(), lps[:3] @ [0, 0, vol.array.shape[0] - 1, 1], atol=1e-4)
    else:
        np.testing.assert_allclose(d, vol.direction, atol=1e-6)
        np.testing.assert_allclose(img.GetOrigin(), vol.origin, atol=1e-4)
    np.testing.assert_array_equal(hu, expected)
    np.testing.assert_allclose(img.GetSpacing(), vol.spacing, atol=1e-4)
    # pydicom: the same HU and per-slice positions; shared UIDs
    ds = sorted((pydicom.dcmread(str(f)) for f in files), key=lambda s: int(s.InstanceNumber))
    arr = np.stack([s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in ds])
    np.testing.assert_array_equal(arr, expected)
    assert len({(s.StudyInstanceUID, s.SeriesInstanceUID, s.FrameOfReferenceUID) for s in ds}) == 1
    assert ds[0].pixel_array.dtype == np.int16
    for kk, s in enumerate(ds):
        pos = np.asarray(img.TransformIndexToPhysicalPoint((0, 0, kk)))
        np.testing.assert_allclose(np.asarray(s.ImagePositionPatient, float), pos, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ds[0].ImageOrientationPatient, float), d[:, :2].T.ravel(), atol=1e-6)


def test_nifti_seg_nrrd_and_dicom_seg(tmp_path):
    vol, _ = torso()
    result = export_segmentation(vol, ["lungs", "body", "bone"], tmp_path, dicom_seg=highdicom_available())
    assert result["labels"] == {"lungs": 1, "body": 2, "bone": 3}
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels == {"background": 0, "lungs": 1, "body": 2, "bone": 3}
    nii = sitk.ReadImage(str(tmp_path / "segmentation.nii.gz"))
    lab = sitk.GetArrayFromImage(nii)
    assert set(np.unique(lab)) == {0, 1, 2, 3}
    np.testing.assert_allclose(nii.GetOrigin(), vol.origin, atol=1e-4)
    header = read_seg_nrrd_header(tmp_path / "segmentation.seg.nrrd")
    assert [header[f"Segment{n}_Name"] for n in range(3)] == ["lungs", "body", "bone"]
    assert [header[f"Segment{n}_LabelValue"] for n in range(3)] == ["1", "2", "3"]
    assert all(header[f"Segment{n}_Layer"] == "0" for n in range(3))
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    seg = sitk.ReadImage(str(tmp_path / "segmentation.seg.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), lab)
    kk, jj, ii = np.nonzero(lab == 1)
    assert header["Segment0_Extent"] == f"{ii.min()} {ii.max()} {jj.min()} {jj.max()} {kk.min()} {kk.max()}"
    if highdicom_available():
        ds = pydicom.dcmread(str(tmp_path / "segmentation.dcm"))
        assert ds.Modality == "SEG" and [s.SegmentLabel for s in ds.SegmentSequence] == ["lungs", "body", "bone"]
        ct0 = pydicom.dcmread(str(sorted((tmp_path / "dicom").iterdir())[0]))
        assert ds.FrameOfReferenceUID == ct0.FrameOfReferenceUID and ds.StudyInstanceUID == ct0.StudyInstanceUID


def test_cli_export(tmp_path, capsys):
    vol, _ = torso()
    img = sitk.GetImageFromArray(vol.array)
    img.SetSpacing(tuple(vol.spacing))
    img.SetOrigin(tuple(vol.origin))
    src = tmp_path / "vol.nrrd"
    sitk.WriteImage(img, str(src))
    out = tmp_path / "out"
    assert main(["export", str(src), "--segment", "lung_left,lung_right,body,bone", "--out", str(out), "--dicom",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["labels"]) == {"lung_left", "lung_right", "body", "bone"}
    assert (out / "segmentation.seg.nrrd").is_file() and len(list((out / "dicom").glob("*.dcm"))) == 40
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.float32)), str(flat))
    assert main(["export", str(flat), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_real_chest_ct_has_two_lungs(shared_data):
    from xwin.io import read_ct
    path = shared_data / "ct" / "pyradiomics_lung1_ct.nii.gz"
    if not path.is_file():
        pytest.skip(f"real-data test skipped: {path} not found")
    ct = read_ct(path)
    masks = segment(ct, ["lung_left", "lung_right"])
    ml = float(np.prod(ct.spacing)) / 1000
    volumes = {n: m.sum() * ml for n, m in masks.items()}
    # measured: left 1088 mL, right 1787 mL (the scan is cropped to 48 slices × 5 mm)
    assert all(1000 <= v <= 4000 for v in volumes.values()), volumes
    _, values = labelmap(masks)
    assert values == {"lung_left": 1, "lung_right": 2}
