"""Issue 15: the numba kernels (``cache=True``) work from a read-only install run by a user whose home is read-only.

numba caches beside the module (``__pycache__``), else in ``~/.cache/numba``, else refuses to define the kernel, so
such an install could not even import the projector. `xwin.drr.joseph_numba.ensure_cache_folder` then points numba
at a private folder under the temp directory. The test makes both places unwritable in a way that holds for root too
(a regular file where numba would create its folder) and renders a DRR with ``python -m xwin render`` in a
subprocess whose only copy of ``xwin`` is that read-only one.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np

import xwin

PACKAGE = Path(xwin.__file__).resolve().parent
CT = PACKAGE / "sample_data" / "lidc_idri_0001_ct_small.nii.gz"


def make_read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_render_with_read_only_install_and_home(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "xwin", ignore=shutil.ignore_patterns("__pycache__", "weights", "*.pyc"))
    for module_dir in ("drr", "recon"):  # numba's in-tree cache folder cannot be made, even by root
        (site / "xwin" / module_dir / "__pycache__").write_text("not a folder\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").write_text("not a folder\n")  # nor ~/.cache/numba
    temp = tmp_path / "tmp"
    temp.mkdir()
    make_read_only(site)
    make_read_only(home)
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH", "XWIN_CHECKPOINT")}
    env.update(HOME=str(home), TMPDIR=str(temp), PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    out = tmp_path / "drr.nrrd"
    probe = "import numba, xwin.drr.joseph_numba, xwin.recon.fdk; print(xwin.__file__); print(numba.config.CACHE_DIR)"
    try:
        where = subprocess.run([sys.executable, "-c", probe], cwd=temp, env=env, capture_output=True, text=True,
                               timeout=120)
        assert where.returncode == 0, where.stderr[-3000:]
        module_file, cache_dir = where.stdout.split()
        assert Path(module_file).resolve() == (site / "xwin" / "__init__.py").resolve()  # the read-only copy
        assert Path(cache_dir).parent == temp and Path(cache_dir).name.startswith("xwin-numba-")
        assert stat.S_IMODE(Path(cache_dir).stat().st_mode) == 0o700

        done = subprocess.run([sys.executable, "-m", "xwin", "render", str(CT), "--lao", "30", "--cran", "0",
                               "--out", str(out)], cwd=temp, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "no locator available" not in done.stderr
    finally:
        make_writable(site)
        make_writable(home)
    import SimpleITK as sitk

    image = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert np.isfinite(image).all() and image.std() > 0
    assert list(Path(cache_dir).rglob("*.nbi")), "the kernels were not cached in the private temp folder"
