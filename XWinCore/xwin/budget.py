"""Memory estimates of XWin's large requests, checked against the budget before anything is allocated (issue 16).

The budget is ``XWIN_MAX_VOLUME_GB`` GiB (default 4; `xwin.io.validate.memory_budget`), the same one that bounds the
files XWin reads. A request over it is refused in one line that names the request, the estimate, the budget and the
variable that raises it.

The constants were measured as the growth of peak RSS (``ru_maxrss``) between two sizes of the same request on this
project's 2-core CPU machine (torch 2.14, the demo CT; the sizes differ by 4x or more, so the fixed cost of imports,
CT and model cancels), and rounded up from the largest slope:

- ``xwin render``: 16.0 B per detector pixel (numba path, 256² vs 2048²; 11.9 vs 3072²), 12.0 (torch `Projector`,
  256² vs 2048² and 3072²). 20 leaves a quarter of headroom; the former estimate, 64, was 4x too high.
- ``xwin reconstruct``, projections: 68 B per projection pixel (FDK round trip, 20 vs 400 views of 256²; OS-SART 20),
  72 with many small views (20,000 vs 100,000 views of 16², campaign 7: the per-view bookkeeping shows there).
  The former 12 missed FFT rows zero-padded to twice the width and float64 weights: 5.7x too low.
- ``xwin reconstruct``, output grid: 98 B/voxel (FDK, 64³ vs 320³, scoring included), 110 (OS-SART, 64³ vs 256³).
  The former 24 was 4.6x too low.
- DRR bank, built by ``xwin train`` before its first step: its peak is one deformation of one CT (MONAI's elastic
  and affine resampling): 0.84-0.98 GB above an undeformed build for the demo CT (5.4 M voxels at 2 mm), whether 1,
  4 or 8 deformed copies are made, at 64 px and at 256 px alike; undeformed builds of 1, 5 and 9 CTs grow by 0.25 and
  then 0.09 GB (allocator, not held data). What grows with the config is the images, 4 B per pixel (a float16 list,
  then its stacked copy: counted, too small to see beside the transient at these sizes). Estimate: the images plus
  ``BANK_TRANSIENT`` scaled by (2 mm / ``data.spacing_mm``)³.
- One training step of the cpu_small model: 25.1 MB per pair of the micro-batch (batch 4 vs 16), 7.9 times the
  model's own per-image inference estimate (`xwin.config.ModelConfig.memory_bytes`: 3.16 MB); weights, gradients and
  AdamW's two moments are counted as 4 copies of the weights (not measured: too small to see beside the imports).
- ``xwin eval world``: 0.75 MB per jittered rendering of the embedded model (2 vs 12 renderings), under the 0.92 MB
  that the images one rendering keeps take in float32 (14 views at the model's size, plus 13 at the score size when
  the model is smaller).
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import XWinInputError

DRR_BYTES_PER_PIXEL = 20  # xwin render, per detector pixel (measured 12-16)
SINOGRAM_BYTES_PER_PIXEL = 72  # xwin reconstruct, per projection pixel (measured 20-72)
GRID_BYTES_PER_VOXEL = 112  # xwin reconstruct, per output voxel (measured 98-110)
BANK_BYTES_PER_PIXEL = 4  # DRR bank images: float16 list + stacked copy
BANK_TRANSIENT = 1 << 30  # DRR bank: deforming one thorax CT at 2 mm (measured 0.84-0.98 GB)
BANK_SPACING_MM = 2.0  # ... scaled by (2 mm / data.spacing_mm)³
TRAIN_WEIGHT_COPIES = 4  # weights, gradients, AdamW's two moments
TRAIN_BYTES_PER_IMAGE = 8  # per pair (or real film) of a micro-batch, x ModelConfig's per-image estimate (7.9)
EVAL_BYTES_PER_RENDERING_PIXEL = 4  # float32 images kept per rendering (measured 0.75 MB of 0.92 MB)

def check_request(path: str | os.PathLike | None, request: str, need: float, how: str = "") -> None:
    """Refuse ``request`` when its estimated ``need`` (bytes) exceeds the memory budget; the error names ``path``
    (None: the request is a command-line option), the estimate, the budget and how to change it (``how``: the
    request's own knob, said first)."""
    from .io.validate import MEMORY_ENV, memory_budget

    budget = memory_budget()
    if need > budget:
        raise XWinInputError(path, f"{request} needs about {need / 2**30:.3g} GiB of memory, more than the "
                                   f"{budget / 2**30:g} GiB allowed ({how}set {MEMORY_ENV} to raise the limit)")


def bank_bytes(cfg, cts: int) -> float:
    """Peak memory of building the DRR bank of ``cfg`` over ``cts`` training CTs."""
    instances = cts * (cfg.data.augmentations + 1)
    pixels = len(cfg.data.lao) * len(cfg.data.cran) * cfg.model.img_size ** 2
    return instances * pixels * BANK_BYTES_PER_PIXEL + BANK_TRANSIENT * (BANK_SPACING_MM / cfg.data.spacing_mm) ** 3


def train_step_bytes(cfg) -> int:
    """Peak memory of one training step of ``cfg``: weights with gradients and optimiser state, plus the activations
    of a micro-batch (``train.batch_size`` pairs and ``data.real_per_batch`` real films)."""
    weights = cfg.model.memory_bytes(0)
    per_image = cfg.model.memory_bytes(1) - weights
    images = cfg.train.batch_size + cfg.data.real_per_batch
    return TRAIN_WEIGHT_COPIES * weights + images * TRAIN_BYTES_PER_IMAGE * per_image


def check_training(cfg, config: str | os.PathLike, run: Path, step: bool = True) -> None:
    """Refuse a training run of ``cfg`` (read from ``config``) whose step (``step``: it runs in host memory, on the
    CPU), or whose DRR bank when it is still to be built, would exceed the memory budget; before the run folder or
    the bank is made."""
    t, d = cfg.train, cfg.data
    if step:
        films = f" and {d.real_per_batch} real films" if d.real_per_batch else ""
        check_request(config, f"config key 'train.batch_size': a training step of {t.batch_size} pairs{films} at "
                              f"{cfg.model.img_size} px", train_step_bytes(cfg),
                      "lower train.batch_size and raise train.grad_accum for the same step, or ")
    bank = Path(d.bank) if d.bank else run / "bank"
    if not d.online and (bank / "manifest.json").is_file():
        return
    from .data import training_cts

    cts = len(training_cts(cfg, config))  # a config that leaves no CT is named before any work
    if d.online:
        return
    check_request(config, f"the DRR bank of {cts} CT(s) x {d.augmentations + 1} copies x "
                          f"{len(d.lao) * len(d.cran)} views (data.lao x data.cran) at {cfg.model.img_size} px, "
                          f"{d.spacing_mm:g} mm voxels", bank_bytes(cfg, cts),
                  "use fewer data.augmentations or views, a coarser data.spacing_mm, data.online: true, or ")


def eval_world_bytes(model, renderings: int, cts: int, score_size: int) -> int:
    """Peak memory of ``xwin eval world`` with a model of config ``model`` (`xwin.config.ModelConfig`): the jittered
    renderings of one CT are kept at once (context and 13 targets at the model's size, the 13 targets again at
    ``score_size`` when the model is smaller), the six methods' records of every CT, and a 13-view model pass."""
    size = model.img_size
    pixels = 14 * size ** 2 + (13 * score_size ** 2 if size < score_size else 0)
    records = 6 * 13 * (model.embed_dim + 4) * 4
    return model.memory_bytes(13) + renderings * (pixels * EVAL_BYTES_PER_RENDERING_PIXEL + cts * records)
