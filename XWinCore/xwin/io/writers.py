"""Write volumes and 2D images atomically: a temporary file in the target folder, renamed only once complete."""
from __future__ import annotations

import os
import re
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import SimpleITK as sitk
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..errors import XWinInputError
from .image import Radiograph, Volume

ITK_WRITE_EXTENSIONS = (".nrrd", ".nii", ".nii.gz", ".mha")


def _suffix(name: str) -> str:
    """The file type suffix, keeping a compression suffix with its type: '.nii.gz', '.png'."""
    stem, ext = os.path.splitext(name)
    return os.path.splitext(stem)[1] + ext if ext.lower() == ".gz" else ext


def _umask() -> int:
    """The process umask: read from /proc where there is one (no race), else set and restored."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (and, for a folder, everything in it) the permissions of a new file or folder under the umask.

    Written through a private temporary (``tempfile`` makes 0600 files and 0700 folders, safetensors writes 0600
    files), an output would otherwise stay unreadable to the colleagues who share the folder.
    """
    mask = _umask()
    path = Path(path)
    items = [path] + (sorted(path.rglob("*")) if path.is_dir() else [])
    for item in items:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path (same folder and suffix as ``path``) to write to; on success it replaces ``path``.

    On any exception the temporary file is deleted, so neither a partial ``path`` nor litter is left behind.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise XWinInputError(path, f"cannot write: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{_suffix(path.name)}")
    try:
        yield tmp
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _itk_extension(path: Path) -> None:
    if not path.name.lower().endswith(ITK_WRITE_EXTENSIONS):
        raise XWinInputError(path, "unknown extension for a volume; use " + ", ".join(ITK_WRITE_EXTENSIONS))


NOT_WRITTEN_META = ("patient_id", "series_uid")  # identifiers read from DICOM headers stay out of written volumes
NIFTI_DESCRIP_CHARS = 79  # the NIfTI-1 header's descrip field holds 80 bytes, NUL included


def _volume_meta(meta: dict[str, Any]) -> dict[str, str]:
    """``Volume.meta`` as the key/value strings a volume file keeps: one line each, keys of letters, digits, ``_``,
    ``-`` and ``.``; ITK's and NRRD's reserved prefixes and the patient identifiers of `NOT_WRITTEN_META` dropped."""
    text = {}
    for key, value in meta.items():
        key = re.sub(r"[^A-Za-z0-9_.-]", "_", str(key))
        if key and key not in NOT_WRITTEN_META and not key.startswith(("ITK_", "NRRD_")):
            text[key] = " ".join(str(value).split())
    return text


def write_volume(volume: Volume, path: str | os.PathLike) -> Path:
    """Write a `Volume` (float32 HU) to .nrrd / .nii / .nii.gz / .mha with its spacing (mm), LPS origin and direction.

    ``volume.meta`` is kept (as strings, see `_volume_meta`): NRRD and MHA store each entry as a key/value field;
    NIfTI has one free-text field, ``descrip`` (79 characters), which gets ``meta["description"]`` or else the entries
    as ``key=value; ...``. Returns ``path``. NIfTI stores the geometry in float32, the other formats in full precision.
    """
    path = Path(path)
    _itk_extension(path)
    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing(tuple(float(s) for s in volume.spacing))
    image.SetOrigin(tuple(float(o) for o in volume.origin))
    image.SetDirection(tuple(float(d) for d in volume.direction.ravel()))
    meta = _volume_meta(volume.meta)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        descrip = meta.get("description") or "; ".join(f"{k}={v}" for k, v in meta.items())
        if descrip:
            ascii_text = descrip.encode("ascii", "replace")[:NIFTI_DESCRIP_CHARS].decode("ascii")
            image.SetMetaData("ITK_FileNotes", ascii_text)  # ITK's NIfTI writer puts it in descrip
    else:
        for key, value in meta.items():
            image.SetMetaData(key, value)
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def write_image(image: np.ndarray | Radiograph, path: str | os.PathLike,
                spacing: tuple[float, float] | None = None, meta: dict[str, Any] | None = None,
                bits: int = 8) -> Path:
    """Write a 2D image ``[row, col]`` to .nrrd / .mha / .nii / .nii.gz (float32, spacing kept) or .png.

    spacing: (row, col) mm; defaults to a Radiograph's own pixel_spacing. meta: key/value strings stored in the file
    where the format allows (NRRD and MHA fields, PNG text chunks). PNG (``bits`` 8 or 16, no spacing): floats within
    [0, 1] are scaled to the full range, anything else is min-max scaled.
    """
    path = Path(path)
    if isinstance(image, Radiograph):
        spacing = image.pixel_spacing if spacing is None else spacing
        array = image.array
    else:
        array = np.asarray(image)
    if array.ndim != 2 or not np.all(np.isfinite(array)):
        raise XWinInputError(path, f"cannot write: need a finite 2D image, got shape {array.shape}")
    text = {str(k): str(v) for k, v in (meta or {}).items()}
    if path.name.lower().endswith(".png"):
        return _write_png(array, path, text, bits)
    _itk_extension(path)
    out = sitk.GetImageFromArray(array.astype(np.float32))
    if spacing is not None:
        out.SetSpacing((float(spacing[1]), float(spacing[0])))
    for key, value in text.items():
        out.SetMetaData(key, value)
    with atomic_output(path) as tmp:
        sitk.WriteImage(out, str(tmp), useCompression=True)
    return path


def _write_png(array: np.ndarray, path: Path, text: dict[str, str], bits: int) -> Path:
    if bits not in (8, 16):
        raise XWinInputError(path, f"PNG bit depth must be 8 or 16, got {bits}")
    values = array.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if not (np.issubdtype(array.dtype, np.floating) and lo >= 0.0 and hi <= 1.0):
        values = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    top = 2 ** bits - 1
    pixels = np.rint(np.clip(values, 0.0, 1.0) * top).astype(np.uint8 if bits == 8 else np.uint16)
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    with atomic_output(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info)
    return path
