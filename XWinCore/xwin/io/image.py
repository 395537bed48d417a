"""The two image types every part of XWin exchanges: a CT `Volume` and a 2D `Radiograph`.

Frames and units
----------------
* World frame: patient LPS in millimetres (x → Left, y → Posterior, z → Superior), i.e. ITK/DICOM physical space.
* Voxel index (i, j, k) ↔ LPS: ``p = origin + direction @ diag(spacing) @ (i, j, k)``; ``direction`` holds the unit
  direction of the i, j and k axes as its *columns*; ``spacing`` and ``origin`` are in (i, j, k) / (x, y, z) order.
* ``array`` is stored in NumPy/SimpleITK order ``[k, j, i]`` (slowest index first), so ``array[k, j, i]`` is voxel
  (i, j, k).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..defaults import ORIGIN_MM, SPACING_MM
from ..errors import XWinInputError


def _spacing_problem(spacing) -> str | None:
    """Why ``spacing`` (mm) is not a physical voxel or pixel size, or None."""
    values = tuple(float(s) for s in spacing)
    if not all(np.isfinite(values)) or min(values) <= 0:
        return f"must be positive, got {values} mm"
    if min(values) < SPACING_MM[0] or max(values) > SPACING_MM[1]:
        shown = ", ".join(f"{v:g}" for v in values)
        return f"must lie between {SPACING_MM[0]:g} and {SPACING_MM[1]:g} mm, got ({shown}) mm"
    return None


def _check_geometry(spacing: np.ndarray, origin: np.ndarray, direction: np.ndarray, source: str | None, n: int) -> None:
    if spacing.shape != (n,) or origin.shape != (n,) or direction.shape != (n, n):
        raise XWinInputError(source, f"geometry must be {n}-D (spacing {spacing.shape}, origin {origin.shape})")
    problem = _spacing_problem(spacing)
    if problem:
        raise XWinInputError(source, f"voxel spacing {problem}")
    if not np.all(np.isfinite(origin)):
        raise XWinInputError(source, "origin is not finite")
    if np.max(np.abs(origin)) > ORIGIN_MM:
        raise XWinInputError(source, f"origin ({', '.join(f'{v:g}' for v in origin)}) mm lies more than "
                                     f"{ORIGIN_MM:g} mm (1 km) from the patient frame's origin")
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise XWinInputError(source, "direction cosines are not an orthonormal matrix")


class VoxelFrame:
    """The IJK ↔ LPS mapping of a voxel grid, written once for `Volume` and `xwin.recon.grid.Grid`: a subclass has
    ``shape_ijk`` (voxels along i, j, k), ``spacing`` (mm along i, j, k), ``origin`` (LPS mm of voxel (0, 0, 0)) and
    ``direction`` (3×3, columns = LPS unit vectors of the i, j, k axes)."""

    if TYPE_CHECKING:  # a field of `Grid`, a property of `Volume`
        @property
        def shape_ijk(self) -> tuple[int, int, int]: ...

    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    @property
    def lps_from_ijk(self) -> np.ndarray:
        """4×4 affine taking homogeneous voxel indices (i, j, k, 1) to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.direction) * np.asarray(self.spacing)[None, :]
        m[:3, 3] = self.origin
        return m

    @property
    def ijk_from_lps(self) -> np.ndarray:
        """4×4 affine taking LPS mm to continuous voxel indices (i, j, k)."""
        return np.linalg.inv(self.lps_from_ijk)

    @property
    def center(self) -> np.ndarray:
        """LPS position (mm) of the grid centre: ``origin + D·diag(spacing)·(size − 1)/2``."""
        half = (np.asarray(self.shape_ijk, dtype=np.float64) - 1.0) / 2.0
        return np.asarray(self.origin) + np.asarray(self.direction) @ (np.asarray(self.spacing) * half)


@dataclass(frozen=True)
class Volume(VoxelFrame):
    """A CT volume in HU with its exact IJK → LPS mapping.

    array: float32 ``[k, j, i]`` in Hounsfield units. spacing: mm per voxel along i, j, k. origin: LPS position (mm)
    of voxel (0, 0, 0). direction: 3×3, columns = LPS unit vectors of the i, j, k axes. meta: free-form strings
    (modality, series UID, source path...).
    """

    array: np.ndarray
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        source = self.meta.get("source")
        arr = np.asarray(self.array)
        if arr.ndim != 3 or min(arr.shape) < 2:
            raise XWinInputError(source, f"a CT volume needs 3 dimensions of at least 2 voxels, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise XWinInputError(source, f"{int(np.size(arr) - np.isfinite(arr).sum())} voxels are NaN or infinite")
        object.__setattr__(self, "array", np.ascontiguousarray(arr, dtype=np.float32))
        for name in ("spacing", "origin", "direction"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        _check_geometry(self.spacing, self.origin, self.direction, source, 3)

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k."""
        k, j, i = self.array.shape
        return i, j, k

    def with_array(self, array: np.ndarray) -> "Volume":
        """Same geometry, new voxel values (same ``[k, j, i]`` shape)."""
        if np.shape(array) != self.array.shape:
            raise ValueError(f"shape {np.shape(array)} differs from {self.array.shape}")
        return replace(self, array=array)


@dataclass(frozen=True)
class Radiograph:
    """A 2D projection image (real CXR or DRR).

    array: float32 ``[row, column]``. pixel_spacing: (row, column) spacing in mm at the detector, or None when the
    file does not say. meta: free-form (modality, photometric interpretation, view position, source path...).
    For XWin's own DRRs row 0 is the superior edge and column 0 the patient's right (PA reading convention).
    """

    array: np.ndarray
    pixel_spacing: tuple[float, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        source = self.meta.get("source")
        arr = np.asarray(self.array)
        if arr.ndim != 2 or min(arr.shape) < 2:
            raise XWinInputError(source, f"a radiograph needs 2 dimensions, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise XWinInputError(source, "pixel values are NaN or infinite")
        object.__setattr__(self, "array", np.ascontiguousarray(arr, dtype=np.float32))
        if self.pixel_spacing is not None:
            sp = tuple(float(s) for s in self.pixel_spacing)
            problem = f"must be two numbers in mm, got {sp}" if len(sp) != 2 else _spacing_problem(sp)
            if problem:
                raise XWinInputError(source, f"pixel spacing {problem}")
            object.__setattr__(self, "pixel_spacing", sp)

    @property
    def simulated(self) -> bool:
        """True for a DRR written by `xwin render` (its file carries the C-arm distances), False for a film."""
        return "xwin_sid_mm" in self.meta
