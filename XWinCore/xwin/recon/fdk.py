"""FDK (Feldkamp–Davis–Kress) reconstruction for circular cone-beam orbits under the XWin geometry contract.

Input: line integrals ∫μ dl (dimensionless) of B views (`xwin.geometry.Views`, LPS mm) of one circular orbit —
in practice an LAO sweep at CRAN 0, i.e. a rotation about the patient's z axis — and an output `Grid`.
Output: μ per mm on the grid ``[k, j, i]``. Steps (formulas: docs/reconstruction.md):

1. cosine pre-weighting ``SDD / √(SDD² + a² + b²)`` (a, b: mm on the detector from the principal point);
2. redundancy weights: ½ for a full scan (≥ 360°), Parker weights for a short scan;
3. ramp filtering along detector rows (FFT, zero padding to a power of two ≥ 2W) with an apodisation window
   (``ram-lak``/``none``, ``shepp-logan``, ``cosine``, ``hann``), in coordinates scaled to the isocenter;
4. voxel-driven back-projection: every voxel centre is projected with the view's projection matrix, the filtered
   projection sampled bilinearly and weighted by ``(SID / depth)²``, depth = distance from the source along the
   central ray direction — a numba kernel parallel over z-slices on the CPU, ``grid_sample`` with torch elsewhere.

The scaling is absolute: a uniform object reconstructs its own μ.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from ..drr.joseph_numba import ensure_cache_folder, parallel_kernel
from ..errors import XWinInputError
from ..geometry import Views, projection_matrices
from .grid import Grid

ensure_cache_folder(__file__)  # before the cache=True kernels below (read-only install and home)

Window = Literal["ram-lak", "none", "shepp-logan", "cosine", "hann"]
WINDOWS = ("ram-lak", "none", "shepp-logan", "cosine", "hann")


# ----------------------------------------------------------------------------------------------------------- orbit
class Orbit:
    """Per-view quantities of a circular orbit (all from the views themselves).

    isocenter (3,) LPS mm; axis (3,) unit rotation axis (−v for an LAO sweep at CRAN 0, i.e. +z);
    beta (B,) rad, orbit angle from the first view, increasing in the direction of rotation (≥ 0);
    sid, sdd (B,) mm: source → isocenter and source → detector-plane distances along the plane normal;
    principal (B, 2) (c, r) pixel of the foot of the perpendicular from the source; pixel_u, pixel_v (B,) mm;
    flip: True when the views rotate toward −u (decreasing LAO): fan angles then change sign.
    """

    def __init__(self, views: Views, isocenter=None, tol: float = 1e-3):
        if views.batch < 1:
            raise XWinInputError(None, "the projection set is empty")
        s, corner, du, dv = (t.detach().double().cpu().numpy() for t in views[:4])
        n = np.cross(du, dv)
        centre = corner + (views.width - 1) / 2 * du + (views.height - 1) / 2 * dv
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        n *= np.sign(np.einsum("bi,bi->b", centre - s, n))[:, None]
        self.normal = n
        self.sdd = np.einsum("bi,bi->b", corner - s, n)
        if isocenter is None:
            # least-squares point nearest to every central ray (needs two non-parallel views)
            proj = np.eye(3)[None] - n[:, :, None] * n[:, None, :]
            a, rhs = proj.sum(0), np.einsum("bij,bj->i", proj, s)
            if np.linalg.cond(a) > 1e8:
                raise XWinInputError(None, "cannot locate the isocenter from parallel views; pass isocenter=")
            isocenter = np.linalg.solve(a, rhs)
        self.isocenter = np.asarray(isocenter, np.float64)
        self.sid = np.einsum("bi,bi->b", self.isocenter[None] - s, n)
        if np.any(self.sid <= 0) or np.any(self.sdd <= self.sid):
            raise XWinInputError(None, "impossible geometry: the isocenter must lie between source and detector")
        vhat = dv / np.linalg.norm(dv, axis=1, keepdims=True)
        axis = -vhat.mean(0)
        axis /= np.linalg.norm(axis)
        if np.any(np.abs(n @ axis) > tol) or np.any(vhat @ axis > -1 + tol):
            raise XWinInputError(None, "FDK needs one circular orbit about the detector's column axis (an LAO sweep "
                                       "at a fixed CRAN 0); use an iterative method (sart, cgls) for other poses")
        self.axis = axis
        e1 = n[0]
        e2 = np.cross(axis, e1)
        beta = np.unwrap(np.arctan2(n @ e2, n @ e1))
        self.flip = views.batch > 1 and beta[-1] < beta[0]
        if self.flip:
            beta = -beta
        self.beta = beta - beta.min()
        pm = projection_matrices(views).double().cpu().numpy()
        foot = s + self.sdd[:, None] * n
        h = np.einsum("bij,bj->bi", pm, np.concatenate([foot, np.ones((len(foot), 1))], 1))
        self.principal = h[:, :2] / h[:, 2:]
        self.pixel_u = np.linalg.norm(du, axis=1)
        self.pixel_v = np.linalg.norm(dv, axis=1)
        self.width, self.height = views.width, views.height

    @property
    def coverage(self) -> float:
        """Angular range covered (rad): span of the view angles plus one mean step."""
        b = np.sort(self.beta)
        step = (b[-1] - b[0]) / (len(b) - 1) if len(b) > 1 else 2 * math.pi
        return float(b[-1] - b[0] + step)

    @property
    def full_scan(self) -> bool:
        return self.coverage >= 2 * math.pi * (1 - 1e-3)

    def fan_angles(self) -> np.ndarray:
        """(B, W) fan angle γ (rad) of every detector column, positive toward the direction of rotation."""
        c = np.arange(self.width)[None, :]
        g = np.arctan((c - self.principal[:, :1]) * self.pixel_u[:, None] / self.sdd[:, None])
        return -g if self.flip else g

    def half_fan(self) -> float:
        return float(np.abs(self.fan_angles()).max())

    def angle_steps(self) -> np.ndarray:
        """(B,) Δβ (rad) of each view in the angular quadrature."""
        nb = len(self.beta)
        if self.full_scan or nb == 1:
            return np.full(nb, 2 * math.pi / nb)
        return np.full(nb, (self.beta.max() - self.beta.min()) / (nb - 1))


# ------------------------------------------------------------------------------------------------------- weights
def cosine_weights(orbit: Orbit) -> np.ndarray:
    """(B, H, W) SDD / √(SDD² + a² + b²), a, b the pixel's offsets (mm) from the principal point."""
    c = np.arange(orbit.width)[None, None, :]
    r = np.arange(orbit.height)[None, :, None]
    a = (c - orbit.principal[:, 0, None, None]) * orbit.pixel_u[:, None, None]
    b = (r - orbit.principal[:, 1, None, None]) * orbit.pixel_v[:, None, None]
    sdd = orbit.sdd[:, None, None]
    return sdd / np.sqrt(sdd ** 2 + a ** 2 + b ** 2)


def parker_weights(beta: np.ndarray, gamma: np.ndarray, arc: float) -> np.ndarray:
    """Parker (1982) short-scan weights, generalised to any arc in [π + 2·max|γ|, 2π) (Wesarg et al. 2002).

    beta: (B,) orbit angles (rad) from 0 to ``arc``; gamma: (B, W) or (W,) fan angles (rad, positive in the
    direction of rotation); arc (rad). δ = (arc − π) / 2;
    w = sin²(π/4 · β / (δ − γ))           for 0 ≤ β < 2δ − 2γ,
    w = 1                                for 2δ − 2γ ≤ β ≤ π − 2γ,
    w = sin²(π/4 · (π + 2δ − β) / (δ + γ)) for π − 2γ < β ≤ π + 2δ,
    so that the two measurements of every line, (β, γ) and (β + π + 2γ, −γ), sum to 1. With too short an arc
    (δ < max|γ|) the arguments are clamped: the rays outside the redundant region are then under-weighted.
    """
    delta = max((arc - math.pi) / 2.0, 1e-6)
    b = np.asarray(beta, np.float64)[:, None]
    g = np.broadcast_to(np.asarray(gamma, np.float64), (b.shape[0], np.shape(gamma)[-1]))
    w = np.ones(np.broadcast_shapes(b.shape, g.shape))
    lo = b < 2 * delta - 2 * g
    hi = b > math.pi - 2 * g
    with np.errstate(divide="ignore", invalid="ignore"):
        w1 = np.sin(math.pi / 4 * np.clip(b / np.maximum(delta - g, 1e-9), 0, 2)) ** 2
        w3 = np.sin(math.pi / 4 * np.clip((math.pi + 2 * delta - b) / np.maximum(delta + g, 1e-9), 0, 2)) ** 2
    w = np.where(lo, w1, w)
    w = np.where(hi, w3, w)
    return np.clip(w, 0.0, 1.0)


def redundancy_weights(orbit: Orbit) -> np.ndarray:
    """(B, W): ½ for a full scan, Parker weights for a short scan (1 below 180°: limited-angle data)."""
    nb, w = len(orbit.beta), orbit.width
    if orbit.full_scan:
        return np.full((nb, w), 0.5)
    arc = float(orbit.beta.max() - orbit.beta.min())
    fan = orbit.half_fan()
    if arc <= math.pi:
        warnings.warn(f"FDK: an arc of {math.degrees(arc):.1f}° is at most 180°: limited-angle data, "
                      "expect strong artefacts", stacklevel=3)
        return np.ones((nb, w))
    if arc < math.pi + 2 * fan - 1e-6:
        warnings.warn(f"FDK short scan of {math.degrees(arc):.1f}° is below 180° + fan angle "
                      f"({180 + math.degrees(2 * fan):.1f}°): incomplete data at the fan edges", stacklevel=3)
    return parker_weights(orbit.beta, orbit.fan_angles(), arc)


# -------------------------------------------------------------------------------------------------------- filter
def ramp_response(width: int, pixel: float, window: Window = "hann") -> np.ndarray:
    """rfft-domain response (length N/2 + 1, N = power of two ≥ 2·width) of the band-limited ramp times ``window``.

    The ramp is the spatial Ram-Lak kernel (Kak & Slaney): h(0) = 1/(4τ²), h(n odd) = −1/(π²n²τ²), h(n even) = 0,
    with τ = ``pixel`` (mm, detector sampling at the isocenter), times τ for the convolution sum (units 1/mm).
    Windows on f ∈ [0, ½] cycles/sample: ram-lak/none 1; shepp-logan sinc(f); cosine cos(πf); hann ½(1 + cos 2πf).
    """
    if window not in WINDOWS:
        raise XWinInputError(None, f"unknown filter window {window!r}; choose one of {', '.join(WINDOWS)}")
    n = 1 << max(1, int(math.ceil(math.log2(2 * width))))
    k = np.arange(n)
    k = np.where(k > n // 2, k - n, k)
    h = np.zeros(n)
    h[0] = 1.0 / (4 * pixel ** 2)
    odd = k % 2 == 1
    h[odd] = -1.0 / (math.pi ** 2 * k[odd].astype(np.float64) ** 2 * pixel ** 2)
    resp = np.fft.rfft(h).real * pixel
    f = np.fft.rfftfreq(n)
    if window == "shepp-logan":
        resp *= np.sinc(f)
    elif window == "cosine":
        resp *= np.cos(math.pi * f)
    elif window == "hann":
        resp *= 0.5 * (1 + np.cos(2 * math.pi * f))
    return resp


def filter_rows(proj: torch.Tensor, response: np.ndarray) -> torch.Tensor:
    """Convolve every detector row of (B, H, W) ``proj`` with the filter whose rfft response is given."""
    n = 2 * (len(response) - 1)
    spec = torch.fft.rfft(proj, n=n, dim=-1)
    spec = spec * torch.as_tensor(response, dtype=proj.dtype, device=proj.device)
    return torch.fft.irfft(spec, n=n, dim=-1)[..., :proj.shape[-1]]


def weighted_filtered(projections: torch.Tensor, orbit: Orbit, window: Window = "hann") -> torch.Tensor:
    """Cosine-, redundancy- and Δβ-weighted, ramp-filtered projections (B, H, W), ready for back-projection."""
    p = projections
    weights = cosine_weights(orbit) * redundancy_weights(orbit)[:, None, :] * orbit.angle_steps()[:, None, None]
    p = p * torch.as_tensor(weights, dtype=p.dtype, device=p.device)
    tau = orbit.pixel_u * orbit.sid / orbit.sdd  # detector sampling at the isocenter (mm)
    out = torch.empty_like(p)
    for t in np.unique(np.round(tau, 9)):
        sel = torch.as_tensor(np.nonzero(np.isclose(tau, t, rtol=0, atol=1e-9))[0], device=p.device)
        out[sel] = filter_rows(p[sel], ramp_response(orbit.width, float(t), window))
    return out


# ------------------------------------------------------------------------------------------------ back-projection
@parallel_kernel  # one launch at a time process-wide (workqueue layer): see `xwin.drr.joseph_numba.PARALLEL_LOCK`
@njit(parallel=True, fastmath=True, cache=True)
def _backproject_numba(img, pm, q2, out, weighted):  # pragma: no cover - compiled
    nb, h, w = img.shape
    nk, nj, ni = out.shape
    for k in prange(nk):
        for b in range(nb):
            for j in range(nj):
                x0 = pm[b, 0, 2] * k + pm[b, 0, 1] * j + pm[b, 0, 3]
                y0 = pm[b, 1, 2] * k + pm[b, 1, 1] * j + pm[b, 1, 3]
                z0 = pm[b, 2, 2] * k + pm[b, 2, 1] * j + pm[b, 2, 3]
                for i in range(ni):
                    z = z0 + pm[b, 2, 0] * i
                    if z <= 0.0:
                        continue
                    inv = 1.0 / z
                    c = (x0 + pm[b, 0, 0] * i) * inv
                    r = (y0 + pm[b, 1, 0] * i) * inv
                    if c < 0.0 or r < 0.0 or c > w - 1 or r > h - 1:
                        continue
                    c0 = min(int(c), w - 1)
                    r0 = min(int(r), h - 1)
                    c1 = min(c0 + 1, w - 1)
                    r1 = min(r0 + 1, h - 1)
                    fc = c - c0
                    fr = r - r0
                    v = ((img[b, r0, c0] * (1 - fc) + img[b, r0, c1] * fc) * (1 - fr)
                         + (img[b, r1, c0] * (1 - fc) + img[b, r1, c1] * fc) * fr)
                    if weighted:
                        out[k, j, i] += q2[b] * inv * inv * v
                    else:
                        out[k, j, i] += v


def _backproject_torch(img: torch.Tensor, pm: torch.Tensor, q2: torch.Tensor, shape_kji, weighted: bool,
                       max_samples: int = 1 << 24, callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    nk, nj, ni = shape_kji
    nb, h, w = img.shape
    dev, dt = img.device, img.dtype
    k, j, i = torch.meshgrid(*(torch.arange(n, device=dev, dtype=dt) for n in shape_kji), indexing="ij")
    idx = torch.stack([i, j, k, torch.ones_like(i)], -1).reshape(-1, 4)
    out = torch.zeros(idx.shape[0], device=dev, dtype=dt)
    step = max(1, max_samples // idx.shape[0])
    for start in range(0, nb, step):
        sl = slice(start, start + step)
        hom = torch.einsum("nq,bpq->bnp", idx, pm[sl])  # (b, N, 3)
        z = hom[..., 2]
        inv = torch.where(z > 0, 1.0 / z, torch.zeros_like(z))
        c, r = hom[..., 0] * inv, hom[..., 1] * inv
        inside = (z > 0) & (c >= 0) & (r >= 0) & (c <= w - 1) & (r <= h - 1)
        grid = torch.stack([2 * c / max(w - 1, 1) - 1, 2 * r / max(h - 1, 1) - 1], -1)[:, None]  # (b, 1, N, 2)
        v = F.grid_sample(img[sl, None], grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0, 0]
        v = torch.where(inside, v, torch.zeros_like(v))
        if weighted:
            v = v * q2[sl, None] * inv * inv
        out += v.sum(0)
        if callback is not None:
            callback(min(start + step, nb), nb)
    return out.reshape(nk, nj, ni)


def backproject(images: torch.Tensor, views: Views, grid: Grid, orbit_scale=None, *, weighted: bool = True,
                backend: str = "auto", callback: Callable[[int, int], None] | None = None,
                chunk: int = 16) -> torch.Tensor:
    """Voxel-driven back-projection of (B, H, W) ``images`` onto ``grid`` (``[k, j, i]``).

    Each voxel centre x is projected with the view's matrix (homogeneous (c·t, r·t, t), t = depth / SDD) and the
    image sampled bilinearly (0 outside the detector). weighted: multiply by (SID/depth)² = (q / t)² with
    q = SID/SDD per view (``orbit_scale``, (B,)); unweighted it counts, per voxel, the views that see it when the
    images are ones. backend: ``numba`` (CPU), ``torch`` (any device) or ``auto`` (numba for CPU tensors).
    The views are summed in order, ``chunk`` at a time on numba (the same sum, bit for bit, for any chunk) and in
    memory-bounded batches on torch; ``callback(views_done, views_total)`` after each may raise to stop the work
    there (Cancel).
    """
    pm = projection_matrices(views).double().cpu().numpy() @ grid.lps_from_ijk[None]  # (B, 3, 4) on indices
    q2 = np.ones(views.batch) if orbit_scale is None else np.asarray(orbit_scale, np.float64) ** 2
    use_numba = backend == "numba" or (backend == "auto" and images.device.type == "cpu")
    nb, chunk = views.batch, max(1, int(chunk))
    if use_numba:
        out = np.zeros(grid.shape_kji, np.float32)
        img = np.ascontiguousarray(images.detach().cpu().numpy().astype(np.float32))
        for start in range(0, nb, chunk):
            part = slice(start, start + chunk)
            _backproject_numba(img[part], np.ascontiguousarray(pm[part]), q2[part], out, weighted)
            if callback is not None:
                callback(min(start + chunk, nb), nb)
        return torch.from_numpy(out)
    dt = images.dtype if images.is_floating_point() else torch.float32
    return _backproject_torch(images.to(dt), torch.as_tensor(pm, dtype=dt, device=images.device),
                              torch.as_tensor(q2, dtype=dt, device=images.device), grid.shape_kji, weighted,
                              callback=callback)


def coverage(views: Views, grid: Grid, backend: str = "auto", device="cpu") -> torch.Tensor:
    """(NZ, NY, NX) number of views whose detector sees each voxel centre."""
    ones = torch.ones(views.batch, views.height, views.width, device=device)
    return backproject(ones, views, grid, weighted=False, backend=backend)


# ----------------------------------------------------------------------------------------------------------- FDK
def fdk(projections: torch.Tensor, views: Views, grid: Grid, *, window: Window = "hann", isocenter=None,
        backend: str = "auto", callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """μ per mm (``[k, j, i]`` on ``grid``) from line integrals (B, H, W) of one circular orbit.

    projections: ∫μ dl per pixel (dimensionless), on any device (the result lives there too); views: the B views
    in acquisition order (LAO increasing or decreasing); window: ramp apodisation; isocenter: LPS mm (default: the
    point nearest to every central ray). Full scans (≥ 360°) use weights ½, shorter arcs Parker weights.
    callback(views_done, views_total): after each chunk of back-projected views (`backproject`); may raise to cancel.
    """
    if projections.ndim != 3 or projections.shape != (views.batch, views.height, views.width):
        raise XWinInputError(None, f"projections of shape {tuple(projections.shape)} do not match the "
                                   f"{views.batch} views of {views.height}×{views.width} pixels")
    if views.batch < 1:
        raise XWinInputError(None, "the projection set is empty")
    orbit = Orbit(views, isocenter)
    p = projections.to(torch.float64 if projections.device.type == "cpu" else torch.float32)
    filtered = weighted_filtered(p, orbit, window)
    return backproject(filtered.float(), views, grid, orbit.sid / orbit.sdd, backend=backend, callback=callback)
