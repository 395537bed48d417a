"""DRR projector (forward) and its adjoint (back-projection), numba on CPU and torch everywhere.

Names load on first use (PEP 562): `CpuProjector` and the constants need only numba; the rest imports torch."""
from __future__ import annotations

import importlib

_HOMES = {"MODES": "cpu", "MU_WATER": "cpu", "DISPLAY_SCALE": "cpu", "CpuProjector": "cpu",
          "radiograph_to_line": "cpu", "Projector": "projector",
          "apply_mode": "projector", "back_project": "projector", "forward_project": "projector",
          "hu_to_mu": "projector", "render": "projector"}

__all__ = ["DISPLAY_SCALE", "MODES", "MU_WATER", "CpuProjector", "Projector", "apply_mode", "back_project",
           "forward_project", "hu_to_mu", "radiograph_to_line", "render"]


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
