"""Export of volumes and segmentations to segmentation tools (docs/reconstruction.md, "Export").

masks: body / lungs / bone by thresholds and connectivity; labelmaps: multi-label NIfTI + labels.json and Slicer
``.seg.nrrd``; dicom: a DICOM CT series; dicom_seg: DICOM SEG through highdicom (optional extra ``seg``).
"""
from __future__ import annotations

from pathlib import Path

from ..io.image import Volume
from .dicom import right_handed, write_ct_series
from .labelmaps import read_seg_nrrd_header, write_nifti_labels, write_seg_nrrd
from .masks import SEGMENTS, labelmap, segment

__all__ = ["SEGMENTS", "export_segmentation", "labelmap", "read_seg_nrrd_header", "segment", "write_ct_series",
           "write_nifti_labels", "write_seg_nrrd"]


def export_segmentation(volume: Volume, names, out_dir, *, dicom: bool = False, dicom_seg: bool = False) -> dict:
    """Segment ``volume`` (HU) and write ``out_dir``/segmentation.nii.gz, labels.json, segmentation.seg.nrrd,
    optionally the CT series (``dicom/``) and a DICOM SEG (``segmentation.dcm``, implies the series).

    Returns {"labels": {name: value}, "voxels": {name: count}, "files": [paths]}."""
    from .dicom_seg import available, write_dicom_seg
    from ..errors import XWinInputError

    if dicom_seg and not available():
        raise XWinInputError(None, "--dicom-seg needs highdicom: pip install 'xwin[seg]' (highdicom>=0.22)")
    masks = segment(volume, names)
    labels, values = labelmap(masks)
    out = Path(out_dir)
    files = list(write_nifti_labels(labels, values, volume, out))
    files.append(write_seg_nrrd(labels, values, volume, out / "segmentation.seg.nrrd"))
    if dicom or dicom_seg:
        series = write_ct_series(volume, out / "dicom")
        files.append(out / "dicom")
        if dicom_seg:
            flip = right_handed(volume) is not volume
            files.append(write_dicom_seg(labels, values, series, out / "segmentation.dcm", flip_k=flip))
    return {"labels": values, "voxels": {n: int((labels == v).sum()) for n, v in values.items()},
            "files": [str(f) for f in files]}
