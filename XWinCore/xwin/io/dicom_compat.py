"""pydicom 2.4 and 3.x behind the few calls XWin makes whose names or arguments differ between them.

3D Slicer 5.10 bundles pydicom 2.4 for its DICOM browser and the extension installs XWinCore without replacing it
(`XWinSlicer/XWinSlicerLib/install.py`), while a plain ``pip install`` gets pydicom 3. Everything else XWin uses
(``dcmread``, ``Dataset``, ``pixel_array`` with the pylibjpeg plugins, ``valuerep``, ``uid``) is the same in both.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import pydicom

PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3

if PYDICOM_3:
    from pydicom.encaps import generate_frames as _generate_frames
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
else:  # pydicom 2.4
    from pydicom.encaps import generate_pixel_data_frame as _generate_pixel_data_frame
    from pydicom.pixel_data_handlers.util import (  # type: ignore[no-redef]  # same functions, pydicom 2 module
        apply_modality_lut,
        apply_voi_lut,
    )

__all__ = ["PYDICOM_3", "apply_modality_lut", "apply_voi_lut", "frames", "lenient_values", "read_little_endian",
           "save", "stored_element"]


def frames(pixel_data: bytes, number_of_frames: int) -> Iterator[bytes]:
    """The encapsulated (compressed) frames of a PixelData value, one bytes object each."""
    if PYDICOM_3:
        return _generate_frames(pixel_data, number_of_frames=number_of_frames)
    return _generate_pixel_data_frame(pixel_data, number_of_frames)


def read_little_endian(ds: pydicom.Dataset) -> bool:
    """Whether the dataset was read little endian (its transfer syntax when it has one; DICOM's default otherwise)."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None:
        return bool(syntax.is_little_endian)
    little = ds.original_encoding[1] if PYDICOM_3 else getattr(ds, "read_little_endian", None)
    return little is not False


def save(ds: pydicom.Dataset, path: str | os.PathLike) -> None:
    """Write ``ds`` as a DICOM Part 10 file (preamble, DICM prefix and the file meta group)."""
    if PYDICOM_3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, write_like_original=False)


def stored_element(ds: pydicom.Dataset, tag: int):
    """The element ``tag`` as stored, a deferred value (``dcmread(defer_size=...)``) left unread: a `RawDataElement`
    whose ``value`` is None until read (pydicom 2.4's ``get_item`` would read it); None when absent."""
    if PYDICOM_3:
        return ds.get_item(tag, keep_deferred=True)
    return next((e for e in ds.values() if e.tag == tag), None)


@contextmanager
def lenient_values() -> Iterator[None]:
    """pydicom's checks of the values it converts switched off for the block (a function, as a decorator): a value
    longer than its VR allows (a 70-character UID or PatientID) is read as stored instead of printing a UserWarning
    on stderr ahead of XWin's output; the values XWin uses are checked by name where they are read."""
    settings = pydicom.config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = previous
