"""Export of volumes and segmentations to segmentation tools (docs/reconstruction.md, "Export").

masks: body / lungs / bone by thresholds and connectivity; labelmaps: multi-label NIfTI + labels.json and Slicer
``.seg.nrrd``; dicom: a DICOM CT series; dicom_seg: DICOM SEG through highdicom (optional extra ``seg``).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import XWinInputError
from ..io.formats import is_dicom_file
from ..io.image import Volume
from ..io.writers import check_target, publish_together
from .dicom import (
    SLICE_NAME,
    check_series_target,
    ct_series_datasets,
    dicom_identity,
    right_handed,
    source_identity,
    write_ct_series,
    write_datasets,
)
from .labelmaps import read_seg_nrrd_header, write_nifti_labels, write_seg_nrrd
from .masks import SEGMENTS, labelmap, segment

__all__ = ["SEGMENTS", "dicom_identity", "export_segmentation", "labelmap", "read_seg_nrrd_header", "segment",
           "source_identity", "write_ct_series", "write_nifti_labels", "write_seg_nrrd"]

OUTPUT_FILES = ("segmentation.nii.gz", "labels.json", "segmentation.seg.nrrd")
OPTIONAL_OUTPUTS = ("dicom", "segmentation.dcm")  # written on request; an earlier export's are removed otherwise
# (only when they are what an export writes: `_earlier_export_output`)


def export_targets(out_dir, *, dicom: bool = False, dicom_seg: bool = False) -> list[tuple[Path, bool]]:
    """(path, is folder) of every output of `export_segmentation`, each checked: a name taken by the wrong kind
    (the DICOM folder name taken by a file, a folder named like a file...) is refused before anything is written."""
    out = Path(out_dir)
    targets = [(out / name, False) for name in OUTPUT_FILES]
    if dicom or dicom_seg:
        targets.append((out / "dicom", True))
    if dicom_seg:
        targets.append((out / "segmentation.dcm", False))
    check_target(out, folder=True, make_parents=True)
    if out.is_dir():
        for path, folder in targets:
            if folder:  # the series replaces its folder as a whole: a folder of other files is refused
                check_series_target(path)
            else:
                check_target(path, folder)
    return targets


def _is_dicom(path: Path) -> bool:
    """A regular file with the DICOM preamble's ``DICM`` marker at byte 128 (what every file an export writes has)."""
    if path.is_symlink() or not path.is_file():  # checked before opening: a FIFO would block the open
        return False
    try:
        return is_dicom_file(path)
    except OSError:
        return False


def _earlier_export_output(path: Path) -> bool:
    """Whether ``path`` is what an earlier export wrote there — a ``dicom/`` folder of DICOM ``slice_NNNN.dcm`` files
    only, a ``segmentation.dcm`` DICOM SEG — so that an export not writing it may remove it; anything else (a user's
    file that merely has the name, campaign 11) is left alone."""
    if path.is_symlink() or not path.exists():
        return False
    if path.name == "dicom":
        return path.is_dir() and all(SLICE_NAME.fullmatch(p.name) and _is_dicom(p) for p in path.iterdir())
    if not _is_dicom(path):
        return False
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality", "")) == "SEG"
    except Exception:  # noqa: BLE001 — any file pydicom cannot read is not an export's SEG
        return False


def export_segmentation(volume: Volume, names, out_dir, *, dicom: bool = False, dicom_seg: bool = False,
                        identity: dict[str, str] | None = None) -> dict:
    """Segment ``volume`` (HU) and write ``out_dir``/segmentation.nii.gz, labels.json, segmentation.seg.nrrd,
    optionally the CT series (``dicom/``) and a DICOM SEG (``segmentation.dcm``, implies the series).

    All outputs are checked before the work and published together at the end: on any failure (or SIGTERM in the
    CLI) none of them is left, nor ``out_dir`` when this call created it. An earlier export's DICOM series or SEG that
    this one does not write is removed when it publishes (it would describe another export). The NIfTI holds one
    label per voxel; the .seg.nrrd and the SEG keep overlapping segments whole (body includes lungs and bone).
    identity: DICOM patient / study / frame of reference (`dicom_identity`; fresh unique values when None).

    Returns {"labels": {name: value}, "voxels": {name: count}, "files": [paths]}."""
    from .dicom_seg import available, write_dicom_seg

    if dicom_seg and not available():
        raise XWinInputError(None, "--dicom-seg needs highdicom: pip install 'xwin[seg]' (highdicom>=0.22)")
    out = Path(out_dir)
    targets = export_targets(out, dicom=dicom, dicom_seg=dicom_seg)
    masks = segment(volume, names)
    labels, values = labelmap(masks)
    with publish_together() as publication:
        base = out if out.is_dir() else publication.stage(out, folder=True, make_parents=True)
        written = {p.name for p, _ in targets}
        for name in OPTIONAL_OUTPUTS:
            if name not in written and _earlier_export_output(out / name):
                publication.retire(out / name)
        write_nifti_labels(labels, values, volume, base)
        write_seg_nrrd(masks, values, volume, base / "segmentation.seg.nrrd")
        if dicom or dicom_seg:
            series = ct_series_datasets(volume, identity if identity is not None else dicom_identity())
            write_datasets(series, base / "dicom")
            if dicom_seg:
                flip = right_handed(volume) is not volume
                write_dicom_seg(masks, values, series, base / "segmentation.dcm", flip_k=flip)
    return {"labels": values, "voxels": {n: int(m.sum()) for n, m in masks.items()},
            "files": [str(p) for p, _ in targets]}
