"""Real chest radiographs for training and evaluation, in the model's input convention.

Each image is read with `xwin.io.read_radiograph` (bone bright, [0, 1]), centre-cropped to a square, resized with
area averaging to the model size, and stretched so its 1st/99th percentiles map to 0/1 (clipped): real films differ
in exposure and windowing far more than DRRs do.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import XWinInputError
from ..io import read_radiograph
from ..io.formats import is_dicom_file
from ..io.validate import file_problem

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")


def to_model_input(image: np.ndarray, size: int, stretch: bool = True) -> np.ndarray:
    """[0, 1] image (H, W) → (size, size) float32: centre square crop, area resize, 1–99 % percentile stretch.

    stretch=False for DRRs: the training pairs keep the radiograph display map 1 − exp(−∫μ/4) unstretched, and the
    decoder predicts in that map (stretching a DRR brightens it, and its predicted views, by ~0.04 on average).
    """
    h, w = image.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = torch.from_numpy(np.ascontiguousarray(image[top:top + s, left:left + s], dtype=np.float32))
    small = F.interpolate(square[None, None], size=(size, size), mode="area")[0, 0].numpy()
    if not stretch:
        return np.clip(small, 0, 1).astype(np.float32)
    lo, hi = np.percentile(small, [1, 99])
    return np.clip((small - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def find_images(folder: str | os.PathLike) -> list[Path]:
    """Radiograph files under ``folder``, sorted: DICOM, PNG and JPEG by suffix, and suffix-less DICOM Part 10 files
    (as PACS exports name them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise XWinInputError(folder, "not a folder of radiographs")
    entries = sorted(p for p in folder.rglob("*") if not p.is_dir())
    named = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
    for p in named:  # a FIFO, socket or device named like a film is refused unopened, not skipped
        problem = file_problem(p)
        if problem and problem != "does not exist":  # a dangling link holds no film: skipped
            raise XWinInputError(p, problem)
    files = sorted([p for p in named if p.is_file()]
                   + [p for p in entries if not p.suffix and _is_dicom_part10(p)])
    if not files:
        others = [p for p in entries if p not in named]
        held = (f"; it holds {len(others)} other file(s), e.g. {others[0].relative_to(folder)} "
                f"({'not a regular file' if file_problem(others[0]) else 'not a radiograph by its name or content'})"
                if others else "")
        raise XWinInputError(folder, f"contains no DICOM, PNG or JPEG radiographs{held}")
    return files


def _is_dicom_part10(path: Path) -> bool:
    """A regular, readable file with the DICOM Part 10 marker (a file that cannot be opened is no film: skipped)."""
    try:
        return file_problem(path) is None and is_dicom_file(path)
    except OSError:
        return False


def load_cxrs(files: list[Path], size: int) -> np.ndarray:
    """(N, size, size) float32 model inputs of the given radiograph files."""
    return np.stack([to_model_input(read_radiograph(f).array, size) for f in files])
