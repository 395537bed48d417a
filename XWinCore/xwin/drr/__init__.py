"""DRR projector (forward) and its adjoint (back-projection), numba on CPU and torch everywhere."""
from .projector import (MODES, MU_WATER, Projector, apply_mode, back_project, forward_project, hu_to_mu, render)

__all__ = ["MODES", "MU_WATER", "Projector", "apply_mode", "back_project", "forward_project", "hu_to_mu", "render"]
