"""DICOM CT series export of a `Volume` (HU): one CT Image Storage file per k-slice, written atomically.

Geometry (LPS mm, exactly the volume's): ImageOrientationPatient = the i and j direction cosines (row, column);
ImagePositionPatient of slice k = origin + D·diag(spacing)·(0, 0, k); PixelSpacing = (spacing_j, spacing_i)
(row spacing first); SliceThickness = SpacingBetweenSlices = spacing_k. A left-handed grid (det D = −1) is written
with its k axis reversed — the same image in space; DICOM readers rebuild the slice normal as row × column.
Pixels: int16 ``round(HU) + 1024`` with RescaleSlope 1, RescaleIntercept −1024 (HU outside [−33792, 31743] clip).
Study, Series and Frame of Reference UIDs are shared by all slices (`pydicom.uid.generate_uid`).
"""
from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from ..errors import XWinInputError
from ..io.image import Volume
from ..io.writers import apply_umask

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


def write_ct_series(volume: Volume, folder, *, patient_name: str = "XWin^Export", patient_id: str = "XWIN",
                    series_description: str = "XWin volume", study_uid: str | None = None,
                    frame_of_reference_uid: str | None = None) -> list[Path]:
    """Write ``volume`` as a DICOM CT series into ``folder`` (created or replaced as a whole); returns the files."""
    vol = right_handed(volume)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise XWinInputError(folder, "exists and is not a folder")
    d, sp = vol.direction, vol.spacing
    nk, nj, ni = vol.array.shape
    study = study_uid or generate_uid()
    series, frame = generate_uid(), frame_of_reference_uid or generate_uid()
    now = datetime.datetime.now()
    stored = np.clip(np.rint(vol.array.astype(np.float64)) - INTERCEPT, -32768, 32767).astype(np.int16)
    orient = [_ds(x) for x in np.concatenate([d[:, 0], d[:, 1]])]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        files = []
        for k in range(nk):
            uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.Modality, ds.Manufacturer = "CT", "XWin"
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.PatientName, ds.PatientID = patient_name, patient_id
            ds.PatientBirthDate = ds.PatientSex = ds.ReferringPhysicianName = ds.AccessionNumber = ""
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
            ds.SeriesDescription = series_description[:64]
            ds.PositionReferenceIndicator = ""
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
            path = tmp / f"slice_{k:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(folder / path.name)
        apply_umask(tmp)
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            os.replace(folder, old / "x")
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return files
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
