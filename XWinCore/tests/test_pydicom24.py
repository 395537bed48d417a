"""3D Slicer 5.10 bundles pydicom 2.4, and XWinSlicer installs the core beside it without replacing it
(`XWinSlicer/XWinSlicerLib/install.py`): the DICOM readers and the CT series writer must work with pydicom 2.4 too.

A child Python that finds pydicom 2.4 first on its path (`make test` installs it into ``.venv/pydicom24``) reads what
this process wrote with pydicom 3 — a CT series, a windowed MONOCHROME1 CR, the embedded JPEG 2000 chest film, a
truncated file and a CR whose pixel data declares 4 GiB — and writes a CT series with `xwin.export.write_ct_series`;
this process compares every value with its own reads. Skipped, with the command, where pydicom 2.4 is not installed
there.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic_dicom import ct_series, radiograph

from xwin.errors import XWinInputError
from xwin.io import read_ct, read_radiograph
from xwin.sample_data import demo_cxr_path

PYDICOM24 = Path(os.environ.get("XWIN_PYDICOM24", Path(sys.prefix) / "pydicom24"))

CHILD = r"""
import json, sys
from pathlib import Path
import numpy as np
import pydicom
from xwin.errors import XWinInputError
from xwin.export import write_ct_series
from xwin.io import read_ct, read_radiograph

work = Path(sys.argv[1])
report = {"pydicom": pydicom.__version__}
ct = read_ct(work / "ct")
np.save(work / "ct.npy", ct.array)
report["ct_affine"] = ct.lps_from_ijk.tolist()
for name in ("cr.dcm", "film.dcm"):
    np.save(work / (name + ".npy"), read_radiograph(work / name).array)
for name in ("truncated", "declares_4gib"):
    try:
        read_radiograph(work / f"{name}.dcm")
        report[name] = None
    except XWinInputError as e:
        report[name] = str(e)
write_ct_series(ct, work / "written")
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def child_python() -> dict:
    if not (PYDICOM24 / "pydicom").is_dir():
        pytest.skip(f"pydicom 2.4 is not installed in {PYDICOM24} (make test does it: pip install --no-deps "
                    f"--target {PYDICOM24} pydicom==2.4.3)")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(PYDICOM24), *sys.path])}


def test_readers_and_writer_work_with_pydicom_2_4(child_python, tmp_path):
    ct_series(tmp_path / "ct", n=6, size=(12, 10))
    values = np.arange(16 * 20, dtype=np.uint16).reshape(16, 20) * 50
    radiograph(tmp_path / "cr.dcm", values, photometric="MONOCHROME1", WindowCenter=8000, WindowWidth=6000)
    (tmp_path / "film.dcm").write_bytes(Path(demo_cxr_path()).read_bytes())  # JPEG 2000 lossy, MONOCHROME1
    whole = (tmp_path / "cr.dcm").read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(whole[: len(whole) - 200])
    # a 64×64 CR whose PixelData (OW, 8192 bytes: deferred by the reader) declares 4294967280 bytes: pydicom 2.4's
    # path of `dicom_compat.stored_element` must see the declared length without reading the value
    radiograph(tmp_path / "big.dcm", np.zeros((64, 64), np.uint16))
    element = b"\xe0\x7f\x10\x00OW\x00\x00"
    big = (tmp_path / "big.dcm").read_bytes()
    assert big.count(element + (8192).to_bytes(4, "little")) == 1
    (tmp_path / "declares_4gib.dcm").write_bytes(
        big.replace(element + (8192).to_bytes(4, "little"), element + (0xFFFFFFF0).to_bytes(4, "little")))

    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], env=child_python, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["pydicom"].startswith("2.4"), report["pydicom"]

    ct = read_ct(tmp_path / "ct")
    np.testing.assert_array_equal(np.load(tmp_path / "ct.npy"), ct.array)
    np.testing.assert_allclose(report["ct_affine"], ct.lps_from_ijk, atol=1e-9)
    for name in ("cr.dcm", "film.dcm"):
        np.testing.assert_allclose(np.load(tmp_path / (name + ".npy")), read_radiograph(tmp_path / name).array,
                                   atol=1e-6, err_msg=name)
    with pytest.raises(XWinInputError) as mine:
        read_radiograph(tmp_path / "truncated.dcm")
    assert report["truncated"] == str(mine.value)
    with pytest.raises(XWinInputError, match="declares 4294967280 bytes") as mine:
        read_radiograph(tmp_path / "declares_4gib.dcm")
    assert report["declares_4gib"] == str(mine.value)

    written = read_ct(tmp_path / "written")  # pydicom 2.4's series, read here with pydicom 3
    np.testing.assert_allclose(written.array, ct.array, atol=0.5)  # HU stored as integers
    np.testing.assert_allclose(written.lps_from_ijk, ct.lps_from_ijk, atol=1e-3)
