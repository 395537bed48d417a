"""CPU kernels (numba) of the Joseph projector and its exact adjoint.

Discretisation (shared with the torch backend, `joseph_torch.py`): every ray S → pixel is walked in continuous voxel
index space (i, j, k) along its dominant axis a (largest |direction| component); at each integer slice position
k_a between the source and the pixel the attenuation is interpolated bilinearly in the two other axes (trilinear with
one integer coordinate), voxels outside the grid counting as 0; the sum is weighted by the ray's length in mm per
slice step, ``‖Q − S‖_mm / |d_a|``. The adjoint scatters with the same weights, so ⟨A x, y⟩ = ⟨x, Aᵀ y⟩ exactly.

Volumes enter zero-padded by one voxel before and two after every axis (``pad_volume``) so the inner loops need no
bounds checks. Ray parameters are given in voxel index space; ``length`` holds the source → pixel distance in mm.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

PAD_LO, PAD_HI = 1, 2
EDGE = 1e-4  # rays keep 1e-4 voxel inside the bilinear support (-1, n) so padded reads never leave the array


def pad_volume(vol: np.ndarray) -> np.ndarray:
    """Zero-pad a ``[k, j, i]`` array by 1 voxel before and 2 after each axis (contiguous, same dtype)."""
    return np.ascontiguousarray(np.pad(vol, [(PAD_LO, PAD_HI)] * 3))


@njit(inline="always", fastmath=True)
def _ray_range(s0, s1, s2, d0, d1, d2, n0, n1, n2):
    """Dominant axis, first/last slice and the other two axes of one ray (index space, padded extents)."""
    a0, a1, a2 = abs(d0), abs(d1), abs(d2)
    if a0 >= a1 and a0 >= a2:
        ax, sa, da, na, sb, db, nb, sc, dc, nc = 0, s0, d0, n0, s1, d1, n1, s2, d2, n2
    elif a1 >= a2:
        ax, sa, da, na, sb, db, nb, sc, dc, nc = 1, s1, d1, n1, s0, d0, n0, s2, d2, n2
    else:
        ax, sa, da, na, sb, db, nb, sc, dc, nc = 2, s2, d2, n2, s0, d0, n0, s1, d1, n1
    # t interval where the ray is between source and pixel, in the slab range of the dominant axis and where the
    # two other coordinates stay within (-1, n) (bilinear support)
    tlo, thi = 0.0, 1.0
    inv = 1.0 / da
    t0, t1 = (0.0 - sa) * inv, (na - 1.0 - sa) * inv
    tlo, thi = max(tlo, min(t0, t1)), min(thi, max(t0, t1))
    if db != 0.0:
        t0, t1 = (EDGE - 1.0 - sb) / db, (nb - EDGE - sb) / db
        tlo, thi = max(tlo, min(t0, t1)), min(thi, max(t0, t1))
    elif not (EDGE - 1.0 <= sb <= nb - EDGE):
        thi = -1.0
    if dc != 0.0:
        t0, t1 = (EDGE - 1.0 - sc) / dc, (nc - EDGE - sc) / dc
        tlo, thi = max(tlo, min(t0, t1)), min(thi, max(t0, t1))
    elif not (EDGE - 1.0 <= sc <= nc - EDGE):
        thi = -1.0
    if thi < tlo:
        return ax, 0, -1
    ka, kb = sa + tlo * da, sa + thi * da
    # 1e-7 tolerance: fastmath may round an exact slice position (e.g. 0) to 1e-16; EDGE absorbs the overshoot
    kmin = max(0, int(math.ceil(min(ka, kb) - 1e-7)))
    kmax = min(na - 1, int(math.floor(max(ka, kb) + 1e-7)))
    return ax, kmin, kmax


@njit(parallel=True, fastmath=True, cache=True)
def forward(vol_padded, src, corner, du, dv, src_mm, corner_mm, du_mm, dv_mm, out):
    """Line integrals (Σ μ · mm) of B views into ``out`` (B, H, W).

    vol_padded: padded ``[k, j, i]`` attenuation (per mm). src, corner, du, dv: (B, 3) index-space source, pixel
    (0, 0) centre and one-pixel steps; the ``*_mm`` twins are the same points/steps in LPS mm (for ray lengths).
    """
    nb, h, w = out.shape
    pk, pj, pi = vol_padded.shape
    n0, n1, n2 = pi - PAD_LO - PAD_HI, pj - PAD_LO - PAD_HI, pk - PAD_LO - PAD_HI
    flat = vol_padded.ravel()
    st = (1, pi, pi * pj)
    for row in prange(nb * h):
        b, r = row // h, row % h
        s0, s1, s2 = src[b, 0], src[b, 1], src[b, 2]
        for c in range(w):
            d0 = corner[b, 0] + c * du[b, 0] + r * dv[b, 0] - s0
            d1 = corner[b, 1] + c * du[b, 1] + r * dv[b, 1] - s1
            d2 = corner[b, 2] + c * du[b, 2] + r * dv[b, 2] - s2
            ax, kmin, kmax = _ray_range(s0, s1, s2, d0, d1, d2, n0, n1, n2)
            if kmax < kmin:
                out[b, r, c] = 0.0
                continue
            m0 = corner_mm[b, 0] + c * du_mm[b, 0] + r * dv_mm[b, 0] - src_mm[b, 0]
            m1 = corner_mm[b, 1] + c * du_mm[b, 1] + r * dv_mm[b, 1] - src_mm[b, 1]
            m2 = corner_mm[b, 2] + c * du_mm[b, 2] + r * dv_mm[b, 2] - src_mm[b, 2]
            length = math.sqrt(m0 * m0 + m1 * m1 + m2 * m2)
            if ax == 0:
                sa, da, sb, db, sc, dc, sta, stb, stc = s0, d0, s1, d1, s2, d2, st[0], st[1], st[2]
            elif ax == 1:
                sa, da, sb, db, sc, dc, sta, stb, stc = s1, d1, s0, d0, s2, d2, st[1], st[0], st[2]
            else:
                sa, da, sb, db, sc, dc, sta, stb, stc = s2, d2, s0, d0, s1, d1, st[2], st[0], st[1]
            inv = 1.0 / da
            ustc = np.uint64(stc)
            # position of the other two coordinates at slice k: x = x0 + k * dx (shifted into padded indices)
            xb0, dxb = sb - sa * inv * db + PAD_LO, db * inv
            xc0, dxc = sc - sa * inv * dc + PAD_LO, dc * inv
            acc = np.float32(0.0)
            xb, xc = xb0 + kmin * dxb, xc0 + kmin * dxc
            base_a = (kmin + PAD_LO) * sta
            for _ in range(kmax + 1 - kmin):
                ib, ic = int(xb), int(xc)  # padded coordinates are >= EDGE > 0: truncation is floor
                wb, wc = np.float32(xb - ib), np.float32(xc - ic)
                base = base_a + ib * stb + ic * stc
                u0, u1 = np.uint64(base), np.uint64(base + stb)  # unsigned: no wrap-around check on loads
                v00, v10 = flat[u0], flat[u1]
                v01, v11 = flat[u0 + ustc], flat[u1 + ustc]
                lo = v00 + wb * (v10 - v00)
                acc += lo + wc * ((v01 + wb * (v11 - v01)) - lo)
                xb += dxb
                xc += dxc
                base_a += sta
            out[b, r, c] = acc * length * abs(inv)
    return out


@njit(parallel=True, fastmath=True, cache=True)
def _ray_table(src, corner, du, dv, src_mm, corner_mm, du_mm, dv_mm, n0, n1, n2, h, w, axis, kmin, kmax, coef):
    """Per-ray dominant axis, slice range and (x0, dx) coefficients used by the adjoint."""
    nb = src.shape[0]
    for row in prange(nb * h):
        b, r = row // h, row % h
        s0, s1, s2 = src[b, 0], src[b, 1], src[b, 2]
        for c in range(w):
            n = (b * h + r) * w + c
            d0 = corner[b, 0] + c * du[b, 0] + r * dv[b, 0] - s0
            d1 = corner[b, 1] + c * du[b, 1] + r * dv[b, 1] - s1
            d2 = corner[b, 2] + c * du[b, 2] + r * dv[b, 2] - s2
            ax, k0, k1 = _ray_range(s0, s1, s2, d0, d1, d2, n0, n1, n2)
            axis[n], kmin[n], kmax[n] = ax, k0, k1
            m0 = corner_mm[b, 0] + c * du_mm[b, 0] + r * dv_mm[b, 0] - src_mm[b, 0]
            m1 = corner_mm[b, 1] + c * du_mm[b, 1] + r * dv_mm[b, 1] - src_mm[b, 1]
            m2 = corner_mm[b, 2] + c * du_mm[b, 2] + r * dv_mm[b, 2] - src_mm[b, 2]
            if ax == 0:
                sa, da, sb, db, sc, dc = s0, d0, s1, d1, s2, d2
            elif ax == 1:
                sa, da, sb, db, sc, dc = s1, d1, s0, d0, s2, d2
            else:
                sa, da, sb, db, sc, dc = s2, d2, s0, d0, s1, d1
            inv = 1.0 / da
            coef[n, 0] = sb - sa * inv * db + PAD_LO
            coef[n, 1] = db * inv
            coef[n, 2] = sc - sa * inv * dc + PAD_LO
            coef[n, 3] = dc * inv
            coef[n, 4] = math.sqrt(m0 * m0 + m1 * m1 + m2 * m2) * abs(inv)


@njit(parallel=True, fastmath=True, cache=True)
def _scatter_axis(flat, sino, rays, kmin, kmax, coef, na, sta, stb, stc, nblocks):
    """Adjoint for the rays of one dominant axis: threads own disjoint blocks of its slices, so writes never collide;
    within a block each ray is walked like in the forward kernel."""
    for blk in prange(nblocks):
        k0, k1 = blk * na // nblocks, (blk + 1) * na // nblocks - 1
        for m in range(rays.shape[0]):
            n = rays[m]
            lo, hi = max(kmin[n], k0), min(kmax[n], k1)
            val = sino[n] * coef[n, 4]
            if hi < lo or val == 0.0:
                continue
            xb, xc = coef[n, 0] + lo * coef[n, 1], coef[n, 2] + lo * coef[n, 3]
            base_a = (lo + PAD_LO) * sta
            for _ in range(hi + 1 - lo):
                ib, ic = int(xb), int(xc)
                wb, wc = xb - ib, xc - ic
                base = base_a + ib * stb + ic * stc
                flat[base] += val * (1.0 - wb) * (1.0 - wc)
                flat[base + stb] += val * wb * (1.0 - wc)
                flat[base + stc] += val * (1.0 - wb) * wc
                flat[base + stb + stc] += val * wb * wc
                xb += coef[n, 1]
                xc += coef[n, 3]
                base_a += sta


def adjoint(sino, shape_kji, src, corner, du, dv, src_mm, corner_mm, du_mm, dv_mm) -> np.ndarray:
    """Back-projection Aᵀ of ``sino`` (B, H, W) onto a ``[k, j, i]`` grid of ``shape_kji`` (unpadded result)."""
    nb, h, w = sino.shape
    nk, nj, ni = shape_kji
    dtype = sino.dtype
    n = nb * h * w
    axis = np.empty(n, np.int8)
    kmin = np.empty(n, np.int32)
    kmax = np.empty(n, np.int32)
    coef = np.empty((n, 5), np.float64)
    _ray_table(src, corner, du, dv, src_mm, corner_mm, du_mm, dv_mm, ni, nj, nk, h, w, axis, kmin, kmax, coef)
    padded = np.zeros((nk + PAD_LO + PAD_HI, nj + PAD_LO + PAD_HI, ni + PAD_LO + PAD_HI), dtype)
    pk, pj, pi = padded.shape
    strides = (1, pi, pi * pj)
    flat = padded.reshape(-1)
    sino_flat = np.ascontiguousarray(sino).reshape(-1)
    for ax, na in ((0, ni), (1, nj), (2, nk)):
        rays = np.flatnonzero(axis == ax).astype(np.int64)
        if rays.size == 0:
            continue
        others = [s for q, s in enumerate(strides) if q != ax]
        nblocks = min(na, 8 * numba.get_num_threads())
        _scatter_axis(flat, sino_flat, rays, kmin, kmax, coef, na, strides[ax], others[0], others[1], nblocks)
    return padded[PAD_LO:PAD_LO + nk, PAD_LO:PAD_LO + nj, PAD_LO:PAD_LO + ni].copy()


def set_threads(n: int | None) -> None:
    """Limit numba's worker threads (None: all cores)."""
    numba.set_num_threads(n or numba.config.NUMBA_NUM_THREADS)
