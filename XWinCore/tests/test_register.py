"""2D/3D registration (issue 17): `xwin.register` and `xwin register` / `xwin render --pose`.

Kept small for the 2-core CI: the demo CT (128² × 133 at 2.8 mm) on a 128² detector of 3.4 mm pixels."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from xwin.cli import main
from xwin.drr import Projector
from xwin.geometry import Geometry, carm_views
from xwin.io import read_ct, read_radiograph
from xwin.register import (
    Pose,
    Settings,
    _start_offsets,
    level_geometries,
    load_target,
    pose_rotation,
    pose_views,
    read_pose,
    register,
    rotation_error_deg,
    translation_error_mm,
)
from xwin.sample_data import demo_ct_path, demo_cxr_path

GEO = Geometry(height=128, width=128, pixel=3.4)


@pytest.fixture(scope="module")
def demo():
    volume = read_ct(demo_ct_path())
    return volume, Projector(volume, GEO)


def _drr(projector: Projector, pose: Pose) -> np.ndarray:
    with torch.no_grad():
        p = Projector(projector.volume, GEO, isocenter=pose.isocenter)
        return p.render(pose=pose.matrix(), mode="radiograph")[0].numpy()


def test_pose_rotation_is_the_bank_roll_convention_and_views_match_carm_views():
    from xwin.data.bank import roll_pose

    for lao, cran, roll in [(0, 0, 0), (30, -10, 3), (-45, 20, -5)]:
        r = pose_rotation(torch.tensor([lao, cran, roll], dtype=torch.float64)).numpy()
        assert np.allclose(r, roll_pose(lao, cran, roll, np.zeros(3))[:3, :3].numpy(), atol=1e-12)
    iso = np.array([5.0, -3.0, 20.0])
    mine = pose_views(GEO, torch.tensor([[30.0, -10.0, 4.0, *iso]], dtype=torch.float64))
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = pose_rotation(torch.tensor([30.0, -10.0, 4.0], dtype=torch.float64))
    ref = carm_views(GEO, iso, pose=m)
    for a, b in zip(mine[:4], ref[:4]):
        assert torch.allclose(a, b, atol=1e-9)


def test_levels_keep_the_field_of_view():
    levels = level_geometries(Geometry(height=1955, width=1841, pixel=0.2), (32, 64, 128))
    assert [(g.height, g.width) for g in levels] == [(32, 30), (64, 60), (128, 121)]
    for g in levels:
        assert g.height * g.pixel == pytest.approx(1955 * 0.2)


def test_register_cli_recovers_a_demo_drr_from_6_deg_15_mm(demo, tmp_path, capsys):
    """`xwin render` → `xwin register` from a 6° / 15 mm offset → `xwin render --pose` reproduces the target."""
    volume, projector = demo
    truth_iso = projector.isocenter + np.array([6.0, -4.0, 9.0])
    drr = tmp_path / "target.nrrd"
    assert main(["render", str(demo_ct_path()), "--lao", "8", "--cran", "-5", "--size", "128", "128", "--pixel", "3.4",
                 "--isocenter", *map(str, truth_iso), "--out", str(drr), "--quiet"]) == 0
    start_lao, start_cran = 8 + 6 / np.sqrt(2), -5 - 6 / np.sqrt(2)  # 6° away (geodesic ≈ 6.0°)
    start_iso = truth_iso + 15 * np.array([1.0, -1.0, 1.0]) / np.sqrt(3)  # 15 mm away
    out = tmp_path / "pose.json"
    t0 = time.perf_counter()
    rc = main(["register", str(demo_ct_path()), str(drr), "--lao", str(start_lao), "--cran", str(start_cran),
               "--isocenter", *map(str, start_iso), "--out", str(out), "--json"])
    seconds = time.perf_counter() - t0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0, printed
    assert printed["status"] == "converged" and {"similarity", "iterations", "seconds"} <= printed.keys()
    pose, geometry = read_pose(out)
    truth = Pose(8.0, -5.0, 0.0, tuple(truth_iso))
    start = Pose(start_lao, start_cran, 0.0, tuple(start_iso))
    assert rotation_error_deg(start, truth) == pytest.approx(6.0, abs=0.1)
    assert translation_error_mm(start, truth) == pytest.approx(15.0)
    rot, trans = rotation_error_deg(pose, truth), translation_error_mm(pose, truth)
    print(f"demo DRR: rotation error {rot:.3f} deg, translation error {trans:.3f} mm, {seconds:.1f} s")
    assert rot < 0.5 and trans < 1.0
    assert (geometry.height, geometry.width, geometry.pixel) == (128, 128, 3.4)
    back = tmp_path / "back.nrrd"
    assert main(["render", str(demo_ct_path()), "--pose", str(out), "--out", str(back), "--quiet"]) == 0
    a, b = read_radiograph(drr).array, read_radiograph(back).array
    assert read_radiograph(back).meta["xwin_roll_deg"]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


def test_real_radiograph_of_another_patient_ends_with_a_clear_status(tmp_path, capsys):
    """No right answer exists (another patient): the command must end, in bounded time, with 0 or 3."""
    out = tmp_path / "pose.json"
    t0 = time.perf_counter()
    rc = main(["register", str(demo_ct_path()), str(demo_cxr_path()), "--pixel", "0.2", "--restarts", "1",
               "--time-limit", "40", "--out", str(out), "--json"])
    seconds = time.perf_counter() - t0
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert rc in (0, 3) and seconds < 90
    assert printed["status"] in ("converged", "no improvement", "hit a bound", "time limit", "poor match")
    assert (rc == 0) == (printed["status"] == "converged")
    if rc == 3:
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and printed["status"] in err[0]
    assert json.loads(out.read_text())["status"] == printed["status"]


def test_estimate_sdd_recovers_the_detector_distance_with_the_depth_held(demo, tmp_path):
    """A DRR taken at SDD 1900 mm, registered on an 1800 mm detector: with estimate_sdd the SDD (and the in-plane
    pose) come back exactly and reach the pose file; without it the fit can only move the depth, runs to its bound
    and says so."""
    from xwin.register import write_pose

    volume, projector = demo
    iso = np.asarray(projector.isocenter)
    truth = Pose(3.0, -2.0, 1.0, tuple(iso + np.array([8.0, 0.0, -6.0])))  # shifted across the PA beam only
    taken = Geometry(sid=1600.0, sdd=1900.0, height=128, width=128, pixel=3.4)
    with torch.no_grad():
        image = Projector(volume, taken, isocenter=truth.isocenter).render(pose=truth.matrix(),
                                                                           mode="radiograph")[0].numpy()
    assumed = Geometry(sid=1600.0, sdd=1800.0, height=128, width=128, pixel=3.4)
    start = Pose(0.0, 0.0, 0.0, tuple(iso))
    found = register(projector, image, assumed, start, settings=Settings(estimate_sdd=True, restarts=0))
    assert found.converged, found.message
    assert found.geometry.sdd == pytest.approx(1900.0, abs=2.0) and "SDD 1900" in found.message
    assert rotation_error_deg(found.pose, truth) < 0.1 and translation_error_mm(found.pose, truth) < 0.5
    _, geometry = read_pose(write_pose(tmp_path / "pose.json", found))
    assert geometry.sdd == pytest.approx(found.geometry.sdd) and found.to_json()["sdd_mm"] == geometry.sdd
    fixed = register(projector, image, assumed, start, settings=Settings(restarts=0))
    assert not fixed.converged and fixed.geometry.sdd == 1800.0


def test_film_distances_come_from_the_flags_else_the_dicom_header_else_the_defaults(tmp_path):
    """SDD: --sdd, else DICOM Distance Source to Detector (the embedded NEMA film says 1996 mm), else 1800; SID: --sid,
    else 1600/1800 of the SDD. An unusable header value is ignored (the attribute is optional)."""
    from synthetic_dicom import radiograph

    _, g, _, simulated = load_target(demo_cxr_path(), pixel=0.2)
    assert not simulated and (g.sdd, g.sid) == pytest.approx((1996.0, 1996.0 * 1600 / 1800))
    _, g, _, _ = load_target(demo_cxr_path(), pixel=0.2, sdd=1500.0)
    assert (g.sdd, g.sid) == pytest.approx((1500.0, 1500.0 * 1600 / 1800))
    _, g, _, _ = load_target(demo_cxr_path(), pixel=0.2, sid=1700.0)
    assert (g.sdd, g.sid) == pytest.approx((1996.0, 1700.0))
    pixels = (np.arange(32 * 32).reshape(32, 32) * 40).astype(np.uint16)
    for name, tags in (("plain", {}), ("absurd", {"DistanceSourceToDetector": "5"}),
                       ("negative", {"DistanceSourceToDetector": "-1800"})):
        path = radiograph(tmp_path / f"{name}.dcm", pixels, ImagerPixelSpacing=[0.5, 0.5], **tags)
        _, g, _, _ = load_target(path)
        assert (g.sdd, g.sid) == (1800.0, 1600.0), name


def test_restart_offsets_alternate_and_are_drawn_one_at_a_time():
    """Campaign 6: --restarts 1000000000 built the list of a billion starts before the time limit could act (a hang);
    the offsets are now drawn lazily, so the limit ends the search."""
    import itertools
    first = list(itertools.islice(_start_offsets(10**18, 15.0), 6))
    assert first == [(0.0, 0.0), (15.0, 0.0), (-15.0, 0.0), (0.0, 15.0), (0.0, -15.0), (15.0, 0.0)]


def test_a_pose_that_runs_to_the_bound_is_a_failure(demo):
    _, projector = demo
    truth = Pose(8.0, 8.0, 0.0, tuple(projector.isocenter))
    image = _drr(projector, truth)
    start = Pose(0.0, 0.0, 0.0, tuple(projector.isocenter))
    result = register(projector, image, GEO, start, settings=Settings(sizes=(32,), iterations=(25,), restarts=0,
                                                                      max_rotation_deg=2.0, max_translation_mm=4.0))
    assert result.status == "hit a bound" and "bound" in result.message


def test_an_unrelated_image_is_not_converged(demo):
    _, projector = demo
    rng = np.random.default_rng(0)
    noise = rng.random((GEO.height, GEO.width)).astype(np.float32)
    start = Pose(0.0, 0.0, 0.0, tuple(projector.isocenter))
    result = register(projector, noise, GEO, start, settings=Settings(sizes=(32, 64), iterations=(10, 5), restarts=1))
    assert result.status != "converged"


@pytest.mark.parametrize("args,needle", [
    (["{ct}", "{missing}"], "missing.png"),
    (["{missing}", "{cxr}", "--pixel", "0.2"], "missing.png"),
    (["{ct}", "{cxr}"], "--pixel"),
    (["{ct}", "{notimage}"], "notimage.dcm"),
    (["{ct}", "{cxr}", "--pixel", "0.2", "--restarts", "-1"], "--restarts"),
])
def test_bad_register_inputs_exit_2_in_one_line(tmp_path, capsys, args, needle):
    bad = tmp_path / "notimage.dcm"
    bad.write_bytes(b"not a dicom file at all")
    names = {"ct": demo_ct_path(), "cxr": demo_cxr_path(), "missing": tmp_path / "missing.png", "notimage": bad}
    out = tmp_path / "pose.json"
    assert main(["register", *[a.format(**{k: str(v) for k, v in names.items()}) for a in args],
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_render_pose_refuses_bad_pose_files_and_mixed_arguments(tmp_path, capsys):
    ct = str(demo_ct_path())
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    assert main(["render", ct, "--pose", str(bad), "--out", str(tmp_path / "a.nrrd")]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert main(["render", ct, "--pose", str(bad), "--lao", "0", "--out", str(tmp_path / "a.nrrd")]) == 2
    assert "--pose" in capsys.readouterr().err
    assert main(["render", ct, "--out", str(tmp_path / "a.nrrd")]) == 2
    assert "--lao" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.nrrd"))
