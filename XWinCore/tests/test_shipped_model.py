"""Issue 15: the embedded model ships with the package. A wheel built from a copy of ``XWinCore/`` alone (nothing else
of the checkout), installed with ``pip install --target`` and run from a folder outside the checkout with only that
folder on PYTHONPATH, finds its model through ``importlib.resources`` and predicts with it.

Skipped, saying why, when this Python cannot build a wheel without network (pip and setuptools are needed:
``pip wheel --no-deps --no-build-isolation``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import xwin

CORE = Path(xwin.__file__).resolve().parents[1]  # XWinCore/
CHECKOUT = CORE.parent
MODEL = Path(xwin.__file__).resolve().parent / "models" / "weights" / "xwin_default.safetensors"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_repository_has_one_model_file():
    """``Resources/Models`` (what the docs and the Slicer extension name) is the package's folder, not a copy."""
    assert MODEL.is_file() and not MODEL.is_symlink()
    resources = CHECKOUT / "Resources" / "Models"
    if resources.exists():
        assert resources.resolve() == MODEL.parent.resolve()


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """``pip install --target`` of a wheel built from a copy of XWinCore/ (so only what the wheel holds is there)."""
    for module in ("pip", "setuptools"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"cannot build a wheel: {module} is not installed in {sys.prefix}")
    work = tmp_path_factory.mktemp("wheel")
    src = work / "XWinCore"
    shutil.copytree(CORE, src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info", "tests"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    done = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(work / "dist")],
                          cwd=work, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and ("No module named" in done.stderr or "BackendUnavailable" in done.stderr):
        pytest.skip(f"cannot build a wheel here without network: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr[-3000:]
    wheel, = (work / "dist").glob("xwin-*.whl")
    target = work / "site"
    done = subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                          cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def test_wheel_predicts_with_its_shipped_model(installed_wheel, tmp_path):
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    assert CHECKOUT not in run_dir.parents
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XWIN_CHECKPOINT", "XWIN_SHARE_DIR")}
    env["PYTHONPATH"] = str(installed_wheel)  # dependencies from this Python's site-packages, xwin from the wheel

    # where xwin and its model come from; and without the shipped file no silent fallback to a checkout: the error
    # says where it looked (one interpreter for both, to keep the test short)
    probe = """if True:
        import xwin.predict as p
        from xwin.errors import XWinInputError
        found = p.default_checkpoint()
        print(p.__file__, found, sep="\\n")
        found.rename(found.with_suffix(".moved"))
        try:
            p.default_checkpoint()
        except XWinInputError as exc:
            print(exc)
        finally:
            found.with_suffix(".moved").rename(found)
    """
    where = subprocess.run([sys.executable, "-c", probe], cwd=run_dir, env=env, capture_output=True, text=True,
                           timeout=120)
    assert where.returncode == 0, where.stderr[-3000:]
    module, checkpoint, *error = where.stdout.splitlines()
    module, checkpoint = Path(module), Path(checkpoint)
    assert installed_wheel in module.parents, f"xwin was imported from {module}, not from the wheel"
    assert installed_wheel in checkpoint.parents and checkpoint.is_file()
    assert sha256(checkpoint) == sha256(MODEL)
    assert error and "no default model found" in error[0] and str(installed_wheel) in error[0], error

    cxr = installed_wheel / "xwin" / "sample_data" / "nema_wg04_rg1_chest_cr_j2k.dcm"
    out = run_dir / "pred"
    done = subprocess.run([sys.executable, "-m", "xwin", "predict", str(cxr), "--lao", "-30", "30",
                           "--cran", "0", "0", "--out", str(out)],
                          cwd=run_dir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(out.glob("*.png"))) == 2, sorted(p.name for p in out.iterdir())

