"""`xwin.viewer.model.Session` (shared by the Slicer module and `xwin viewer`): the world model is loaded once per
checkpoint, however often the panel pushes its settings (issue 14: 4 loads for 4 predictions in Slicer, where
`applySettings` passes every key, `checkpoint` included, before each prediction)."""
from __future__ import annotations

import numpy as np
import pytest

import xwin.predict
from xwin.viewer.model import Session, Settings


class FakePredictor:
    def predict(self, cxr, lao, cran):
        return np.zeros((len(lao), 8, 8), np.float32)


@pytest.fixture()
def loads(monkeypatch) -> list:
    """Counts `xwin.predict.load_predictor` calls (the checkpoint each was asked for) with a fake model."""
    calls: list = []

    def fake_load_predictor(checkpoint=None, device="cpu"):
        calls.append(checkpoint if device == "cpu" else (checkpoint, device))
        return FakePredictor()

    monkeypatch.setattr(xwin.predict, "load_predictor", fake_load_predictor)
    return calls


def _session() -> Session:
    s = Session()
    s.set_cxr(np.linspace(6255.0, 31964.0, 16 * 16).reshape(16, 16))
    return s


def test_one_model_load_per_checkpoint_across_updates(loads):
    """Every update carries all settings (as the Slicer logic's applySettings does): still one load."""
    s = _session()
    try:
        for lao in (0.0, 15.0, 30.0, 45.0):
            s.update(**vars(Settings(checkpoint="/models/a.safetensors", lao=lao)))
            assert s.predict().image.shape == (8, 8)
        s.update(checkpoint="/models/a.safetensors")  # the same value again (viewer: editingFinished)
        s.predict()
        assert loads == ["/models/a.safetensors"]
    finally:
        s.close()


def test_a_new_checkpoint_reloads_once(loads):
    s = _session()
    try:
        s.update(**vars(Settings(checkpoint="/models/a.safetensors")))
        s.predict()
        s.update(**vars(Settings(checkpoint="/models/b.safetensors", lao=20.0)))
        s.predict()
        s.predict(lao=40.0)
        s.update(**vars(Settings(checkpoint="", lao=10.0)))  # '' = the embedded model
        s.predict()
        s.update(lao=30.0, cran=5.0)  # no checkpoint key at all
        s.predict()
        assert loads == ["/models/a.safetensors", "/models/b.safetensors", None]
    finally:
        s.close()


def test_changing_the_checkpoint_releases_the_old_model(loads):
    """A changed checkpoint drops the loaded model at once (its memory), before the next prediction loads one."""
    s = _session()
    try:
        s.predict()
        assert s._predictor is not None
        s.update(checkpoint="/models/b.safetensors")
        assert s._predictor is None
        s.predict()
        assert loads == [None, "/models/b.safetensors"]
    finally:
        s.close()


def test_the_compute_device_setting(loads, monkeypatch):
    """'auto' is the CPU without CUDA and CUDA with it; choosing 'cuda' without it is a clear error, not a crash in
    torch; a new device reloads the model once, on that device; the trainer gets the same --device."""
    from xwin.errors import XWinInputError
    from xwin.viewer.training import train_command

    s = _session()
    try:
        s.update(**vars(Settings(device="cpu")))
        s.predict()
        s.update(**vars(Settings(device="cpu", lao=20.0)))  # every setting pushed again: no reload
        s.predict()
        assert loads == [None]
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
        s.update(device="cuda")
        assert s._predictor is None  # dropped at once
        with pytest.raises(XWinInputError, match="CUDA was chosen.*no CUDA GPU"):
            s.predict()
        s.update(device="tpu")
        with pytest.raises(XWinInputError, match="unknown compute device 'tpu'"):
            s.compute_device()
        monkeypatch.setattr("torch.cuda.is_available", lambda: True)
        s.update(device="auto")
        assert s.compute_device() == "cuda"
        s.predict()
        s.predict(lao=30.0)
        assert loads == [None, (None, "cuda")]
    finally:
        s.close()
    cmd = train_command("c.yaml", "runs/x", device="cuda")
    assert cmd[cmd.index("--device") + 1] == "cuda"
    assert "--device" not in train_command("c.yaml", "runs/x")
