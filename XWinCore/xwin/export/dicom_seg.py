"""DICOM Segmentation (SEG) export through highdicom (optional extra: ``pip install xwin[seg]``).

The SEG references the CT series written by `xwin.export.dicom.write_ct_series` (same Study and Frame of
Reference, the same patient; one frame per CT slice, BINARY segments numbered like the label map, SNOMED CT codes
for the structures XWin segments). Segments may overlap (a SEG stores one binary plane per segment): "body" is the
whole body, lungs and bone included, as in the masks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import XWinInputError
from ..io import atomic_output
from .terminology import term


def available() -> bool:
    try:
        import highdicom  # noqa: F401
    except ImportError:
        return False
    return True


def write_dicom_seg(masks, values: dict[str, int], ct_files: list, path, *, flip_k: bool = False) -> Path:
    """One DICOM SEG referencing the CT series ``ct_files`` (paths or pydicom datasets, the slices in k order).

    masks: {name: boolean ``[k, j, i]``} (overlapping allowed) or a label array (values 1..n as in ``values``).
    flip_k: the series was written with k reversed (left-handed grid)."""
    if not available():
        raise XWinInputError(None, "DICOM SEG export needs highdicom: pip install 'xwin[seg]' (highdicom>=0.22)")
    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    sources = [f if isinstance(f, pydicom.Dataset) else pydicom.dcmread(str(f)) for f in ct_files]
    order = sorted(values, key=values.__getitem__)
    if isinstance(masks, dict):
        planes = np.stack([np.asarray(masks[n], bool) for n in order], axis=-1)
    else:
        planes = np.stack([np.asarray(masks) == values[n] for n in order], axis=-1)
    frames = planes[::-1] if flip_k else planes
    algorithm = hd.AlgorithmIdentificationSequence(
        name="xwin-threshold-masks", version="0.1.0",
        family=hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence"))
    descriptions = []
    for number, name in enumerate(order, start=1):
        t = term(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name,
            segmented_property_category=hd.sr.CodedConcept(t.category[0], "SCT", t.category[1]),
            segmented_property_type=hd.sr.CodedConcept(t.type[0], "SCT", t.type[1]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm))
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.ascontiguousarray(frames.astype(np.uint8)),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=2, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="XWin", manufacturer_model_name="xwin", software_versions="0.1.0", device_serial_number="0",
        series_description="XWin segmentation")
    path = Path(path)
    with atomic_output(path, make_parents=True) as tmp:
        seg.save_as(str(tmp))
    return path
