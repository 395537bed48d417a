"""The C-arm geometry contract (docs/geometry.md): one pinhole camera model for every part of XWin.

World frame: patient LPS, millimetres. Canonical view (LAO = CRAN = 0) is a PA chest view: beam direction
(source → detector) d₀ = (0, −1, 0), detector column axis u₀ = (1, 0, 0) (patient's left), detector row axis
v₀ = (0, 0, −1) (feet). A pose (lao, cran) in degrees rotates that frame by R = Rz(lao) · Rx(−cran).
Source S = iso − SID·d; detector centre D = iso + (SDD − SID)·d; pixel (r, c) of an H×W detector with pixel size p
sits at D + (c − (W−1)/2)·p·u + (r − (H−1)/2)·p·v.

All functions are written in torch so that poses can carry gradients; they accept Python numbers, NumPy arrays or
tensors and return float64 tensors unless a tensor of another dtype/device is given. `carm_views_numpy` is the same
map for angles in NumPy, for the numba backend: torch is imported only when a torch function is called.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from .defaults import DETECTOR_PIXELS, ORIGIN_MM, PIXEL_MM, SDD_MM, SID_MM, SPACING_MM
from .errors import XWinInputError

if TYPE_CHECKING:
    import torch

D0 = (0.0, -1.0, 0.0)
U0 = (1.0, 0.0, 0.0)
V0 = (0.0, 0.0, -1.0)
LAO_LIMIT_DEG = 180.0  # LAO (+) / RAO (−) in −180…180: the source circles the patient once
CRAN_LIMIT_DEG = 90.0  # CRAN (+) / CAUD (−) in −90…90: beyond, the pose of another LAO with the detector upside down


@dataclass(frozen=True)
class Geometry:
    """Acquisition geometry of a flat-panel C-arm (all lengths in mm).

    sid: source → isocenter distance; sdd: source → detector distance; height, width: detector rows and columns;
    pixel: detector pixel size (square). Defaults (`xwin.defaults`) describe a PA chest exam: SDD 1800, SID 1600,
    256×256 × 1.7 mm.
    """

    sid: float = SID_MM
    sdd: float = SDD_MM
    height: int = DETECTOR_PIXELS[0]
    width: int = DETECTOR_PIXELS[1]
    pixel: float = PIXEL_MM

    def __post_init__(self) -> None:
        for name in ("sid", "sdd", "pixel"):
            v = float(getattr(self, name))
            if not np.isfinite(v) or v <= 0:
                raise XWinInputError(None, f"geometry: {name} must be a positive number of mm, got {v}",
                                     parameters=(name,))
            lo, hi = SPACING_MM if name == "pixel" else (0.0, ORIGIN_MM)  # no DRR beyond: a pixel of 1 nm, 1 km
            if not lo <= v <= hi:
                raise XWinInputError(None, f"geometry: {name} must lie between {lo:g} and {hi:g} mm, got {v:g}",
                                     parameters=(name,))
        if self.sdd <= self.sid:
            raise XWinInputError(None, f"geometry: SDD ({self.sdd} mm) must exceed SID ({self.sid} mm): "
                                       "the detector lies beyond the isocenter", parameters=("sid", "sdd"))
        for name in ("height", "width"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise XWinInputError(None, f"geometry: detector {name} must be a positive integer, got {v}",
                                     parameters=(name,))

    @property
    def magnification(self) -> float:
        """SDD / SID: detector size of an object at the isocenter divided by its true size."""
        return self.sdd / self.sid

    def scaled(self, factor: int) -> "Geometry":
        """Same field of view with ``factor``× fewer pixels per side (pixels ``factor``× larger)."""
        return Geometry(self.sid, self.sdd, max(1, self.height // factor), max(1, self.width // factor),
                        self.pixel * self.height / max(1, self.height // factor))


class Views(NamedTuple):
    """B projection views in LPS mm: pixel (r, c) of view b is ``corner[b] + c·du[b] + r·dv[b]``.

    source: (B, 3) X-ray source positions; corner: (B, 3) centre of pixel (0, 0); du, dv: (B, 3) one-pixel steps
    along a detector row (column index c) and down a column (row index r); height, width: detector size.
    """

    source: torch.Tensor  # or np.ndarray (float64) from `carm_views_numpy`
    corner: torch.Tensor
    du: torch.Tensor
    dv: torch.Tensor
    height: int
    width: int

    @property
    def batch(self) -> int:
        return self.source.shape[0]

    def pixel_centers(self) -> torch.Tensor:
        """(B, H, W, 3) LPS positions (mm) of every pixel centre."""
        import torch

        r = torch.arange(self.height, dtype=self.source.dtype, device=self.source.device)
        c = torch.arange(self.width, dtype=self.source.dtype, device=self.source.device)
        return (self.corner[:, None, None, :] + c[None, None, :, None] * self.du[:, None, None, :]
                + r[None, :, None, None] * self.dv[:, None, None, :])

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "Views":
        f = lambda t: t.to(dtype=dtype or t.dtype, device=device or t.device)  # noqa: E731
        return Views(f(self.source), f(self.corner), f(self.du), f(self.dv), self.height, self.width)


def _as_tensor(x, like: torch.Tensor | None = None) -> torch.Tensor:
    import torch

    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.double()
    dtype = like.dtype if like is not None else torch.float64
    device = like.device if like is not None else None
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype, device=device)


def rotation(lao, cran) -> torch.Tensor:
    """R = Rz(lao) · Rx(−cran) for angles in degrees; broadcasts to (B, 3, 3). Differentiable."""
    import torch

    lao = torch.atleast_1d(_as_tensor(lao))
    cran = torch.atleast_1d(_as_tensor(cran, like=lao))
    return _rotation(torch, *torch.broadcast_tensors(lao, cran))


def _rotation(xp, lao, cran):
    """`rotation` of broadcast (B,) angle arrays in the array module ``xp`` (torch or numpy)."""
    a, g = xp.deg2rad(lao), xp.deg2rad(-cran)
    ca, sa, cg, sg = xp.cos(a), xp.sin(a), xp.cos(g), xp.sin(g)
    zero, one = xp.zeros_like(a), xp.ones_like(a)
    rz = xp.stack([ca, -sa, zero, sa, ca, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    rx = xp.stack([one, zero, zero, zero, cg, -sg, zero, sg, cg], -1).reshape(-1, 3, 3)
    return rz @ rx


def _check_pairs(lao, cran) -> None:
    if np.shape(lao) != np.shape(cran) and np.ndim(lao) and np.ndim(cran):
        raise XWinInputError(None, f"LAO and CRAN angles must pair up: {np.size(lao)} vs {np.size(cran)} values")


def carm_views(geometry: Geometry, isocenter, lao=None, cran=None, *, pose=None) -> Views:
    """Views for poses given as angles (degrees) or as full rigid poses.

    isocenter: (3,) LPS mm. lao, cran: scalars or (B,) degrees, paired in order (RAO/CAUD negative).
    pose: optional (B, 4, 4) or (4, 4) rigid transforms replacing the angles: their rotation R rotates the canonical
    C-arm frame (d = R·d₀ ...) and their translation t (mm, LPS) moves the isocenter to iso + t.
    """
    import torch

    iso = _as_tensor(isocenter)
    if pose is not None:
        if lao is not None or cran is not None:
            raise XWinInputError(None, "give either angles (lao, cran) or a full pose, not both")
        p = _as_tensor(pose, like=iso)
        p = p[None] if p.ndim == 2 else p
        if p.shape[-2:] != (4, 4):
            raise XWinInputError(None, f"a full pose must be a 4×4 rigid transform, got shape {tuple(p.shape)}")
        r, t = p[:, :3, :3], p[:, :3, 3]
        ortho = r.transpose(1, 2) @ r - torch.eye(3, dtype=r.dtype, device=r.device)
        if float(ortho.abs().max()) > 1e-4 or float((torch.linalg.det(r) - 1).abs().max()) > 1e-4:
            raise XWinInputError(None, "a full pose's 3×3 block must be a rotation (orthonormal, det +1)")
    else:
        lao = 0.0 if lao is None else lao
        cran = 0.0 if cran is None else cran
        _check_pairs(lao, cran)
        r = rotation(lao, cran).to(iso.dtype)
        t = torch.zeros(r.shape[0], 3, dtype=iso.dtype, device=iso.device)
    basis = torch.tensor([D0, U0, V0], dtype=r.dtype, device=r.device).T  # columns d0, u0, v0
    return _views(geometry, r @ basis, iso[None, :] + t)


def carm_views_numpy(geometry: Geometry, isocenter, lao=None, cran=None) -> Views:
    """`carm_views` for angles, in NumPy: float64 (B, 3) arrays, no gradients and no torch (the numba backend's
    path, so that one CPU render does not pay for importing torch)."""
    iso = np.asarray(isocenter, dtype=np.float64)
    lao = 0.0 if lao is None else lao
    cran = 0.0 if cran is None else cran
    _check_pairs(lao, cran)
    r = _rotation(np, *np.broadcast_arrays(np.atleast_1d(np.asarray(lao, np.float64)),
                                           np.atleast_1d(np.asarray(cran, np.float64))))
    basis = np.array([D0, U0, V0], dtype=np.float64).T  # columns d0, u0, v0
    return _views(geometry, r @ basis, iso[None, :] + np.zeros((r.shape[0], 3)))


def _views(g: Geometry, axes, center) -> Views:
    """Views from (B, 3, 3) rotated axes (columns d, u, v) and (B, 3) isocenters; torch or numpy alike."""
    d, u, v = axes[..., 0], axes[..., 1], axes[..., 2]
    source = center - g.sid * d
    det_center = center + (g.sdd - g.sid) * d
    du, dv = g.pixel * u, g.pixel * v
    corner = det_center - (g.width - 1) / 2.0 * du - (g.height - 1) / 2.0 * dv
    return Views(source, corner, du, dv, g.height, g.width)


def projection_matrices(views: Views) -> torch.Tensor:
    """(B, 3, 4) Hartley–Zisserman matrices P with P·(x, y, z, 1)ᵀ ∝ (c, r, 1)ᵀ for LPS points in mm."""
    # A world point X projects to pixel (c, r) when X − S ∥ corner + c·du + r·dv − S, i.e. M·(c, r, 1) ∝ X − S
    import torch

    m = torch.stack([views.du, views.dv, views.corner - views.source], dim=-1)  # (B, 3, 3)
    minv = torch.linalg.inv(m)
    return torch.cat([minv, -(minv @ views.source[..., None])], dim=-1)


def checked_isocenter(isocenter) -> np.ndarray:
    """An isocenter as 3 finite LPS coordinates (mm) within `ORIGIN_MM` (1 km) of the patient frame's origin."""
    iso = np.asarray(isocenter, dtype=np.float64)
    if iso.shape != (3,) or not np.all(np.isfinite(iso)) or np.max(np.abs(iso)) > ORIGIN_MM:
        raise XWinInputError(None, f"isocenter must be 3 finite LPS coordinates in mm, within {ORIGIN_MM:g} mm (1 km) "
                                   f"of the patient frame's origin, got {isocenter}", parameters=("isocenter",))
    return iso


def parse_angles(lao: Sequence[float] | np.ndarray,
                 cran: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair LAO and CRAN angles (degrees) in order; one value of either broadcasts to the other's length. LAO must lie
    in ±`LAO_LIMIT_DEG`, CRAN in ±`CRAN_LIMIT_DEG`."""
    lao, cran = np.atleast_1d(np.asarray(lao, float)), np.atleast_1d(np.asarray(cran, float))
    if lao.size != cran.size and 1 not in (lao.size, cran.size):
        raise XWinInputError(None, f"{lao.size} LAO angles and {cran.size} CRAN angles: they are paired in order")
    lao, cran = np.broadcast_arrays(lao, cran)
    if not (np.all(np.isfinite(lao)) and np.all(np.isfinite(cran))):
        raise XWinInputError(None, "angles must be finite numbers of degrees")
    for name, values, limit in (("LAO", lao, LAO_LIMIT_DEG), ("CRAN", cran, CRAN_LIMIT_DEG)):
        outside = values[np.abs(values) > limit]
        if outside.size:
            raise XWinInputError(None, f"{name} {outside[0]:g} deg is outside -{limit:g}...{limit:g} (the range of "
                                       "every C-arm pose; a larger angle repeats one inside it)")
    return lao.copy(), cran.copy()
