"""XWin I/O: CT volumes (HU, LPS mm) and radiographs ([0, 1], bone bright) in, volumes and images out."""
from .ct import read_ct
from .cxr import read_radiograph
from .image import Radiograph, Volume
from .info import describe, format_description
from .writers import atomic_output, write_image, write_volume

__all__ = ["Volume", "Radiograph", "read_ct", "read_radiograph", "write_volume", "write_image", "atomic_output",
           "describe", "format_description"]
