"""Iterative reconstruction for any list of poses: (OS-)SART and CGLS, with optional total-variation regularisation.

The system matrix A is XWin's Joseph projector (`xwin.drr.forward_project`, line integrals in mm·μ) on the output
grid, Aᵀ its exact adjoint (`xwin.drr.back_project`); numba on the CPU, torch on other devices. Unknown: μ per mm
on the grid ``[k, j, i]``; data b: line integrals (B, H, W), dimensionless. Updates (docs/reconstruction.md):

* SART / OS-SART (Andersen & Kak 1984; ordered subsets): for each subset S of views,
  ``x ← x + λ · A_Sᵀ[(b_S − A_S x) / A_S 1] / (A_Sᵀ 1)``, then optionally ``x ← max(x, 0)``;
* CGLS: conjugate gradients on AᵀA x = Aᵀb (Hestenes–Stiefel form, one A and one Aᵀ per iteration);
* TV: after every iteration ``x ← prox_{w·TV}(x)``, Chambolle's (2004) dual projection algorithm for the isotropic
  ROF problem ``min_u ½‖u − x‖² + w·TV(u)`` in voxel units, ``w`` in μ per mm; CGLS restarts its search direction
  after every TV step (the prox changes the iterate outside the Krylov space).

Each function returns an `IterativeResult` (μ and the relative data residual ‖b − Ax‖/‖b‖ of every iteration: for
SART the residual each subset met during the sweep, which costs no extra projection; for CGLS the residual after it);
``callback(iteration, mu, residual)`` is called after each iteration; ``progress=True`` shows a tqdm bar on stderr.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from ..drr.projector import Backend, back_project, forward_project
from ..errors import XWinInputError
from ..geometry import Views
from .grid import Grid

Callback = Callable[[int, torch.Tensor, float], None]


NORMALISATION_BYTES = 1 << 30  # SART keeps its per-subset A_Sᵀ 1 volumes up to this size


class IterativeResult(NamedTuple):
    mu: torch.Tensor  # [k, j, i] attenuation per mm
    residuals: list[float]  # ‖b − A x‖ / ‖b‖ per iteration (SART: met by each subset during the sweep)


def _subset(views: Views, idx) -> Views:
    idx = torch.as_tensor(np.asarray(idx), device=views.source.device)
    return Views(views.source[idx], views.corner[idx], views.du[idx], views.dv[idx], views.height, views.width)


def _safe_inverse(t: torch.Tensor) -> torch.Tensor:
    """1/t where t > 1e-6 (a ray or voxel with support), else 0; in place (t is a fresh projection)."""
    unsupported = t <= 1e-6
    return t.reciprocal_().masked_fill_(unsupported, 0.0)


MAX_ITERS = 10_000  # SART converges in tens of iterations, CGLS in tens to hundreds: more is a typo (1e9: hours)


def check_iterations(iters: int) -> None:
    """Refuse an iteration count that is not an integer in 1 … `MAX_ITERS`."""
    if int(iters) != iters or not 1 <= iters <= MAX_ITERS:
        raise XWinInputError(None, f"iterations must be an integer from 1 to {MAX_ITERS}, got {iters}",
                             parameters=("iters",))


def _check(projections: torch.Tensor, views: Views, iters: int) -> None:
    if views.batch < 1 or projections.shape[0] < 1:
        raise XWinInputError(None, "the projection set is empty")
    if projections.shape != (views.batch, views.height, views.width):
        raise XWinInputError(None, f"projections of shape {tuple(projections.shape)} do not match the "
                                   f"{views.batch} views of {views.height}×{views.width} pixels")
    check_iterations(iters)


class _Operator:
    """A and Aᵀ on one grid (μ ``[k, j, i]`` ↔ line integrals) for a fixed set of views."""

    def __init__(self, grid: Grid, views: Views, backend: Backend, device):
        self.grid, self.views, self.backend = grid, views, backend
        self.affine = torch.from_numpy(grid.ijk_from_lps)
        self.device = torch.device(device)

    def forward(self, x: torch.Tensor, views: Views | None = None) -> torch.Tensor:
        with torch.no_grad():
            return forward_project(x, self.affine, views or self.views, self.backend).to(x.dtype)

    def adjoint(self, y: torch.Tensor, views: Views | None = None) -> torch.Tensor:
        with torch.no_grad():
            return back_project(y, self.grid.shape_kji, self.affine, views or self.views,
                                self.backend).to(device=y.device, dtype=y.dtype)


def _grad(u: torch.Tensor) -> torch.Tensor:
    g = torch.zeros((3, *u.shape), dtype=u.dtype, device=u.device)
    g[0, :-1] = u[1:] - u[:-1]
    g[1, :, :-1] = u[:, 1:] - u[:, :-1]
    g[2, :, :, :-1] = u[:, :, 1:] - u[:, :, :-1]
    return g


def _div(p: torch.Tensor) -> torch.Tensor:
    """Negative adjoint of `_grad` (backward differences)."""
    d = torch.zeros_like(p[0])
    for a in range(3):
        q = p[a].movedim(a, 0)
        da = d.movedim(a, 0)
        da[0] += q[0]
        da[1:-1] += q[1:-1] - q[:-2]
        da[-1] -= q[-2]
    return d


def tv_prox(x: torch.Tensor, weight: float, iters: int = 20) -> torch.Tensor:
    """argmin_u ½‖u − x‖² + weight · Σ|∇u| (isotropic TV, voxel units), Chambolle's projection algorithm.

    The result differs from ``x`` by ``weight · div p`` with |div p| ≤ 6 (p in the unit ball): a weight that moves no
    voxel by more than ``x``'s float resolution returns ``x`` (``x / weight`` would overflow to NaN, campaign 9)."""
    if weight <= 0 or 6.0 * weight <= torch.finfo(x.dtype).eps * float(x.abs().max()):
        return x
    tau = 1.0 / 12.0  # step bound 1/(4·dims) for 3D
    p = torch.zeros((3, *x.shape), dtype=x.dtype, device=x.device)
    for _ in range(iters):
        g = _grad(_div(p) - x / weight)
        p = (p + tau * g) / (1 + tau * torch.sqrt((g * g).sum(0)))
    return x - weight * _div(p)


def sart(projections: torch.Tensor, views: Views, grid: Grid, *, iters: int = 10, subsets: int | None = None,
         relaxation: float = 0.8, positivity: bool = True, tv: float = 0.0, tv_iters: int = 20,
         x0: torch.Tensor | None = None, backend: Backend = "auto", progress: bool = False,
         callback: Callback | None = None) -> IterativeResult:
    """(OS-)SART. subsets: number of ordered subsets (interleaved views b ≡ s mod n; default B = classic SART, one
    view per update, as RTK's SART; 1 = SIRT-like); relaxation λ ∈ (0, 2); positivity: clamp μ ≥ 0; tv: TV-prox weight
    (μ per mm) applied after every iteration (0 = none). The normalisations A_S 1 (one projection of all views) and
    A_Sᵀ 1 are computed once and kept (1/A_Sᵀ 1 in float16) while those volumes fit in ``NORMALISATION_BYTES``;
    beyond that A_Sᵀ 1 is recomputed at each use (one more back-projection per subset)."""
    _check(projections, views, iters)
    if not 0 < relaxation < 2:
        raise XWinInputError(None, f"SART relaxation must lie in (0, 2), got {relaxation}")
    n_sub = views.batch if subsets is None else int(subsets)
    if not 1 <= n_sub <= views.batch:
        raise XWinInputError(None, f"subsets must lie in 1…{views.batch}, got {subsets}")
    b = projections.float()
    op = _Operator(grid, views, backend, b.device)
    x = torch.zeros(grid.shape_kji, dtype=b.dtype, device=b.device) if x0 is None else x0.clone().to(b)
    keep = n_sub * x.numel() * 2 <= NORMALISATION_BYTES  # kept as float16: a preconditioner needs no more
    rows = op.forward(torch.ones_like(x))  # ray lengths through the grid (mm), all views at once
    groups = []
    for s in range(n_sub):
        picked = np.arange(s, views.batch, n_sub)
        idx, v = torch.as_tensor(picked, device=b.device), _subset(views, picked)
        inv_col = _safe_inverse(op.adjoint(torch.ones_like(rows[idx]), v)).clamp_(max=6e4).half() if keep else None
        groups.append((idx, v, _safe_inverse(rows[idx]), inv_col))
    bnorm = float(torch.linalg.vector_norm(b)) or 1.0
    residuals = []
    for it in tqdm(range(iters), desc="sart", unit="it", disable=not progress):
        sq = 0.0
        for idx, v, inv_row, inv_col in groups:
            diff = b[idx] - op.forward(x, v)
            sq += float((diff * diff).sum())
            col = _safe_inverse(op.adjoint(torch.ones_like(diff), v)) if inv_col is None else inv_col
            x.add_(op.adjoint(diff.mul_(inv_row), v).mul_(col), alpha=relaxation)
            if positivity:
                x.clamp_(min=0)
        if tv > 0:
            x = tv_prox(x, tv, tv_iters)
            if positivity:
                x.clamp_(min=0)
        residuals.append(sq ** 0.5 / bnorm)
        if callback is not None:
            callback(it, x, residuals[-1])
    return IterativeResult(x, residuals)


def cgls(projections: torch.Tensor, views: Views, grid: Grid, *, iters: int = 10, tv: float = 0.0,
         tv_iters: int = 20, positivity: bool = False, x0: torch.Tensor | None = None, backend: Backend = "auto",
         progress: bool = False, callback: Callback | None = None) -> IterativeResult:
    """CGLS on the normal equations AᵀA x = Aᵀb. tv > 0 (μ per mm) or positivity apply a TV prox / clamp after each
    iteration and restart the conjugate directions."""
    _check(projections, views, iters)
    b = projections.float()
    op = _Operator(grid, views, backend, b.device)
    x = torch.zeros(grid.shape_kji, dtype=b.dtype, device=b.device) if x0 is None else x0.clone().to(b)
    bnorm = float(torch.linalg.vector_norm(b)) or 1.0
    r = b - op.forward(x) if x0 is not None else b.clone()
    s = op.adjoint(r)
    p = s.clone()
    gamma = float((s * s).sum())
    residuals = []
    for it in tqdm(range(iters), desc="cgls", unit="it", disable=not progress):
        if gamma <= 0:
            residuals.append(float(torch.linalg.vector_norm(r) / bnorm))
            continue
        q = op.forward(p)
        alpha = gamma / max(float((q * q).sum()), 1e-30)
        x = x + alpha * p
        r = r - alpha * q
        restart = tv > 0 or positivity
        if restart:
            if tv > 0:
                x = tv_prox(x, tv, tv_iters)
            if positivity:
                x = torch.clamp_(x, min=0)
            r = b - op.forward(x)
        s = op.adjoint(r)
        gamma_new = float((s * s).sum())
        p = s + (0.0 if restart else gamma_new / gamma) * p
        gamma = gamma_new
        residuals.append(float(torch.linalg.vector_norm(r) / bnorm))
        if callback is not None:
            callback(it, x, residuals[-1])
    return IterativeResult(x, residuals)
