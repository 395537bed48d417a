#!/usr/bin/env python
"""Command-line start-up benchmark (issue 15): `xwin render` of one DRR, as a user runs it, against Debian's
`plastimatch drr` (the engine behind SlicerRT's DRR module) and itk-rtk's `rtkforwardprojections` when the installed
itk-rtk wheel ships that application; and `xwin <command> --help` for every command.

Every run is a cold process (a new interpreter, nothing kept between runs but the OS file cache and numba's on-disk
kernel cache, both warmed by one untimed run of each tool first). Runs are interleaved round by round (xwin,
plastimatch, xwin, …) so a slow spell of a shared machine hits all tools alike; each row gives the median over N runs
with a distribution-free 95 % interval of the median (order statistics), and the xwin ÷ plastimatch row the median
and interval of the per-round ratio.

Workload: the LIDC-IDRI-0001 chest CT resampled linearly to 256³ over its edge-to-edge extent (as bench/drr.py, on an
identity-direction grid), stored as an uncompressed int16 NRRD that both tools read; one 256 × 256 DRR of 1.7 mm
pixels, SID 1600 mm, SDD 1800 mm, isocenter at the CT centre, PA view (xwin `--lao 0 --cran 0`; plastimatch
`--nrm "0 1 0" --vup "0 0 1"`: its normal points from the isocenter to the source, and its detector columns run
towards the patient's right, ours towards the left). The two images are compared (Pearson r, plastimatch's mirrored)
to show it is the same view.

    python bench/cli.py [--out docs/benchmarks.md] [--runs N] [--help-runs N] [--ct CT]
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
CT_PATH = REPO.parent / "shared" / "data" / "ct" / "lidc_idri_0001_ct.nii.gz"
START, END = "<!-- cli-bench:start -->", "<!-- cli-bench:end -->"
CUBE, SIZE, PIXEL, SID, SDD = 256, 256, 1.7, 1600.0, 1800.0
HELP_LIMIT_S, RENDER_RATIO_GOAL = 0.5, 3.0


def tool(name: str) -> str | None:
    """An executable of this Python's environment first (the venv's `xwin`), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else shutil.which(name)


def cube_ct(src: Path, dst: Path, n: int = CUBE) -> sitk.Image:
    """``src`` resampled linearly to n³ voxels over its physical bounding box (edge to edge, air −1000 HU) on an
    identity-direction grid, written as an int16 NRRD: plastimatch 1.9 places a volume by origin and spacing alone
    (it ignores the direction cosines, e.g. LIDC's flipped y axis), so an identity grid is the one both tools read
    the same way."""
    image = sitk.ReadImage(str(src), sitk.sitkFloat32)
    size = np.array(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(list(c * size - 0.5))
                        for c in np.array(np.meshgrid([0, 1], [0, 1], [0, 1])).reshape(3, -1).T])
    lo, hi = corners.min(0), corners.max(0)
    new_spacing = (hi - lo) / n
    out = sitk.Resample(image, [n] * 3, sitk.Transform(), sitk.sitkLinear, tuple(lo + new_spacing / 2),
                        tuple(new_spacing), tuple(np.eye(3).ravel()), -1000.0, sitk.sitkInt16)
    sitk.WriteImage(out, str(dst), False)
    return out


def centre(image: sitk.Image) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()]))


def run_once(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return wall


def median_interval(x, level: float = 0.95) -> tuple[float, float, float]:
    """Median and the distribution-free interval [x_(j), x_(k)] of the median covering ≥ ``level`` (binomial order
    statistics); the whole range when there are too few runs for that level."""
    x = np.sort(np.asarray(x, float))
    n = len(x)
    cdf = np.cumsum([math.comb(n, i) / 2 ** n for i in range(n + 1)])  # P(B ≤ i), B ~ Bin(n, 1/2)
    j = 0
    while j + 1 < n and 1 - 2 * cdf[j] >= level:  # P(x_(j+1) ≤ median ≤ x_(n−j)) = 1 − 2·P(B ≤ j)
        j += 1
    return float(np.median(x)), float(x[j]), float(x[n - 1 - j])


def fmt(stat: tuple[float, float, float], scale: float = 1.0, digits: int = 2) -> str:
    m, lo, hi = (v * scale for v in stat)
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def help_commands() -> list[list[str]]:
    """Every command and sub-command of `xwin` (walked from its argparse parser), the bare `xwin` first."""
    import argparse as ap

    from xwin.cli import build_parser

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, ap._SubParsersAction):
                for name, sub in action.choices.items():
                    yield [*prefix, name]
                    yield from walk(sub, [*prefix, name])

    return [[], *walk(build_parser(), [])]


def rtk_app() -> tuple[str | None, str]:
    """`rtkforwardprojections` if installed, and a note on what the itk-rtk wheel provides otherwise."""
    path = tool("rtkforwardprojections")
    if path:
        return path, ""
    try:
        dist = metadata.distribution("itk-rtk")
    except metadata.PackageNotFoundError:
        return None, "itk-rtk is not installed (`pip install -e 'XWinCore[bench]'`)"
    apps = sorted({ep.name for ep in dist.entry_points if ep.name.startswith("rtk")})
    return None, (f"itk-rtk {dist.version} ships no `rtkforwardprojections` application (its command-line tools: "
                  f"{', '.join(apps) or 'none'}); its Joseph projector is timed in-process by bench/drr.py")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path,
                    help="Markdown file whose cli-bench section is replaced (e.g. docs/benchmarks.md)")
    ap.add_argument("--runs", type=int, default=15, help="timed cold runs per tool (default 15)")
    ap.add_argument("--help-runs", type=int, default=7, help="timed cold runs per --help (default 7)")
    ap.add_argument("--ct", type=Path, default=CT_PATH, help="CT to resample to 256³ (default: LIDC-IDRI-0001)")
    args = ap.parse_args(argv)

    xwin, plm = tool("xwin"), tool("plastimatch")
    if xwin is None:
        sys.exit("bench/cli.py: no `xwin` executable (make install)")
    ct_src = args.ct
    if not ct_src.is_file():
        from xwin.sample_data import demo_ct_path
        ct_src = demo_ct_path()
        print(f"{args.ct} missing: using the packaged demo CT {ct_src.name}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="xwin-cli-bench-") as tmp:
        work = Path(tmp)
        ct_path = work / "ct256.nrrd"
        image = cube_ct(ct_src, ct_path)
        iso = centre(image)
        xwin_cmd = [xwin, "render", str(ct_path), "--lao", "0", "--cran", "0", "--out", str(work / "x.nrrd")]
        cmds = {"xwin render": xwin_cmd}
        if plm:
            cmds["plastimatch drr"] = [plm, "drr", "-t", "raw", "--sad", f"{SID:g}", "--sid", f"{SDD:g}",
                                       "-r", f"{SIZE} {SIZE}", "-z", f"{SIZE * PIXEL:g} {SIZE * PIXEL:g}",
                                       "-o", " ".join(f"{c:.4f}" for c in iso), "-n", "0 1 0", "--vup", "0 0 1",
                                       "-O", str(work / "plm_"), str(ct_path)]
        rtk, rtk_note = rtk_app()
        if rtk:
            rtk_note = f"`{rtk}` found but not wired into this benchmark yet: not timed"

        for cmd in cmds.values():  # untimed: OS file cache, numba's on-disk kernel cache
            run_once(cmd, work)
        times: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(args.runs):
            for name, cmd in cmds.items():
                times[name].append(run_once(cmd, work))

        r = None
        if plm:
            ours = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "x.nrrd")))
            theirs = np.fromfile(work / "plm_0000.raw", np.float32).reshape(SIZE, SIZE)[:, ::-1]  # columns: L → R
            r = float(np.corrcoef(-np.log1p(-np.clip(ours, 0, 1 - 1e-7)).ravel(), theirs.ravel())[0, 1])

        helps = []
        for argv_ in help_commands():
            cmd = [xwin, *argv_, "--help"]
            run_once(cmd, work)
            helps.append((" ".join(["xwin", *argv_, "--help"]), [run_once(cmd, work) for _ in range(args.help_runs)]))

    lines = render_section(args, ct_src, times, r, rtk_note, helps)
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_section(args.out, text)
    return 0


def render_section(args, ct_src: Path, times, r, rtk_note: str, helps) -> list[str]:
    libs = ", ".join(f"{p} {metadata.version(p)}" for p in ("numba", "numpy", "SimpleITK") if _has(p))
    plm_version = _plastimatch_version()
    x = times["xwin render"]
    lines = [
        "## Command line: start-up and one DRR (`bench/cli.py`)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, Python "
        f"{platform.python_version()}; {libs}; {plm_version}; load average (1 min) when the runs ended: "
        f"{os.getloadavg()[0]:.1f} (other work on the machine shows here and in the intervals).",
        "",
        f"Command: `python bench/cli.py --out docs/benchmarks.md --runs {args.runs} --help-runs {args.help_runs}` "
        f"({time.strftime('%Y-%m-%d')}).",
        "",
        f"Workload: {ct_src.name} resampled linearly to {CUBE}³ over the same extent (identity direction: "
        "plastimatch ignores direction cosines), an uncompressed int16 NRRD; "
        f"one {SIZE}×{SIZE} DRR of {PIXEL} mm pixels, SID {SID:g} mm, SDD {SDD:g} mm, isocenter at the CT centre, "
        "PA. Every run is a new process; one untimed run of each tool first (OS file cache, numba's kernel cache), "
        f"then {args.runs} rounds, tools interleaved. Seconds: median [95 % interval of the median].",
        "",
        "| command | wall time (s) | ÷ plastimatch |",
        "|---|---|---|",
        f"| `xwin render CT --lao 0 --cran 0 --out x.nrrd` | {fmt(median_interval(x))} | "
        + (fmt(median_interval(np.array(x) / np.array(times["plastimatch drr"])), digits=1)
           if "plastimatch drr" in times else "—") + " |",
    ]
    if "plastimatch drr" in times:
        plm = fmt(median_interval(times["plastimatch drr"]))
        lines.append(f"| `plastimatch drr` (same CT, geometry and detector) | {plm} | 1 |")
    lines += [f"| `rtkforwardprojections` | not run: {rtk_note} | — |", ""]
    if "plastimatch drr" in times:
        ratio = median_interval(np.array(x) / np.array(times["plastimatch drr"]))[0]
        verdict = "met" if ratio <= RENDER_RATIO_GOAL else "not met"
        lines += [f"Goal (issue 15): xwin within {RENDER_RATIO_GOAL:g}× plastimatch: {verdict} "
                  f"(median ratio of paired rounds {ratio:.1f}×). Same view: Pearson r = {r:.4f} between xwin's "
                  "line integrals (its radiograph inverted) and plastimatch's raw output, columns mirrored "
                  "(plastimatch's HU → μ map and units differ from ours, so values differ by a scale).", ""]
    worst = max(median_interval(t)[0] for _, t in helps)
    lines += [f"`--help`, every command ({len(helps)}; {args.help_runs} runs each, after one untimed): slowest median "
              f"{worst * 1000:.0f} ms, goal < {HELP_LIMIT_S * 1000:.0f} ms: "
              f"{'met' if worst < HELP_LIMIT_S else 'not met'}.",
              "",
              "| command | wall time (ms) |",
              "|---|---|"]
    lines += [f"| `{name}` | {fmt(median_interval(t), 1000, 0)} |" for name, t in helps]
    return lines


def _has(dist: str) -> bool:
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


def _plastimatch_version() -> str:
    plm = tool("plastimatch")
    if not plm:
        return "plastimatch not installed (`apt-get install plastimatch`): not timed"
    out = subprocess.run([plm, "--version"], capture_output=True, text=True).stdout.strip()
    return f"plastimatch {out.split()[-1] if out else '?'}"


def write_section(path: Path, section: str) -> None:
    block = f"{START}\n{section}\n{END}"
    text = path.read_text() if path.exists() else "# XWin benchmarks\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
