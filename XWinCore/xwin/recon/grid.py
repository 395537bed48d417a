"""Output grid of a reconstruction: voxel counts, spacing (mm) and the IJK ↔ LPS mapping.

Frames and units (docs/geometry.md): LPS millimetres; arrays ``[k, j, i]``; ``direction`` holds the LPS unit vectors
of the i, j, k axes as its columns. A `Grid` is everything a `xwin.io.image.Volume` needs except the voxel values.

Default grid: the cube (identity direction, i.e. i → patient left, j → posterior, k → superior) centred on the
isocenter whose side is the diameter of the cylinder that a detector rotating about the isocenter always sees,
``2·R`` with ``R = SID · sin(atan(W·p / 2 / SDD))`` (the in-plane field-of-view radius; for the default chest
geometry, 256 × 1.7 mm at SDD 1800 / SID 1600, R ≈ 192 mm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import numpy as np

from ..defaults import SPACING_MM
from ..errors import XWinInputError
from ..geometry import Geometry, checked_isocenter
from ..io.image import Volume, VoxelFrame

DEFAULT_SIZE = 128


@dataclass(frozen=True)
class Grid(VoxelFrame):
    """A voxel grid. shape_ijk: voxels along i, j, k; spacing: mm along i, j, k; origin: LPS mm of voxel (0, 0, 0);
    direction: 3×3, columns = LPS unit vectors of the i, j, k axes. `lps_from_ijk`, `ijk_from_lps` and `center` are
    `VoxelFrame`'s, as for a `Volume`."""

    shape_ijk: tuple[int, int, int]
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape_ijk)
        if len(shape) != 3 or min(shape) < 2 or any(n != m for n, m in zip(shape, self.shape_ijk)):
            raise XWinInputError(None, f"grid size must be 3 integers ≥ 2, got {self.shape_ijk}")
        object.__setattr__(self, "shape_ijk", shape)
        for name in ("spacing", "origin", "direction"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        if self.spacing.shape != (3,):
            raise XWinInputError(None, f"grid spacing must be 3 numbers of mm, got {self.spacing}",
                                 parameters=("spacing",))
        checked_spacing(self.spacing)
        if self.direction.shape != (3, 3) or not np.allclose(self.direction.T @ self.direction, np.eye(3), atol=1e-4):
            raise XWinInputError(None, "grid direction must be an orthonormal 3×3 matrix")

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        """Array shape (NumPy / SimpleITK order)."""
        return self.shape_ijk[::-1]

    def volume(self, array_kji: np.ndarray, meta: dict | None = None) -> Volume:
        """A `Volume` on this grid (``array_kji`` in HU, shape `shape_kji`)."""
        if tuple(np.shape(array_kji)) != self.shape_kji:
            raise ValueError(f"array shape {np.shape(array_kji)} differs from the grid's {self.shape_kji}")
        return Volume(np.asarray(array_kji, np.float32), self.spacing, self.origin, self.direction, dict(meta or {}))

    def points(self) -> np.ndarray:
        """(NZ, NY, NX, 3) LPS mm of every voxel centre (test helper; memory grows with the grid)."""
        k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in self.shape_kji), indexing="ij")
        idx = np.stack([i, j, k], -1)
        return idx @ self.lps_from_ijk[:3, :3].T + self.origin


def fov_radius(geometry: Geometry) -> float:
    """Radius (mm) of the in-plane circle around the isocenter that every view of a circular orbit sees."""
    half_fan = math.atan(geometry.width * geometry.pixel / 2.0 / geometry.sdd)
    return geometry.sid * math.sin(half_fan)


def grid_like(volume: Volume) -> Grid:
    """The grid of an existing volume (e.g. the input CT)."""
    return Grid(volume.shape_ijk, volume.spacing, volume.origin, volume.direction)


def checked_spacing(spacing) -> np.ndarray:
    """``spacing`` (mm, scalar or 3) as 3 floats, or refused: not positive and finite, or outside the voxel sizes any
    volume may hold (`SPACING_MM`: a grid of 1e-300 mm voxels has no finite size)."""
    sp = np.broadcast_to(np.asarray(spacing, np.float64), (3,))
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise XWinInputError(None, f"grid spacing must be positive mm, got {spacing}", parameters=("spacing",))
    if sp.min() < SPACING_MM[0] or sp.max() > SPACING_MM[1]:
        shown = ", ".join(f"{v:g}" for v in sp)
        raise XWinInputError(None, f"grid spacing must lie between {SPACING_MM[0]:g} and {SPACING_MM[1]:g} mm, got "
                                   f"({shown}) mm", parameters=("spacing",))
    return sp


def centered_grid(isocenter, size, spacing, direction=None) -> Grid:
    """A grid of ``size`` (NX, NY, NZ) voxels of ``spacing`` mm (scalar or 3) whose centre is ``isocenter`` (LPS mm)."""
    iso = checked_isocenter(isocenter)
    size = np.broadcast_to(np.asarray(size), (3,))
    sp = checked_spacing(spacing)
    d = np.eye(3) if direction is None else np.asarray(direction, np.float64)
    origin = iso - d @ (sp * (size.astype(np.float64) - 1) / 2.0)
    return Grid(cast("tuple[int, int, int]", tuple(int(n) for n in size)), sp, origin, d)


def default_grid(geometry: Geometry, isocenter, size=None, spacing=None) -> Grid:
    """Identity-direction grid centred on ``isocenter`` (LPS mm) covering the detector's field of view.

    size: (NX, NY, NZ) or one int (default 128 per side when ``spacing`` is not given either); spacing: mm (scalar or
    3). With only ``size`` the spacing is ``2R / size``; with only ``spacing`` the size is ``ceil(2R / spacing)``;
    with both, both are used as given (the cube then need not match the field of view).
    """
    side = 2.0 * fov_radius(geometry)
    if size is not None:
        size = np.broadcast_to(np.asarray(size), (3,))
        if np.any(size != np.round(size)) or np.any(size < 2):
            raise XWinInputError(None, f"grid size must be integers ≥ 2, got {tuple(size)}")
        size = size.astype(int)
    if spacing is not None:
        sp = checked_spacing(spacing)
    if size is None and spacing is None:
        size = np.full(3, DEFAULT_SIZE)
    if spacing is None:
        sp = side / size
    if size is None:
        size = np.maximum(2, np.ceil(side / sp - 1e-9)).astype(int)
    return centered_grid(isocenter, size, sp)


def mu_to_hu(mu, mu_water: float):
    """HU = 1000 · (μ / μ_water − 1) for μ per mm (NumPy array or tensor)."""
    return 1000.0 * (mu / mu_water - 1.0)


def to_volume(grid: Grid, mu, mu_water: float, meta: dict | None = None) -> Volume:
    """A HU `Volume` on ``grid`` from reconstructed μ (``[k, j, i]``, per mm; tensor or array)."""
    mu = mu.detach().cpu().numpy() if hasattr(mu, "detach") else np.asarray(mu)
    return grid.volume(mu_to_hu(mu.astype(np.float64), mu_water).astype(np.float32), meta)
