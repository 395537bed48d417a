"""DRR projector (forward) and its adjoint (back-projection), numba on CPU and torch everywhere.

Names load on first use (`xwin._lazy`): `CpuProjector` and the constants need only numba; the rest imports torch."""
from .._lazy import lazy_attributes

__all__ = ["DISPLAY_SCALE", "MODES", "MU_WATER", "CpuProjector", "Projector", "apply_mode", "back_project",
           "forward_project", "hu_to_mu", "radiograph_to_line", "render"]

__getattr__, __dir__ = lazy_attributes(__name__, {
    "MODES": "cpu", "MU_WATER": "cpu", "DISPLAY_SCALE": "cpu", "CpuProjector": "cpu", "radiograph_to_line": "cpu",
    "Projector": "projector", "apply_mode": "projector", "back_project": "projector",
    "forward_project": "projector", "hu_to_mu": "projector", "render": "projector"})
