"""Analytic test objects: partial-volume ellipsoids on arbitrary (oblique, anisotropic) grids and their exact chords."""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from xwin.io.image import Volume


def oblique_grid(shape_ijk, spacing, center, angles_deg=(20.0, -10.0, 15.0)) -> tuple[np.ndarray, np.ndarray]:
    """Origin (LPS mm) and direction of a grid of ``shape_ijk`` voxels whose centre sits at ``center``."""
    direction = Rotation.from_euler("zyx", angles_deg, degrees=True).as_matrix()
    half = (np.asarray(shape_ijk, float) - 1) / 2 * np.asarray(spacing, float)
    return np.asarray(center, float) - direction @ half, direction


def ellipsoid_volume(shape_ijk, spacing, origin, direction, ellipsoids, supersample: int = 4) -> Volume:
    """Volume in HU of ``ellipsoids`` = [(center LPS mm, semi-axes mm, rotation 3×3, HU inside)], air (−1000) else.

    Each voxel holds its partial-volume fraction (``supersample``³ points per voxel) so sampled and analytic line
    integrals agree to second order.
    """
    ni, nj, nk = shape_ijk
    offs = (np.arange(supersample) + 0.5) / supersample - 0.5
    frac = np.zeros((len(ellipsoids), nk, nj, ni), np.float32)
    m = np.asarray(direction) * np.asarray(spacing)[None, :]
    ii, jj = np.meshgrid(np.arange(ni), np.arange(nj), indexing="xy")
    for k in range(nk):
        for oi in offs:
            for oj in offs:
                for ok in offs:
                    idx = np.stack([ii + oi, jj + oj, np.full_like(ii, k, dtype=float) + ok], -1)
                    p = idx @ m.T + origin
                    for e, (c, axes, rot, _) in enumerate(ellipsoids):
                        q = (p - c) @ rot / np.asarray(axes)
                        frac[e, k] += (np.einsum("...i,...i", q, q) <= 1.0)
    frac /= supersample ** 3
    hu = np.full((nk, nj, ni), -1000.0, np.float32)
    for e, (_, _, _, value) in enumerate(ellipsoids):
        hu += frac[e] * (value + 1000.0)
    return Volume(hu, spacing, origin, direction)


def ellipsoid_chords(source: np.ndarray, points: np.ndarray, center, axes, rot) -> np.ndarray:
    """Length (mm) of each segment source → point (LPS mm, ``points`` (..., 3)) inside one ellipsoid."""
    o = (source - center) @ rot / axes
    d = (points - source) @ rot / axes
    a = np.einsum("...i,...i", d, d)
    b = 2 * np.einsum("...i,i->...", d, o)
    c = o @ o - 1.0
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0))
    t0 = np.clip((-b - root) / (2 * a), 0, 1)
    t1 = np.clip((-b + root) / (2 * a), 0, 1)
    seg = np.where(disc > 0, t1 - t0, 0.0)
    return seg * np.linalg.norm(points - source, axis=-1)
