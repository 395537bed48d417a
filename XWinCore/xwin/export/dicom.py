"""DICOM CT series export of a `Volume` (HU): one CT Image Storage file per k-slice, the series folder written
atomically (`xwin.io.writers.atomic_output`).

Geometry (LPS mm, exactly the volume's): ImageOrientationPatient = the i and j direction cosines (row, column);
ImagePositionPatient of slice k = origin + D·diag(spacing)·(0, 0, k); PixelSpacing = (spacing_j, spacing_i)
(row spacing first); SliceThickness = SpacingBetweenSlices = spacing_k. A left-handed grid (det D = −1) is written
with its k axis reversed — the same image in space; DICOM readers rebuild the slice normal as row × column.
Pixels: int16 ``round(HU) + 1024`` with RescaleSlope 1, RescaleIntercept −1024 (HU outside [−33792, 31743] clip).

Identity (`dicom_identity`): patient, study, frame of reference and patient position are carried over from a DICOM
source series (the export of a CT read from DICOM files under the same patient and study in a PACS), or given
(``--patient-id/--patient-name/--study-uid``); what is neither gets a fresh unique value (a new PatientID per export,
never a shared constant that would merge all exports under one patient). The series and instance UIDs are always new.
"""
from __future__ import annotations

import datetime
import os
import re
import uuid
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds, validate_value

from ..errors import XWinInputError
from ..io.dicom_compat import lenient_values, save
from ..io.image import Volume
from ..io.writers import atomic_output, check_target

INTERCEPT = -1024.0


def _ds(x: float) -> str:
    return format_number_as_ds(float(x)) if abs(x) > 1e-12 else "0"


def right_handed(volume: Volume) -> Volume:
    """The same image with its k axis reversed when the direction matrix is left-handed."""
    d = volume.direction
    if np.linalg.det(d) > 0:
        return volume
    nk = volume.array.shape[0]
    origin = volume.origin + d[:, 2] * volume.spacing[2] * (nk - 1)
    d2 = d.copy()
    d2[:, 2] = -d2[:, 2]
    return Volume(volume.array[::-1].copy(), volume.spacing, origin, d2, dict(volume.meta))


# carried over from the source series: Patient, General Study, Frame of Reference, and the series-level patient
# position/laterality (the exported volume is the source's image on the source's grid)
IDENTITY_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                 "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
                 "StudyDescription", "FrameOfReferenceUID", "PositionReferenceIndicator", "PatientPosition",
                 "Laterality", "BodyPartExamined")
PATIENT_POSITIONS = ("HFP", "HFS", "HFDR", "HFDL", "FFDR", "FFDL", "FFP", "FFS", "LFP", "LFS", "RFP", "RFS", "AFDR",
                     "AFDL", "PFDR", "PFDL")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\\\]")


def new_patient_id() -> str:
    """A fresh PatientID unique to one export (no two exports of unknown patients share a patient in a PACS)."""
    return "XW" + uuid.uuid4().hex[:16].upper()


SPATIAL_KEYS = ("FrameOfReferenceUID", "PositionReferenceIndicator", "PatientPosition", "Laterality",
                "BodyPartExamined")


@lenient_values()
def source_identity(source: str | os.PathLike, spatial: bool = True) -> dict[str, str]:
    """The `IDENTITY_KEYS` of a DICOM source: a series folder (its first image header) or a single DICOM file (a
    radiograph); {} for any other source. spatial=False leaves out the frame of reference and the patient position
    (a volume estimated from a radiograph is not on the radiograph's frame)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:
        return {}
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # not DICOM, or damaged: the reader has decided on the input already
            continue
        if "Rows" in ds:
            keys = [k for k in IDENTITY_KEYS if spatial or k not in SPATIAL_KEYS]
            return {k: str(ds.get(k, "") or "") for k in keys if k in ds}
    return {}


def dicom_identity(source: str | os.PathLike | None = None, *, patient_id: str | None = None,
                   patient_name: str | None = None, study_uid: str | None = None,
                   spatial: bool = True) -> dict[str, str]:
    """Patient / study / frame-of-reference attributes for a written series: ``source``'s (a DICOM series folder or
    file; see `source_identity` for ``spatial``) where it has them, overridden by those given, fresh unique ones for
    the rest (PatientID ``XW`` + 16 hex digits, PatientName the same, new Study and Frame of Reference UIDs, today's
    study date). Given values are checked."""
    ident = source_identity(source, spatial) if source is not None else {}
    if patient_id is not None:
        if not patient_id.strip() or len(patient_id) > 64 or _CONTROL.search(patient_id):
            raise XWinInputError(None, f"--patient-id {patient_id!r} is not a DICOM PatientID (1 to 64 characters, "
                                       "no backslash or control characters)")
        ident["PatientID"] = patient_id.strip()
    if patient_name is not None:
        groups = patient_name.split("=")
        if (not patient_name.strip() or len(groups) > 3 or _CONTROL.search(patient_name)
                or any(len(g) > 64 or g.count("^") > 4 for g in groups)):
            raise XWinInputError(None, f"--patient-name {patient_name!r} is not a DICOM person name (Family^Given"
                                       "^Middle^Prefix^Suffix, at most 64 characters, no backslash)")
        ident["PatientName"] = patient_name.strip()
    if study_uid is not None:
        with warnings.catch_warnings():  # pydicom warns of the invalid UID: the one line below says it
            warnings.simplefilter("ignore")
            valid = UID(study_uid).is_valid
        if not valid:
            raise XWinInputError(None, f"--study-uid {study_uid!r} is not a valid DICOM UID (digits and dots, "
                                       "at most 64 characters)")
        if study_uid != ident.get("StudyInstanceUID"):  # another study: the source's study attributes do not apply
            for key in ("StudyID", "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription"):
                ident.pop(key, None)
        ident["StudyInstanceUID"] = study_uid
    for key, value in ident.items():  # read leniently, carried over only when the written DICOM stays valid
        try:
            validate_value(dictionary_VR(key), value, config.RAISE)
        except ValueError as exc:
            options = {"PatientID": "--patient-id", "PatientName": "--patient-name", "StudyInstanceUID": "--study-uid"}
            fix = f"give {options[key]}" if key in options else "export NIfTI or NRRD instead"
            raise XWinInputError(source, f"its {key} cannot be carried into the exported DICOM ({exc}); {fix}") \
                from None
    if not ident.get("PatientID"):
        ident["PatientID"] = new_patient_id()
        ident.setdefault("PatientName", ident["PatientID"] + "^")  # family name = the ID (caret: not a retired form)
    if not ident.get("StudyInstanceUID"):
        ident["StudyInstanceUID"] = generate_uid()
        ident.setdefault("StudyID", "1")
    if not ident.get("FrameOfReferenceUID"):
        ident["FrameOfReferenceUID"] = generate_uid()
    if ident.get("PatientPosition") not in PATIENT_POSITIONS:
        ident["PatientPosition"] = ""  # Type 2C: empty = unknown
    now = datetime.datetime.now()
    if not ident.get("StudyDate"):
        ident["StudyDate"], ident["StudyTime"] = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    return ident


def ct_series_datasets(volume: Volume, identity: dict[str, str] | None = None,
                       series_description: str = "XWin volume") -> list[Dataset]:
    """The CT Image Storage datasets (one per k-slice, right-handed order) of ``volume`` with ``identity``
    (`dicom_identity`; fresh when None): every Type 1 and Type 2 attribute of the CT Image IOD present."""
    ident = dict(identity) if identity is not None else dicom_identity()
    vol = right_handed(volume)
    d, sp = vol.direction, vol.spacing
    nk, nj, ni = vol.array.shape
    series = generate_uid()
    now = datetime.datetime.now()
    stored = np.clip(np.rint(vol.array.astype(np.float64)) - INTERCEPT, -32768, 32767).astype(np.int16)
    orient = [_ds(x) for x in np.concatenate([d[:, 0], d[:, 1]])]
    text = " ".join(str(v) for v in ident.values()) + series_description
    charset = None if text.isascii() else "ISO_IR 192"
    out = []
    for k in range(nk):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        if charset:
            ds.SpecificCharacterSet = charset
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.PatientName = ds.PatientID = ds.PatientBirthDate = ds.PatientSex = ""  # Type 2, filled from ident
        ds.StudyID = ds.AccessionNumber = ds.ReferringPhysicianName = ds.PositionReferenceIndicator = ""
        for key, value in ident.items():
            setattr(ds, key, value)
        if not ds.get("Laterality"):  # Type 2C: empty only while the body part is unknown, else absent (unpaired:
            if ds.get("BodyPartExamined"):  # a chest); dciodvfy flags both the other ways
                ds.pop("Laterality", None)
            else:
                ds.Laterality = ""
        ds.SeriesInstanceUID = series
        ds.Modality, ds.Manufacturer = "CT", "XWin"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = 1, k + 1, ""
        ds.SeriesDescription = series_description[:64]
        ds.KVP = ""  # Type 2: unknown for a derived or reconstructed volume
        pos = vol.origin + d[:, 2] * sp[2] * k
        ds.ImagePositionPatient = [_ds(x) for x in pos]
        ds.ImageOrientationPatient = orient
        ds.SliceLocation = _ds(float(pos @ d[:, 2]))
        ds.PixelSpacing = [_ds(sp[1]), _ds(sp[0])]
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(sp[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = nj, ni
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(INTERCEPT), "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        out.append(ds)
    return out


SLICE_NAME = re.compile(r"slice_\d{4,}\.dcm")


def check_series_target(folder: str | os.PathLike, inputs: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Refuse, before any work, a series folder name taken by a file (or unwritable), one of the command's
    ``inputs``, or a folder holding anything but an earlier series' ``slice_NNNN.dcm``: the series replaces its
    folder as a whole (a shorter new series must not leave old slices behind), which would delete the rest."""
    path = check_target(folder, folder=True, make_parents=True, inputs=inputs)
    if path.is_dir():
        others = sorted(p.name for p in path.iterdir() if not SLICE_NAME.fullmatch(p.name))
        if others:
            raise XWinInputError(path, f"holds {len(others)} other file(s) or folder(s), e.g. {others[0]!r}: a DICOM "
                                       "series is written into a folder of its own, which it replaces as a whole "
                                       "(give a new or empty folder)")
    return path


def write_datasets(datasets: list[Dataset], folder: str | os.PathLike) -> list[Path]:
    """``datasets`` as ``slice_NNNN.dcm`` in ``folder`` (created, or replaced as a whole, atomically)."""
    folder = Path(folder)
    with atomic_output(folder, folder=True, make_parents=True) as tmp:
        for k, ds in enumerate(datasets):
            save(ds, tmp / f"slice_{k:04d}.dcm")
    return [folder / f"slice_{k:04d}.dcm" for k in range(len(datasets))]


def write_ct_series(volume: Volume, folder, *, series_description: str = "XWin volume",
                    identity: dict[str, str] | None = None, patient_name: str | None = None,
                    patient_id: str | None = None, study_uid: str | None = None) -> list[Path]:
    """Write ``volume`` as a DICOM CT series into ``folder`` (created or replaced as a whole); returns the files.

    identity: `dicom_identity` (e.g. of the DICOM source); else one is made from patient_name / patient_id /
    study_uid with fresh unique values for the rest."""
    if identity is None:
        identity = dicom_identity(patient_id=patient_id, patient_name=patient_name, study_uid=study_uid)
    check_series_target(folder)
    return write_datasets(ct_series_datasets(volume, identity, series_description), folder)
