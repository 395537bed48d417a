"""One real CXR → a CT-like volume: the world model predicts the projections of an orbit, and we reconstruct them.

What such a volume is: the model's learned estimate of the 3D attenuation consistent with one radiograph and with the
anatomy it saw in training — not a CT. It has the model's resolution (its detector is ``img_size`` pixels over the
training field) and inherits every bias of a model trained on a handful of patients.
"""
from __future__ import annotations

import numpy as np
import torch

from ..drr import MU_WATER, radiograph_to_line
from ..geometry import Geometry, carm_views
from ..io.image import Volume
from .grid import default_grid, to_volume
from .roundtrip import orbit_angles, reconstruct

ESTIMATE_DESCRIPTION = "XWin world-model estimate from one CXR (learned, not a CT)"  # metadata of the output volume


def model_geometry(config) -> Geometry:
    """The detector the model predicts on: the training bank's distances and field at ``img_size`` pixels (mm)."""
    n, d = config.model.img_size, config.data
    return Geometry(sid=d.sid, sdd=d.sdd, height=n, width=n, pixel=d.field_mm / n)


def reconstruct_from_cxr(predictor, image01: np.ndarray, views: int = 13, arc: float = 180.0, method: str = "sart",
                         iters: int | None = None, size=None, spacing=None, isocenter=(0.0, 0.0, 0.0),
                         tv: float = 0.0, progress: bool = False, simulated: bool = False) -> Volume:
    """Volume in HU (LPS, centred on ``isocenter`` mm) from one radiograph taken as the PA view.

    views over LAO −arc/2…+arc/2 at CRAN 0 (the model was trained on LAO −90…90, hence the 180° default);
    method 'fdk', 'sart' or 'cgls'; size/spacing: output grid (default 128³ over the field of view); tv in HU;
    simulated: the radiograph is a DRR (see `Predictor.predict`).
    """
    lao = orbit_angles(views, arc)
    images = predictor.predict(image01, lao, np.zeros_like(lao), simulated)
    geometry = model_geometry(predictor.loaded.config)
    iso = np.asarray(isocenter, dtype=np.float64)
    grid = default_grid(geometry, iso, size, spacing)
    line = torch.from_numpy(radiograph_to_line(images).astype(np.float32))
    mu = reconstruct(line, carm_views(geometry, iso, lao, np.zeros_like(lao)), grid, method, iters=iters,
                     tv=tv * MU_WATER / 1000.0, progress=progress)
    return to_volume(grid, mu, MU_WATER, meta={"description": ESTIMATE_DESCRIPTION, "method": method,
                                               "source": "world-model prediction from one CXR",
                                               "views": str(views), "arc_deg": str(arc)})
