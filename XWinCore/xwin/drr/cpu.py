"""The numba backend without torch: padded volume layouts, forward and adjoint on NumPy arrays, and `CpuProjector`,
the DRR path of `xwin render` on the CPU (importing torch would cost more than the render itself).

Views may hold torch tensors (from `xwin.geometry.carm_views`, `Projector`) or float64 NumPy arrays (from
`carm_views_numpy`); nothing here imports torch. Units and frames as in `projector`.
"""
from __future__ import annotations

import itertools
import threading

import numpy as np

from ..errors import XWinInputError
from ..geometry import Geometry, Views, carm_views_numpy, checked_isocenter
from ..io.image import Volume
from . import joseph_numba

MODES = ("line", "intensity", "radiograph")
MU_WATER = 0.0193  # per mm, water at about 60 keV effective energy
MU_WATER_RANGE = (1e-6, 10.0)  # per mm: beyond, float32 attenuations underflow to 0 or overflow (lead is ~6 at 60 keV)
DISPLAY_SCALE = 4.0  # radiograph = 1 − exp(−line / DISPLAY_SCALE), see docs/geometry.md


def _np(t) -> np.ndarray:
    """A view tensor or array as float64 NumPy (torch tensors are detached and copied to the CPU)."""
    if hasattr(t, "detach"):
        return t.detach().double().cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def hu_to_mu_numpy(hu: np.ndarray, mu_water: float = MU_WATER) -> np.ndarray:
    """Linear attenuation per mm (float32): μ = μ_water · max(0, 1 + HU/1000), in place in one new array (the same
    float32 operations in the same order as the expression, a third of its time on a 256³ CT)."""
    mu = np.asarray(hu, np.float32) / np.float32(1000.0)
    mu += np.float32(1.0)
    np.maximum(mu, np.float32(0.0), out=mu)
    mu *= np.float32(mu_water)
    return mu


def apply_mode_numpy(line: np.ndarray, mode: str) -> np.ndarray:
    """`projector.apply_mode` on NumPy arrays."""
    if mode == "line":
        return line
    if mode == "intensity":
        return np.exp(-line)
    if mode == "radiograph":
        return 1.0 - np.exp(-line / DISPLAY_SCALE)
    raise XWinInputError(None, f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def radiograph_to_line(images: np.ndarray) -> np.ndarray:
    """The inverse of the radiograph display map: line integrals ∫μ dl (dimensionless) from images in [0, 1)."""
    return -DISPLAY_SCALE * np.log1p(-np.clip(images, 0.0, 1.0 - 1e-6))


def checked_inputs(volume: Volume, isocenter, mu_water: float) -> tuple[np.ndarray, float]:
    """The isocenter (LPS mm, default: the CT grid centre) and μ_water of a projector, checked."""
    if not (np.isfinite(mu_water) and MU_WATER_RANGE[0] <= mu_water <= MU_WATER_RANGE[1]):
        raise XWinInputError(None, f"mu_water must be an attenuation per mm from {MU_WATER_RANGE[0]:g} to "
                                   f"{MU_WATER_RANGE[1]:g} (water at 60 keV: {MU_WATER}), got {mu_water:g}",
                             parameters=("mu_water",))
    return checked_isocenter(volume.center if isocenter is None else isocenter), float(mu_water)


def _numba_args(ijk_from_lps: np.ndarray, views: Views) -> list[np.ndarray]:
    """Kernel arguments: source, pixel (0, 0) and pixel steps in index space, then the same in LPS mm."""
    lin = ijk_from_lps[:3, :3]
    mm = [_np(t) for t in (views.source, views.corner, views.du, views.dv)]
    idx = [mm[0] @ lin.T + ijk_from_lps[:3, 3], mm[1] @ lin.T + ijk_from_lps[:3, 3], mm[2] @ lin.T, mm[3] @ lin.T]
    return [np.ascontiguousarray(x) for x in idx + mm]


DRIFT = 0.05  # voxels per slice step: a ray drifting more than this along the fast array axis walks across cache lines


def best_layouts(ijk_from_lps: np.ndarray, views: Views,
                 columns: bool = True) -> list[tuple[tuple[int, int, int], bool]]:
    """Per view, how the numba kernels walk it fastest: the (slow, middle, fast) index axes (0 = i, 1 = j, 2 = k) of
    the array layout, and whether to traverse the detector by columns instead of rows.

    Within a detector row (the unit of work) neighbouring rays should read the same cache lines, so the fast axis is
    the index axis best aligned with the step between them (``u``), the ray's dominant axis goes in the middle. When
    the central ray then drifts along that fast axis (> ``DRIFT`` voxels per slice, e.g. any LAO angle off the
    axes), the kernels traverse columns instead (the step becomes ``v``): measured on a 256³ chest CT, 2–3.5× faster
    for LAO 15–75° and never slower for views with both LAO and CRAN; axis-aligned walks keep rows. ``columns=False``
    keeps rows everywhere: for one-off projections of a changing volume (iterative reconstruction, its adjoint), where
    the transposed copies a column walk needs would cost more than they save."""
    a = np.asarray(ijk_from_lps, dtype=np.float64)[:3, :3]
    ray = (views.corner + (views.width - 1) / 2 * views.du + (views.height - 1) / 2 * views.dv
           - views.source)
    centre = _np(ray) @ a.T
    steps = [_np(t) @ a.T for t in (views.du, views.dv)]

    def layout(d, step):
        dominant = int(np.abs(d).argmax())
        rest = [q for q in range(3) if q != dominant]
        fast = max(rest, key=lambda q: abs(step[q]))
        slow = rest[0] if rest[1] == fast else rest[1]
        return (slow, dominant, fast), abs(d[fast] / d[dominant])

    plans = []
    for d, u, v in zip(centre, *steps):
        order, drift = layout(d, u)
        plans.append((order, False) if drift <= DRIFT or not columns else (layout(d, v)[0], True))
    return plans


def _reordered(ijk_from_lps: np.ndarray, order: tuple[int, int, int]) -> np.ndarray:
    """ijk_from_lps with its rows reordered to the (fast, middle, slow) array axes of ``order``."""
    return np.vstack([ijk_from_lps[list(order[::-1])], ijk_from_lps[3:]])


def _transpose_axes(order: tuple[int, int, int]) -> list[int]:
    """Axes of a ``[k, j, i]`` array that give the (slow, middle, fast) layout ``order``."""
    return [2 - q for q in order]


def _by_layout(ijk_from_lps: np.ndarray, views: Views, columns: bool = True):
    """Yield (layout, by columns, view indices, those views) for the views grouped by `best_layouts`; views walked by
    columns come with their detector transposed (u and v, height and width swapped)."""
    plans = best_layouts(ijk_from_lps, views, columns)
    for order, by_columns in sorted(set(plans)):
        sel = [b for b, p in enumerate(plans) if p == (order, by_columns)]
        source, corner, du, dv = (t[sel] for t in views[:4])
        if by_columns:
            yield order, True, sel, Views(source, corner, dv, du, views.width, views.height)
        else:
            yield order, False, sel, Views(source, corner, du, dv, views.height, views.width)


def numba_adjoint(sino: np.ndarray, shape_kji: tuple[int, int, int], ijk_from_lps: np.ndarray,
                  views: Views) -> np.ndarray:
    """Aᵀ on the CPU: each group of views is spread into the grid in its best layout (rows: see `best_layouts`)."""
    ijk_from_lps = np.asarray(ijk_from_lps, dtype=np.float64)
    out = np.zeros(shape_kji, sino.dtype)
    for order, _, sel, part in _by_layout(ijk_from_lps, views, columns=False):
        joseph_numba.adjoint(np.ascontiguousarray(sino[sel]), np.transpose(out, _transpose_axes(order)),
                             *_numba_args(_reordered(ijk_from_lps, order), part))
    return out


class NumbaVolume:
    """μ (``[k, j, i]``, per mm) kept as zero-padded copies in the layouts of `best_layouts` (one padded copy per
    layout used, six at most), built once and reused by every forward projection. ``transient``: a one-off
    projection; each layout is padded into the thread's scratch buffer just before use and not kept."""

    def __init__(self, mu: np.ndarray, ijk_from_lps: np.ndarray, transient: bool = False):
        self.mu = mu
        self.ijk_from_lps = np.asarray(ijk_from_lps, dtype=np.float64)
        self.transient = transient
        self._layouts: dict[tuple[int, int, int], np.ndarray] = {}
        self._building = threading.Lock()

    def padded(self, order: tuple[int, int, int]) -> np.ndarray:
        """The padded copy in layout ``order``, built on first use. Thread-safe: a background `warm_up` and the GUI
        thread never build the same layout twice (one waits for the other's copy)."""
        if self.transient:
            return joseph_numba.pad_volume(np.transpose(self.mu, _transpose_axes(order)), scratch=True)
        out = self._layouts.get(order)
        if out is None:
            with self._building:
                out = self._layouts.get(order)
                if out is None:
                    out = joseph_numba.pad_volume(np.transpose(self.mu, _transpose_axes(order)))
                    self._layouts[order] = out
        return out

    def warm_up(self, orders=None) -> None:
        """Build the padded copies of ``orders`` (default: all six layouts) now, so that the first view along a new
        ray axis does not stall on padding (issue 14: 0.3–0.6 s on the first pose past 45°)."""
        for order in orders or itertools.permutations(range(3)):
            self.padded(tuple(order))

    @property
    def nbytes(self) -> int:
        return self.mu.nbytes

    def forward(self, views: Views) -> np.ndarray:
        out = np.empty((views.batch, views.height, views.width), self.mu.dtype)
        for order, by_columns, sel, part in _by_layout(self.ijk_from_lps, views, columns=not self.transient):
            res = np.empty((len(sel), part.height, part.width), self.mu.dtype)
            joseph_numba.forward(self.padded(order), *_numba_args(_reordered(self.ijk_from_lps, order), part), res)
            out[sel] = res.transpose(0, 2, 1) if by_columns else res
        return out

    def adjoint(self, sino: np.ndarray, views: Views) -> np.ndarray:
        return numba_adjoint(sino, self.mu.shape, self.ijk_from_lps, views)


class CpuProjector:
    """`Projector` with ``device='cpu'`` and the numba backend, without torch: the same DRRs as NumPy arrays (no
    gradients, angles only). For a one-off render (`xwin render`); a padded layout is built only for the ray axes
    the poses use."""

    def __init__(self, volume: Volume, geometry: Geometry | None = None, *, isocenter=None,
                 mu_water: float = MU_WATER):
        self.isocenter, self.mu_water = checked_inputs(volume, isocenter, mu_water)
        self.volume = volume
        self.geometry = geometry or Geometry()
        self.mu = hu_to_mu_numpy(volume.array, self.mu_water)
        self._cache = NumbaVolume(self.mu, volume.ijk_from_lps)

    def render(self, lao=None, cran=None, *, mode: str = "line") -> np.ndarray:
        """(B, H, W) images (``mu``'s dtype) for B paired poses in degrees; ``mode`` as in `apply_mode`."""
        views = carm_views_numpy(self.geometry, self.isocenter, lao, cran)
        return apply_mode_numpy(self._cache.forward(views), mode)
