"""The geometry contract of docs/geometry.md, checked number by number."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xwin import XWinInputError
from xwin.geometry import Geometry, carm_views, parse_angles, projection_matrices, rotation

G = Geometry()


def _axes(views):
    d = views.corner + (views.width - 1) / 2 * views.du + (views.height - 1) / 2 * views.dv - views.source
    return ((d / d.norm(dim=-1, keepdim=True))[0].numpy(), (views.du / G.pixel)[0].numpy(),
            (views.dv / G.pixel)[0].numpy())


def test_defaults_are_a_pa_chest_exam():
    assert (G.sid, G.sdd, G.height, G.width, G.pixel) == (1600.0, 1800.0, 256, 256, 1.7)


def test_canonical_view_is_pa():
    iso = np.array([10.0, -20.0, 30.0])
    v = carm_views(G, iso, 0.0, 0.0)
    d, u, w = _axes(v)
    np.testing.assert_allclose(d, [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(u, [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(w, [0, 0, -1], atol=1e-12)
    np.testing.assert_allclose(v.source[0].numpy(), iso + [0, 1600, 0])
    centre = v.corner[0] + 127.5 * v.du[0] + 127.5 * v.dv[0]
    np.testing.assert_allclose(centre.numpy(), iso + [0, -200, 0], atol=1e-9)
    # row 0 superior, column 0 patient's right
    assert v.corner[0, 2] > iso[2] and v.corner[0, 0] < iso[0]


def test_lao_90_is_a_left_lateral_and_cran_tilts_toward_the_head():
    d, u, w = _axes(carm_views(G, np.zeros(3), 90.0, 0.0))
    np.testing.assert_allclose(d, [1, 0, 0], atol=1e-12)  # detector at the patient's left
    np.testing.assert_allclose(u, [0, 1, 0], atol=1e-12)
    d, _, _ = _axes(carm_views(G, np.zeros(3), 0.0, 30.0))
    np.testing.assert_allclose(d, [0, -np.cos(np.radians(30)), np.sin(np.radians(30))], atol=1e-12)


def test_rotation_formula():
    a, g = np.radians(25.0), np.radians(-(-10.0))
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(-g), -np.sin(-g)], [0, np.sin(-g), np.cos(-g)]])
    np.testing.assert_allclose(rotation(25.0, 10.0)[0].numpy(), rz @ rx, atol=1e-12)


def test_lao_then_cran_worked_by_hand():
    """Independent of the formula's transcription: LAO 90 + CRAN 30 tilts the left-lateral beam toward the head by 30°.
    By hand: d = (cos 30°, 0, sin 30°) (toward the patient's left and head), u = (0, 1, 0) (columns still run
    posterior: the tilt is about the lateral beam's column axis), v = (sin 30°, 0, −cos 30°). The other order,
    Rx(−cran)·Rz(lao), would give d = (1, 0, 0), u = (0, cos 30°, sin 30°). LAO 45: d = (sin 45°, −cos 45°, 0)."""
    h = np.sqrt(3) / 2
    d, u, w = _axes(carm_views(G, np.zeros(3), 90.0, 30.0))
    np.testing.assert_allclose(d, [h, 0, 0.5], atol=1e-12)
    np.testing.assert_allclose(u, [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(w, [0.5, 0, -h], atol=1e-12)
    d, u, _ = _axes(carm_views(G, np.zeros(3), 45.0, 0.0))
    np.testing.assert_allclose(d, [0.5 ** 0.5, -(0.5 ** 0.5), 0], atol=1e-12)
    np.testing.assert_allclose(u, [0.5 ** 0.5, 0.5 ** 0.5, 0], atol=1e-12)
    r = rotation([90.0, 45.0, -20.0], [30.0, 0.0, -15.0])
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=r.dtype).expand(3, 3, 3))  # a rotation,
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(3, dtype=r.dtype))  # not a reflection


def _projected_rows(views, points) -> np.ndarray:
    p = projection_matrices(views)[0]
    h = torch.cat([torch.as_tensor(points, dtype=p.dtype), torch.ones(len(points), 1, dtype=p.dtype)], 1) @ p.T
    return (h[:, 1] / h[:, 2]).numpy()


@pytest.mark.parametrize("lao,near,far", [(90.0, [50, 0, 0], [-50, 0, 0]),  # left lateral: the left side nearest
                                          (-90.0, [-50, 0, 0], [50, 0, 0]),  # right lateral (RAO 90): the right
                                          (0.0, [0, -50, 0], [0, 50, 0])])  # PA: the anterior chest (the heart)
def test_the_side_nearest_the_detector_is_magnified_least(lao, near, far):
    """A 20 mm vertical segment 50 mm from the isocenter toward the detector lies 1650 mm from the source, one 50 mm
    toward the source 1550 mm: magnifications 1800/1650 and 1800/1550, i.e. 20·1800/1650/1.7 = 12.834 and
    20·1800/1550/1.7 = 13.662 detector rows (SID 1600, SDD 1800, 1.7 mm pixels)."""
    views = carm_views(G, np.zeros(3), lao, 0.0)
    seg = lambda x: np.array([np.add(x, [0, 0, 10]), np.add(x, [0, 0, -10])], dtype=float)  # noqa: E731
    near_rows, far_rows = np.diff(_projected_rows(views, seg(near))), np.diff(_projected_rows(views, seg(far)))
    np.testing.assert_allclose(near_rows, 20 * 1800 / 1650 / 1.7, rtol=1e-12)  # rows grow toward the feet (+)
    np.testing.assert_allclose(far_rows, 20 * 1800 / 1550 / 1.7, rtol=1e-12)


def test_pixel_positions_and_projection_matrix_agree():
    g = Geometry(sid=1000, sdd=1500, height=5, width=7, pixel=2.0)
    iso = np.array([3.0, 4.0, -5.0])
    v = carm_views(g, iso, [20.0, -70.0], [15.0, -5.0])
    pix = v.pixel_centers()
    p = projection_matrices(v)
    for b in range(2):
        d = v.corner[b] + 3.5 * v.du[b] + 2 * v.dv[b]  # any point on the ray S → pixel (2, 3.5)
        for t in (0.3, 0.9):
            x = v.source[b] + t * (d - v.source[b])
            h = p[b] @ torch.cat([x, torch.ones(1, dtype=x.dtype)])
            np.testing.assert_allclose((h[:2] / h[2]).numpy(), [3.5, 2.0], atol=1e-9)
        # pixel (r, c) = D + (c − (W−1)/2)·p·u + (r − (H−1)/2)·p·v
        dist = (pix[b] - v.source[b]).norm(dim=-1)
        assert float(dist.min()) == pytest.approx(1500.0)
    # the isocenter projects to the detector centre
    h = p[0] @ torch.tensor([*iso, 1.0], dtype=torch.float64)
    np.testing.assert_allclose((h[:2] / h[2]).numpy(), [3.0, 2.0], atol=1e-9)


def test_full_se3_pose_equals_angles_plus_isocenter_shift():
    r = rotation(33.0, -12.0)[0]
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3], m[:3, 3] = r, torch.tensor([5.0, -2.0, 7.0], dtype=torch.float64)
    a = carm_views(G, np.zeros(3), pose=m)
    b = carm_views(G, np.array([5.0, -2.0, 7.0]), 33.0, -12.0)
    for x, y in zip(a[:4], b[:4]):
        torch.testing.assert_close(x, y)
    bad = m.clone()
    bad[0, 0] = 2.0
    with pytest.raises(XWinInputError, match="rotation"):
        carm_views(G, np.zeros(3), pose=bad)


@pytest.mark.parametrize("kwargs,word", [({"sid": 1800.0, "sdd": 1600.0}, "SDD"), ({"pixel": 0.0}, "pixel"),
                                         ({"sid": -5.0}, "sid"), ({"height": 0}, "height")])
def test_impossible_geometry_is_refused(kwargs, word):
    with pytest.raises(XWinInputError, match=word):
        Geometry(**kwargs)


def test_angles_pair_in_order():
    lao, cran = parse_angles([0, 15, 30], [0, 0, 10])
    assert lao.tolist() == [0, 15, 30] and cran.tolist() == [0, 0, 10]
    lao, cran = parse_angles([0, 15, 30], [5])
    assert cran.tolist() == [5, 5, 5]
    with pytest.raises(XWinInputError, match="paired"):
        parse_angles([0, 15, 30], [0, 1])
