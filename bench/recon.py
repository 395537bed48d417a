"""Reconstruction benchmark: XWin FDK / OS-SART / CGLS against itk-rtk on a real chest CT.

Default (the lead's run): FDK of a 128³ grid from 180 projections of 256 × 256 pixels over 360° of the LIDC CT
(`../shared/data/ct/lidc_idri_0001_ct.nii.gz`), timings and PSNR/SSIM of XWin vs RTK's FDKConeBeamReconstructionFilter
on the same geometry, and SART / CG per-iteration times vs RTK's SARTConeBeamReconstructionFilter and
ConjugateGradientConeBeamReconstructionFilter. `--quick`: 32³, 24 views, 64² (a smoke test, seconds).
`--write-docs` replaces the section between `<!-- recon-bench:start -->` and `<!-- recon-bench:end -->` in
docs/benchmarks.md.

Geometry hand-over to RTK: `ThreeDCircularProjectionGeometry.AddProjection(source, detector_position, row_vector,
column_vector)` with our source, pixel (0, 0) centre ``corner``, ``u`` and ``v``, and projection images of origin
(0, 0, 0) and spacing (p, p, 1), so that RTK's pixel (c, r) lies at corner + c·p·u + r·p·v exactly as ours.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "XWinCore"))

from xwin.drr import Projector  # noqa: E402
from xwin.geometry import Geometry  # noqa: E402
from xwin.recon import cgls, compare, coverage, default_grid, fdk, orbit_angles, sart, to_volume  # noqa: E402
from xwin.io import read_ct  # noqa: E402

MU = 0.0193


def timed(fn, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return out, best


# RTK's circular geometry (and its FDK weighting) rotates about its world y axis; our LAO orbit rotates about the
# patient's z axis. Handing RTK every point and vector in the frame Q·LPS (Q = Rx(−90°): z → y) and the output grid
# with direction Q makes the orbit circular for RTK without changing a single ray.
Q = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def rtk_setup(proj: np.ndarray, views, grid, pixel):
    import itk
    from itk import RTK as rtk
    geometry = rtk.ThreeDCircularProjectionGeometry.New()
    for s, c, du, dv in zip(*(t.double().cpu().numpy() for t in views[:4])):
        ok = geometry.AddProjection([float(x) for x in Q @ s], [float(x) for x in Q @ c],
                                    [float(x) for x in Q @ du / pixel], [float(x) for x in Q @ dv / pixel])
        if ok is False:
            raise RuntimeError("RTK refused a projection geometry")
    image_type = itk.Image[itk.F, 3]
    stack = itk.image_from_array(np.ascontiguousarray(proj.astype(np.float32)))
    stack.SetSpacing([pixel, pixel, 1.0])
    stack.SetOrigin([0.0, 0.0, 0.0])
    source = rtk.ConstantImageSource[image_type].New()
    source.SetOrigin([float(x) for x in Q @ np.asarray(grid.origin)])
    source.SetSpacing([float(x) for x in grid.spacing])
    source.SetDirection(itk.matrix_from_array(Q @ np.asarray(grid.direction)))
    source.SetSize([int(n) for n in grid.shape_ijk])
    source.SetConstant(0.0)
    return itk, rtk, image_type, geometry, stack, source


def rtk_run(kind, proj, views, grid, pixel, iters=1):
    itk, rtk, image_type, geometry, stack, source = rtk_setup(proj, views, grid, pixel)
    if kind == "fdk":
        f = rtk.FDKConeBeamReconstructionFilter[image_type].New()
        f.GetRampFilter().SetHannCutFrequency(0.5)  # Hann window up to Nyquist, as XWin's "hann"
    elif kind == "sart":
        f = rtk.SARTConeBeamReconstructionFilter[image_type, image_type].New()
        f.SetNumberOfIterations(iters)
        f.SetLambda(0.8)
    else:
        f = rtk.ConjugateGradientConeBeamReconstructionFilter[image_type].New()
        f.SetNumberOfIterations(iters)
    f.SetInput(0, source.GetOutput())
    f.SetInput(1, stack)
    f.SetGeometry(geometry)
    t = time.perf_counter()
    f.Update()
    seconds = time.perf_counter() - t
    return itk.array_from_image(f.GetOutput()).astype(np.float32), seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct", default=str(ROOT.parent / "shared/data/ct/lidc_idri_0001_ct.nii.gz"))
    ap.add_argument("--quick", action="store_true", help="32³, 24 views, 64² detector")
    ap.add_argument("--iters", type=int, default=3, help="iterations timed for SART / CG (default 3)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-rtk", action="store_true")
    ap.add_argument("--write-docs", action="store_true")
    ns = ap.parse_args(argv)
    n_vox, n_views, det = (32, 24, 64) if ns.quick else (128, 180, 256)
    geo = Geometry(height=det, width=det, pixel=1.7 * 256 / det)
    ct = read_ct(ns.ct)
    projector = Projector(ct, geo, device=ns.device)
    lao = orbit_angles(n_views, 360.0)
    views = projector.views(lao, np.zeros_like(lao))
    grid = default_grid(geo, projector.isocenter, size=n_vox)
    with torch.no_grad():
        proj, t_render = timed(lambda: projector.render(lao, np.zeros_like(lao)).float())
        views_dev = views.to(device=proj.device)
        seen = coverage(views_dev, grid, device=proj.device).cpu().numpy() >= n_views - 0.5
        score = lambda mu: compare(to_volume(grid, mu, MU), ct, mask=seen)  # noqa: E731
        fdk(proj, views_dev, grid)  # warm-up (numba compilation / CUDA init)
        mu, t_fdk = timed(lambda: fdk(proj, views_dev, grid, window="hann"), repeat=3)
        rows = {"xwin_fdk": {"seconds": t_fdk, **score(mu)}}
        for name, fn in (("xwin_sart", sart), ("xwin_cgls", cgls)):
            res, t = timed(lambda: fn(proj, views_dev, grid, iters=ns.iters))
            rows[name] = {"seconds_per_iter": t / ns.iters, **score(res.mu)}
    rtk_note = ""
    if not ns.no_rtk:
        try:
            import itk  # noqa: F401
            from itk import RTK  # noqa: F401
        except ImportError:
            rtk_note = "itk-rtk is not installed (pip install itk-rtk==2.7.0.post1): XWin only"
        else:
            p = proj.cpu().numpy()
            for kind in ("fdk", "sart", "cg"):
                try:
                    out, t = rtk_run(kind, p, views, grid, geo.pixel, 1 if kind == "fdk" else ns.iters)
                    key = "seconds" if kind == "fdk" else "seconds_per_iter"
                    rows[f"rtk_{kind}"] = {key: t if kind == "fdk" else t / ns.iters, **score(torch.from_numpy(out))}
                except Exception as exc:  # report, don't hide: the table says what failed
                    rows[f"rtk_{kind}"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    setup = {"ct": Path(ns.ct).name, "grid": n_vox, "views": n_views, "detector": det, "arc_deg": 360,
             "device": ns.device, "cpu_threads": torch.get_num_threads(), "render_seconds": t_render,
             "iters": ns.iters, "machine": platform.processor() or platform.machine(), "note": rtk_note}
    print(json.dumps({"setup": setup, "results": rows}, indent=2))
    if ns.write_docs:
        write_docs(setup, rows)
    return 0


def write_docs(setup, rows) -> None:
    lines = ["<!-- recon-bench:start -->", "## Reconstruction (bench/recon.py)", "",
             f"{setup['ct']}: {setup['grid']}³ grid from {setup['views']} × {setup['detector']}² projections over "
             f"360°, device {setup['device']} ({setup['cpu_threads']} CPU threads). PSNR/SSIM in the [−1000, 1000] HU "
             "window over the voxels every view sees (docs/reconstruction.md).", ""]
    if setup["note"]:
        lines += [f"_{setup['note']}_", ""]
    lines += ["| method | time | PSNR (dB) | SSIM | RMSE (HU) |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | |")
            continue
        t = f"{r['seconds']:.2f} s" if "seconds" in r else f"{r['seconds_per_iter']:.2f} s / iteration"
        lines.append(f"| {name} | {t} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['rmse_hu']:.1f} |")
    lines.append("<!-- recon-bench:end -->")
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.is_file() else "# Benchmarks\n"
    start, end = "<!-- recon-bench:start -->", "<!-- recon-bench:end -->"
    block = "\n".join(lines)
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
