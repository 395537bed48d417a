"""CT → simulated projections → reconstruction → metrics, the evaluation round trip of `xwin reconstruct --from-ct`.

N line-integral projections of ``ct`` (`xwin.drr.Projector`, μ = μ_water·max(0, 1 + HU/1000)) are rendered over
LAO −arc/2 … +arc/2 at CRAN 0 (a rotation about the patient's z axis; arcs ≥ 360° are sampled without repeating
the end point) around the CT's centre (or ``isocenter``), reconstructed on the output grid with FDK, (OS-)SART or
CGLS, converted to HU and compared with the CT resampled onto that grid (`xwin.recon.metrics`) over the voxels
that every view sees.
"""
from __future__ import annotations

import math
import time
from typing import Callable, cast

import numpy as np
import torch

from ..defaults import MIN_ARC_DEG
from ..drr.projector import MU_WATER, Backend, Projector
from ..errors import XWinInputError
from ..geometry import Geometry, Views
from ..io.image import Volume
from .fdk import WINDOWS, Window, coverage, fdk
from .grid import Grid, default_grid, to_volume
from .iterative import cgls, check_iterations, sart
from .metrics import compare

METHODS = ("fdk", "sart", "cgls")
DEFAULT_ITERS = {"sart": 10, "cgls": 20}


def orbit_angles(views: int, arc: float) -> np.ndarray:
    """LAO angles (degrees) of ``views`` projections over −arc/2 … +arc/2 (end point excluded for arc ≥ 360°); the arc
    is at least `MIN_ARC_DEG`."""
    if isinstance(views, bool) or int(views) != views or views < 1:
        raise XWinInputError(None, f"the number of views must be a positive integer, got {views}")
    if not (math.isfinite(arc) and arc >= MIN_ARC_DEG):
        raise XWinInputError(None, f"the arc must be at least {MIN_ARC_DEG:g}° (a narrower one sees the patient from "
                                   f"one direction: no depth to reconstruct), got {arc:g}")
    if views == 1:
        return np.zeros(1)
    return np.linspace(-arc / 2, arc / 2, int(views), endpoint=arc < 360)


def reconstruct(projections: torch.Tensor, views: Views, grid: Grid, method: str = "fdk", *, iters: int | None = None,
                window: str = "hann", tv: float = 0.0, isocenter=None, backend: Backend = "auto",
                progress: bool = False, callback: Callable | None = None) -> torch.Tensor:
    """μ per mm ``[k, j, i]`` on ``grid`` from line integrals (B, H, W); tv: TV weight in μ per mm (iterative).

    callback: called by the iterative methods after each iteration (`xwin.recon.iterative`), by FDK as
    callback(views_done, views_total) after each chunk of back-projected views; it may raise to cancel."""
    if method not in METHODS:
        raise XWinInputError(None, f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if projections.shape[0] != views.batch or views.batch < 1:
        raise XWinInputError(None, f"{projections.shape[0]} projections for {views.batch} poses: they must match "
                                   "and be at least one")
    if method == "fdk":
        # fdk refuses a window not in WINDOWS (`ramp_response`)
        return fdk(projections, views, grid, window=cast(Window, window), isocenter=isocenter, backend=backend,
                   callback=callback)
    k = DEFAULT_ITERS[method] if iters is None else iters
    run = sart if method == "sart" else cgls
    return run(projections, views, grid, iters=k, tv=tv, backend=backend, progress=progress, callback=callback).mu


def check_options(method: str, iters: int | None, tv: float, window: str = "hann") -> None:
    """Refuse an unknown method or filter window, an iteration count outside 1 … `MAX_ITERS` or a negative/NaN TV
    weight (HU)."""
    if method not in METHODS:
        raise XWinInputError(None, f"unknown method {method!r}; choose one of {', '.join(METHODS)}",
                             parameters=("method",))
    if window not in WINDOWS:
        raise XWinInputError(None, f"unknown filter window {window!r}; choose one of {', '.join(WINDOWS)}",
                             parameters=("window",))
    if iters is not None:
        check_iterations(iters)
    if not (math.isfinite(tv) and tv >= 0):
        raise XWinInputError(None, f"the TV weight must be ≥ 0 HU, got {tv}", parameters=("tv",))


def reconstruct_from_ct(ct: Volume, views: int = 180, arc: float = 360.0, method: str = "fdk", iters: int | None = None,
                        size=None, spacing=None, geometry: Geometry | None = None, *, window: str = "hann",
                        tv: float = 0.0, grid: Grid | None = None, isocenter=None, mu_water: float = MU_WATER,
                        device: str = "cpu", progress: bool = False) -> tuple[Volume, dict[str, float]]:
    """Render ``views`` projections of ``ct`` over ``arc`` degrees, reconstruct, and score against ``ct``.

    size (NX, NY, NZ) / spacing (mm) / grid: output grid (default: the field-of-view cube, 128³, `default_grid`);
    geometry: detector and distances (default `Geometry()`); tv: TV weight in HU (μ = tv · μ_water / 1000).
    Returns the reconstruction in HU and {'psnr' (dB), 'ssim', 'rmse_hu', 'seconds' (reconstruction only)}.
    """
    check_options(method, iters, tv, window)
    lao = orbit_angles(views, arc)
    geometry = geometry or Geometry()
    projector = Projector(ct, geometry, isocenter=isocenter, mu_water=mu_water, device=device)
    grid = grid or default_grid(geometry, projector.isocenter, size, spacing)
    poses = projector.views(lao, np.zeros_like(lao))
    with torch.no_grad():
        projections = projector.render(lao, np.zeros_like(lao), mode="line").float()
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        mu = reconstruct(projections, poses, grid, method, iters=iters, window=window, tv=tv * mu_water / 1000.0,
                         isocenter=projector.isocenter, progress=progress)
        if mu.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        seen = coverage(poses.to(device=projections.device), grid, device=projections.device).cpu().numpy()
    meta = {"xwin_recon_method": method, "xwin_recon_views": int(views), "xwin_recon_arc_deg": float(arc),
            "xwin_recon_iters": 0 if method == "fdk" else int(iters or DEFAULT_ITERS[method]),
            "xwin_sid_mm": geometry.sid, "xwin_sdd_mm": geometry.sdd, "xwin_mu_water": mu_water,
            "xwin_isocenter_lps_mm": " ".join(f"{x:.3f}" for x in projector.isocenter)}
    volume = to_volume(grid, mu, mu_water, meta)
    scored = seen >= views - 0.5
    if not scored.any():  # the scores would be NaN (a 1 × 1 detector, a grid beside the beam)
        shape = " x ".join(str(n) for n in grid.shape_ijk)
        raise XWinInputError(None, f"no voxel of the {shape} output grid is seen by every view: nothing to score (a "
                                   "larger detector, or a smaller grid)", parameters=("det", "size"))
    scores = compare(volume, ct, mask=scored)
    return volume, {**scores, "seconds": seconds}
