"""World model v2 data: CTs from a cases CSV by split, scan borders feathered to air, random z-crops, and the pose mix
of the pair samplers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xwin.data import PairSampler, split_cts
from xwin.data.bank import Bank, BankSpec, deformed_instances
from xwin.data.ct import FeatherBordersd, RandArmsDownd, RandCropZd, from_volume, to_volume
from xwin.errors import XWinInputError
from xwin.io import write_volume
from xwin.io.image import Volume

torch.set_num_threads(1)


def _water(shape=(10, 12, 14), spacing=2.0) -> Volume:
    return Volume(np.zeros(shape, np.float32), (spacing,) * 3, (-5.0, 3.0, 7.0))


def test_feathering_fades_every_face_to_air_by_the_analytic_ramp():
    vol = _water()
    out = to_volume(FeatherBordersd("ct", 5.0)({"ct": from_volume(vol)})["ct"])
    a = out.array  # [k, j, i] in HU; water 0 HU = 1024 above air
    ramp = lambda d: np.sin(np.pi / 2 * min(d / 5.0, 1.0)) ** 2  # noqa: E731
    # voxel centres 1, 3, 5 mm from a face: weights ramp(1), ramp(3), 1; the corner multiplies three ramps
    assert a[5, 6, 0] == pytest.approx(-1024 + 1024 * ramp(1.0), abs=1e-3)
    assert a[5, 6, 1] == pytest.approx(-1024 + 1024 * ramp(3.0), abs=1e-3)
    assert a[5, 6, 2] == pytest.approx(0.0, abs=1e-3)
    assert a[0, 0, 0] == pytest.approx(-1024 + 1024 * ramp(1.0) ** 3, abs=1e-3)
    assert a[-1, 6, 7] == pytest.approx(a[0, 6, 7], abs=1e-3)  # both z ends alike
    assert np.allclose(out.origin, vol.origin) and np.allclose(out.spacing, vol.spacing)
    same = to_volume(FeatherBordersd("ct", 0.0)({"ct": from_volume(vol)})["ct"])
    assert np.array_equal(same.array, vol.array)


def test_random_z_crop_keeps_a_run_of_slices_in_place():
    k = np.arange(20, dtype=np.float32)[:, None, None] * np.ones((20, 4, 5), np.float32)  # HU = slice index
    vol = Volume(k, (1.0, 1.0, 2.5), (0.0, 0.0, -10.0))
    crop = RandCropZd("ct", (0.5, 0.6))
    kept = set()
    for seed in range(8):
        crop.set_random_state(seed)
        out = to_volume(crop({"ct": from_volume(vol)})["ct"])
        n = out.array.shape[0]
        assert 10 <= n <= 12
        first = int(out.array[0, 0, 0])
        assert np.array_equal(out.array[:, 0, 0], np.arange(first, first + n))  # contiguous slices
        assert out.origin[2] == pytest.approx(-10.0 + 2.5 * first)  # at their own LPS z
        kept.add(first)
    assert len(kept) > 2


def _chest(spacing=2.0) -> Volume:
    """An axial chest phantom in HU: a water ellipse (semi-axes 100 mm left-right, 70 mm AP) around two −800 HU lungs,
    in air, 24 slices; LPS, voxel (0, 0, 0) at (−150, −100, 40) mm."""
    x = (np.arange(150) - 74.5) * spacing
    y = (np.arange(100) - 49.5) * spacing
    body = (x[None, :] / 100) ** 2 + (y[:, None] / 70) ** 2 <= 1
    lungs = ((np.abs(x[None, :]) - 50) / 35) ** 2 + (y[:, None] / 45) ** 2 <= 1
    axial = np.where(body, np.where(lungs, -800.0, 0.0), -1024.0).astype(np.float32)
    return Volume(np.repeat(axial[None], 24, axis=0), (spacing,) * 3, (-150.0 + 0.5 * spacing, -100.0, 40.0))


def _lps(vol: Volume) -> tuple[np.ndarray, np.ndarray]:
    """LPS x and y (mm) of the i and j voxel centres of an axis-aligned volume."""
    return vol.origin[0] + vol.spacing[0] * np.arange(vol.shape_ijk[0]), \
        vol.origin[1] + vol.spacing[1] * np.arange(vol.shape_ijk[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_arms_down_lie_beside_the_body_and_leave_it_alone(seed):
    chest = _chest()
    arms = RandArmsDownd("ct", prob=1.0)
    arms.set_random_state(seed)
    out = to_volume(arms({"ct": from_volume(chest)})["ct"])
    assert np.allclose(out.spacing, chest.spacing) and np.allclose(out.direction, chest.direction)
    x, y = _lps(out)
    x0, y0 = _lps(chest)
    assert np.allclose(y, y0) and out.array.shape[0] == chest.array.shape[0]
    first = int(round((x0[0] - x[0]) / out.spacing[0]))  # the old grid inside the new one (grown left-right)
    old = out.array[:, :, first:first + len(x0)]
    inside = chest.array > -1024
    assert np.array_equal(old[inside], chest.array[inside])  # body and lungs untouched, in place (LPS mm)
    tissue = out.array > -500
    assert not tissue[:, :, [0, -1]].any()  # the grid grew far enough: air at its left-right faces
    for side in (x < -100, x > 100):  # each side of the body (edges at x = ±100 mm)
        arm = tissue & side[None, None, :]
        assert arm.any(axis=(1, 2)).all()  # in every slice
        _, jj, ii = np.nonzero(arm)
        width, depth = np.ptp(x[ii]) + 2.0, np.ptp(y[jj]) + 2.0
        assert 48 <= width <= 82 and 62 <= depth <= 98  # semi-axes 25–40 mm and 32–48 mm, ± a voxel
        gap = np.min(np.abs(x[ii])) - 100.0
        assert -7 <= gap <= 12  # −5 to 10 mm from the body's edge, ± a voxel
        bone = out.array[:, :, side].max()
        assert 900 <= bone <= 1500  # a humerus's cortex
    same = RandArmsDownd("ct", prob=0.0)({"ct": from_volume(chest)})["ct"]
    assert np.array_equal(to_volume(same).array, chest.array)


def test_data_arms_gives_the_deformed_copies_arms(tmp_path):
    ct = tmp_path / "chest.nrrd"
    write_volume(_chest(), ct)
    widths = {}
    for arms in (0.0, 1.0):
        spec = BankSpec(img_size=16, augmentations=2, spacing_mm=4.0, habitus=0.0, arms=arms)
        instances = list(deformed_instances([{"path": str(ct), "patient_id": "p"}], spec, quiet=True))
        widths[arms] = [i["volume"].array.shape[2] for i in instances]
    assert widths[1.0][0] == widths[0.0][0]  # the undeformed volume never has them
    assert all(a > b for a, b in zip(widths[1.0][1:], widths[0.0][1:]))  # each deformed copy grew its arms


def test_split_cts_reads_the_split_column(tmp_path, shared_data):
    train, held = split_cts(shared_data / "ct" / "cases.csv", "train"), split_cts(shared_data / "ct" / "cases.csv",
                                                                                  "eval")
    assert len(train) == 8 and len(held) == 4 and not set(train) & set(held)
    assert all(p.is_file() for p in train + held)
    with pytest.raises(XWinInputError, match="no CT has split 'test'"):
        split_cts(shared_data / "ct" / "cases.csv", "test")
    bad = tmp_path / "cases.csv"
    bad.write_text("name,licence\na,b\n")
    with pytest.raises(XWinInputError, match="columns 'file' and 'split'"):
        split_cts(bad, "train")


def _bank() -> Bank:
    lao, cran = [-30.0, 0.0, 30.0], [-10.0, 0.0, 10.0]
    poses = np.array([(a, c) for c in cran for a in lao], np.float32)
    images = np.zeros((4, len(poses), 8, 8), np.float16)
    instances = [{"ct_index": i // 2} for i in range(4)]
    return Bank(None, images, np.repeat(poses[None], 4, axis=0), {"instances": instances})


@pytest.mark.parametrize("pa, ctx0, tgt0", [(0.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.0, 0.0, 0.5)])
def test_pose_mix_of_the_bank_sampler(pa, ctx0, tgt0):
    s = PairSampler(_bank(), augment=False, seed=0, pa_fraction=pa, context_cran0_fraction=ctx0,
                    target_cran0_fraction=tgt0)
    b = s.sample(4000)
    pose = b["pose"].numpy()
    target = pose + np.stack([b["d_lao"].numpy(), b["d_cran"].numpy()], axis=1)
    if pa == 1.0:
        assert np.all(pose == 0)
    if ctx0 == 1.0:
        assert np.all(pose[:, 1] == 0)
    share = np.mean(target[:, 1] == 0)  # CRAN 0 targets: tgt0 + (1 − tgt0) / 3 of the grid
    assert share == pytest.approx(tgt0 + (1 - tgt0) / 3, abs=0.03)
    assert np.array_equal(b["patient"].numpy(), b["group"].numpy() // 2)  # two volumes per patient in the manifest


def test_augmented_batches_are_plain_tensors():
    """MONAI's augmentations return MetaTensors; the batch must not (every op of a training step would pay for it)."""
    real = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    b = PairSampler(_bank(), real, augment=True, seed=0).sample(6, real_size=2)
    assert all(type(b[k]) is torch.Tensor for k in ("context", "target", "real"))
