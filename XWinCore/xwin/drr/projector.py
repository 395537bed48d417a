"""One projector API over two backends: numba (fast CPU) and torch (any device, autograd w.r.t. pose).

Units and frames: volumes are ``[k, j, i]`` arrays with an LPS-mm ↔ IJK affine; attenuation μ is per mm; a line
integral ∫μ dl is dimensionless; views come from `xwin.geometry` (LPS mm).
"""
from __future__ import annotations

import itertools
import threading
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import XWinInputError
from ..geometry import Geometry, Views, carm_views
from ..io.image import Volume
from . import joseph_numba, joseph_torch

Mode = Literal["line", "intensity", "radiograph"]
Backend = Literal["auto", "numba", "torch"]
MODES = ("line", "intensity", "radiograph")
MU_WATER = 0.0193  # per mm, water at about 60 keV effective energy
DISPLAY_SCALE = 4.0  # radiograph = 1 − exp(−line / DISPLAY_SCALE), see docs/geometry.md


def hu_to_mu(hu: torch.Tensor | np.ndarray, mu_water: float = MU_WATER):
    """Linear attenuation per mm: μ = μ_water · max(0, 1 + HU/1000)."""
    if isinstance(hu, torch.Tensor):
        return mu_water * torch.clamp(1.0 + hu / 1000.0, min=0.0)
    return (mu_water * np.maximum(0.0, 1.0 + np.asarray(hu, np.float32) / 1000.0)).astype(np.float32)


def apply_mode(line: torch.Tensor, mode: Mode) -> torch.Tensor:
    """Turn line integrals into the requested image: ``line``, ``intensity`` = exp(−line), or ``radiograph``.

    ``radiograph`` is the display convention of XWin: 1 − exp(−line / 4), in [0, 1), air black and bone bright (a
    film-like, fixed, per-pixel map with no per-image normalisation, so it stays differentiable and comparable
    across poses and patients).
    """
    if mode == "line":
        return line
    if mode == "intensity":
        return torch.exp(-line)
    if mode == "radiograph":
        return 1.0 - torch.exp(-line / DISPLAY_SCALE)
    raise XWinInputError(None, f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


def _numba_args(ijk_from_lps: np.ndarray, views: Views) -> list[np.ndarray]:
    """Kernel arguments: source, pixel (0, 0) and pixel steps in index space, then the same in LPS mm."""
    lin = ijk_from_lps[:3, :3]
    mm = [t.detach().double().cpu().numpy() for t in (views.source, views.corner, views.du, views.dv)]
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
    centre = (views.corner + (views.width - 1) / 2 * views.du + (views.height - 1) / 2 * views.dv
              - views.source).detach().double().cpu().numpy() @ a.T
    steps = [t.detach().double().cpu().numpy() @ a.T for t in (views.du, views.dv)]

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


class _NumbaJoseph(torch.autograd.Function):
    """Numba forward with the numba adjoint as its gradient w.r.t. the volume."""

    @staticmethod
    def forward(ctx, mu, volume, views):
        ctx.volume, ctx.views = volume, views
        return torch.from_numpy(volume.forward(views)).to(mu.dtype)

    @staticmethod
    def backward(ctx, grad):
        g = ctx.volume.adjoint(grad.detach().cpu().numpy(), ctx.views)
        return torch.from_numpy(g).to(grad.dtype), None, None


def _pick(backend: Backend, mu: torch.Tensor, views: Views) -> str:
    if backend != "auto":
        return backend
    pose_grad = any(t.requires_grad for t in (views.source, views.corner, views.du, views.dv))
    return "numba" if mu.device.type == "cpu" and not pose_grad else "torch"


def forward_project(mu: torch.Tensor, ijk_from_lps, views: Views, backend: Backend = "auto",
                    cache: NumbaVolume | None = None) -> torch.Tensor:
    """Line integrals (B, H, W) of attenuation ``mu`` (``[k, j, i]``, per mm) for ``views`` (LPS mm).

    Differentiable w.r.t. ``mu`` on both backends and w.r.t. the views on the torch backend (chosen automatically
    when a view tensor requires grad or ``mu`` lives on a GPU). ``cache``: a `NumbaVolume` of this same ``mu``
    kept between calls (a `Projector` holds one).
    """
    a = torch.as_tensor(np.asarray(ijk_from_lps) if not isinstance(ijk_from_lps, torch.Tensor) else ijk_from_lps)
    if _pick(backend, mu, views) == "numba":
        cache = cache or NumbaVolume(mu.detach().cpu().numpy(), a.double().numpy(), transient=True)
        return _NumbaJoseph.apply(mu, cache, views)
    return joseph_torch.forward(mu, a, views)


def back_project(sino: torch.Tensor, shape_kji: tuple[int, int, int], ijk_from_lps, views: Views,
                 backend: Backend = "auto") -> torch.Tensor:
    """Adjoint Aᵀ of `forward_project`: spreads (B, H, W) values back onto a ``[k, j, i]`` grid."""
    a = torch.as_tensor(np.asarray(ijk_from_lps) if not isinstance(ijk_from_lps, torch.Tensor) else ijk_from_lps)
    if _pick(backend, sino, views) == "numba":
        return torch.from_numpy(numba_adjoint(sino.detach().cpu().numpy(), tuple(shape_kji), a.double().numpy(), views))
    return joseph_torch.adjoint(sino, tuple(shape_kji), a, views)


def _downsample(mu: torch.Tensor, lps_from_ijk: np.ndarray, factor: int) -> tuple[torch.Tensor, np.ndarray]:
    """Average-pool μ by ``factor`` (a pyramid level) and the matching IJK → LPS affine."""
    small = F.avg_pool3d(mu[None, None], factor, ceil_mode=True)[0, 0]
    scale = np.eye(4)
    scale[:3, :3] *= factor
    scale[:3, 3] = (factor - 1) / 2.0
    return small.contiguous(), lps_from_ijk @ scale


class Projector:
    """DRRs of one CT under the geometry contract; keeps μ (and its preview pyramid) ready for repeated calls.

    volume: CT in HU. geometry: detector and distances (mm). isocenter: LPS mm (default: the CT grid centre).
    mu_water: attenuation of water per mm. device: where μ lives ('cpu' or 'cuda'); backend: 'auto', 'numba', 'torch'.
    """

    def __init__(self, volume: Volume, geometry: Geometry | None = None, *, isocenter=None,
                 mu_water: float = MU_WATER, device: str | torch.device = "cpu", backend: Backend = "auto"):
        if not (np.isfinite(mu_water) and mu_water > 0):
            raise XWinInputError(None, f"mu_water must be a positive attenuation per mm, got {mu_water}")
        self.volume = volume
        self.geometry = geometry or Geometry()
        self.isocenter = np.asarray(volume.center if isocenter is None else isocenter, dtype=np.float64)
        if self.isocenter.shape != (3,) or not np.all(np.isfinite(self.isocenter)):
            raise XWinInputError(None, f"isocenter must be 3 finite LPS coordinates in mm, got {isocenter}")
        self.mu_water = float(mu_water)
        self.device = torch.device(device)
        self.backend = backend
        self.mu = torch.from_numpy(hu_to_mu(volume.array, mu_water)).to(self.device)
        self.ijk_from_lps = torch.from_numpy(volume.ijk_from_lps)
        self._cache = NumbaVolume(self.mu.numpy(), volume.ijk_from_lps) if self.device.type == "cpu" else None
        self._levels: dict[int, tuple[torch.Tensor, torch.Tensor, NumbaVolume | None]] = {}
        self._levels_lock = threading.Lock()

    def views(self, lao=None, cran=None, *, pose=None, geometry: Geometry | None = None) -> Views:
        """Views (LPS mm) for angles in degrees or full 4×4 poses, around this projector's isocenter."""
        return carm_views(geometry or self.geometry, self.isocenter, lao, cran, pose=pose)

    def render(self, lao=None, cran=None, *, pose=None, mode: Mode = "line") -> torch.Tensor:
        """(B, H, W) images for B poses (degrees); ``mode`` as in `apply_mode`."""
        v = self.views(lao, cran, pose=pose)
        line = forward_project(self.mu, self.ijk_from_lps, v, self.backend, cache=self._cache)
        return apply_mode(line, mode)

    def preview(self, lao=None, cran=None, *, mode: Mode = "radiograph", factor: int = 2) -> torch.Tensor:
        """Interactive-quality images: μ pooled ``factor``× and a detector with ``factor``× fewer pixels per side."""
        mu, ijk_from_lps, cache = self._level(factor)
        v = self.views(lao, cran, geometry=self.geometry.scaled(factor))
        return apply_mode(forward_project(mu, ijk_from_lps, v, self.backend, cache=cache), mode)

    def _level(self, factor: int) -> tuple[torch.Tensor, torch.Tensor, NumbaVolume | None]:
        """μ pooled ``factor``× with its affine and numba cache, built once (thread-safe)."""
        level = self._levels.get(factor)
        if level is None:
            with self._levels_lock:
                level = self._levels.get(factor)
                if level is None:
                    mu, lps_from_ijk = _downsample(self.mu, self.volume.lps_from_ijk, factor)
                    ijk_from_lps = np.linalg.inv(lps_from_ijk)
                    cache = NumbaVolume(mu.cpu().numpy(), ijk_from_lps) if self.device.type == "cpu" else None
                    level = self._levels[factor] = (mu, torch.from_numpy(ijk_from_lps), cache)
        return level

    def warm_up(self, preview_factors=(2,), max_bytes: int = 1 << 30) -> None:
        """Prepare every ray axis ahead of the first pose that needs it: the preview pyramid levels with all six
        padded layouts each, then the full-resolution layouts while their copies fit in ``max_bytes`` (six padded
        copies of a 512²×300 CT would take ~1.9 GB; the demo CT's take 50 MB). Meant for a background thread at CT
        load (`xwin.viewer.session.Session.set_ct`); safe to race with renders on the GUI thread. The numba kernel
        itself is loaded from its on-disk cache by one tiny render first."""
        if self.device.type != "cpu":
            return
        for factor in preview_factors:
            cache = self._level(factor)[2]
            cache.warm_up()
        with torch.no_grad():  # load the compiled kernel (cache=True) off the GUI thread
            tiny = Geometry(sid=self.geometry.sid, sdd=self.geometry.sdd, height=2, width=2,
                            pixel=self.geometry.pixel)
            v = self.views(0.0, 0.0, geometry=tiny)
            level = self._level(preview_factors[0]) if preview_factors else (self.mu, self.ijk_from_lps, self._cache)
            forward_project(level[0], level[1], v, "numba", cache=level[2])
        if 6 * self._cache.nbytes <= max_bytes:
            self._cache.warm_up()


def render(volume: Volume, lao, cran, geometry: Geometry | None = None, *, mode: Mode = "line", isocenter=None,
           mu_water: float = MU_WATER) -> np.ndarray:
    """Convenience: (B, H, W) float32 DRRs of ``volume`` at paired angles (degrees)."""
    with torch.no_grad():
        return Projector(volume, geometry, isocenter=isocenter, mu_water=mu_water).render(
            lao, cran, mode=mode).numpy().astype(np.float32)
