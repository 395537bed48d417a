"""Projector accuracy against analytic phantoms, backend agreement, adjointness and gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from phantoms import ellipsoid_chords, ellipsoid_volume, oblique_grid
from scipy.spatial.transform import Rotation

from xwin.drr import Projector, back_project, forward_project, hu_to_mu
from xwin.geometry import Geometry, carm_views
from xwin.io.image import Volume

MU = 0.0193
GEOM = Geometry(sid=600.0, sdd=900.0, height=64, width=64, pixel=3.0)
POSES = [(0, 0), (90, 0), (-90, 0), (30, 20), (-45, -30), (15, 60)]


@pytest.fixture(scope="module")
def phantom():
    """Two ellipsoids (soft tissue + a denser 'bone' inside it) on an oblique, anisotropic grid."""
    spacing = (1.25, 1.5, 2.0)
    origin, direction = oblique_grid((96, 80, 64), spacing, center=(5.0, -3.0, 8.0))
    body = (np.array([5.0, -3.0, 8.0]), np.array([38.0, 28.0, 45.0]),
            Rotation.from_euler("xyz", (10, 25, -30), degrees=True).as_matrix(), 0.0)
    bone = (np.array([12.0, 2.0, 15.0]), np.array([10.0, 14.0, 20.0]),
            Rotation.from_euler("xyz", (-20, 5, 40), degrees=True).as_matrix(), 1000.0)
    vol = ellipsoid_volume((96, 80, 64), spacing, origin, direction, [body, bone], supersample=3)
    return vol, body, bone


@pytest.mark.parametrize("lao,cran", POSES)
def test_line_integrals_match_analytic_ellipsoids(phantom, lao, cran):
    vol, body, bone = phantom
    proj = Projector(vol, GEOM, isocenter=body[0], mu_water=MU)
    line = proj.render(lao, cran)[0].numpy().astype(np.float64)
    views = proj.views(lao, cran)
    src, pix = views.source[0].numpy(), views.pixel_centers()[0].numpy()
    # the phantom adds (HU_e + 1000) per ellipsoid to air, so μ adds MU·(1 + HU_e/1000) along each chord
    expected = sum(MU * (1 + e[3] / 1000) * ellipsoid_chords(src, pix, *e[:3]) for e in (body, bone))
    through = expected > 0.05 * expected.max()
    assert through.sum() > 500
    rel = np.abs(line[through] - expected[through]) / expected[through]
    assert np.median(rel) <= 0.005, f"median relative error {np.median(rel):.4%}"
    # rays missing the body inflated by 3 mm (beyond the partial-volume shell) see only air
    outside = ellipsoid_chords(src, pix, body[0], body[1] + 3.0, body[2]) == 0
    assert outside.sum() > 100 and np.abs(line[outside]).max() < 1e-6


def _random_volume(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    origin, direction = oblique_grid((14, 12, 10), (2.0, 1.5, 2.5), center=(1.0, 2.0, -3.0))
    return Volume(rng.uniform(-1000, 1500, (10, 12, 14)).astype(dtype), (2.0, 1.5, 2.5), origin, direction)


@pytest.mark.parametrize("lao,cran", POSES)
def test_numba_and_torch_backends_agree(lao, cran):
    vol = _random_volume()
    g = Geometry(sid=200.0, sdd=350.0, height=24, width=28, pixel=1.6)
    a = Projector(vol, g, backend="numba").render(lao, cran)
    b = Projector(vol, g, backend="torch").render(lao, cran)
    assert float(a.abs().max()) > 0.1
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_row_and_column_walks_give_the_same_image():
    """LAO views are walked by detector columns (cache-friendlier), axis-aligned ones by rows; the image is the same
    as the row walk's and as the torch backend's (a non-square detector catches any transposition slip)."""
    from xwin.drr.projector import NumbaVolume, best_layouts
    vol = Volume(np.random.default_rng(7).uniform(-1000, 1500, (20, 24, 28)).astype(np.float32), (2.0, 1.5, 2.5),
                 (-20.0, -15.0, -25.0))
    g = Geometry(sid=200.0, sdd=350.0, height=24, width=30, pixel=1.6)
    views = carm_views(g, vol.center, [0.0, 30.0, 45.0], [0.0, 0.0, 15.0])
    assert [by_columns for _, by_columns in best_layouts(vol.ijk_from_lps, views)] == [False, True, True]
    mu = hu_to_mu(vol.array)
    by_plan = NumbaVolume(mu, vol.ijk_from_lps).forward(views)
    rows_only = NumbaVolume(mu, vol.ijk_from_lps, transient=True).forward(views)  # one-off projections walk rows
    np.testing.assert_allclose(by_plan, rows_only, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(by_plan), Projector(vol, g, backend="torch").render(
        [0.0, 30.0, 45.0], [0.0, 0.0, 15.0]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_adjoint_is_exact_transpose(backend):
    vol = _random_volume(1)
    g = Geometry(sid=200.0, sdd=350.0, height=20, width=22, pixel=1.8)
    views = carm_views(g, vol.center, [0, 70, -35], [0, 10, 40])
    a = torch.from_numpy(vol.ijk_from_lps)
    x = torch.from_numpy(np.random.default_rng(2).random(vol.array.shape))
    y = torch.from_numpy(np.random.default_rng(3).random((3, g.height, g.width)))
    ax = forward_project(x, a, views, backend)
    aty = back_project(y, x.shape, a, views, backend)
    lhs, rhs = float((ax * y).sum()), float((x * aty).sum())
    assert lhs == pytest.approx(rhs, rel=1e-10)


def test_adjoint_buffers_are_clean_between_calls():
    """The adjoint reuses its per-thread accumulation buffers: repeated calls, a call left half-done (scatter without
    the reduce that clears them) and a different grid shape all give the fresh result."""
    from xwin.drr import joseph_numba
    vol = _random_volume(8)
    g = Geometry(sid=200.0, sdd=350.0, height=16, width=18, pixel=2.0)
    views = carm_views(g, vol.center, [10.0, 100.0], [0.0, 5.0])
    a = torch.from_numpy(vol.ijk_from_lps)
    y = torch.from_numpy(np.random.default_rng(9).random((2, g.height, g.width)).astype(np.float32))
    first = back_project(y, vol.array.shape, a, views, "numba")
    torch.testing.assert_close(back_project(y, vol.array.shape, a, views, "numba"), first)
    joseph_numba._reusable.buffers += 1.0  # as if interrupted after the scatter
    joseph_numba._reusable.dirty = True
    torch.testing.assert_close(back_project(y, vol.array.shape, a, views, "numba"), first)
    back_project(y, (6, 7, 8), a, views, "numba")  # another shape in between
    torch.testing.assert_close(back_project(y, vol.array.shape, a, views, "numba"), first)


def test_backends_share_one_adjoint():
    vol = _random_volume(4)
    g = Geometry(sid=200.0, sdd=350.0, height=16, width=18, pixel=2.0)
    views = carm_views(g, vol.center, [20.0, -80.0], [5.0, 0.0])
    a = torch.from_numpy(vol.ijk_from_lps)
    y = torch.from_numpy(np.random.default_rng(5).random((2, g.height, g.width)))
    # the numba kernels round bilinear weights to float32 (forward and adjoint alike, so each is the other's exact
    # transpose); torch keeps float64 weights: agreement to ~1e-6 relative
    torch.testing.assert_close(back_project(y, vol.array.shape, a, views, "numba"),
                               back_project(y, vol.array.shape, a, views, "torch"), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_gradcheck_wrt_volume(backend):
    vol = _random_volume(6)
    g = Geometry(sid=200.0, sdd=350.0, height=6, width=7, pixel=4.0)
    views = carm_views(g, vol.center, [10.0, 95.0], [-5.0, 20.0])
    a = torch.from_numpy(vol.ijk_from_lps)
    mu = torch.from_numpy(hu_to_mu(vol.array)).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda m: forward_project(m, a, views, backend), (mu,), eps=1e-6, atol=1e-6)


def test_gradcheck_wrt_pose():
    """d DRR / d(lao, cran, isocenter) through the torch backend, on a smooth blob (bilinear kinks stay tiny)."""
    n = 16
    idx = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1) - (n - 1) / 2
    blob = 1000.0 * np.exp(-(idx ** 2).sum(-1) / (2 * 3.0 ** 2)) - 1000.0
    vol = Volume(blob.astype(np.float64), (2.0, 2.0, 2.0), (-15.0, -15.0, -15.0))
    g = Geometry(sid=150.0, sdd=250.0, height=5, width=5, pixel=6.0)
    mu = torch.from_numpy(hu_to_mu(vol.array)).double()
    a = torch.from_numpy(vol.ijk_from_lps)

    def drr(angles, iso):
        return forward_project(mu, a, carm_views(g, iso, angles[0:1], angles[1:2]), "torch")

    angles = torch.tensor([12.0, -7.0], dtype=torch.float64, requires_grad=True)
    iso = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(drr, (angles, iso), eps=1e-5, atol=1e-4, rtol=1e-3)


def test_auto_backend_follows_pose_gradients():
    vol = _random_volume(7)
    g = Geometry(sid=200.0, sdd=350.0, height=8, width=8, pixel=3.0)
    lao = torch.tensor([25.0], dtype=torch.float64, requires_grad=True)
    views = carm_views(g, vol.center, lao, torch.zeros(1, dtype=torch.float64))
    out = forward_project(torch.from_numpy(hu_to_mu(vol.array)).double(), vol.ijk_from_lps, views)
    out.sum().backward()
    assert lao.grad is not None and torch.isfinite(lao.grad).all() and float(lao.grad.abs()) > 0


def test_torch_chunking_does_not_change_result():
    vol = _random_volume(8)
    g = Geometry(sid=200.0, sdd=350.0, height=12, width=12, pixel=2.5)
    from xwin.drr import joseph_torch
    views = carm_views(g, vol.center, [40.0], [10.0])
    mu = torch.from_numpy(hu_to_mu(vol.array))
    a = torch.from_numpy(vol.ijk_from_lps)
    torch.testing.assert_close(joseph_torch.forward(mu, a, views, max_samples=50),
                               joseph_torch.forward(mu, a, views))


def test_anatomy_lands_where_the_contract_says():
    """A dense ball at the patient's left-superior-posterior shows on the PA film's right/top; posterior on LAO 90."""
    n = 40
    ijk = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), -1)[..., ::-1]  # [k, j, i] → (i, j, k)
    lps = ijk * 2.0 - 39.0  # identity direction, 2 mm, centred at 0
    ball = np.linalg.norm(lps - np.array([20.0, 15.0, 20.0]), axis=-1) < 8
    vol = Volume(np.where(ball, 1000.0, -1000.0).astype(np.float32), (2.0, 2.0, 2.0), (-39.0, -39.0, -39.0))
    g = Geometry(sid=500.0, sdd=700.0, height=41, width=41, pixel=2.0)
    p = Projector(vol, g)
    pa, lat = p.render(0, 0)[0].numpy(), p.render(90, 0)[0].numpy()
    r, c = np.unravel_index(pa.argmax(), pa.shape)
    assert c > 20 and r < 20  # patient's left → right of the film, superior → top rows
    r, c = np.unravel_index(lat.argmax(), lat.shape)
    assert c > 20 and r < 20  # LAO 90: column axis points posterior
    cran = p.render(0, 30)[0].numpy()
    assert np.unravel_index(cran.argmax(), cran.shape)[0] != np.unravel_index(pa.argmax(), pa.shape)[0]


def test_preview_matches_full_quality():
    vol = ellipsoid_volume((48, 40, 32), (2.5, 3.0, 4.0), *oblique_grid((48, 40, 32), (2.5, 3.0, 4.0), (0, 0, 0)),
                           [(np.zeros(3), np.array([40.0, 30.0, 50.0]), np.eye(3), 0.0)], supersample=1)
    p = Projector(vol, Geometry(sid=600.0, sdd=900.0, height=64, width=64, pixel=3.0))
    full = p.render(20, 10)[0]
    small = p.preview(20, 10, mode="line")[0]
    assert small.shape == (32, 32)
    pooled = torch.nn.functional.avg_pool2d(full[None, None], 2)[0, 0]
    assert float(torch.corrcoef(torch.stack([pooled.flatten(), small.flatten()]))[0, 1]) > 0.995


def test_radiograph_to_line_inverts_the_display_map():
    """line → radiograph (1 − exp(−line/4)) → line, by hand at line = 4 ln 2 (image 0.5), and over a range."""
    from xwin.drr import radiograph_to_line
    from xwin.drr.cpu import apply_mode_numpy

    assert radiograph_to_line(np.array([0.0, 0.5]))[1] == pytest.approx(4 * np.log(2), rel=1e-12)
    line = np.linspace(0.0, 12.0, 25)
    np.testing.assert_allclose(radiograph_to_line(apply_mode_numpy(line, "radiograph")), line, rtol=1e-9, atol=1e-9)
