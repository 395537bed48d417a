"""2D/3D registration: the C-arm pose at which a CT's DRR matches a radiograph (issue 17).

Frames and units (docs/geometry.md, docs/registration.md): the CT's patient frame is LPS in mm; the C-arm pose is
(LAO, CRAN, roll) in degrees and the isocenter in LPS mm, the rotation being

    R = Rz(lao) · Rx(−cran) · Ry(roll)        (Ry: the detector rolled about the PA beam axis d₀ = (0, −1, 0))

exactly as the DRR bank's jitter (`xwin.data.bank.roll_pose`): at roll ρ the detector axes are
u = cos ρ·u' + sin ρ·v' and v = −sin ρ·u' + cos ρ·v' (u', v' those at roll 0). Source, detector and pixels follow
from R, the isocenter and a `Geometry` (SID, SDD, pixel size in mm) as for any XWin view.

Method: intensity-based, multi-scale. The image is resampled onto coarse detectors (same field of view, larger
pixels) and, per level, the pose maximises a similarity between the DRR (torch Joseph projector, pose gradients by
autograd) and the image with L-BFGS (strong-Wolfe line search). The coarsest level is run from the start pose and a
few restarts around it; the best one is refined on the finer levels. The pose is bounded (a smooth tanh box around
the start); a result that ends against that box, that did not improve the similarity over the start, that ran out
of time or whose final similarity is too low is reported as a failure, never as "converged".
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F

from .defaults import ORIGIN_MM, SDD_MM, SID_MM, SPACING_MM
from .errors import XWinInputError
from .geometry import CRAN_LIMIT_DEG, D0, LAO_LIMIT_DEG, U0, V0, Geometry, Views, rotation

if TYPE_CHECKING:
    from .drr.projector import Mode

Similarity = Literal["gncc", "ncc", "mixed"]
STATUS_CONVERGED = "converged"
FAILURES = ("no improvement", "hit a bound", "time limit", "poor match")
POSE_FORMAT = "xwin-pose/1"
PERFECT = 0.999  # a similarity this high needs no improvement to count as converged


@dataclass(frozen=True)
class Pose:
    """A C-arm pose around a CT: angles in degrees, isocenter in LPS mm."""

    lao: float
    cran: float
    roll: float
    isocenter: tuple[float, float, float]

    def rotation(self) -> np.ndarray:
        """3×3 R = Rz(lao)·Rx(−cran)·Ry(roll) (rotates the canonical C-arm frame)."""
        return pose_rotation(torch.tensor([self.lao, self.cran, self.roll], dtype=torch.float64)).numpy()

    def matrix(self) -> np.ndarray:
        """4×4 pose for `xwin.geometry.carm_views(..., isocenter=self.isocenter, pose=...)` (zero translation)."""
        m = np.eye(4)
        m[:3, :3] = self.rotation()
        return m


@dataclass
class RegistrationResult:
    """What `register` found. similarity: at the final pose on the finest level (start_similarity: at the start
    pose, same level and metric). iterations: L-BFGS iterations over all levels and restarts; evaluations: DRRs
    rendered with gradients. status: 'converged' or one of `FAILURES`; message: one line saying why."""

    pose: Pose
    start: Pose
    geometry: Geometry
    similarity: float
    start_similarity: float
    iterations: int
    evaluations: int
    seconds: float
    status: str
    message: str
    metric: str
    levels: list[dict] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.status == STATUS_CONVERGED

    def to_json(self) -> dict:
        """JSON-ready summary: pose (degrees, LPS mm), SID/SDD (mm), similarity, iterations, seconds, status."""
        return {"lao_deg": self.pose.lao, "cran_deg": self.pose.cran, "roll_deg": self.pose.roll,
                "isocenter_lps_mm": list(self.pose.isocenter), "sid_mm": self.geometry.sid,
                "sdd_mm": self.geometry.sdd, "similarity": self.similarity,
                "start_similarity": self.start_similarity, "metric": self.metric, "iterations": self.iterations,
                "evaluations": self.evaluations, "seconds": self.seconds, "status": self.status,
                "message": self.message}


# ----------------------------------------------------------------------------------------------------------- poses
def pose_rotation(angles: torch.Tensor) -> torch.Tensor:
    """(…, 3) (lao, cran, roll) in degrees → (…, 3, 3) R = Rz(lao)·Rx(−cran)·Ry(roll). Differentiable."""
    flat = angles.reshape(-1, 3)
    r = rotation(flat[:, 0], flat[:, 1]).to(angles.dtype)
    rho = torch.deg2rad(flat[:, 2])
    c, s = torch.cos(rho), torch.sin(rho)
    z, o = torch.zeros_like(rho), torch.ones_like(rho)
    ry = torch.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(-1, 3, 3)
    return (r @ ry).reshape(*angles.shape[:-1], 3, 3)


def pose_views(geometry: Geometry, params: torch.Tensor, sdd: torch.Tensor | None = None) -> Views:
    """Views (LPS mm) for (B, 6) params = (lao, cran, roll [deg], isocenter x, y, z [LPS mm]); differentiable.

    Same construction as `xwin.geometry.carm_views` (source S = iso − SID·d, detector centre iso + (SDD − SID)·d).
    sdd: (B,) source → detector distances in mm instead of the geometry's (differentiable)."""
    params = params.reshape(-1, 6)
    r = pose_rotation(params[:, :3])
    basis = torch.tensor([D0, U0, V0], dtype=params.dtype).T
    axes = r @ basis
    d, u, v = axes[..., 0], axes[..., 1], axes[..., 2]
    iso = params[:, 3:]
    g = geometry
    source = iso - g.sid * d
    du, dv = g.pixel * u, g.pixel * v
    depth = (g.sdd if sdd is None else sdd.reshape(-1, 1).to(params.dtype)) - g.sid
    corner = iso + depth * d - (g.width - 1) / 2.0 * du - (g.height - 1) / 2.0 * dv
    return Views(source, corner, du, dv, g.height, g.width)


def rotation_error_deg(a: Pose, b: Pose) -> float:
    """Geodesic angle (degrees) between the two C-arm rotations."""
    m = a.rotation().T @ b.rotation()
    return float(np.degrees(np.arccos(np.clip((np.trace(m) - 1) / 2, -1.0, 1.0))))


def translation_error_mm(a: Pose, b: Pose) -> float:
    """Distance (mm) between the two isocenters."""
    return float(np.linalg.norm(np.subtract(a.isocenter, b.isocenter)))


# ------------------------------------------------------------------------------------------------------ similarity
def _standardise(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    dims = (-2, -1)
    if mask is None:
        x = x - x.mean(dims, keepdim=True)
        return x / (x.pow(2).mean(dims, keepdim=True).sqrt() + 1e-8)
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum(dims, keepdim=True) / n
    x = (x - mean) * mask
    return x / ((x.pow(2).sum(dims, keepdim=True) / n).sqrt() + 1e-8)


def ncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised cross-correlation of (…, H, W) images over their last two axes (optionally within ``mask``)."""
    prod = _standardise(a, mask) * _standardise(b, mask)
    n = prod.shape[-2] * prod.shape[-1] if mask is None else mask.sum().clamp(min=1)
    return prod.sum((-2, -1)) / n


_SOBEL = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = _SOBEL.to(x)
    weight = torch.stack([k, k.T])[:, None]
    g = F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), weight)
    return g[:, 0].reshape(*x.shape[:-2], *g.shape[-2:]), g[:, 1].reshape(*x.shape[:-2], *g.shape[-2:])


def gradient_ncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient correlation: mean NCC of the Sobel row and column derivatives (tolerates film contrast curves)."""
    (ax, ay), (bx, by) = _gradients(a), _gradients(b)
    m = None if mask is None else mask[..., 1:-1, 1:-1]
    return 0.5 * (ncc(ax, bx, m) + ncc(ay, by, m))


def similarity(a: torch.Tensor, b: torch.Tensor, metric: Similarity, mask: torch.Tensor | None = None) -> torch.Tensor:
    """'gncc' (gradient correlation), 'ncc' or 'mixed' (their mean); 1 is a perfect match."""
    if metric == "ncc":
        return ncc(a, b, mask)
    if metric == "gncc":
        return gradient_ncc(a, b, mask)
    if metric == "mixed":
        return 0.5 * (ncc(a, b, mask) + gradient_ncc(a, b, mask))
    raise XWinInputError(None, f"unknown similarity {metric!r}: use gncc, ncc or mixed")


# ------------------------------------------------------------------------------------------------------- pyramids
def resample_image(image: torch.Tensor, pixel: float, target: Geometry) -> torch.Tensor:
    """``image`` (H, W, square pixels of ``pixel`` mm, detector centre at the image centre) box-filtered and sampled
    at the pixel centres of the ``target`` detector (same centre; pixel sizes in mm at the detector).

    Large reductions (a 2,000-pixel film onto a 32-pixel level) first average k × k blocks (k = the integer part of
    the ratio), then blur by the rest and sample bilinearly, every position mapped exactly."""
    h, w = image.shape
    f = target.pixel / pixel
    x = image[None, None].float()
    # fine pixel coordinate q ↦ (q − offset) / step in the current array
    step, offset = 1.0, 0.0
    block = int(f)
    if block >= 2:
        x = F.avg_pool2d(x, block, stride=block)
        step, offset = float(block), (block - 1) / 2.0
    k = int(round(f / step))
    if k > 1:
        x = F.avg_pool2d(F.pad(x, (k // 2, (k - 1) // 2, k // 2, (k - 1) // 2), mode="replicate"), k, stride=1)
    hh, ww = x.shape[-2:]
    rows = ((torch.arange(target.height, dtype=torch.float64) - (target.height - 1) / 2) * f + (h - 1) / 2
            - offset) / step
    cols = ((torch.arange(target.width, dtype=torch.float64) - (target.width - 1) / 2) * f + (w - 1) / 2
            - offset) / step
    gy, gx = torch.meshgrid(2 * rows / max(hh - 1, 1) - 1, 2 * cols / max(ww - 1, 1) - 1, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None].float()
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]


def level_geometries(geometry: Geometry, sizes: Sequence[int]) -> list[Geometry]:
    """Coarse-to-fine detectors covering ``geometry``'s field of view, the longest side ``sizes`` pixels each (never
    finer than ``geometry`` itself)."""
    out: list[Geometry] = []
    longest = max(geometry.height, geometry.width)
    for n in sorted(set(sizes)):
        n = min(n, longest)
        pixel = geometry.pixel * longest / n
        g = Geometry(geometry.sid, geometry.sdd, max(2, round(geometry.height * geometry.pixel / pixel)),
                     max(2, round(geometry.width * geometry.pixel / pixel)), pixel)
        if not out or (g.height, g.width) != (out[-1].height, out[-1].width):
            out.append(g)
    return out


def _footprint(views: Views, ijk_from_lps: torch.Tensor, shape_kji: Sequence[int]) -> torch.Tensor:
    """(H, W) 1 where the ray source → pixel crosses the CT grid's box (slab test in index space)."""
    a = ijk_from_lps.double()
    pix = views.pixel_centers()[0].double()
    s = views.source[0].double() @ a[:3, :3].T + a[:3, 3]
    d = pix @ a[:3, :3].T + a[:3, 3] - s
    hi = torch.tensor([shape_kji[2] - 1, shape_kji[1] - 1, shape_kji[0] - 1], dtype=torch.float64)
    safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t0, t1 = (0 - s) / safe, (hi - s) / safe
    near = torch.minimum(t0, t1).amax(-1)
    far = torch.maximum(t0, t1).amin(-1)
    return ((far > near) & (far > 0)).float()


# ---------------------------------------------------------------------------------------------------- registration
@dataclass(frozen=True)
class Settings:
    """Knobs of `register`. sizes: longest detector side per level (pixels, coarse to fine); iterations: L-BFGS
    iterations per level; restarts: extra coarse-level starts (each a ± ``restart_deg`` step of LAO or CRAN);
    max_rotation_deg / max_translation_mm: the box around the start; min_gain: the least similarity gain over the
    start that counts as an improvement; min_similarity: below it the match is 'poor' (a failure); time_limit_s:
    wall-clock budget (the result so far is returned with status 'time limit'). estimate_sdd: estimate the source →
    detector distance (within ± ``max_sdd_fraction`` of the geometry's) *instead of* the isocenter depth, which then
    stays at the start's: one view cannot tell the two apart (docs/registration.md)."""

    sizes: tuple[int, ...] = (32, 64, 128)
    iterations: tuple[int, ...] = (30, 40, 20)
    restarts: int = 4
    restart_deg: float = 5.0
    max_rotation_deg: float = 30.0
    max_translation_mm: float = 60.0
    min_gain: float = 1e-3
    min_similarity: float = 0.5
    time_limit_s: float = 300.0
    metric: Similarity = "mixed"
    estimate_sdd: bool = False
    max_sdd_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 4 or len(self.iterations) < len(self.sizes) or min(self.iterations) < 1:
            raise XWinInputError(None, "registration levels need detector sizes >= 4 and one iteration count >= 1 each")
        if self.restarts < 0 or not self.time_limit_s > 0:
            raise XWinInputError(None, f"--restarts must be >= 0 and --time-limit > 0 s (got {self.restarts}, "
                                       f"{self.time_limit_s})")
        if not 0.0 < self.max_sdd_fraction < 0.9:
            raise XWinInputError(None, f"the SDD range must be a fraction in (0, 0.9), got {self.max_sdd_fraction}")
        if self.metric not in ("gncc", "ncc", "mixed"):
            raise XWinInputError(None, f"unknown similarity {self.metric!r}: use gncc, ncc or mixed")


class _TimeUp(Exception):
    pass


def _start_offsets(restarts: int, step_deg: float) -> Iterator[tuple[float, float]]:
    """(ΔLAO, ΔCRAN) offsets in degrees of the coarse-level starts: the start itself, then ± ``step_deg`` of LAO,
    of CRAN, alternating (drawn one at a time: the time limit ends a huge ``restarts``)."""
    yield 0.0, 0.0
    for k in range(restarts):
        sign = 1.0 if k % 2 == 0 else -1.0
        yield (sign * step_deg, 0.0) if (k // 2) % 2 == 0 else (0.0, sign * step_deg)


def register(projector, image: np.ndarray, geometry: Geometry, start: Pose, *, mode: Mode = "radiograph",
             settings: Settings | None = None, mask_to_ct: bool = False, progress=None) -> RegistrationResult:
    """Estimate the C-arm pose (LAO, CRAN, roll in degrees; isocenter in LPS mm) at which ``projector``'s CT renders
    like ``image``.

    projector: a `xwin.drr.Projector` of the CT (its μ, pyramid levels and affine are used; its own geometry and
    isocenter are not). image: (H, W) array on ``geometry``'s detector (row 0 superior edge, column 0 patient's
    right, detector centre at the image centre; pixel size and SID/SDD in mm). start: the initial pose. mode: the
    display map applied to the DRR before comparing ('radiograph' for films, the DRR's own mode for `xwin render`
    output). mask_to_ct: compare only the pixels whose rays cross the CT grid (for films wider than the CT).
    progress: optional callable(level, iteration, similarity) (may raise to cancel).
    """
    from .drr import joseph_torch
    from .drr.projector import apply_mode

    s = settings or Settings()
    t_start = time.perf_counter()
    deadline = t_start + s.time_limit_s
    target = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if target.ndim != 2 or target.shape != (geometry.height, geometry.width):
        raise XWinInputError(None, f"image shape {tuple(target.shape)} does not match the detector "
                                   f"{geometry.height} x {geometry.width}")
    x0 = torch.tensor([start.lao, start.cran, start.roll, *start.isocenter], dtype=torch.float64)
    bound = torch.tensor([s.max_rotation_deg] * 3 + [s.max_translation_mm] * 3, dtype=torch.float64)
    n_params = 7 if s.estimate_sdd else 6  # w[6]: the SDD, tanh-mapped onto [sdd_lo, sdd_hi] mm
    sdd_lo = max(geometry.sdd * (1.0 - s.max_sdd_fraction), 1.05 * geometry.sid)  # the detector beyond the patient
    sdd_hi = geometry.sdd * (1.0 + s.max_sdd_fraction)
    if s.estimate_sdd and sdd_hi <= sdd_lo:
        raise XWinInputError(None, f"no SDD range to search: SDD {geometry.sdd:g} mm ± {s.max_sdd_fraction:g} stays "
                                   f"within 5 % of the SID ({geometry.sid:g} mm)")
    w_sdd = math.atanh(min(0.999, max(-0.999, 2.0 * (geometry.sdd - sdd_lo) / max(sdd_hi - sdd_lo, 1e-9) - 1.0)))
    beam = pose_rotation(x0[None, :3])[0] @ torch.tensor(D0, dtype=torch.float64)  # start beam direction (LPS)
    spacing_max = float(np.max(projector.volume.spacing))  # pooling is isotropic in index: bound the coarsest axis
    levels = level_geometries(geometry, s.sizes)
    iters = list(s.iterations)[-len(levels):] if len(levels) < len(s.sizes) else list(s.iterations)
    counters = {"iterations": 0, "evaluations": 0}

    def params_of(w: torch.Tensor) -> torch.Tensor:
        """(6,) pose parameters; with estimate_sdd the isocenter moves only across the start beam."""
        step = bound * torch.tanh(w[:6])
        if s.estimate_sdd:
            shift = step[3:]
            step = torch.cat([step[:3], shift - (shift @ beam) * beam])
        return x0 + step

    def sdd_of(w: torch.Tensor) -> torch.Tensor | None:
        return sdd_lo + (sdd_hi - sdd_lo) * (torch.tanh(w[6:7]) + 1.0) / 2.0 if s.estimate_sdd else None

    def make_level(g: Geometry):
        iso_pixel = g.pixel * g.sid / g.sdd
        factor = max(1, int(iso_pixel / (1.5 * spacing_max)))
        mu, a = (projector.mu, projector.ijk_from_lps) if factor == 1 else projector._level(factor)[:2]
        tgt = resample_image(target, geometry.pixel, g)
        mask = None
        if mask_to_ct:
            mask = _footprint(pose_views(g, x0[None]), a, tuple(mu.shape))
            if mask.sum() < 16:
                mask = None
        return mu, a, tgt, mask

    def objective(w: torch.Tensor, level) -> torch.Tensor:
        mu, a, tgt, mask = level
        g = level_geom[id(level)]
        line = joseph_torch.forward(mu, a, pose_views(g, params_of(w)[None], sdd_of(w)))[0]
        drr = apply_mode(line, mode)
        counters["evaluations"] += 1
        return similarity(drr, tgt, s.metric, mask)

    def evaluate(w: torch.Tensor, level) -> float:
        with torch.no_grad():
            return float(objective(w, level))

    def optimise(w_init: torch.Tensor, level, n_iter: int, index: int) -> tuple[torch.Tensor, float]:
        w = w_init.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([w], lr=1.0, max_iter=n_iter, max_eval=int(n_iter * 1.6) + 2, history_size=10,
                                tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure():
            if time.perf_counter() > deadline:
                raise _TimeUp()
            opt.zero_grad()
            loss = -objective(w, level)
            loss.backward()
            if progress is not None:
                progress(index, counters["evaluations"], -float(loss.detach()))
            return loss

        try:
            opt.step(closure)
        except _TimeUp:
            pass
        state = opt.state[opt._params[0]]
        counters["iterations"] += int(state.get("n_iter", 0))
        w_final = w.detach()
        if not torch.all(torch.isfinite(w_final)):
            w_final = w_init
        return w_final, evaluate(w_final, level)

    level_data = []
    level_geom: dict[int, Geometry] = {}
    for g in levels:
        data = make_level(g)
        level_geom[id(data)] = g
        level_data.append(data)

    history: list[dict] = []
    finest = level_data[-1]
    w_start = torch.zeros(n_params, dtype=torch.float64)
    w_start[6:] = w_sdd
    start_sim = evaluate(w_start, finest)

    # coarse level: the start and restarts around it, best kept
    best_w, best_sim = w_start, -math.inf
    for dl, dc in _start_offsets(s.restarts, s.restart_deg):
        off = torch.tensor([dl, dc, 0, 0, 0, 0], dtype=torch.float64)
        w0 = w_start.clone()
        w0[:6] = torch.atanh(torch.clamp(off / bound, -0.999, 0.999))
        w, sim = optimise(w0, level_data[0], iters[0], 0)
        history.append({"level": 0, "pixels": [levels[0].height, levels[0].width], "start_offset_deg": [dl, dc],
                        "similarity": sim, "seconds": time.perf_counter() - t_start})
        if sim > best_sim:
            best_w, best_sim = w, sim
        if time.perf_counter() > deadline:
            break
    w = best_w
    for i in range(1, len(level_data)):
        if time.perf_counter() > deadline:
            break
        w, sim = optimise(w, level_data[i], iters[i], i)
        history.append({"level": i, "pixels": [levels[i].height, levels[i].width], "similarity": sim,
                        "seconds": time.perf_counter() - t_start})
    final_sim = evaluate(w, finest)
    p = params_of(w)
    pose = Pose(float(p[0]), float(p[1]), float(p[2]), (float(p[3]), float(p[4]), float(p[5])))
    sdd = sdd_of(w)
    found = geometry if sdd is None else dataclasses.replace(geometry, sdd=float(sdd[0]))
    frac = (torch.tanh(w).abs()).max().item()
    seconds = time.perf_counter() - t_start
    if time.perf_counter() > deadline:
        status, message = "time limit", (f"stopped at the {s.time_limit_s:g} s time limit before the finest level "
                                         "finished")
    elif final_sim < start_sim + s.min_gain and final_sim < PERFECT:  # a start already at the optimum is no failure
        status, message = "no improvement", (f"similarity did not improve over the start ({start_sim:.4f} -> "
                                             f"{final_sim:.4f})")
    elif frac > 0.97:
        which = ["LAO", "CRAN", "roll", "isocenter x", "isocenter y", "isocenter z",
                 "SDD"][int(torch.tanh(w).abs().argmax())]
        sdd_range = f", SDD {sdd_lo:.0f}–{sdd_hi:.0f} mm" if s.estimate_sdd else ""
        status, message = "hit a bound", (f"{which} ran to its bound (±{s.max_rotation_deg:g} deg / "
                                          f"±{s.max_translation_mm:g} mm around the start{sdd_range})")
    elif final_sim < s.min_similarity:
        status, message = "poor match", (f"final similarity {final_sim:.4f} is below {s.min_similarity:g}: the DRR "
                                         "does not match the image")
    else:
        status, message = STATUS_CONVERGED, f"similarity {start_sim:.4f} -> {final_sim:.4f}"
        if sdd is not None:
            message += f", SDD {found.sdd:.1f} mm"
    return RegistrationResult(pose, start, found, final_sim, start_sim, counters["iterations"],
                              counters["evaluations"], seconds, status, message, s.metric, history)


# ------------------------------------------------------------------------------------------------------- files
def film_distances(meta: dict, sid: float | None = None, sdd: float | None = None) -> tuple[float, float]:
    """(SID, SDD) in mm for a film: SDD as given, else the DICOM Distance Source to Detector (``meta``'s
    ``distance_source_to_detector_mm``), else 1800; SID as given, else the same fraction of SDD as the defaults
    (1600 / 1800). A single view hardly tells them apart from the isocenter depth (docs/registration.md), so they are
    not estimated."""
    if sdd is None:
        sdd = float(meta.get("distance_source_to_detector_mm", SDD_MM))
    return (sdd * SID_MM / SDD_MM if sid is None else sid), sdd


def load_target(path: str | os.PathLike, pixel: float | None = None, sid: float | None = None,
                sdd: float | None = None) -> tuple[np.ndarray, Geometry, Mode, bool]:
    """The image to register and its detector: (array, geometry, DRR mode to compare with, simulated?).

    A DRR written by `xwin render` carries SID/SDD (``xwin_sid_mm``, ``xwin_sdd_mm``), its mode and its pixel size;
    a film takes its pixel size from the header (DICOM Imager Pixel Spacing...) or ``pixel`` (mm at the detector)
    and its distances from `film_distances` (``sid``/``sdd`` in mm when given, else its header or the defaults).
    ``pixel`` given overrides the file's spacing."""
    from .io import read_radiograph

    radiograph = read_radiograph(path)
    meta = radiograph.meta
    simulated = radiograph.simulated
    if simulated:
        try:
            sid, sdd = float(meta["xwin_sid_mm"]), float(meta["xwin_sdd_mm"])
        except (KeyError, ValueError):
            raise XWinInputError(path, "its xwin_sid_mm / xwin_sdd_mm metadata are not numbers") from None
    else:
        sid, sdd = film_distances(meta, sid, sdd)
    spacing = (pixel, pixel) if pixel is not None else radiograph.pixel_spacing
    if spacing is None:
        raise XWinInputError(path, "has no pixel spacing in its header: give --pixel MM (detector pixel size)")
    if abs(spacing[0] - spacing[1]) > 1e-3 * max(spacing):
        raise XWinInputError(path, f"has non-square pixels {spacing} mm; XWin detectors have square pixels")
    h, w = radiograph.array.shape
    try:
        geometry = Geometry(sid, sdd, h, w, float(spacing[0]))
    except XWinInputError as e:
        raise XWinInputError(path, e.problem) from None
    mode = str(meta.get("xwin_mode", "radiograph")) if simulated else "radiograph"
    if mode not in ("line", "intensity", "radiograph"):  # compared in another mode, the match would fail or mislead
        raise XWinInputError(path, f"its xwin_mode metadata is {mode[:40]!r}, not line, intensity or radiograph")
    return radiograph.array, geometry, cast("Mode", mode), simulated


def register_files(ct: str | os.PathLike, image: str | os.PathLike, *, lao: float = 0.0, cran: float = 0.0,
                   roll: float = 0.0, isocenter: Sequence[float] | None = None, pixel: float | None = None,
                   sid: float | None = None, sdd: float | None = None, settings: Settings | None = None,
                   mu_water: float | None = None) -> RegistrationResult:
    """`register` a CT file to an image file (what ``xwin register`` runs): start at (lao, cran, roll) degrees and
    ``isocenter`` (LPS mm; default the CT grid centre). Films are compared within the CT's footprint."""
    from .drr import MU_WATER, Projector
    from .io import read_ct

    for name, v, limit in (("--lao", lao, LAO_LIMIT_DEG), ("--cran", cran, CRAN_LIMIT_DEG), ("--roll", roll, 180.0)):
        if not (math.isfinite(v) and abs(v) <= limit):
            raise XWinInputError(None, f"{name} must be a finite number of degrees within -{limit:g}...{limit:g} "
                                       f"(got {v:g})")
    for name, mm in (("--pixel", pixel), ("--sid", sid), ("--sdd", sdd)):  # options, not the image, are to blame
        if mm is not None and not (math.isfinite(mm) and mm > 0):
            raise XWinInputError(None, f"{name} must be a positive number of mm (got {mm:g})")
        lo, hi = SPACING_MM if name == "--pixel" else (0.0, ORIGIN_MM)  # `Geometry`'s limits
        if mm is not None and not lo <= mm <= hi:
            raise XWinInputError(None, f"{name} must lie between {lo:g} and {hi:g} mm (got {mm:g})")
    if sid is not None and sdd is not None and not sdd > sid:
        raise XWinInputError(None, f"--sdd ({sdd:g} mm) must exceed --sid ({sid:g} mm): the detector lies beyond the "
                                   "isocenter")
    volume = read_ct(ct)
    array, geometry, mode, simulated = load_target(image, pixel, sid, sdd)
    projector = Projector(volume, geometry, isocenter=isocenter, mu_water=mu_water or MU_WATER)
    start = Pose(float(lao), float(cran), float(roll),
                 cast("tuple[float, float, float]", tuple(float(x) for x in projector.isocenter)))
    return register(projector, array, geometry, start, mode=mode, settings=settings, mask_to_ct=not simulated)


# ---------------------------------------------------------------------------------------------------- pose files
def pose_document(result: RegistrationResult) -> dict:
    """The pose file's content: ``xwin render --pose`` reads the pose and the detector geometry back."""
    g = result.geometry
    doc = {"format": POSE_FORMAT, **result.to_json(),
           "geometry": {"sid_mm": g.sid, "sdd_mm": g.sdd, "height": g.height, "width": g.width, "pixel_mm": g.pixel},
           "matrix": result.pose.matrix().tolist(),
           "start": {"lao_deg": result.start.lao, "cran_deg": result.start.cran, "roll_deg": result.start.roll,
                     "isocenter_lps_mm": list(result.start.isocenter)},
           "levels": result.levels}
    return doc


def write_pose(path: str | os.PathLike, result: RegistrationResult) -> Path:
    """Write the pose file atomically (JSON)."""
    from .io.writers import atomic_output

    path = Path(path)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(pose_document(result), indent=2) + "\n")
    return path


_MAX_POSE_BYTES = 1 << 20  # a pose file is a few hundred bytes


def read_pose(path: str | os.PathLike) -> tuple[Pose, Geometry]:
    """Pose (degrees, LPS mm) and detector geometry from a pose file written by `write_pose`."""
    from .io.validate import check_budget, file_problem

    p = Path(path)
    problem = file_problem(p)  # a FIFO or a device would block or never end
    if problem:
        raise XWinInputError(p, "no such pose file" if problem == "does not exist" else problem)
    try:
        with open(p, "rb") as f:
            raw = f.read(_MAX_POSE_BYTES + 1)
        if len(raw) > _MAX_POSE_BYTES:
            raise ValueError(f"larger than {_MAX_POSE_BYTES >> 10} KiB")
        doc = json.loads(raw.decode("utf-8-sig"))  # a byte-order mark (a pose file saved by Notepad) is no error
    except (OSError, ValueError, RecursionError) as e:  # JSON and UTF-8 errors are ValueErrors
        text = "nested too deeply" if isinstance(e, RecursionError) else " ".join(str(e).split())[:200]
        raise XWinInputError(p, f"is not a readable JSON pose file ({text})") from None
    try:
        if not isinstance(doc, dict) or doc.get("format") != POSE_FORMAT:
            raise ValueError(f"format is not {POSE_FORMAT}")
        iso = cast("tuple[float, float, float]", tuple(_pose_number(f"isocenter_lps_mm[{n}]", v)
                                                       for n, v in enumerate(_pose_list(doc, "isocenter_lps_mm"))))
        pose = Pose(_pose_number("lao_deg", doc["lao_deg"]), _pose_number("cran_deg", doc["cran_deg"]),
                    _pose_number("roll_deg", doc.get("roll_deg", 0.0)), iso)
        if len(iso) != 3:
            raise ValueError(f"isocenter_lps_mm holds {len(iso)} numbers, not 3")
        if max(map(abs, iso)) > ORIGIN_MM:
            raise ValueError(f"the isocenter {iso} mm lies more than {ORIGIN_MM:g} mm (1 km) from the patient frame's "
                             "origin")
        g = doc["geometry"]
        if not isinstance(g, dict):
            raise ValueError("geometry is not a mapping")
        height, width = (_pose_number(f"geometry.{k}", g[k], integer=True) for k in ("height", "width"))
        geometry = Geometry(_pose_number("geometry.sid_mm", g["sid_mm"]), _pose_number("geometry.sdd_mm", g["sdd_mm"]),
                            int(height), int(width), _pose_number("geometry.pixel_mm", g["pixel_mm"]))
        if "matrix" in doc:  # written from the angles: one that disagrees means a damaged or hand-edited file
            matrix = np.array([[_pose_number("matrix", v) for v in _pose_list({"row": row}, "row")]
                               for row in _pose_list(doc, "matrix")])
            if matrix.shape != (4, 4) or not np.allclose(matrix, pose.matrix(), atol=1e-6):
                raise ValueError("its matrix is not the rotation of its lao_deg, cran_deg and roll_deg (a 4x4 "
                                 "proper rotation, zero translation)")
    except KeyError as e:
        raise XWinInputError(p, f"is not an XWin pose file (no {e})") from None
    except (TypeError, ValueError) as e:
        raise XWinInputError(p, f"is not an XWin pose file ({e})") from None
    check_budget(p, f"a detector of {geometry.height} x {geometry.width} pixels",
                 geometry.height * geometry.width * 4, geometry.height * geometry.width * 64)  # rays, DRR, image
    return pose, geometry


def _pose_list(doc: dict, key: str) -> list:
    if not isinstance(doc[key], list):
        raise ValueError(f"{key} is not a list")
    return doc[key]


def _pose_number(key: str, value: object, integer: bool = False) -> float:
    """A JSON number of a pose file (not a text, a boolean or null), finite; a whole one with ``integer``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} is {json.dumps(value)[:40]}, not a number")
    if not math.isfinite(value):
        raise ValueError(f"{key} is {value}: angles, isocenter and geometry must be finite numbers")
    if integer and value != int(value):
        raise ValueError(f"{key} is {value}, not a whole number of pixels")
    return float(value)


__all__ = ["Pose", "RegistrationResult", "Settings", "register", "pose_rotation", "pose_views", "similarity", "ncc",
           "gradient_ncc", "rotation_error_deg", "translation_error_mm", "write_pose", "read_pose", "pose_document",
           "level_geometries", "resample_image", "film_distances", "load_target", "register_files", "FAILURES",
           "STATUS_CONVERGED"]
