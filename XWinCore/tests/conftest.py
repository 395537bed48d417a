"""Shared test set-up: the tests folder on sys.path (for `phantoms`) and the location of ../shared/data."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout, or a clear skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data test skipped: {SHARED_DATA} not found (the shared data sits beside the checkout)")
    return SHARED_DATA


# ---------------------------------------------------------------------------------------- the tiny training set-up
# Built by session fixtures, never inside a test, so that every test of test_train.py runs alone (``-k``), in any
# order or under xdist: the bank and the trained run used to be made by one test and skipped or failed in the others
# (issue 15).

TINY_TRAIN = {
    "model": {"encoder": "tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32,
              "predictor_depth": 1, "predictor_width": 32, "predictor_heads": 2, "mask_predictor_depth": 1,
              "mask_predictor_width": 32, "mask_predictor_heads": 2, "decoder_depth": 1, "decoder_width": 32,
              "decoder_heads": 2, "domain_hidden": 16},
    "mask": {"num_targets": 1, "min_keep": 1},
    "data": {"lao": [-30.0, 0.0, 30.0], "cran": [0.0], "augmentations": 1, "spacing_mm": 5.0, "sid": 400.0,
             "sdd": 600.0, "field_mm": 200.0, "real_per_batch": 2},
    "train": {"lr": 1e-3, "warmup_steps": 2, "total_steps": 12, "batch_size": 4, "checkpoint_every": 4,
              "amp": False},
}


def torso(shift: float, scale: float):
    """A small synthetic chest (`xwin.io.image.Volume`): body ellipsoid, two air lungs, a dense spine (2.5 mm
    voxels)."""
    import numpy as np

    from xwin.io.image import Volume

    n = 40
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float32)] * 3, indexing="ij")
    x, y, z = (i - 19.5) * 2.5, (j - 19.5) * 2.5, (k - 19.5) * 2.5
    hu = np.full((n, n, n), -1000.0, np.float32)
    hu[(x / (40 * scale)) ** 2 + (y / 30) ** 2 + (z / 45) ** 2 < 1] = 30.0
    for side in (-1, 1):
        hu[((x - side * 18 * scale) / 12) ** 2 + ((y + shift) / 16) ** 2 + (z / 30) ** 2 < 1] = -850.0
    hu[((x) ** 2 + (y - 18) ** 2 < 36)] = 700.0
    return Volume(hu, (2.5, 2.5, 2.5), (-48.75, -48.75, -48.75))


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory):
    """(root, config path, CT paths): three synthetic patients (patient2 held out), three noise "radiographs" in
    root/cxr, and the tiny config whose data.bank is root/bank (made by `tiny_bank`). Read-only for tests."""
    import json

    import numpy as np
    import yaml
    from PIL import Image

    from xwin.io import write_volume

    root = tmp_path_factory.mktemp("train")
    cts = []
    for n, (shift, scale) in enumerate([(0.0, 1.0), (4.0, 0.9), (-3.0, 1.1)]):
        path = root / f"patient{n}.nrrd"
        write_volume(torso(shift, scale), path)
        cts.append(str(path))
    cxr = root / "cxr"
    cxr.mkdir()
    rng = np.random.default_rng(0)
    for n in range(3):
        Image.fromarray((rng.random((48, 40)) * 255).astype(np.uint8)).save(cxr / f"real{n}.png")
    cfg = json.loads(json.dumps(TINY_TRAIN))
    cfg["data"].update({"ct": cts, "holdout": ["patient2"], "cxr": [str(cxr)], "bank": str(root / "bank")})
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path, cts


@pytest.fixture(scope="session")
def tiny_bank(tiny_setup) -> Path:
    """The tiny config's DRR bank (its data.bank, root/bank), built once from its training CTs."""
    from xwin.config import load_config
    from xwin.data import bank_spec, build_bank, training_cts

    root, cfg_path, _ = tiny_setup
    cfg = load_config(cfg_path)
    return Path(build_bank(training_cts(cfg), root / "bank", bank_spec(cfg), quiet=True))


@pytest.fixture(scope="session")
def straight_run(tiny_setup, tiny_bank) -> Path:
    """The tiny run trained to step 12 in one go on `tiny_bank` (``xwin train`` in a subprocess): the reference a
    resumed run must reproduce, and the trained model the export, prediction and evaluation tests read."""
    import subprocess

    root, cfg_path, _ = tiny_setup
    run = root / "run_straight"
    done = subprocess.run([sys.executable, "-m", "xwin", "train", "--config", str(cfg_path), "--out", str(run),
                           "--progress", "none", "--device", "cpu"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return run


@pytest.fixture(scope="session")
def trained_run(straight_run) -> Path:
    """A trained tiny run (checkpoints to step 12) for tests that only read it."""
    return straight_run
