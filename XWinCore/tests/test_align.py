""""Align DRR to CXR" (issue 17) in the panels' shared core: `Session.align`, the controller's alignment job, the
pose (roll, isocenter offset) in the panel's DRR, and the checkerboard / difference overlay.

The demo CT on a 128² detector of 3.4 mm pixels (as test_register.py) keeps it small for the 2-core CI."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from xwin.drr import Projector
from xwin.errors import XWinInputError
from xwin.io import read_ct
from xwin.register import Pose, rotation_error_deg, translation_error_mm
from xwin.register import Settings as RegistrationSettings
from xwin.sample_data import demo_ct_path
from xwin.viewer.controller import PanelController
from xwin.viewer.session import Session, Settings, compare_images

PANEL = dict(height=128, width=128, pixel=3.4)
TRUTH = dict(lao=7.0, cran=-4.0, roll=2.0, iso_dx=5.0, iso_dy=-3.0, iso_dz=8.0)


@pytest.fixture(scope="module")
def ct():
    return read_ct(demo_ct_path())


def _session(ct, **pose) -> Session:
    session = Session(Settings(**PANEL, **pose))
    session.set_ct(ct, warm_up=False)
    return session


def test_the_panel_drr_follows_roll_and_isocenter_like_a_pose_render(ct):
    """The panel's DRR at (lao, cran, roll, offset) is the projector's render of that full pose (radiograph mode),
    and its detector affine puts pixel (0, 0) where that pose's views do."""
    session = _session(ct, **TRUTH)
    shot = session.drr()
    iso = np.array(Projector(ct).isocenter) + np.array([5.0, -3.0, 8.0])
    pose = Pose(7.0, -4.0, 2.0, tuple(iso))
    reference = Projector(ct, session.geometry, isocenter=iso)
    with torch.no_grad():
        expected = reference.render(pose=pose.matrix(), mode="radiograph")[0].numpy()
    np.testing.assert_allclose(shot.image, expected, atol=1e-5)
    corner = reference.views(pose=pose.matrix()).corner[0].double().numpy()
    np.testing.assert_allclose(shot.lps_from_ijk[:3, 3], corner, atol=1e-6)
    assert shot.roll == 2.0
    flat = _session(ct, lao=7.0, cran=-4.0).drr().image  # the roll and offset change the image
    assert np.abs(flat - shot.image).mean() > 0.01
    preview = session.drr(preview=True)  # previews follow the same pose at half the detector
    assert preview.image.shape == (64, 64)
    assert np.corrcoef(preview.image.ravel(), expected[::2, ::2].ravel())[0, 1] > 0.95


def test_align_recovers_the_pose_of_a_drr_through_the_controller_job(ct):
    """A DRR of the demo CT at a known pose given as the CXR; from 6° / ~11 mm away the alignment job converges,
    and applying it sets the sliders, roll and isocenter offset to the truth."""
    target = _session(ct, **TRUTH).drr().image
    session = _session(ct, lao=7.0 + 4.0, cran=-4.0 - 4.0, roll=0.0)  # 6.0° in angles (+2° of roll), 10.7 mm off
    session.set_cxr(target, pixel=PANEL["pixel"])
    controller = PanelController(session)
    job = controller.start_alignment(settings=RegistrationSettings(time_limit_s=120.0))
    deadline = time.monotonic() + 180
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.status == "done", job.future.exception()
    assert job.progress > 0.5 and "similarity" in job.stage
    message = controller.apply_alignment(job)
    assert message.startswith("aligned"), message
    s = session.settings
    iso = np.array(Projector(ct).isocenter)
    got = Pose(s.lao, s.cran, s.roll, tuple(iso + s.iso_offset))
    truth = Pose(7.0, -4.0, 2.0, tuple(iso + np.array([5.0, -3.0, 8.0])))
    print(f"align: {rotation_error_deg(got, truth):.2e} deg, {translation_error_mm(got, truth):.2e} mm")
    assert rotation_error_deg(got, truth) < 0.5 and translation_error_mm(got, truth) < 1.0
    assert controller.take_frame() == "full"  # the aligned pose is shown at once
    assert np.corrcoef(session.drr().image.ravel(), target.ravel())[0, 1] > 0.999


def test_a_failed_alignment_leaves_the_pose_and_says_why(ct):
    """An image unrelated to the CT: the job ends, the status names the failure, the pose stays where it was."""
    session = _session(ct, lao=3.0, cran=2.0)
    session.set_cxr(np.random.default_rng(0).random((100, 100)))
    controller = PanelController(session)
    job = controller.start_alignment(settings=RegistrationSettings(sizes=(32,), iterations=(10,), restarts=0))
    job.future.result(timeout=120)
    before = session.settings
    message = controller.apply_alignment(job)
    assert message.startswith("alignment failed (") and "left unchanged" in message
    assert session.settings == before


def test_alignment_can_be_cancelled_and_runs_one_at_a_time(ct):
    session = _session(ct)
    session.set_cxr(_session(ct, lao=5.0).drr().image, pixel=PANEL["pixel"])
    controller = PanelController(session)
    job = controller.start_alignment(settings=RegistrationSettings(restarts=8))
    with pytest.raises(RuntimeError, match="the alignment is still running"):
        controller.start_alignment()
    while job.progress == 0.0 and not job.done():
        time.sleep(0.01)
    job.cancel()
    job.future.exception(timeout=60)
    assert job.status == "cancelled"
    assert session.settings.lao == 0.0


def test_align_needs_a_ct_and_a_cxr():
    session = Session(Settings(**PANEL))
    with pytest.raises(XWinInputError, match="no CT loaded"):
        session.align()
    with pytest.raises(XWinInputError, match="no chest X-ray"):
        session.cxr_on_detector()
    with pytest.raises(XWinInputError, match="pixel size"):
        session.set_cxr(np.zeros((4, 4)), pixel=-1.0)


def test_cxr_on_detector_keeps_millimetres():
    """A film of 1.7 mm pixels (256²) on the 3.4 mm panel: a bright square of 68 mm stays 68 mm (20 pixels); without
    a pixel size the film spans the detector's width."""
    film = np.zeros((256, 256), np.float32)
    film[108:148, 108:148] = 1.0  # 40 px × 1.7 mm = 68 mm, centred
    session = Session(Settings(**PANEL))
    session.set_cxr(film, pixel=1.7)
    on = session.cxr_on_detector()
    assert on.shape == (128, 128)
    assert (on > 0.5).sum(axis=1).max() == 20
    session.set_cxr(film[::2, ::2])  # 128 px spanning 128 × 3.4 mm: same picture
    np.testing.assert_allclose(session.cxr_on_detector(), film[::2, ::2], atol=1e-6)


def test_overlays_by_hand():
    a = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (8, 1))
    b = 1 - a
    board = compare_images(a, b, "checkerboard", tiles=2)
    scaled = np.clip((a - np.percentile(a, 1)) / (np.percentile(a, 99) - np.percentile(a, 1)), 0, 1)
    np.testing.assert_allclose(board[:4, :4], scaled[:4, :4], atol=1e-6)  # top-left tile: a
    np.testing.assert_allclose(board[:4, 4:], 1 - scaled[:4, 4:], atol=1e-6)  # top-right tile: b
    np.testing.assert_allclose(board[4:, :4], 1 - scaled[4:, :4], atol=1e-6)
    np.testing.assert_allclose(compare_images(a, a, "difference"), 0.0)
    with pytest.raises(XWinInputError, match="unknown overlay"):
        compare_images(a, b, "blend")
    with pytest.raises(XWinInputError, match="different shapes"):
        compare_images(a, b[:4], "difference")


def test_session_overlay_of_a_matching_film_has_no_difference(ct):
    session = _session(ct, lao=10.0)
    session.set_cxr(session.drr().image, pixel=PANEL["pixel"])
    assert float(session.overlay("difference").image.max()) < 1e-5
    session.update(lao=25.0)
    assert float(session.overlay("difference").image.mean()) > 0.02
