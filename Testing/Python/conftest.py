"""Set-up for the XWinSlicer tests: real MRML from the ``slicer-core`` wheel, the module's Qt-free library on
sys.path, and the CT used everywhere (the embedded demo CT; a tiny synthetic CT only when sample data is missing)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from xwin.viewer.session import preload_before_opengl
from xwin.viewer.training import _set_parent_death_signal

preload_before_opengl()  # offscreen/Xvfb rendering happens in these tests; the world model loads triton later

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "XWinSlicer"))
sys.path.insert(0, str(Path(__file__).parent))


def start_xvfb() -> str | None:
    """$DISPLAY, else an Xvfb started for this test session (so every VTK window — offscreen MRML views and the
    viewer's Qt widgets — uses the same X/GLX back end); None when no X server can be had."""
    if os.environ.get("DISPLAY"):
        return os.environ["DISPLAY"]
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        return None
    for n in range(90, 130):
        if Path(f"/tmp/.X{n}-lock").exists():
            continue
        proc = subprocess.Popen([xvfb, f":{n}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=_set_parent_death_signal)  # gone with pytest, even after a crash
        for _ in range(50):
            if Path(f"/tmp/.X11-unix/X{n}").exists():
                os.environ["DISPLAY"] = f":{n}"
                return os.environ["DISPLAY"]
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.kill()
        proc.wait()
    return None


def pytest_configure(config):
    start_xvfb()


# No pytest_unconfigure stopping Xvfb: the QApplication and VTK's X connections of the viewer tests live until the
# interpreter exits, and an X server gone before them ends the run with "XIO: fatal IO error" and exit status 1 after
# every test passed. Xvfb gets SIGTERM when this process exits (PR_SET_PDEATHSIG, set where it is started).


def require_slicer():
    """``slicer`` (slicer-core) or a clear skip."""
    try:
        import slicer  # noqa: F401
        slicer.vtkMRMLScene  # noqa: B018 - the MRML classes, not just the meta-package
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"slicer-core not installed: {exc} (pip install -r Resources/requirements-test-slicer.txt)",
                    allow_module_level=True)  # called at import by test_slicer_logic.py, in tests by the others
    return sys.modules["slicer"]


@pytest.fixture()
def scene():
    slicer = require_slicer()
    s = slicer.vtkMRMLScene()
    yield s
    s.Clear(1)


@pytest.fixture()
def logic(scene):
    from XWinSlicerLib.logic import XWinLogic
    return XWinLogic(scene)


def write_synthetic_ct(path: Path, direction=None, ball_lps=None, shape_kji=(40, 48, 44),
                       spacing=(2.0, 2.2, 2.5), origin=(-40.0, -60.0, -50.0)) -> Path:
    """A small chest-like CT (HU) written with SimpleITK (LPS): air around a water ellipsoid, a bone 'spine'
    and, when ``ball_lps`` is given, a bright 1500 HU ball of radius 6 mm centred there."""
    import SimpleITK as sitk

    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    ijk = np.stack([i, j, k], -1).astype(float)
    lps = ijk @ (direction * np.asarray(spacing)[None, :]).T + np.asarray(origin)
    centre = np.asarray(origin) + direction @ (np.asarray(spacing) * (np.array(shape_kji[::-1]) - 1) / 2)
    rel = lps - centre
    hu = np.full(shape_kji, -1000.0, np.float32)
    hu[(rel[..., 0] / 38) ** 2 + (rel[..., 1] / 28) ** 2 + (rel[..., 2] / 45) ** 2 <= 1] = 0.0
    hu[(rel[..., 0] / 6) ** 2 + ((rel[..., 1] - 15) / 6) ** 2 <= 1] = 700.0
    if ball_lps is not None:
        hu[np.linalg.norm(lps - np.asarray(ball_lps), axis=-1) <= 6.0] = 1500.0
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    img.SetDirection([float(x) for x in direction.ravel()])
    sitk.WriteImage(img, str(path))
    return path


def synthetic_center(direction=None, shape_kji=(40, 48, 44), spacing=(2.0, 2.2, 2.5),
                     origin=(-40.0, -60.0, -50.0)) -> np.ndarray:
    """LPS centre (mm) of the grid `write_synthetic_ct` writes with the same arguments."""
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    return np.asarray(origin) + direction @ (np.asarray(spacing) * (np.array(shape_kji[::-1]) - 1) / 2)


@pytest.fixture(scope="session")
def ct_path(tmp_path_factory) -> Path:
    """The embedded demo CT (``xwin.sample_data.demo_ct_path()``); a synthetic CT only if sample data is missing."""
    try:
        from xwin.sample_data import demo_ct_path
        path = Path(demo_ct_path())
        if path.exists():
            return path
    except ImportError:
        pass
    return write_synthetic_ct(tmp_path_factory.mktemp("ct") / "synthetic_ct.nrrd")
