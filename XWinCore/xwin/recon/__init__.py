"""Volume reconstruction from projections under the XWin geometry contract (docs/reconstruction.md).

grid: output grids and μ → HU; fdk: FDK for circular orbits; iterative: (OS-)SART and CGLS with optional TV;
metrics: PSNR / SSIM / RMSE against a reference CT; roundtrip: CT → projections → reconstruction → metrics.
"""
from .fdk import WINDOWS, backproject, coverage, fdk, parker_weights, ramp_response
from .from_cxr import model_geometry, radiograph_to_line, reconstruct_from_cxr
from .grid import Grid, centered_grid, default_grid, fov_radius, grid_like, mu_to_hu, to_volume
from .iterative import IterativeResult, cgls, sart, tv_prox
from .metrics import compare, psnr, resample_to_grid, rmse_hu, ssim
from .roundtrip import METHODS, orbit_angles, reconstruct, reconstruct_from_ct

__all__ = ["WINDOWS", "METHODS", "Grid", "IterativeResult", "backproject", "centered_grid", "cgls", "compare",
           "coverage", "default_grid", "fdk", "fov_radius", "grid_like", "mu_to_hu", "orbit_angles", "parker_weights",
           "model_geometry", "psnr", "radiograph_to_line", "ramp_response", "reconstruct", "reconstruct_from_ct",
           "reconstruct_from_cxr", "resample_to_grid", "rmse_hu", "sart",
           "ssim", "to_volume", "tv_prox"]
