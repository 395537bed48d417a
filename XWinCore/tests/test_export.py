"""Export: threshold masks (synthetic torso + a real chest CT), NIfTI/labels.json, Slicer .seg.nrrd, DICOM CT series
round trip (SimpleITK and pydicom against the original), DICOM SEG (when highdicom is installed) and `xwin export`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings

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
    # overlapping segments kept whole: lungs and bone (disjoint) share layer 0, body (which contains both) has layer 1
    assert [header[f"Segment{n}_Layer"] for n in range(3)] == ["0", "1", "0"]
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    seg = sitk.ReadImage(str(tmp_path / "segmentation.seg.nrrd"))
    assert seg.GetNumberOfComponentsPerPixel() == 2 and seg.GetSize() == vol.array.shape[::-1]
    np.testing.assert_allclose(seg.GetOrigin(), vol.origin, atol=1e-9)
    layer = sitk.GetArrayFromImage(seg)  # [k, j, i, layer]
    masks = segment(vol, ["lungs", "body", "bone"])
    np.testing.assert_array_equal(layer[..., 1] == 2, masks["body"])  # the whole body, lungs and bone included
    np.testing.assert_array_equal(layer[..., 0] == 1, masks["lungs"])
    np.testing.assert_array_equal(layer[..., 0] == 3, masks["bone"])
    assert (masks["body"] & masks["lungs"]).sum() == masks["lungs"].sum() > 0
    assert result["voxels"] == {n: int(m.sum()) for n, m in masks.items()}
    # the NIfTI (one label per voxel) keeps the more specific segment where they overlap
    assert (lab[masks["lungs"]] == 1).all() and (lab[masks["bone"]] == 3).all()
    kk, jj, ii = np.nonzero(masks["lungs"])
    assert header["Segment0_Extent"] == f"{ii.min()} {ii.max()} {jj.min()} {jj.max()} {kk.min()} {kk.max()}"
    if highdicom_available():
        import highdicom as hd
        ds = pydicom.dcmread(str(tmp_path / "segmentation.dcm"))
        assert ds.Modality == "SEG" and [s.SegmentLabel for s in ds.SegmentSequence] == ["lungs", "body", "bone"]
        ct0 = pydicom.dcmread(str(sorted((tmp_path / "dicom").iterdir())[0]))
        assert ds.FrameOfReferenceUID == ct0.FrameOfReferenceUID and ds.StudyInstanceUID == ct0.StudyInstanceUID
        assert ds.PatientID == ct0.PatientID and ds.PatientName == ct0.PatientName
        # the SEG's body segment is the whole body mask (overlapping the lungs), frame by frame in CT slice order
        sop_uids = [(pydicom.dcmread(str(f)).SOPInstanceUID) for f in sorted((tmp_path / "dicom").iterdir())]
        planes = hd.seg.Segmentation.from_dataset(ds).get_pixels_by_source_instance(
            source_sop_instance_uids=sop_uids, segment_numbers=[1, 2, 3], combine_segments=False,
            assert_missing_frames_are_empty=True)
        for number, name in enumerate(["lungs", "body", "bone"]):
            np.testing.assert_array_equal(planes[..., number].astype(bool), masks[name])


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


def test_an_export_removes_the_outputs_of_an_earlier_export_it_does_not_replace(tmp_path, capsys):
    """Campaign 9: an export into the folder of an earlier one left that one's DICOM series and SEG beside the new
    labels (the SEG pointing to a series no longer there), exit 0. They go when the new outputs are published; other
    files of the folder stay."""
    vol, _ = torso()
    src = tmp_path / "vol.nrrd"
    write_volume(vol, src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    seg = ["--dicom-seg"] if highdicom_available() else []
    assert main(["export", str(src), "--out", str(out), "--dicom", *seg]) == 0
    assert (out / "dicom").is_dir() and (out / "segmentation.dcm").is_file() == bool(seg)
    assert main(["export", str(src), "--out", str(out), "--segment", "body"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["labels.json", "notes.txt", "segmentation.nii.gz",
                                                     "segmentation.seg.nrrd"]
    assert json.loads((out / "labels.json").read_text()) == {"background": 0, "body": 1}


def test_an_export_never_removes_what_an_export_did_not_write(tmp_path, capsys):
    """Campaign 10: the D1 fix removed a `dicom/` holding the user's notes and a user folder named
    `segmentation.dcm`; rewriting `dicom/` replaced it whole, notes included. A `dicom/` of other files is refused
    before any work; what is not an export's output is left alone."""
    vol, _ = torso()
    src = tmp_path / "vol.nrrd"
    write_volume(vol, src)
    out = tmp_path / "out"
    assert main(["export", str(src), "--out", str(out), "--dicom"]) == 0
    (out / "dicom" / "notes.txt").write_text("mine")
    (out / "segmentation.dcm").mkdir()
    (out / "segmentation.dcm" / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", str(src), "--out", str(out), "--dicom", "--segment", "body"]) == 2
    assert "holds 1 other file(s) or folder(s), e.g. 'notes.txt'" in capsys.readouterr().err
    assert main(["export", str(src), "--out", str(out), "--segment", "body"]) == 0
    assert (out / "dicom" / "notes.txt").read_text() == "mine" and len(list((out / "dicom").glob("*.dcm"))) == 40
    assert (out / "segmentation.dcm" / "keep.txt").read_text() == "mine"
    assert json.loads((out / "labels.json").read_text()) == {"background": 0, "body": 1}
    mine = tmp_path / "mine"  # campaign 11: a user's file that merely has the SEG's name, in a folder never exported
    mine.mkdir()
    (mine / "segmentation.dcm").write_text("my notes")
    (mine / "dicom").mkdir()
    (mine / "dicom" / "slice_0000.dcm").write_text("not DICOM")
    assert main(["export", str(src), "--out", str(mine), "--segment", "body"]) == 0
    assert (mine / "segmentation.dcm").read_text() == "my notes"
    assert (mine / "dicom" / "slice_0000.dcm").read_text() == "not DICOM"
    pipes = tmp_path / "pipes"  # looked at, never opened: opening a FIFO blocks until a writer comes
    (pipes / "dicom").mkdir(parents=True)
    os.mkfifo(pipes / "dicom" / "slice_0000.dcm")
    os.mkfifo(pipes / "segmentation.dcm")
    assert main(["export", str(src), "--out", str(pipes), "--segment", "body"]) == 0
    assert (pipes / "segmentation.dcm").is_fifo() and (pipes / "dicom" / "slice_0000.dcm").is_fifo()


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


# ---- DICOM a PACS accepts: identity carried over or given or fresh, every Type 1/2 attribute, dciodvfy clean ----

SOURCE_IDENTITY = {"PatientID": "PAT-0042", "PatientName": "Doe^Jane", "PatientBirthDate": "19600101",
                   "PatientSex": "F", "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.111", "StudyID": "S7",
                   "AccessionNumber": "ACC99", "FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.222",
                   "PatientPosition": "FFS", "BodyPartExamined": "CHEST"}


def _series(folder):
    return sorted((pydicom.dcmread(str(f)) for f in folder.glob("*.dcm")), key=lambda s: int(s.InstanceNumber))


@pytest.fixture(scope="module")
def dicom_source(tmp_path_factory):
    """The torso as a DICOM CT series of a known patient and study (head-first would be HFS; this one is FFS)."""
    from xwin.export import dicom_identity
    vol, _ = torso()
    folder = tmp_path_factory.mktemp("src") / "ct"
    identity = {**dicom_identity(), **SOURCE_IDENTITY}
    write_ct_series(vol, folder, identity=identity)
    return folder


def test_export_carries_the_dicom_source_identity(tmp_path, dicom_source, capsys):
    out = tmp_path / "out"
    args = ["export", str(dicom_source), "--out", str(out), "--dicom"] + (["--dicom-seg"] if highdicom_available()
                                                                          else [])
    assert main(args) == 0, capsys.readouterr().err
    src = _series(dicom_source)[0]
    written = _series(out / "dicom")
    for ds in written + ([pydicom.dcmread(str(out / "segmentation.dcm"))] if highdicom_available() else []):
        for key, value in SOURCE_IDENTITY.items():
            if key not in ("PatientPosition", "BodyPartExamined") or ds.Modality == "CT":  # CT-only
                assert str(ds.get(key)) == value, (ds.Modality, key)
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID  # a new, derived series of the same study
    assert len({ds.SeriesInstanceUID for ds in written}) == 1


def test_export_identity_given_on_the_command_line(tmp_path, dicom_source, capsys):
    out = tmp_path / "out"
    study = "1.2.826.0.1.3680043.8.498.777"
    assert main(["export", str(dicom_source), "--out", str(out), "--dicom", "--patient-id", "NEW1",
                 "--patient-name", "Roe^Richard", "--study-uid", study]) == 0, capsys.readouterr().err
    ds = _series(out / "dicom")[0]
    assert (ds.PatientID, str(ds.PatientName), ds.StudyInstanceUID) == ("NEW1", "Roe^Richard", study)
    assert ds.FrameOfReferenceUID == SOURCE_IDENTITY["FrameOfReferenceUID"]  # still the source's grid
    assert ds.get("AccessionNumber", "") != "ACC99"  # another study: the source's accession does not apply


@pytest.mark.parametrize("flag,value", [("--study-uid", "1.2.abc"), ("--study-uid", "1." + "2" * 70),
                                        ("--patient-id", "a\\b"), ("--patient-id", "x" * 65),
                                        ("--patient-name", "A\x01B")])
def test_bad_identity_flags_are_refused_before_work(tmp_path, dicom_source, capsys, flag, value):
    out = tmp_path / "out"
    assert main(["export", str(dicom_source), "--out", str(out), "--dicom", flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_source_values_beyond_their_vr_are_read_quietly_and_never_exported(tmp_path, dicom_source, capsys):
    """A 70-character PatientID (LO allows 64): read and shown without pydicom's UserWarning on stderr (campaign 12),
    but not written into an exported series, which would be invalid DICOM; --patient-id replaces it."""
    src = tmp_path / "ct"
    shutil.copytree(dicom_source, src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in sorted(src.iterdir()):
            ds = pydicom.dcmread(f)
            ds.PatientID = "P" * 70
            ds.save_as(f)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["info", str(src)]) == 0
        assert "P" * 70 in capsys.readouterr().out
        assert main(["export", str(src), "--out", str(out), "--dicom"]) == 2
    assert not [w for w in caught if "maximum length" in str(w.message)]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(src) in err[0] and "PatientID" in err[0] and "--patient-id" in err[0], err
    assert not out.exists()
    assert main(["export", str(src), "--out", str(out), "--dicom", "--patient-id", "P1"]) == 0
    assert _series(out / "dicom")[0].PatientID == "P1"


def test_identity_flags_need_dicom_output(tmp_path, dicom_source, capsys):
    assert main(["export", str(dicom_source), "--out", str(tmp_path / "o"), "--patient-id", "P"]) == 2
    assert "add --dicom" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_exports_of_unknown_patients_are_never_merged(tmp_path):
    """No DICOM source, nothing given: each export is a new patient with a new study (never XWIN / XWin^Export)."""
    vol = _oblique()
    seen = []
    for n in range(2):
        ds = _series_of(write_ct_series(vol, tmp_path / f"ct{n}"))
        seen.append((ds.PatientID, str(ds.PatientName), ds.StudyInstanceUID, ds.FrameOfReferenceUID))
        assert ds.PatientID not in ("XWIN", "") and str(ds.PatientName) not in ("XWin^Export", "")
    assert all(a != b for a, b in zip(*seen))


def _series_of(files):
    return pydicom.dcmread(str(files[0]))


def test_every_type_1_and_2_attribute_is_present(tmp_path):
    ds = _series_of(write_ct_series(_oblique(), tmp_path / "ct"))
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "Modality", "SeriesInstanceUID",
                "SeriesNumber", "Laterality", "PatientPosition", "FrameOfReferenceUID", "PositionReferenceIndicator",
                "Manufacturer", "InstanceNumber", "ImageType", "KVP", "AcquisitionNumber", "RescaleIntercept",
                "RescaleSlope", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
        assert key in ds, key


def _dciodvfy(path) -> list[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [ln for ln in (done.stdout + done.stderr).splitlines() if ln.startswith("Error")]


@pytest.mark.parametrize("source", ["nrrd", "dicom"])
def test_dciodvfy_finds_no_error_in_the_series_and_seg(tmp_path, dicom_source, source):
    """dciodvfy (apt package dicom3tools, installed by `make test`) on every slice of the series and on the SEG."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not found: install the apt package dicom3tools (make test does) to validate the DICOM "
                    "XWin writes")
    if source == "nrrd":
        src = write_volume(torso()[0], tmp_path / "torso.nrrd")
    else:
        src = dicom_source
    out = tmp_path / "out"
    assert main(["export", str(src), "--out", str(out), "--dicom"]
                + (["--dicom-seg"] if highdicom_available() else [])) == 0
    files = sorted((out / "dicom").glob("*.dcm")) + ([out / "segmentation.dcm"] if highdicom_available() else [])
    errors = {f.name: _dciodvfy(f) for f in files}
    assert not any(errors.values()), {k: v for k, v in errors.items() if v}


def test_slicer_reads_the_overlapping_segments_whole(tmp_path):
    """Slicer's own vtkMRMLSegmentationStorageNode (the ``slicer-core`` wheel of `make test`) reads the layered
    .seg.nrrd: three segments, body whole (lungs and bone inside it), each with exactly the mask's voxels."""
    slicer = pytest.importorskip("slicer",
                                 reason="needs the slicer-core wheel (Resources/requirements-test-slicer.txt)")
    from vtkmodules.util.numpy_support import vtk_to_numpy

    vol, _ = torso()
    export_segmentation(vol, ["lungs", "body", "bone"], tmp_path)
    masks = segment(vol, ["lungs", "body", "bone"])
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(tmp_path / "segmentation.seg.nrrd"))
    assert storage.ReadData(node)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())] == \
        ["lungs", "body", "bone"]
    for i, name in enumerate(["lungs", "body", "bone"]):
        segment_ = segmentation.GetNthSegment(i)
        image = segment_.GetRepresentation("Binary labelmap")
        voxels = vtk_to_numpy(image.GetPointData().GetScalars()) == segment_.GetLabelValue()
        assert int(voxels.sum()) == int(masks[name].sum()), name


def test_reconstruction_as_dicom_keeps_the_source_ct_identity(tmp_path, dicom_source, capsys):
    """`xwin reconstruct --from-ct DICOM --out FOLDER`: the reconstruction is on the CT's LPS grid, so the series is
    filed under the CT's patient, study and frame of reference (a new series); the flags override, and are refused
    when no DICOM is written."""
    base = ["reconstruct", "--from-ct", str(dicom_source), "--views", "4", "--size", "8", "8", "8", "--det", "16",
            "16", "--json"]
    assert main(base + ["--out", str(tmp_path / "series")]) == 0, capsys.readouterr().err
    ds = _series(tmp_path / "series")[0]
    for key in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "PatientPosition"):
        assert str(ds.get(key)) == SOURCE_IDENTITY[key], key
    assert main(base + ["--out", str(tmp_path / "s2"), "--patient-id", "OTHER"]) == 0
    assert _series(tmp_path / "s2")[0].PatientID == "OTHER"
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "v.nrrd"), "--patient-id", "X"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apply to DICOM output" in err[0] and not (tmp_path / "v.nrrd").exists()
