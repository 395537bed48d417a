"""Tiny synthetic DICOM files for the I/O tests: CT Image Storage series and single CR radiographs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from xwin.io.dicom_compat import save

SLOPE, INTERCEPT = 2.0, -1024.0


def _dataset(path: Path, sop_class: str, modality: str, pixels: np.ndarray) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = modality, "XWIN-TEST"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = pixels.tobytes()
    return ds


def ct_series(folder: Path, n: int = 5, size: tuple[int, int] = (8, 8), step: float = 2.5,
              positions: list[float] | None = None, iop=(1, 0, 0, 0, 1, 0), pixel_spacing=(0.6, 0.5),
              origin=(-10.0, -20.0, 30.0), modality: str = "CT", series_uid: str | None = None,
              names: list[str] | None = None) -> tuple[list[Path], np.ndarray]:
    """Write an n-slice series; returns (files in acquisition order, stored values [k, j, i] as int16).

    Slice k lies at ``origin + positions[k] · normal`` (LPS mm) with normal = row × column cosines; stored value of
    voxel (i, j, k) is ``100 k + 10 j + i``, so HU = SLOPE · stored + INTERCEPT.
    """
    folder.mkdir(parents=True, exist_ok=True)
    positions = [k * step for k in range(n)] if positions is None else positions
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    row, col = np.array(iop[:3], float), np.array(iop[3:], float)
    normal = np.cross(row, col)
    j, i = np.mgrid[: size[0], : size[1]]
    stored = np.stack([(100 * k + 10 * j + i).astype(np.int16) for k in range(len(positions))])
    files = []
    for k, z in enumerate(positions):
        path = folder / (names[k] if names else f"slice{k:03d}.dcm")
        ds = _dataset(path, CTImageStorage, modality, stored[k])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study_uid, series_uid, k + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.ImagePositionPatient = [float(v) for v in np.array(origin) + z * normal]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = step
        ds.RescaleSlope, ds.RescaleIntercept = SLOPE, INTERCEPT
        save(ds, path)
        files.append(path)
    return files, stored


def radiograph(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> Path:
    """A single uncompressed CR file with the given uint16 pixels and extra header tags."""
    ds = _dataset(path, ComputedRadiographyImageStorage, "CR", pixels.astype(np.uint16))
    ds.StudyInstanceUID = generate_uid()
    ds.PhotometricInterpretation = photometric
    for key, value in tags.items():
        setattr(ds, key, value)
    save(ds, path)
    return path
