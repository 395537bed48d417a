"""`xwin` command line: thin front end over the library (every command calls the same functions as Slicer)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import XWinInputError

IMAGE_EXTENSIONS = (".nrrd", ".mha", ".nii", ".nii.gz", ".png")


def _geometry_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("geometry (mm; see docs/geometry.md)")
    g.add_argument("--sid", type=float, default=1600.0, help="source → isocenter distance in mm (default 1600)")
    g.add_argument("--sdd", type=float, default=1800.0, help="source → detector distance in mm (default 1800)")
    g.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                   help="detector rows and columns (default 256 256)")
    g.add_argument("--pixel", type=float, default=1.7, help="detector pixel size in mm (default 1.7)")
    g.add_argument("--isocenter", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="isocenter in patient LPS mm (default: centre of the CT grid)")


def _geometry(ns: argparse.Namespace):
    from .geometry import Geometry
    return Geometry(sid=ns.sid, sdd=ns.sdd, height=ns.size[0], width=ns.size[1], pixel=ns.pixel)


def _has_image_extension(path: Path) -> bool:
    return any(path.name.lower().endswith(ext) for ext in IMAGE_EXTENSIONS)


def cmd_render(ns: argparse.Namespace) -> int:
    """Render DRRs of one CT at paired (LAO, CRAN) poses; one file, or one file per pose in a folder."""
    from tqdm import tqdm

    from .drr import Projector
    from .geometry import parse_angles
    from .io import read_ct, write_image

    lao, cran = parse_angles(ns.lao, ns.cran)
    out = Path(ns.out)
    single = lao.size == 1 and _has_image_extension(out)
    if not single and _has_image_extension(out):
        raise XWinInputError(out, f"{lao.size} poses need a folder for --out, not a single image file")
    geometry = _geometry(ns)
    projector = Projector(read_ct(ns.ct), geometry, isocenter=ns.isocenter, mu_water=ns.mu_water,
                          device=ns.device)
    targets = [out] if single else [out / f"drr_lao{a:+07.2f}_cran{c:+07.2f}.{ns.ext}" for a, c in zip(lao, cran)]
    if not single:
        out.mkdir(parents=True, exist_ok=True)
    poses = list(zip(lao, cran, targets))
    for a, c, target in tqdm(poses, desc="render", unit="DRR", disable=len(poses) < 2 or ns.quiet):
        image = projector.render(float(a), float(c), mode=ns.mode)[0].cpu().numpy()
        meta = {"xwin_lao_deg": a, "xwin_cran_deg": c, "xwin_sid_mm": geometry.sid, "xwin_sdd_mm": geometry.sdd,
                "xwin_mode": ns.mode, "xwin_isocenter_lps_mm": " ".join(f"{x:.3f}" for x in projector.isocenter)}
        write_image(image, target, spacing=(geometry.pixel, geometry.pixel), meta=meta)
    if not ns.quiet:
        print(targets[0] if single else f"{len(targets)} DRRs in {out}")
    return 0


def cmd_info(ns: argparse.Namespace) -> int:
    """Print what XWin reads from a CT or CXR."""
    from .io import describe, format_description
    print(format_description(describe(ns.file)))
    return 0


def cmd_demo(ns: argparse.Namespace) -> int:
    """Angle sweep of the embedded CT: a PNG contact sheet and an animated GIF."""
    from .demo import run_demo
    sheet, gif = run_demo(Path(ns.out), step=ns.step, quiet=ns.quiet)
    print(f"contact sheet: {sheet}\nanimation:     {gif}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xwin", description="XWin: chest-radiograph world models. "
                                     "Units: mm, degrees, HU; patient frame LPS (docs/geometry.md).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("render", help="DRRs of a CT at one or more C-arm poses",
                       description="Render DRRs of CT at paired --lao/--cran angles (degrees; RAO and CAUD negative).")
    p.add_argument("ct", help="CT: DICOM series folder, .nii/.nii.gz, .nrrd, .mha")
    p.add_argument("--lao", type=float, nargs="+", required=True, metavar="DEG",
                   help="LAO angle(s) in degrees (negative = RAO); paired in order with --cran")
    p.add_argument("--cran", type=float, nargs="+", required=True, metavar="DEG",
                   help="CRAN angle(s) in degrees (negative = CAUD)")
    _geometry_args(p)
    p.add_argument("--mode", choices=("line", "intensity", "radiograph"), default="radiograph",
                   help="line: ∫μ dl (dimensionless); intensity: exp(−line); radiograph: display image in [0, 1] "
                        "(default)")
    p.add_argument("--mu-water", type=float, default=0.0193, metavar="PER_MM",
                   help="attenuation of water per mm (default 0.0193)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--ext", default="nrrd", choices=("nrrd", "mha", "nii.gz", "png"),
                   help="file type written into a folder --out (default nrrd)")
    p.add_argument("--out", required=True, help="image file (.nrrd .mha .nii .nii.gz .png) for one pose, or a folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("info", help="what XWin reads from a CT or CXR file/folder")
    p.add_argument("file", help="CT (DICOM folder, NIfTI, NRRD, MHA) or CXR (DICOM, PNG, JPEG)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="angle sweep of the embedded chest CT (contact sheet PNG + GIF)")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--step", type=float, default=15.0, help="LAO step in degrees over −90…90 (default 15)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input ends in one readable line on stderr and exit status 2 (no traceback)."""
    ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except XWinInputError as exc:
        print(f"xwin {ns.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"xwin {ns.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xwin {ns.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
