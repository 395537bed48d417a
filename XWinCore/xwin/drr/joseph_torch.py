"""Pure-torch Joseph projector (any device, autograd w.r.t. volume *and* pose).

Same discretisation as the numba kernels (see `joseph_numba`): per ray, slices of the dominant index axis, bilinear
interpolation in the other two (``grid_sample`` with ``align_corners=True`` and zero padding, i.e. voxels outside
the grid are 0), weight ‖Q − S‖_mm / |d_a| per slice. Rays are processed in chunks so memory stays bounded.
Its adjoint is the vector–Jacobian product of this linear map (exact).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..geometry import Views

EDGE = 1e-4  # same inner margin of the bilinear support as the numba kernels


def _to_index(points: torch.Tensor, ijk_from_lps: torch.Tensor) -> torch.Tensor:
    return points @ ijk_from_lps[:3, :3].T + ijk_from_lps[:3, 3]


def forward(mu: torch.Tensor, ijk_from_lps: torch.Tensor, views: Views, max_samples: int = 1 << 23) -> torch.Tensor:
    """Line integrals (B, H, W) of ``mu`` (``[k, j, i]`` attenuation per mm) for ``views`` (LPS mm).

    ijk_from_lps: 4×4 affine from LPS mm to voxel indices. max_samples bounds the samples held at once.
    """
    dtype, device = mu.dtype, mu.device
    a = ijk_from_lps.to(dtype=dtype, device=device)
    views = views.to(dtype=dtype, device=device)
    nk, nj, ni = mu.shape
    sizes = torch.tensor([ni, nj, nk], dtype=dtype, device=device)
    pix = views.pixel_centers()  # (B, H, W, 3) mm
    b, h, w = pix.shape[:3]
    length = (pix - views.source[:, None, None, :]).norm(dim=-1).reshape(-1)
    s = _to_index(views.source, a)[:, None, None, :].expand(b, h, w, 3).reshape(-1, 3)
    d = _to_index(pix, a).reshape(-1, 3) - s
    axis = d.abs().argmax(dim=-1)
    out = torch.zeros(b * h * w, dtype=dtype, device=device)
    vol = mu[None, None]
    for ax in range(3):
        rays = torch.nonzero(axis == ax).flatten()
        if rays.numel() == 0:
            continue
        n_slices = int(sizes[ax])
        others = [q for q in range(3) if q != ax]
        k = torch.arange(n_slices, dtype=dtype, device=device)
        chunk = max(1, max_samples // n_slices)
        for start in range(0, rays.numel(), chunk):
            idx = rays[start:start + chunk]
            si, di = s[idx], d[idx]
            t = (k[None, :] - si[:, ax:ax + 1]) / di[:, ax:ax + 1]  # (n, slices)
            pos = si[:, None, :] + t[..., None] * di[:, None, :]
            valid = (t >= 0) & (t <= 1)
            for q in others:
                valid &= (pos[..., q] >= EDGE - 1) & (pos[..., q] <= sizes[q] - EDGE)
            pos = torch.cat([pos[..., :ax], k.expand_as(t)[..., None], pos[..., ax + 1:]], dim=-1)
            grid = 2.0 * pos / (sizes - 1) - 1.0  # (x, y, z) = (i, j, k) normalised, align_corners=True
            samples = F.grid_sample(vol, grid[None, :, :, None, :], mode="bilinear", padding_mode="zeros",
                                    align_corners=True)[0, 0, :, :, 0]
            weight = length[idx] / di[:, ax].abs()
            out = out.index_put((idx,), (samples * valid).sum(dim=1) * weight)
    return out.reshape(b, h, w)


def adjoint(sino: torch.Tensor, shape_kji: tuple[int, int, int], ijk_from_lps: torch.Tensor, views: Views,
            max_samples: int = 1 << 23) -> torch.Tensor:
    """Back-projection Aᵀ·sino onto a ``[k, j, i]`` grid (the vector–Jacobian product of `forward`)."""
    with torch.enable_grad():
        x = torch.zeros(shape_kji, dtype=sino.dtype, device=sino.device, requires_grad=True)
        y = forward(x, ijk_from_lps, views, max_samples)
        (g,) = torch.autograd.grad(y, x, grad_outputs=sino)
    return g
