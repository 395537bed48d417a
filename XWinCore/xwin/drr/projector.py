"""One projector API over two backends: numba (fast CPU) and torch (any device, autograd w.r.t. pose).

Units and frames: volumes are ``[k, j, i]`` arrays with an LPS-mm ↔ IJK affine; attenuation μ is per mm; a line
integral ∫μ dl is dimensionless; views come from `xwin.geometry` (LPS mm).
"""
from __future__ import annotations

import threading
from typing import Literal, cast

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import XWinInputError
from ..geometry import Geometry, Views, carm_views
from ..io.image import Volume
from . import joseph_numba, joseph_torch  # noqa: F401 - joseph_numba: kept as an attribute for callers
from .cpu import (  # noqa: F401 - re-exported
    DISPLAY_SCALE,
    DRIFT,
    MODES,
    MU_WATER,
    NumbaVolume,
    best_layouts,
    checked_inputs,
    hu_to_mu_numpy,
    numba_adjoint,
)

Mode = Literal["line", "intensity", "radiograph"]
Backend = Literal["auto", "numba", "torch"]


def hu_to_mu(hu: torch.Tensor | np.ndarray, mu_water: float = MU_WATER):
    """Linear attenuation per mm: μ = μ_water · max(0, 1 + HU/1000)."""
    if isinstance(hu, torch.Tensor):
        return mu_water * torch.clamp(1.0 + hu / 1000.0, min=0.0)
    return hu_to_mu_numpy(hu, mu_water)


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
    shape = cast("tuple[int, int, int]", tuple(shape_kji))
    if _pick(backend, sino, views) == "numba":
        return torch.from_numpy(numba_adjoint(sino.detach().cpu().numpy(), shape, a.double().numpy(), views))
    return joseph_torch.adjoint(sino, shape, a, views)


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
        self.isocenter, self.mu_water = checked_inputs(volume, isocenter, mu_water)
        self.volume = volume
        self.geometry = geometry or Geometry()
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

    def preview(self, lao=None, cran=None, *, pose=None, mode: Mode = "radiograph", factor: int = 2) -> torch.Tensor:
        """Interactive-quality images: μ pooled ``factor``× and a detector with ``factor``× fewer pixels per side."""
        mu, ijk_from_lps, cache = self._level(factor)
        v = self.views(lao, cran, pose=pose, geometry=self.geometry.scaled(factor))
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
            assert cache is not None  # a CPU projector has its numba caches
            cache.warm_up()
        with torch.no_grad():  # load the compiled kernel (cache=True) off the GUI thread
            tiny = Geometry(sid=self.geometry.sid, sdd=self.geometry.sdd, height=2, width=2,
                            pixel=self.geometry.pixel)
            v = self.views(0.0, 0.0, geometry=tiny)
            level = self._level(preview_factors[0]) if preview_factors else (self.mu, self.ijk_from_lps, self._cache)
            forward_project(level[0], level[1], v, "numba", cache=level[2])
        assert self._cache is not None  # as above
        if 6 * self._cache.nbytes <= max_bytes:
            self._cache.warm_up()


def render(volume: Volume, lao, cran, geometry: Geometry | None = None, *, mode: Mode = "line", isocenter=None,
           mu_water: float = MU_WATER) -> np.ndarray:
    """Convenience: (B, H, W) float32 DRRs of ``volume`` at paired angles (degrees)."""
    with torch.no_grad():
        return Projector(volume, geometry, isocenter=isocenter, mu_water=mu_water).render(
            lao, cran, mode=mode).numpy().astype(np.float32)
