"""Image-quality metrics of a reconstruction against a reference CT, in HU on the reconstruction's grid.

* The reference is resampled onto the output grid with SimpleITK (linear interpolation, the exact LPS geometry of
  both images, −1000 HU = air outside the reference).
* Both images are clipped to the window ``[-1000, 1000]`` HU (`WINDOW`) before PSNR and SSIM: it spans air to dense
  bone, so metal/contrast outliers do not dominate and the data range is fixed, ``L = 2000`` HU.
* PSNR = 20·log10(L / RMSE_clipped) dB. SSIM: 3D, Gaussian window σ = 1.5 voxels (truncated at 3.5σ, scipy),
  K1 = 0.01, K2 = 0.03 (Wang et al. 2004), averaged over the mask.
* RMSE in HU clamps both images at −1000 HU from below (the projector maps every HU ≤ −1000 to μ = 0, so e.g.
  the −2048 HU padding outside a scanner's field of view is air to it) and is otherwise unclipped.
* ``mask``: the voxels evaluated (default all; `xwin.recon.roundtrip` uses the voxels every view sees).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

from ..io.image import Volume
from ..io.writers import itk_image
from .grid import Grid

WINDOW = (-1000.0, 1000.0)


def resample_to_grid(volume: Volume, grid: Grid, default_hu: float = -1000.0) -> Volume:
    """``volume`` (HU) linearly resampled onto ``grid`` (exact LPS geometry; ``default_hu`` outside)."""
    out = sitk.Resample(itk_image(volume, volume.array), itk_image(grid), sitk.Transform(), sitk.sitkLinear,
                        float(default_hu), sitk.sitkFloat32)
    return grid.volume(sitk.GetArrayFromImage(out), dict(volume.meta))


def _mask(shape, mask) -> np.ndarray:
    return np.ones(shape, bool) if mask is None else np.asarray(mask, bool)


def rmse_hu(test: np.ndarray, ref: np.ndarray, mask=None) -> float:
    """Root-mean-square difference in HU over ``mask``, both images clamped at −1000 HU from below."""
    m = _mask(ref.shape, mask)
    d = np.maximum(np.asarray(test, np.float64)[m], -1000.0) - np.maximum(np.asarray(ref, np.float64)[m], -1000.0)
    return float(np.sqrt(np.mean(d * d))) if d.size else float("nan")


def psnr(test: np.ndarray, ref: np.ndarray, mask=None, window=WINDOW) -> float:
    """PSNR in dB with both images clipped to ``window`` (HU) and data range = the window's width."""
    lo, hi = window
    m = _mask(ref.shape, mask)
    d = np.clip(np.asarray(test, np.float64)[m], lo, hi) - np.clip(np.asarray(ref, np.float64)[m], lo, hi)
    mse = float(np.mean(d * d)) if d.size else float("nan")
    return float("inf") if mse == 0 else float(10 * np.log10((hi - lo) ** 2 / mse))


def ssim(test: np.ndarray, ref: np.ndarray, mask=None, window=WINDOW, sigma: float = 1.5) -> float:
    """Mean 3D SSIM (Gaussian window σ voxels) over ``mask`` of the images clipped to ``window`` (HU).

    Not the 2D SSIM of radiographs (`xwin.models.losses.ssim`, training loss and `xwin eval world`) on purpose: it
    scores volumes in HU (clipped to ``window``, data range its width), keeps every voxel (reflected borders, so that
    ``mask`` can select any of them) and runs in NumPy/scipy, without torch."""
    lo, hi = window
    x = np.clip(np.asarray(test, np.float64), lo, hi) - lo
    y = np.clip(np.asarray(ref, np.float64), lo, hi) - lo
    L = hi - lo
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    f = lambda a: gaussian_filter(a, sigma, mode="reflect", truncate=3.5)  # noqa: E731
    mx, my = f(x), f(y)
    vx = f(x * x) - mx * mx
    vy = f(y * y) - my * my
    cxy = f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    m = _mask(s.shape, mask)
    return float(s[m].mean()) if m.any() else float("nan")


def compare(test: Volume, reference: Volume, mask=None) -> dict[str, float]:
    """{'psnr', 'ssim', 'rmse_hu'} of ``test`` against ``reference`` resampled onto ``test``'s grid."""
    grid = Grid(test.shape_ijk, test.spacing, test.origin, test.direction)
    ref = resample_to_grid(reference, grid).array
    return {"psnr": psnr(test.array, ref, mask), "ssim": ssim(test.array, ref, mask),
            "rmse_hu": rmse_hu(test.array, ref, mask)}
