"""World model v2 data: CTs from a cases CSV by split, scan borders feathered to air, random z-crops, and the pose mix
of the pair samplers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xwin.data import PairSampler, split_cts
from xwin.data.bank import Bank
from xwin.data.ct import FeatherBordersd, RandCropZd, from_volume, to_volume
from xwin.errors import XWinInputError
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
