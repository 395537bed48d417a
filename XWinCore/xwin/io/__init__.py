"""XWin I/O: CT volumes (HU, LPS mm) and radiographs ([0, 1], bone bright) in, volumes and images out.

Names load on first use (`xwin._lazy`): `xwin render` of a NIfTI/NRRD CT needs `ct` and `writers` only, not the
radiograph reader nor pydicom (issue 15: a tenth of a second of its start-up)."""
from .._lazy import lazy_attributes

__all__ = ["Volume", "Radiograph", "read_ct", "read_radiograph", "write_volume", "write_image", "atomic_output",
           "describe", "format_description"]

__getattr__, __dir__ = lazy_attributes(__name__, {
    "Volume": "image", "Radiograph": "image", "read_ct": "ct", "read_radiograph": "cxr", "write_volume": "writers",
    "write_image": "writers", "atomic_output": "writers", "describe": "info", "format_description": "info"})
