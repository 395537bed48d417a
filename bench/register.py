"""2D/3D registration benchmark (issue 17): recover random C-arm poses of the whole-thorax CTs of ../shared/data/ct.

    .venv/bin/python bench/register.py [--cases N] [--targets K] [--diffdrr-cases M] [--diffdrr-iters 200]
                                       [--out docs/benchmarks.md]

Per CT of cases.csv (splits train and eval; 'other' skipped), K targets: DRRs (radiograph map, 128² detector of
3.4 mm, SID 1600 / SDD 1800 mm) at poses drawn around the start (LAO 0, CRAN 0, roll 0, isocenter = CT grid
centre): LAO and CRAN uniform within ±10°, roll ±5°, isocenter ±20 mm per LPS axis. `xwin.register.register` starts
from the start pose. Success: rotation error < 1° (geodesic) and isocenter error < 2 mm.

DiffDRR (PyPI diffdrr, its documented `Registration` + `MultiscaleNormalizedCrossCorrelation2d` + Adam loop, Siddon
renderer, same detector, SDD and SID, AP orientation) gets the same offsets drawn in its own frame (Euler ZXY:
the rotation offsets as its angles, the translation offsets in mm), its target rendered by itself, the same error
measures (geodesic rotation, distance between the points SID along the central ray); run on the first M CTs only
(it is slow on a CPU). Replaces the section between `<!-- register-bench:start -->` and `<!-- register-bench:end -->`.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import math
import re
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "XWinCore"))

from xwin.drr import Projector  # noqa: E402
from xwin.geometry import Geometry  # noqa: E402
from xwin.io import read_ct  # noqa: E402
from xwin.register import Pose, Settings, register, rotation_error_deg, translation_error_mm  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "ct"
GEO = Geometry(sid=1600.0, sdd=1800.0, height=128, width=128, pixel=3.4)


def draw_offsets(rng: np.random.Generator) -> np.ndarray:
    """(lao, cran, roll) degrees and (x, y, z) mm offsets from the start."""
    return np.concatenate([rng.uniform(-10, 10, 2), rng.uniform(-5, 5, 1), rng.uniform(-20, 20, 3)])


def run_xwin(path: Path, offsets: list[np.ndarray]) -> list[dict]:
    volume = read_ct(path)
    projector = Projector(volume, GEO)
    start = Pose(0.0, 0.0, 0.0, tuple(projector.isocenter))
    rows = []
    for off in offsets:
        truth = Pose(float(off[0]), float(off[1]), float(off[2]), tuple(projector.isocenter + off[3:]))
        with torch.no_grad():
            image = Projector(volume, GEO, isocenter=truth.isocenter).render(
                pose=truth.matrix(), mode="radiograph")[0].numpy()
        res = register(projector, image, GEO, start, settings=Settings())
        rows.append({"ct": path.name, "rot": rotation_error_deg(res.pose, truth),
                     "trans": translation_error_mm(res.pose, truth), "seconds": res.seconds, "status": res.status,
                     "evaluations": res.evaluations})
        print(f"xwin    {path.name:45s} rot {rows[-1]['rot']:.3f} deg trans {rows[-1]['trans']:.2f} mm "
              f"{res.seconds:.1f} s {res.status}", flush=True)
    return rows


def run_diffdrr(path: Path, offsets: list[np.ndarray], iters: int) -> list[dict]:
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from diffdrr.metrics import MultiscaleNormalizedCrossCorrelation2d
    from diffdrr.pose import convert
    from diffdrr.registration import Registration

    subject = read(str(path), orientation="AP")
    drr = DRR(subject, sdd=GEO.sdd, height=GEO.height, delx=GEO.pixel)
    start_rot = torch.zeros(1, 3)
    start_trans = torch.tensor([[0.0, GEO.sid, 0.0]])
    criterion = MultiscaleNormalizedCrossCorrelation2d([None, 9], [0.5, 0.5])

    def centre_and_rotation(pose):
        full = drr.detector.reorient.compose(pose)
        iso = full(torch.tensor([[[0.0, 0.0, GEO.sid]]]))[0, 0]
        return iso.detach().numpy().astype(np.float64), full.matrix[0, :3, :3].detach().numpy().astype(np.float64)

    rows = []
    for off in offsets:
        rot = start_rot + torch.tensor([[math.radians(off[0]), math.radians(off[1]), math.radians(off[2])]])
        trans = start_trans + torch.tensor([off[3:]], dtype=torch.float32)
        true_pose = convert(rot, trans, parameterization="euler_angles", convention="ZXY")
        with torch.no_grad():
            target = drr(true_pose)
        reg = Registration(drr, start_rot.clone(), start_trans.clone(), parameterization="euler_angles",
                           convention="ZXY")
        optimizer = torch.optim.Adam([{"params": [reg._rotation], "lr": 1e-2},
                                      {"params": [reg._translation], "lr": 1e0}])
        t0 = time.perf_counter()
        for _ in range(iters):
            optimizer.zero_grad()
            loss = -criterion(reg(), target).mean()
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - t0
        iso_e, r_e = centre_and_rotation(reg.pose)
        iso_t, r_t = centre_and_rotation(true_pose)
        angle = math.degrees(math.acos(np.clip((np.trace(r_e.T @ r_t) - 1) / 2, -1, 1)))
        rows.append({"ct": path.name, "rot": angle, "trans": float(np.linalg.norm(iso_e - iso_t)), "seconds": seconds,
                     "status": "-", "evaluations": iters})
        print(f"diffdrr {path.name:45s} rot {angle:.3f} deg trans {rows[-1]['trans']:.2f} mm {seconds:.1f} s",
              flush=True)
    return rows


def summary(name: str, rows: list[dict]) -> str:
    if not rows:
        return f"| {name} | 0 | – | – | – | – | – |"
    ok = [r["rot"] < 1.0 and r["trans"] < 2.0 for r in rows]
    conv = sum(r["status"] == "converged" for r in rows)
    return (f"| {name} | {len(rows)} | {100 * np.mean(ok):.0f} % | {np.median([r['rot'] for r in rows]):.3f}° | "
            f"{np.median([r['trans'] for r in rows]):.2f} mm | {np.median([r['seconds'] for r in rows]):.1f} s | "
            + (f"{conv}/{len(rows)} |" if name.startswith("XWin") else "n/a |"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=12, help="CTs to use, in cases.csv order (default all 12)")
    ap.add_argument("--targets", type=int, default=1, help="random targets per CT (default 1)")
    ap.add_argument("--diffdrr-cases", type=int, default=2, help="CTs DiffDRR is run on (default 2; 0: none)")
    ap.add_argument("--diffdrr-iters", type=int, default=200, help="Adam iterations for DiffDRR (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks.md")
    ns = ap.parse_args()
    with open(DATA / "cases.csv") as f:
        cases = [DATA / r["file"] for r in csv.DictReader(f) if r["split"] in ("train", "eval")][:ns.cases]
    rng = np.random.default_rng(ns.seed)
    offsets = {p: [draw_offsets(rng) for _ in range(ns.targets)] for p in cases}
    mine, theirs = [], []
    diffdrr_note = ""
    if ns.diffdrr_cases:
        try:  # every module run_diffdrr needs, before the long XWin part (diffdrr.data needs pandas)
            for module in ("data", "drr", "metrics", "pose", "registration"):
                importlib.import_module(f"diffdrr.{module}")
        except ImportError as e:
            diffdrr_note = f"DiffDRR not installed ({e}): no comparison."
            print(diffdrr_note, flush=True)
    t0 = time.perf_counter()
    for p in cases:
        mine += run_xwin(p, offsets[p])
    try:
        for p in cases[:ns.diffdrr_cases] if not diffdrr_note else []:
            theirs += run_diffdrr(p, offsets[p], ns.diffdrr_iters)
    except Exception as e:  # report, do not lose the XWin rows
        diffdrr_note = f"DiffDRR run failed after {len(theirs)} target(s): {type(e).__name__}: {e}"
    same = [r for r in mine if r["ct"] in {t["ct"] for t in theirs}]
    command = (f".venv/bin/python bench/register.py --cases {ns.cases} --targets {ns.targets} "
               f"--diffdrr-cases {ns.diffdrr_cases} --diffdrr-iters {ns.diffdrr_iters}")
    lines = [
        "## 2D/3D registration (issue 17)",
        "",
        f"`{command}` — {len(cases)} whole-thorax CTs of ../shared/data/ct (train + eval), {ns.targets} random "
        "target(s) each: LAO/CRAN ±10°, roll ±5°, isocenter ±20 mm per axis around the start; 128² detector of "
        "3.4 mm; success = rotation error < 1° and isocenter error < 2 mm. Total wall time "
        f"{time.perf_counter() - t0:.0f} s on this 2-core CPU with {torch.get_num_threads()} torch / "
        f"{numba.get_num_threads()} numba thread(s) for both methods (shared with other jobs: times are upper "
        "bounds; the ratio compares targets run one after the other under the same load).",
        "",
        "| method | targets | success | median rotation error | median translation error | median time | "
        "status 'converged' |",
        "|---|---|---|---|---|---|---|",
        summary("XWin (all CTs)", mine),
        summary("XWin (DiffDRR's CTs)", same),
        summary(f"DiffDRR 0.6.1, Adam {ns.diffdrr_iters} it.", theirs),
    ]
    if theirs and same:
        pairs = [t["seconds"] / m["seconds"] for t, m in zip(theirs, same)]  # the same targets, in the same order
        lines += ["", f"DiffDRR's time over XWin's on the same targets: median {np.median(pairs):.1f}× "
                      f"(range {min(pairs):.1f}–{max(pairs):.1f}×)."]
    if diffdrr_note:
        lines += ["", diffdrr_note]
    lines += ["", "Every XWin target (a miss that reports 'converged' is a silent failure):", "",
              "| CT | rotation error | isocenter error | time | evaluations | status |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['ct']} | {r['rot']:.3f}° | {r['trans']:.2f} mm | {r['seconds']:.1f} s | {r['evaluations']} | "
              f"{r['status']} |" for r in mine]
    text = "\n".join(lines)
    print(text)
    old = ns.out.read_text() if ns.out.is_file() else "# XWin benchmarks\n"
    start, end = "<!-- register-bench:start -->", "<!-- register-bench:end -->"
    block = f"{start}\n{text}\n{end}"
    ns.out.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda m: block, old, flags=re.S)
                      if start in old else old.rstrip() + "\n\n" + block + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
