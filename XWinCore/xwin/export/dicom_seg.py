"""DICOM Segmentation (SEG) export through highdicom (optional extra: ``pip install xwin[seg]``).

The SEG references the CT series written by `xwin.export.dicom.write_ct_series` (same Study and Frame of
Reference; one frame per CT slice, BINARY segments numbered like the label map, SNOMED CT codes for the
structures XWin segments).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import XWinInputError
from ..io import atomic_output

# (SNOMED CT code, meaning) of the segmented property type; category: Anatomical Structure (SCT 123037004)
CODES = {"body": ("38266002", "Entire body"), "lungs": ("39607008", "Lung"),
         "lung_left": ("44029006", "Left lung"), "lung_right": ("3341006", "Right lung"),
         "bone": ("272673000", "Bone structure")}


def available() -> bool:
    try:
        import highdicom  # noqa: F401
    except ImportError:
        return False
    return True


def write_dicom_seg(labels: np.ndarray, values: dict[str, int], ct_files: list, path, *, flip_k: bool = False) -> Path:
    """``labels`` (``[k, j, i]``, values 1..n as in ``values``) as one DICOM SEG referencing ``ct_files``
    (the series slices in k order). flip_k: the series was written with k reversed (left-handed grid)."""
    if not available():
        raise XWinInputError(None, "DICOM SEG export needs highdicom: pip install 'xwin[seg]' (highdicom>=0.22)")
    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    sources = [pydicom.dcmread(str(f)) for f in ct_files]
    frames = labels[::-1] if flip_k else labels
    category = hd.sr.CodedConcept("123037004", "SCT", "Anatomical Structure")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="xwin-threshold-masks", version="0.1.0",
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"))
    descriptions = []
    for name, value in values.items():
        code, meaning = CODES.get(name, ("85756007", "Tissue"))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=int(value), segment_label=name, segmented_property_category=category,
            segmented_property_type=hd.sr.CodedConcept(code, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.ascontiguousarray(frames.astype(np.uint8)),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=2, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="XWin", manufacturer_model_name="xwin", software_versions="0.1.0", device_serial_number="0",
        series_description="XWin segmentation")
    path = Path(path)
    with atomic_output(path) as tmp:
        seg.save_as(str(tmp))
    return path
