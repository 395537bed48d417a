"""Embedded demo data (provenance and licences in README.md beside this file)."""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import cast

DEMO_CT = "lidc_idri_0001_ct_small.nii.gz"
DEMO_CXR = "nema_wg04_rg1_chest_cr_j2k.dcm"


def _path(name: str) -> Path:
    """Filesystem path of a packaged file (the package is installed as plain files, never zipped)."""
    path = Path(os.fspath(cast("os.PathLike[str]", resources.files(__package__) / name)))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: XWin sample data missing from the installation")
    return path


def demo_ct_path() -> Path:
    """LIDC-IDRI-0001 chest CT, 128×128×133 at 2.8125×2.8125×2.5 mm, int16 HU, NIfTI (CC BY 3.0)."""
    return _path(DEMO_CT)


def demo_cxr_path() -> Path:
    """NEMA WG04 RG1 chest CR (PA, MONOCHROME1, JPEG 2000 lossy) DICOM from pydicom-data (MIT)."""
    return _path(DEMO_CXR)
