"""What each structure XWin segments is, once for every export: SNOMED CT code, colour, Slicer terminology entry.

Used by the DICOM SEG (segmented property category and type), the ``.seg.nrrd`` (Slicer's ``TerminologyEntry`` tag,
so the Segment Editor shows the standard term and its colour) and the Slicer module's segmentation nodes.
"""
from __future__ import annotations

from typing import NamedTuple


class Term(NamedTuple):
    """SNOMED CT codes: segmented property category and type ((code, meaning) each); colour RGB in [0, 1]."""

    category: tuple[str, str]
    type: tuple[str, str]
    color: tuple[float, float, float]


ANATOMY = ("123037004", "Anatomical Structure")
TISSUE = ("85756007", "Tissue")
#: by mask name (`xwin.export.masks.SEGMENTS`), as in Slicer's General Anatomy list where it has the term (bone: a
#: tissue type there; left/right lung: pre-coordinated SNOMED CT codes); colours close to that list's
TERMS = {"body": Term(ANATOMY, ("38266002", "Entire body"), (0.694, 0.478, 0.396)),
         "lungs": Term(ANATOMY, ("39607008", "Lung"), (0.772, 0.537, 0.490)),
         "lung_left": Term(ANATOMY, ("44029006", "Left lung"), (0.772, 0.537, 0.490)),
         "lung_right": Term(ANATOMY, ("3341006", "Right lung"), (0.690, 0.478, 0.647)),
         "bone": Term(TISSUE, ("272673000", "Bone"), (0.945, 0.839, 0.569))}
#: any other name: tissue
OTHER = Term(TISSUE, TISSUE, (0.5, 0.68, 0.5))

# Slicer's terminology context names (Slicer/Slicer, Modules/Loadable/Terminologies/Resources/
# SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json and AnatomicRegionAndModifier-DICOM-Master.json)
SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
SLICER_ANATOMY = "Anatomic codes - DICOM master list"


def term(name: str) -> Term:
    return TERMS.get(name, OTHER)


def slicer_terminology_entry(name: str) -> str:
    """The value of Slicer's ``TerminologyEntry`` segment tag: context~category~type~type modifier~anatomic
    context~anatomic region~region modifier, each code as ``scheme^value^meaning``."""
    t = term(name)
    return f"{SLICER_CONTEXT}~SCT^{'^'.join(t.category)}~SCT^{'^'.join(t.type)}~^^~{SLICER_ANATOMY}~^^~^^"
