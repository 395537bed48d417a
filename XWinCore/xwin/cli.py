"""`xwin` command line: thin front end over the library (every command calls the same functions as Slicer)."""
from __future__ import annotations

import argparse
import atexit
import errno
import functools
import gc
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .defaults import DETECTOR_PIXELS, MIN_ARC_DEG, PIXEL_MM, SDD_MM, SID_MM
from .errors import STOP_SIGNALS, Terminated, XWinInputError

IMAGE_EXTENSIONS = (".nrrd", ".mha", ".nii", ".nii.gz", ".png")
# names of files XWin reads or users expect but does not write: as --out they are refused, not taken for a folder
OTHER_FILE_EXTENSIONS = (".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jp2", ".dcm", ".dicom", ".nhdr",
                         ".mhd", ".hdr", ".img", ".raw", ".gz", ".npy", ".json")


def _check_memory(request: str, nbytes: float) -> None:
    """Refuse a request (an option) whose memory estimate exceeds the budget, before anything is allocated."""
    from .budget import check_request

    check_request(None, request, nbytes)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (a PSNR of identical images, a NaN score) as None: JSON has no Infinity
    or NaN, and ``json.dumps`` writes them anyway."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _dumps(value: Any, **kwargs: Any) -> str:
    """The JSON every ``--json`` prints: strict (non-finite numbers as null, campaign 10)."""

    return json.dumps(_finite(value), allow_nan=False, **kwargs)


MAX_THREADS = 4096  # NUMBA_NUM_THREADS: more than any one machine's cores (numba itself crashed at 99,999)


def _check_environment() -> None:
    """Settings of the environment that would otherwise end in a library's traceback: the command line writes image
    files only, so matplotlib draws with Agg whatever MPLBACKEND says (a name it does not know failed its import);
    NUMBA_NUM_THREADS must be a whole number of threads from 1 to `MAX_THREADS` (numba refuses anything else at
    import, and 99,999 threads died in a segmentation fault), and so must OMP_NUM_THREADS and MKL_NUM_THREADS (or a
    comma-separated list of them; PyTorch's OpenMP printed a line of its own and went on); MPLCONFIGDIR, where set,
    must be a writable folder (matplotlib printed two warnings and worked in a temporary one), and where it is not and
    matplotlib's default folder cannot be written (HOME read-only), it is a temporary folder."""
    os.environ["MPLBACKEND"] = "Agg"
    for name, lists in (("NUMBA_NUM_THREADS", False), ("OMP_NUM_THREADS", True), ("MKL_NUM_THREADS", True)):
        value = os.environ.get(name)
        if value is None:
            continue
        if not all(re.fullmatch(r"\s*[0-9]{1,9}\s*", n) and 0 < int(n) <= MAX_THREADS
                   for n in (value.split(",") if lists else [value])):
            form = " (or a comma-separated list of them)" if lists else ""
            shown = repr(value[:40]) if lists else repr(value)
            raise XWinInputError(None, f"{name} must be a whole number of threads from 1 to {MAX_THREADS}{form}, "
                                       f"got {shown} (unset it to use every core)")
    _check_numba_environment()
    config = os.environ.get("MPLCONFIGDIR")
    if config and not (os.path.isdir(config) and os.access(config, os.W_OK | os.X_OK)):
        raise XWinInputError(None, f"MPLCONFIGDIR {config!r} is not a writable folder (matplotlib keeps its "
                                   "settings and cache there): unset it or name a folder you can write")
    if not config and not _matplotlib_folder_usable():
        # campaign 12: an unwritable HOME made matplotlib print two lines of its own; it falls back to a temporary
        # folder anyway, so XWin gives it one quietly (removed at exit)
        os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="xwin-matplotlib-")
        atexit.register(shutil.rmtree, os.environ["MPLCONFIGDIR"], ignore_errors=True)


def _matplotlib_folder_usable() -> bool:
    """Whether matplotlib's default settings folder ($XDG_CONFIG_HOME or ~/.config, then matplotlib) exists or can be
    made, and is writable: matplotlib's own test at import (`matplotlib._get_config_or_cache_dir`)."""
    folder = os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "matplotlib")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def _check_numba_environment() -> None:
    """numba's settings that break XWin's projector (numba-compiled) with a traceback or a warning: NUMBA_DISABLE_JIT
    (the kernels would not exist), NUMBA_OPT other than 0–3 or max, NUMBA_THREADING_LAYER naming a layer numba does
    not know or cannot load here (tbb without the tbb package): the layer is loaded now, only when the variable is
    set."""
    if os.environ.get("NUMBA_DISABLE_JIT", "0").strip() not in ("", "0"):
        raise XWinInputError(None, "NUMBA_DISABLE_JIT is set: XWin's projector runs numba-compiled kernels; unset it")
    opt = os.environ.get("NUMBA_OPT")
    if opt is not None and opt.strip() not in ("0", "1", "2", "3", "max"):
        raise XWinInputError(None, f"NUMBA_OPT must be 0, 1, 2, 3 or max, got {opt!r} (unset it for numba's default)")
    layer = os.environ.get("NUMBA_THREADING_LAYER")
    if layer is not None:
        from numba.np.ufunc import parallel

        try:
            parallel._launch_threads()
        except (ValueError, RuntimeError, ImportError) as exc:
            why = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise XWinInputError(None, f"NUMBA_THREADING_LAYER={layer!r} cannot be used here ({why[:200]}); unset it "
                                       "for numba's default") from None


def _check_device(ns: argparse.Namespace) -> None:
    """Refuse a --device that is unknown or absent on this machine, before any work."""
    name = getattr(ns, "device", None)
    train = ns.command == "train"
    if name in (None, "cpu") or (train and name == "auto"):
        return
    if train and re.fullmatch(r"cuda:\d+", name):
        raise XWinInputError(None, f"--device {name}: xwin train picks each process's GPU itself (cuda:LOCAL_RANK "
                                   "under torchrun): use --device cuda, or CUDA_VISIBLE_DEVICES to choose GPUs")
    if not re.fullmatch(r"cuda" if train else r"cuda(:\d+)?|mps", name):
        raise XWinInputError(None, f"--device {name!r} is not a device: use cpu or cuda"
                                   + (" (or auto)" if train else ", cuda:N or mps"))
    import torch

    if name == "mps":
        if not torch.backends.mps.is_available():
            raise XWinInputError(None, "--device mps: no Apple GPU (MPS) is available here; use --device cpu")
        return
    count, index = torch.cuda.device_count(), int(name.partition(":")[2] or 0)
    if index >= count:
        raise XWinInputError(None, f"--device {name}: " + ("no CUDA GPU is available here (no driver or device)"
                                                           if count == 0 else f"this machine has {count} CUDA GPU(s)")
                             + "; use --device cpu")


def _path(value: str) -> str:
    """argparse type of every path argument: an empty one (an unset shell variable) is refused, where Python would
    read '' as the current folder."""
    if not value.strip():
        raise argparse.ArgumentTypeError(f"{value!r} is an empty path (give a file or folder)")
    return value


def _geometry_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("geometry (mm; see docs/geometry.md)")
    g.add_argument("--sid", type=float, default=SID_MM, help=f"source → isocenter distance in mm (default {SID_MM:g})")
    g.add_argument("--sdd", type=float, default=SDD_MM, help=f"source → detector distance in mm (default {SDD_MM:g})")
    g.add_argument("--size", type=int, nargs=2, default=DETECTOR_PIXELS, metavar=("H", "W"),
                   help="detector rows and columns (default %d %d)" % DETECTOR_PIXELS)
    g.add_argument("--pixel", type=float, default=PIXEL_MM, help=f"detector pixel size in mm (default {PIXEL_MM:g})")
    g.add_argument("--isocenter", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="isocenter in patient LPS mm (default: centre of the CT grid)")


def _angles(ns: argparse.Namespace):
    """--lao/--cran through `geometry.parse_angles`, its errors naming the flags."""
    from .geometry import parse_angles

    try:
        return parse_angles(ns.lao, ns.cran)
    except XWinInputError as e:
        raise XWinInputError(None, f"--lao/--cran: {e.problem}") from None


def _geometry(ns: argparse.Namespace):
    from .geometry import Geometry
    return Geometry(sid=ns.sid, sdd=ns.sdd, height=ns.size[0], width=ns.size[1], pixel=ns.pixel)


def _has_image_extension(path: Path) -> bool:
    return any(path.name.lower().endswith(ext) for ext in IMAGE_EXTENSIONS)


def _pose_targets(out: Path, lao, cran, prefix: str, ext: str) -> list[Path]:
    """One image file for one pose, else one file per pose in the folder ``out`` (checked here, created later)."""
    if _has_image_extension(out):
        if lao.size != 1:
            raise XWinInputError(out, f"{lao.size} poses need a folder for --out, not a single image file")
        return [out]
    if out.name.lower().endswith(OTHER_FILE_EXTENSIONS) and not out.is_dir():  # would have become a folder drr.jpg/
        raise XWinInputError(out, f"--out names a file type XWin does not write: give a "
                                  f"{', '.join(IMAGE_EXTENSIONS[:-1])} or {IMAGE_EXTENSIONS[-1]} file, or a folder")
    targets = [out / f"{prefix}_lao{a:+07.2f}_cran{c:+07.2f}.{ext}" for a, c in zip(lao, cran)]
    seen: dict[Path, int] = {}
    for n, target in enumerate(targets):  # names keep 0.01°: closer poses would overwrite each other's file
        first = seen.setdefault(target, n)
        if first != n:
            raise XWinInputError(None, f"--lao/--cran: poses {first + 1} and {n + 1} ({lao[first]:g}, {cran[first]:g}"
                                       f" and {lao[n]:g}, {cran[n]:g}) would both be written to {target.name}: "
                                       "file names keep 0.01°, give poses at least that far apart")
    return targets


def _staged_targets(publication, out: Path, targets: list[Path]) -> list[Path]:
    """Where to write ``targets`` inside a `publish_together` block: a new folder ``out`` is itself staged (so that
    a failed or terminated run leaves no folder and no file behind), an existing one gets each file staged."""
    if targets == [out] or out.is_dir():
        return targets
    base = publication.stage(out, folder=True, make_parents=True)
    return [base / t.name for t in targets]


def _check_pose_targets(out: Path, targets: list[Path], source: str) -> None:
    """Refuse an unusable --out before any work (a plain file given as the folder for several poses, the input
    ``source``...)."""
    from .io.writers import check_target
    if targets == [out]:
        check_target(out, inputs=(source,))
    else:
        check_target(out, folder=True, make_parents=True)


def cmd_render(ns: argparse.Namespace) -> int:
    """Render DRRs of one CT at paired (LAO, CRAN) poses; one file, or one file per pose in a folder."""
    from .io import read_ct, write_image
    from .io.writers import publish_together

    pose = None
    if ns.pose is not None:  # issue 17: angles, roll, isocenter and detector from an `xwin register` pose file
        from .register import read_pose

        if ns.lao is not None or ns.cran is not None or ns.isocenter is not None:
            raise XWinInputError(ns.pose, "--pose gives the angles and isocenter: drop --lao/--cran/--isocenter")
        pose, pose_geometry = read_pose(ns.pose)
        ns.lao, ns.cran, ns.isocenter = [(pose.lao + 180.0) % 360.0 - 180.0], [pose.cran], list(pose.isocenter)
        ns.size = (pose_geometry.height, pose_geometry.width)
        ns.sid, ns.sdd, ns.pixel = pose_geometry.sid, pose_geometry.sdd, pose_geometry.pixel
    elif ns.lao is None or ns.cran is None:
        raise XWinInputError(None, "give --lao and --cran (degrees), or --pose POSE.json")
    volume = read_ct(ns.ct)  # first: a bad CT is refused before torch is loaded (fast, small)
    from .budget import DRR_BYTES_PER_PIXEL

    _check_memory(f"--size {ns.size[0]} {ns.size[1]}", ns.size[0] * ns.size[1] * DRR_BYTES_PER_PIXEL)

    lao, cran = _angles(ns)
    out = Path(ns.out)
    targets = _pose_targets(out, lao, cran, "drr", ns.ext)
    single = targets == [out]
    _check_pose_targets(out, targets, ns.ct)
    geometry = _geometry(ns)
    if pose is not None:  # the pose's roll needs the full rotation (torch Projector; numba renders it on the CPU)
        from .drr import Projector

        projector = Projector(volume, geometry, isocenter=ns.isocenter, mu_water=ns.mu_water, device=ns.device)
        render = lambda a, c: projector.render(pose=pose.matrix(), mode=ns.mode)[0].cpu().numpy()  # noqa: E731
    elif ns.device == "cpu":  # numba without torch: the same DRRs, without a second of importing torch
        from .drr import CpuProjector

        projector = CpuProjector(volume, geometry, isocenter=ns.isocenter, mu_water=ns.mu_water)
        render = lambda a, c: projector.render(a, c, mode=ns.mode)[0]  # noqa: E731
    else:
        from .drr import Projector

        projector = Projector(volume, geometry, isocenter=ns.isocenter, mu_water=ns.mu_water, device=ns.device)
        render = lambda a, c: projector.render(a, c, mode=ns.mode)[0].cpu().numpy()  # noqa: E731
    with publish_together() as publication:  # all DRRs, or none (failure, Ctrl-C, SIGTERM)
        poses = list(zip(lao, cran, _staged_targets(publication, out, targets)))
        if len(poses) > 1 and not ns.quiet:  # a progress bar for several DRRs only: one needs no tqdm import
            from tqdm import tqdm

            poses = tqdm(poses, desc="render", unit="DRR")
        for a, c, target in poses:
            image = render(float(a), float(c))
            meta = {"xwin_lao_deg": a, "xwin_cran_deg": c, "xwin_sid_mm": geometry.sid, "xwin_sdd_mm": geometry.sdd,
                    "xwin_mode": ns.mode,
                    "xwin_isocenter_lps_mm": " ".join(f"{x:.3f}" for x in projector.isocenter)}
            if pose is not None:
                meta["xwin_roll_deg"] = pose.roll
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
    """Angle sweep of the embedded CT (PNG contact sheet, animated GIF) and the embedded model's predictions (PNG)."""
    from .demo import run_demo
    from .io.writers import publish_together

    if not 1.0 <= ns.step <= 180.0:  # NaN fails too; 1° is 181 DRRs and predictions (0.0001° was 1.8 million)
        raise XWinInputError(None, f"--step must be 1 to 180 degrees (got {ns.step:g})")
    out = Path(ns.out)
    with publish_together() as publication:  # the three files, or none
        base = out if out.is_dir() else publication.stage(out, folder=True, make_parents=True)
        sheet, gif, world = (out / p.name for p in run_demo(base, step=ns.step, quiet=ns.quiet))
    print(f"contact sheet: {sheet}\nanimation:     {gif}\nworld model:   {world}")
    return 0


def cmd_train(ns: argparse.Namespace) -> int:
    """Train or resume the world model (one process, or one per GPU under torchrun)."""
    from .budget import check_training
    from .config import load_config
    from .models.model_file import read_weights
    from .train import check_resumed_model, train, with_overrides

    if ns.resume and ns.init is not None:  # the resumed checkpoint's weights would silently win
        raise XWinInputError(None, "--init starts a new run from a model file, --resume continues the run's own "
                                   "checkpoint: give one of them")
    cfg = with_overrides(load_config(ns.config), ns.ct_dir, ns.cxr_dir, ns.init)
    if cfg.train.init is not None:
        read_weights(cfg.train.init)  # a bad model file is refused before the run folder is made
    run = Path(ns.out) if ns.out else Path("runs") / Path(ns.config).stem
    check_training(cfg, ns.config, run, step=_train_on_cpu(ns.device))  # before the run folder and the bank
    if ns.resume:
        check_resumed_model(cfg, run, ns.config)
    last = train(cfg, run, resume=ns.resume, progress=ns.progress, device=ns.device, stop_file=ns.stop_file)
    if ns.progress != "jsonl":
        print(f"checkpoint: {last}")
    return 0


def _train_on_cpu(device: str | None) -> bool:
    """Whether `xwin train --device` runs the step in host memory (auto: no CUDA GPU here)."""
    if device in (None, "auto"):
        import torch

        return not torch.cuda.is_available()
    return device == "cpu"


def cmd_export_model(ns: argparse.Namespace) -> int:
    """Export the inference part of a checkpoint (plus the bank's mean projections) to one file."""
    from .data import load_bank
    from .models.model_file import latest_checkpoint, load_checkpoint
    from .predict import export_model

    run = Path(ns.checkpoint)
    if run.is_file():  # campaign 12: worded as ".../copy.pt/state.json: Not a directory"
        raise XWinInputError(run, "is a file; export-model reads a training run folder or one of its checkpoint "
                                  "folders (a model file is already exported: copy it)")
    inside = Path(ns.out).resolve().parent
    if (inside / "state.json").is_file() or (run / "checkpoints").resolve() in (inside, *inside.parents):
        raise XWinInputError(ns.out, "--out lies inside a checkpoint folder: it would replace the training state that "
                                     "--resume reads (write the model file elsewhere)")
    if (inside / "manifest.json").is_file():
        raise XWinInputError(ns.out, "--out lies inside a DRR bank folder: it would replace the rendered training "
                                     "views (write the model file elsewhere)")
    if ns.mean_from:
        print(export_model(run, ns.out, mean_from=ns.mean_from))
        return 0
    if ns.bank:
        folder = Path(ns.bank)
        if not (folder / "manifest.json").is_file():
            raise XWinInputError(folder, "--bank: not a DRR bank (no manifest.json)")
    else:
        state = load_checkpoint(run)[2]
        folder = state["config"]["data"]["bank"] or (run if latest_checkpoint(run) else run.parent.parent) / "bank"
    bank = load_bank(folder) if (Path(folder) / "manifest.json").is_file() else None
    print(export_model(run, ns.out, bank=bank))
    return 0


def cmd_predict(ns: argparse.Namespace) -> int:
    """Decoded predicted projections of a CXR (taken as the PA view) at paired target poses."""
    from .io import read_radiograph, write_image
    from .io.writers import publish_together

    lao, cran = _angles(ns)
    out = Path(ns.out)
    targets = _pose_targets(out, lao, cran, "pred", ns.ext)
    single = targets == [out]
    _check_pose_targets(out, targets, ns.cxr)
    radiograph = read_radiograph(ns.cxr)  # first: a bad radiograph is refused before the model is loaded

    from .predict import load_predictor

    predictor = load_predictor(ns.checkpoint, device=ns.device)
    predictor.loaded.config.model.check_memory(lao.size, f"predicting {lao.size} poses at once")
    images = predictor.predict(radiograph.array, lao, cran, simulated=radiograph.simulated)
    with publish_together() as publication:  # all predictions, or none
        for image, a, c, target in zip(images, lao, cran, _staged_targets(publication, out, targets)):
            write_image(image, target, meta={"xwin_lao_deg": a, "xwin_cran_deg": c, "xwin_source": str(ns.cxr),
                                             "xwin_kind": "world-model prediction (learned estimate, not a DRR)"})
    print(targets[0] if single else f"{len(targets)} predicted projections in {out}")
    return 0


def _distinct(cts: list[str]) -> list[str]:
    """``cts``, refused when one file or folder is given twice (it would count twice in pooled scores)."""
    seen: dict[Path, str] = {}
    for ct in cts:
        key = Path(ct).resolve()
        if key in seen:
            raise XWinInputError(ct, f"is given twice (also as {seen[key]}): each CT counts once in the pooled scores")
        seen[key] = ct
    return cts


def cmd_eval_world(ns: argparse.Namespace) -> int:
    """View prediction on CTs never trained on, K jittered renderings each, against four baselines (a table, or one
    JSON object with --json)."""

    from .budget import eval_world_bytes
    from .data import split_cts
    from .eval.world import SCORE_SIZE, evaluate_world, format_table
    from .predict import load_model

    if ns.renderings < 1:
        raise XWinInputError(None, f"--renderings must be >= 1 (got {ns.renderings})")
    if not 0 <= ns.seed < 2**63:  # numpy takes no negative seed, torch none of 2^64 or more (tracebacks)
        raise XWinInputError(None, f"--seed must be 0 to 2^63 - 1 (got {ns.seed})")
    cts = _distinct(list(ns.ct) + ([str(p) for p in split_cts(ns.cases, ns.split)] if ns.cases else []))
    if not cts:
        raise XWinInputError(None, "give the CTs to evaluate: --ct CT (repeatable) or --cases CSV [--split eval]")
    loaded = load_model(ns.checkpoint, ns.device)
    versus = None if ns.versus is None else load_model(ns.versus, ns.device)
    _check_memory(f"--renderings {ns.renderings} (jittered renderings of {len(cts)} CT(s), kept per CT)",
                  eval_world_bytes(loaded.config.model, ns.renderings, len(cts), SCORE_SIZE)
                  + (0 if versus is None else versus.config.model.memory_bytes(13)))
    result = evaluate_world(loaded, cts, renderings=ns.renderings, seed=ns.seed, train_cts=ns.train_ct or None,
                            quiet=False, versus=versus)
    print(_dumps(result) if ns.json else format_table(result))
    return 0


def cmd_eval_domain(ns: argparse.Namespace) -> int:
    """Real-vs-simulated gap of a model: separability AUROC, embedding cosines, Δ = 0 identity PSNR/SSIM."""

    from .eval.domain import evaluate_domain
    from .io import read_ct
    from .predict import load_model

    if ns.views < 1 or ns.folds < 2:
        raise XWinInputError(None, f"--views must be >= 1 and --folds >= 2 (got {ns.views}, {ns.folds})")
    loaded = load_model(ns.checkpoint, ns.device)
    loaded.config.model.check_memory(ns.views * len(ns.ct), f"--views {ns.views} for {len(ns.ct)} CT(s)")
    names: dict[str, str] = {}
    for p in _distinct(ns.ct):  # the results are keyed by name: a second CT of the same name would replace the first
        name = Path(p).name.split(".")[0]
        if name in names:
            raise XWinInputError(p, f"has the name of another --ct ({names[name]}): the results are reported per CT "
                                    "name; rename one of them")
        names[name] = p
    volumes = {name: read_ct(p) for name, p in names.items()}
    result = evaluate_domain(loaded, ns.cxr, volumes, views=ns.views, folds=ns.folds)
    print(_dumps(result) if ns.json else _dumps(result, indent=2))
    return 0


def cmd_eval_probe(ns: argparse.Namespace) -> int:
    """Linear probe and k-shot fine-tuning AUROC per probe task (label decided within a source), patient-level folds
    and patient bootstrap, for the model, a random initialisation and any --ablation models."""

    import torch

    from .eval.probe import MAX_RESAMPLES, TASKS, ProbeTask, format_table, probe, read_rows, task_set
    from .models import create_model
    from .predict import load_model

    if ns.folds < 2 or any(k < 0 for k in ns.shots) or not 1 <= ns.resamples <= MAX_RESAMPLES:
        raise XWinInputError(None, f"--folds must be >= 2, --shots >= 0 and --resamples 1 to {MAX_RESAMPLES} "
                                   f"(got {ns.folds}, {ns.shots}, {ns.resamples})")
    unknown = [t for t in ns.task if t not in TASKS]
    if unknown:
        raise XWinInputError(None, f"--task {unknown[0]!r}: unknown probe task (built-in: {', '.join(TASKS)})")
    for option, items, form in (("--where", ns.where, "COLUMN=VALUE"), ("--ablation", ns.ablation, "NAME=PATH")):
        bad = [item for item in items if "=" not in item or not item.split("=", 1)[0].strip()]
        if bad:
            raise XWinInputError(None, f"{option} {bad[0]!r}: expected {form}")
        names = [item.split("=", 1)[0] for item in items]
        taken = [n for k, n in enumerate(names) if n in names[:k] or (option == "--ablation"
                                                                       and n in ("model", "random_init"))]
        if taken:  # a second one would silently replace the first
            raise XWinInputError(None, f"{option} {taken[0]!r} is given twice" + (
                " (model and random_init are the probe's own rows)" if option == "--ablation" else ""))
    tasks = [TASKS[t] for t in dict.fromkeys(ns.task)]
    if ns.positive is not None:
        tasks.append(ProbeTask("custom", tuple(ns.source), ns.column, ns.positive, ns.negative,
                               f"{ns.column} matching {ns.positive}"))
    elif ns.source or ns.negative is not None:
        raise XWinInputError(None, "--source, --negative and --column define a custom task: give --positive too")
    if not tasks:
        tasks = list(TASKS.values())
    where = dict(item.split("=", 1) for item in ns.where)
    rows = read_rows(ns.labels, where)
    if where and not rows:
        shown = " ".join(f"--where {k}={v!r}" for k, v in where.items())
        raise XWinInputError(ns.labels, f"{shown} keeps no row of the labels CSV")
    sets = [task_set(rows, t, ns.images, ns.labels) for t in tasks]
    loaded = load_model(ns.checkpoint)
    torch.manual_seed(0)
    encoders = {"model": loaded.model.context_encoder,
                "random_init": create_model(loaded.config).context_encoder}
    seen = {"model": loaded.config.data.cxr, "random_init": ()}
    for item in ns.ablation:
        name, path = item.split("=", 1)
        other = load_model(path)
        encoders[name], seen[name] = other.model.context_encoder, other.config.data.cxr
    result = probe(encoders, sets, loaded.config.model.img_size, ns.folds, tuple(ns.shots), seen=seen,
                   resamples=ns.resamples)
    print(_dumps(result) if ns.json else format_table(result))
    return 0


def cmd_viewer(ns: argparse.Namespace) -> int:
    """The XWinSlicer panel as a standalone window (needs PySide6, Qt.py and a display). The files it is given are
    read first, and a missing display is refused, before Qt starts (Qt aborts the process without a display)."""
    from .io import read_ct, read_radiograph

    if ns.ct:
        read_ct(ns.ct)
    if ns.cxr:
        read_radiograph(ns.cxr)
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                                 or os.environ.get("QT_QPA_PLATFORM")):
        raise XWinInputError(None, "the viewer needs a display: DISPLAY and WAYLAND_DISPLAY are unset "
                                   "(QT_QPA_PLATFORM=offscreen runs it without one)")
    try:
        from .viewer.app import main as viewer_main
    except ImportError as exc:
        raise XWinInputError(None, f"the viewer needs PySide6, Qt.py and VTK ({exc}); "
                                   "pip install PySide6 Qt.py vtk") from None
    return viewer_main(ct=ns.ct, cxr=ns.cxr, demo=ns.demo)


def cmd_register(ns: argparse.Namespace) -> int:
    """2D/3D registration (issue 17): the C-arm pose at which the CT's DRR matches IMAGE; exit 3 when it failed."""
    from .io.writers import check_target

    check_target(Path(ns.out), inputs=(ns.ct, ns.image))  # an unusable --out is refused before the work
    from .register import Settings, register_files, write_pose

    settings = Settings(time_limit_s=ns.time_limit, metric=ns.similarity, restarts=ns.restarts,
                        estimate_sdd=ns.estimate_sdd)
    result = register_files(ns.ct, ns.image, lao=ns.lao, cran=ns.cran, roll=ns.roll, isocenter=ns.isocenter,
                            pixel=ns.pixel, sid=ns.sid, sdd=ns.sdd, settings=settings)
    write_pose(ns.out, result)
    p = result.pose
    sdd = f", SDD {result.geometry.sdd:.1f} mm" if ns.estimate_sdd else ""
    print(_dumps(result.to_json()) if ns.json else
          f"{ns.out}: {result.status}: LAO {p.lao:.2f} CRAN {p.cran:.2f} roll {p.roll:.2f} deg, isocenter "
          f"{' '.join(f'{x:.1f}' for x in p.isocenter)} mm LPS{sdd}, similarity {result.similarity:.4f}, "
          f"{result.iterations} iterations, {result.seconds:.1f} s")
    if not result.converged:
        print(f"xwin register: registration failed ({result.status}): {result.message}", file=sys.stderr)
        return 3
    return 0


VOLUME_EXTENSIONS = (".nrrd", ".nii.gz", ".nii", ".mha")
MAX_TV_HU = 10_000.0  # reconstruct --tv: the strongest total-variation weight accepted (20 is a usual one)


def _check_volume_target(out: Path, inputs: tuple[str | None, ...]) -> None:
    """Refuse an --out that is neither a volume file (.nrrd .nii.gz .nii .mha) nor a folder for a DICOM series."""
    if not out.name.lower().endswith(VOLUME_EXTENSIONS) and out.suffix:
        raise XWinInputError(out, "--out must end in .nrrd, .nii.gz, .nii or .mha, or name a folder for a DICOM series")
    if out.name.lower().endswith(VOLUME_EXTENSIONS):
        from .io.writers import check_target
        check_target(out, inputs=inputs)  # refused before the work, not after
    else:
        from .export.dicom import check_series_target
        check_series_target(out, inputs=inputs)


def _identity_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DICOM identity (default: the DICOM source's, else new unique IDs)")
    g.add_argument("--patient-id", help="PatientID of the written DICOM")
    g.add_argument("--patient-name", help="PatientName, Family^Given (default: the source's, else the ID)")
    g.add_argument("--study-uid", help="StudyInstanceUID to file the series under (default: the source's, else new)")


def _identity_given(ns: argparse.Namespace, dicom: bool, hint: str) -> dict:
    """--patient-id/--patient-name/--study-uid, checked before any work; refused when no DICOM is written."""
    from .export import dicom_identity

    given = {"patient_id": ns.patient_id, "patient_name": ns.patient_name, "study_uid": ns.study_uid}
    if dicom:
        dicom_identity(None, **given)
    elif any(v is not None for v in given.values()):
        raise XWinInputError(None, f"--patient-id, --patient-name and --study-uid apply to DICOM output: {hint}")
    return given


def _write_any_volume(volume, out: Path, description: str, identity=None) -> None:
    """NRRD/NIfTI/MHA by extension (atomic), or a DICOM CT series folder when ``out`` has no extension (identity:
    `xwin.export.dicom_identity`, fresh when None)."""
    from .export import write_ct_series
    from .io import write_volume

    if out.name.lower().endswith(VOLUME_EXTENSIONS):
        write_volume(volume, out)
    else:
        write_ct_series(volume, out, series_description=description, identity=identity)


def _check_reconstruction(views: int, det, geometry, ns: argparse.Namespace) -> None:
    """Refuse projections or an output grid (--size, or --spacing over the field of view) beyond the memory budget."""
    from .budget import GRID_BYTES_PER_VOXEL, SINOGRAM_BYTES_PER_PIXEL
    from .recon.grid import default_grid

    _check_memory(f"--views {views} of {det[0]} x {det[1]} pixels",
                  views * det[0] * det[1] * SINOGRAM_BYTES_PER_PIXEL)
    shape = default_grid(geometry, (0.0, 0.0, 0.0), ns.size, ns.spacing).shape_ijk
    request = f"--size {' '.join(map(str, ns.size))}" if ns.size else f"--spacing {ns.spacing:g}" if ns.spacing \
        else "the default grid"
    _check_memory(f"{request} (a {' x '.join(map(str, shape))} reconstruction grid)",
                  math.prod(shape) * GRID_BYTES_PER_VOXEL)


def cmd_reconstruct(ns: argparse.Namespace) -> int:
    """Round trip (--from-ct: render an orbit, reconstruct, score) or world-model path (CXR → predicted orbit)."""
    from .geometry import Geometry

    if (ns.cxr is None) == (ns.from_ct is None):
        raise XWinInputError(None, "give either a CXR (world-model path) or --from-ct CT (round trip), not both")
    out = Path(ns.out)
    _check_volume_target(out, (ns.from_ct, ns.cxr))
    series = not out.name.lower().endswith(VOLUME_EXTENSIONS)
    given = _identity_given(ns, series, "give --out a folder name (a DICOM series)")
    views = ns.views if ns.views is not None else (13 if ns.cxr else 180)
    arc = ns.arc if ns.arc is not None else (180.0 if ns.cxr else 360.0)
    if views < 1:
        raise XWinInputError(None, f"--views must be at least 1, got {views}")
    if not (math.isfinite(arc) and arc >= MIN_ARC_DEG):  # campaign 12: 1e-300 ran as "an arc of 0.0°"
        raise XWinInputError(None, f"--arc must be at least {MIN_ARC_DEG:g}° (a narrower arc sees the patient from one "
                                   f"direction: no depth to reconstruct), got {arc:g}")
    if not (math.isfinite(ns.tv) and 0 <= ns.tv <= MAX_TV_HU):  # past it the TV step overflows to NaN
        raise XWinInputError(None, f"--tv: must be a weight from 0 to {MAX_TV_HU:g} HU, got {ns.tv:g}")
    if ns.size is not None and min(ns.size) < 2:
        raise XWinInputError(None, f"--size needs at least 2 voxels per axis, got {ns.size}")
    if ns.cxr is not None:
        from .io import read_radiograph

        radiograph = read_radiograph(ns.cxr)  # first: a bad radiograph is refused before the model is loaded

        from .predict import load_predictor
        from .recon import reconstruct_from_cxr
        from .recon.from_cxr import model_geometry

        predictor = load_predictor(ns.checkpoint, ns.device)
        predictor.loaded.config.model.check_memory(views, f"--views {views}")
        _check_reconstruction(views, (predictor.size,) * 2, model_geometry(predictor.loaded.config), ns)
        volume = reconstruct_from_cxr(predictor, radiograph.array, views=views,
                                      arc=arc, method=ns.method, iters=ns.iters, size=ns.size, spacing=ns.spacing,
                                      tv=ns.tv, progress=not ns.json, simulated=radiograph.simulated)
        identity = None
        if series:  # the radiograph's patient and study (a DICOM CXR), not its frame of reference
            from .export import dicom_identity
            identity = dicom_identity(ns.cxr, spatial=False, **given)
        _write_any_volume(volume, out, "XWin world-model estimate from one CXR (not a CT)", identity)
        print(_dumps({"views": views, "arc": arc, "method": ns.method}) if ns.json else out)
        return 0
    from .io import read_ct
    from .recon.roundtrip import reconstruct_from_ct

    geometry = Geometry(sid=ns.sid, sdd=ns.sdd, height=ns.det[0], width=ns.det[1], pixel=ns.pixel)
    _check_reconstruction(views, ns.det, geometry, ns)
    volume, scores = reconstruct_from_ct(read_ct(ns.from_ct), views, arc, ns.method, ns.iters, ns.size, ns.spacing,
                                         geometry, window=ns.window, tv=ns.tv, device=ns.device,
                                         progress=not ns.json)
    identity = None
    if series:  # the CT's patient, study and frame of reference (the grid is in the CT's LPS frame)
        from .export import dicom_identity
        identity = dicom_identity(ns.from_ct, **given)
    _write_any_volume(volume, out, "XWin reconstruction", identity)
    if ns.json:
        print(_dumps({k: float(scores[k]) for k in ("psnr", "ssim", "rmse_hu", "seconds")}))
    else:
        print(f"{out}: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.4f}, RMSE {scores['rmse_hu']:.1f} HU, "
              f"{scores['seconds']:.2f} s", file=sys.stderr)
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    """Segment a volume (body, lungs, bone) and write label maps for segmentation tools (and DICOM)."""

    from .export import dicom_identity, export_segmentation, export_targets
    from .io import read_ct

    out = Path(ns.out)
    if out.exists() and not out.is_dir():
        raise XWinInputError(out, "--out must be a folder")
    dicom = ns.dicom or ns.dicom_seg
    given = _identity_given(ns, dicom, "add --dicom")
    export_targets(out, dicom=ns.dicom, dicom_seg=ns.dicom_seg)  # every output checked before the CT is read
    names = [n for n in ns.segment.split(",") if n.strip()]
    volume = read_ct(ns.volume)
    identity = dicom_identity(ns.volume, **given) if dicom else None  # the DICOM source's patient and study
    result = export_segmentation(volume, names, out, dicom=ns.dicom, dicom_seg=ns.dicom_seg, identity=identity)
    print(_dumps(result) if ns.json else "\n".join(result["files"]))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line as well (issue 16), pointing to --help instead of printing usage, and
    that reads a negative number in exponent form (``--lao -3e1``) as a value, not as an option."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse's own pattern (-30, -.5) misses exponents: -3e1 was taken for an option and the value went missing
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_printable(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xwin", description="XWin: chest-radiograph world models. "
                                     "Units: mm, degrees, HU; patient frame LPS (docs/geometry.md).")
    parser.add_argument("--version", action="version", version=f"xwin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("render", help="DRRs of a CT at one or more C-arm poses",
                       description="Render DRRs of CT at paired --lao/--cran angles (degrees; RAO and CAUD negative).")
    p.add_argument("ct", type=_path, help="CT: DICOM series folder, .nii/.nii.gz, .nrrd, .mha")
    p.add_argument("--lao", type=float, nargs="+", metavar="DEG",
                   help="LAO angle(s) in degrees (negative = RAO); paired in order with --cran")
    p.add_argument("--cran", type=float, nargs="+", metavar="DEG",
                   help="CRAN angle(s) in degrees (negative = CAUD)")
    p.add_argument("--pose", type=_path, metavar="POSE.json",
                   help="instead of --lao/--cran/--isocenter: a pose file written by `xwin register` (its LAO, "
                        "CRAN, roll, isocenter and detector geometry replace --sid/--sdd/--size/--pixel)")
    _geometry_args(p)
    p.add_argument("--mode", choices=("line", "intensity", "radiograph"), default="radiograph",
                   help="line: ∫μ dl (dimensionless); intensity: exp(−line); radiograph: display image in [0, 1] "
                        "(default)")
    p.add_argument("--mu-water", type=float, default=0.0193, metavar="PER_MM",
                   help="attenuation of water per mm (default 0.0193)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--ext", default="nrrd", choices=("nrrd", "mha", "nii.gz", "png"),
                   help="file type written into a folder --out (default nrrd)")
    p.add_argument("--out", type=_path,
                   required=True, help="image file (.nrrd .mha .nii .nii.gz .png) for one pose, or a folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("info", help="what XWin reads from a CT or CXR file/folder")
    p.add_argument("file", type=_path, help="CT (DICOM folder, NIfTI, NRRD, MHA) or CXR (DICOM, PNG, JPEG)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="angle sweep of the embedded chest CT (contact sheet PNG + GIF)")
    p.add_argument("--out", type=_path, default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--step", type=float, default=15.0, help="LAO step in degrees over −90…90 (default 15)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train or resume the world model (torchrun -m xwin train ... for DDP)")
    p.add_argument("--config", type=_path, required=True, help="YAML config (schema: docs/model.md)")
    p.add_argument("--out", type=_path, help="run folder for the bank, checkpoints, metrics.csv, loss_curve.png "
                                 "(default runs/CONFIG_NAME)")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument("--progress", choices=("bar", "jsonl", "none"), default="bar",
                   help="progress bar (default), one JSON object per step on stdout, or nothing")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--ct-dir", type=_path,
                   help="train on the CTs in this folder (NIfTI/NRRD/MHA files, DICOM series folders) "
                                    "instead of the config's data.ct; data.holdout still applies")
    p.add_argument("--cxr-dir", type=_path, help="real CXRs from this folder instead of the config's data.cxr")
    p.add_argument("--init", type=_path,
                   help="fine-tune: start from this model file or checkpoint/run folder (train.init)")
    p.add_argument("--stop-file", type=_path, metavar="PATH",
                   help="when this file appears (checked after every step), write a checkpoint and stop, as on "
                        "SIGTERM (how the Slicer panel stops a trainer started through a launcher)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export-model", help="export a checkpoint's inference weights to one .safetensors file")
    p.add_argument("checkpoint", type=_path, help="run folder or checkpoint folder")
    p.add_argument("--out", type=_path, required=True, help="output .safetensors file")
    means = p.add_mutually_exclusive_group()
    means.add_argument("--bank", type=_path, help="DRR bank whose mean projection per pose the file carries (the "
                                      "mean_projection baseline; default: the run's data.bank or RUN/bank — a "
                                      "data.online run has none)")
    means.add_argument("--mean-from", type=_path,
                       metavar="MODEL", help="copy the mean projections of this exported model file "
                                                             "(same image size) instead of a bank's")
    p.set_defaults(func=cmd_export_model)

    p = sub.add_parser("predict", help="predicted projections of a CXR at new C-arm poses",
                       description="Encode CXR as the canonical PA view and write the decoded predicted projection "
                                   "at each paired --lao/--cran target pose (degrees).")
    p.add_argument("cxr", type=_path,
                   help="radiograph: DICOM, PNG or JPEG, or a DRR written by `xwin render` as NRRD/MHA/NIfTI "
                               "(read in the training's DRR convention, not contrast-stretched like a film)")
    p.add_argument("--lao", type=float, nargs="+", required=True, metavar="DEG", help="target LAO angle(s), degrees")
    p.add_argument("--cran", type=float, nargs="+", required=True, metavar="DEG", help="target CRAN angle(s), degrees")
    p.add_argument("--checkpoint", type=_path, help="model file or checkpoint folder (default: the embedded model)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--ext", default="png", choices=("nrrd", "mha", "nii.gz", "png"),
                   help="file type written into a folder --out (default png)")
    p.add_argument("--out", type=_path, required=True, help="image file for one pose, or a folder")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("eval", help="evaluate a world model")
    ev = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    w = ev.add_parser("world", help="view prediction on CTs never trained on, against baselines",
                      description="Each CT is rendered --renderings times with the training jitter (isocenter shift "
                                  "and detector roll, shared by context and targets); the PA view predicts LAO "
                                  "-90..90 deg (15 deg steps, CRAN 0). Retrieval top-1 [95 % bootstrap over CT x "
                                  "rendering], within 15 deg, angular error (deg), PSNR (dB) / SSIM scored at "
                                  "128 x 128 (per angle too), effective rank of the target embeddings; baselines "
                                  "copy_context, mean_projection, random_init, nearest_training_patient.")
    w.add_argument("--ct", type=_path, action="append", default=[], help="held-out CT (repeat for several)")
    w.add_argument("--cases", type=_path, help="cases CSV (columns file, split): evaluate the CTs of --split")
    w.add_argument("--split", default="eval", help="split of --cases to evaluate (default eval)")
    w.add_argument("--train-ct", type=_path, action="append", default=[], metavar="CT",
                   help="training CT for the nearest_training_patient baseline (repeatable; default: the model "
                        "config's training CTs, paths relative to the working directory)")
    w.add_argument("--renderings", type=int, default=8, help="jittered renderings per CT (default 8)")
    w.add_argument("--seed", type=int, default=0, help="seed of the jitter, random_init and bootstrap (default 0)")
    w.add_argument("--checkpoint", type=_path, help="model file or checkpoint folder (default: the embedded model)")
    w.add_argument("--versus", type=_path, metavar="CHECKPOINT",
                   help="a second model scored on the same renderings: model - versus differences of top-1, "
                        "angular error and SSIM with 95 %% paired bootstrap intervals (is one model better?)")
    w.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    w.add_argument("--json", action="store_true", help="one-line JSON on stdout (default: a table)")
    w.set_defaults(func=cmd_eval_world)
    dm = ev.add_parser("domain", help="how far real CXRs are from the model's DRRs (separability, cosine, identity)")
    dm.add_argument("--cxr", type=_path, required=True, help="folder of real radiographs (DICOM, PNG, JPEG)")
    dm.add_argument("--ct", type=_path,
                    action="append", required=True, help="CT whose PA DRRs are the simulated side (repeat)")
    dm.add_argument("--views", type=int, default=16, help="jittered PA DRRs per CT (default 16)")
    dm.add_argument("--folds", type=int, default=5, help="folds of the real-vs-simulated probe (default 5)")
    dm.add_argument("--checkpoint", type=_path, help="model file or checkpoint folder (default: the embedded model)")
    dm.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    dm.add_argument("--json", action="store_true", help="one-line JSON on stdout")
    dm.set_defaults(func=cmd_eval_domain)
    pr = ev.add_parser("probe", help="linear probe / k-shot AUROC per anatomy task on labelled real CXRs",
                       description="Probe tasks decide their label within one image source, so that the source "
                                   "cannot predict it: sex (M vs F, MHH + NIH films), view (PA vs AP, MHH only), "
                                   "pneumonia (pneumonia vs normal, Kermany only). Patient-level folds; 95 % "
                                   "intervals from a bootstrap over patients.")
    pr.add_argument("--labels", type=_path, required=True,
                    help="CSV with columns filename, source, patient_id and the label columns (sex, view, finding)")
    pr.add_argument("--images", type=_path, required=True, help="folder the CSV's filenames are relative to")
    pr.add_argument("--task", action="append", default=[], metavar="NAME",
                    help="built-in probe task: sex, view or pneumonia (repeatable; default: all three)")
    pr.add_argument("--checkpoint", type=_path, help="model file or checkpoint folder (default: the embedded model)")
    pr.add_argument("--ablation", action="append", default=[], metavar="NAME=PATH",
                    help="another model to compare, e.g. mim_only=runs/mim/ (repeatable)")
    pr.add_argument("--positive", metavar="REGEX",
                    help="add a custom task: rows whose --column matches REGEX are positive")
    pr.add_argument("--negative", metavar="REGEX", help="custom task: negatives match REGEX (default: all other rows)")
    pr.add_argument("--column", default="finding", help="custom task: the label column (default finding)")
    pr.add_argument("--source", action="append", default=[], metavar="SUBSTRING",
                    help="custom task: keep rows whose source contains SUBSTRING (repeatable; default: all rows, "
                         "which lets the source predict the label)")
    pr.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                    help="keep matching rows only (every task)")
    pr.add_argument("--folds", type=int, default=5, help="patient-level folds (default 5)")
    pr.add_argument("--shots", type=int, nargs="+", default=[5],
                    help="k for k-shot fine-tuning (default 5; 0: linear probe only)")
    pr.add_argument("--resamples", type=int, default=1000, help="patient bootstrap resamples (default 1000)")
    pr.add_argument("--json", action="store_true", help="one-line JSON on stdout (default: a table)")
    pr.set_defaults(func=cmd_eval_probe)
    p = sub.add_parser("viewer", help="the XWin panel outside Slicer: DRRs, prediction, reconstruction, training")
    p.add_argument("--ct", type=_path, help="CT to open (DICOM folder, NIfTI, NRRD, MHA)")
    p.add_argument("--cxr", type=_path, help="chest X-ray to open (DICOM, PNG, JPEG)")
    p.add_argument("--demo", action="store_true", help="open the embedded demo CT and chest X-ray")
    p.set_defaults(func=cmd_viewer)

    p = sub.add_parser("register", help="2D/3D registration: the C-arm pose at which a CT's DRR matches an image",
                       description="Estimate LAO, CRAN, roll (degrees) and the isocenter (LPS mm) at which the DRR "
                                   "of CT matches IMAGE (docs/registration.md). Exit 0: converged; 3: failed (no "
                                   "improvement, hit a bound, time limit, poor match; the pose file is still written "
                                   "with that status); 2: bad input.")
    p.add_argument("ct", type=_path, help="CT: DICOM series folder, .nii/.nii.gz, .nrrd, .mha")
    p.add_argument("image", type=_path,
                   help="a DRR written by `xwin render` (geometry from its metadata) or a radiograph "
                                 "(DICOM, PNG, JPEG; pixel spacing from the header or --pixel)")
    p.add_argument("--lao", type=float, default=0.0, metavar="DEG", help="start LAO in degrees (default 0)")
    p.add_argument("--cran", type=float, default=0.0, metavar="DEG", help="start CRAN in degrees (default 0)")
    p.add_argument("--roll", type=float, default=0.0, metavar="DEG", help="start detector roll in degrees (default 0)")
    p.add_argument("--isocenter", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="start isocenter in patient LPS mm (default: centre of the CT grid)")
    p.add_argument("--pixel", type=float, metavar="MM",
                   help="detector pixel size of IMAGE in mm (overrides its header)")
    p.add_argument("--sid", type=float,
                   help=f"film: source → isocenter distance in mm (default {SID_MM:g}/{SDD_MM:g} of the SDD)")
    p.add_argument("--sdd", type=float,
                   help="film: source → detector distance in mm (default: the DICOM Distance Source to Detector, "
                        f"else {SDD_MM:g})")
    p.add_argument("--estimate-sdd", action="store_true",
                   help="estimate the source → detector distance (±20 %%) instead of the isocenter depth, which "
                        "stays at the start's (one view cannot tell the two apart)")
    p.add_argument("--similarity", choices=("mixed", "gncc", "ncc"), default="mixed",
                   help="gncc: gradient correlation; ncc; mixed: their mean (default)")
    p.add_argument("--restarts", type=int, default=4, help="extra coarse-level starts around the start (default 4)")
    p.add_argument("--time-limit", type=float, default=300.0, metavar="S",
                   help="wall-clock budget in seconds; past it the status is 'time limit' (default 300)")
    p.add_argument("--out", type=_path, required=True, help="pose file (JSON) for `xwin render --pose`")
    p.add_argument("--json", action="store_true",
                   help="print pose, similarity, iterations, seconds and status as one JSON line")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("reconstruct", help="reconstruct a volume from simulated projections of a CT",
                       description="Render --views line-integral projections of --from-ct over LAO −arc/2…+arc/2 at "
                                   "CRAN 0, reconstruct them (FDK, OS-SART or CGLS; docs/reconstruction.md) and "
                                   "score the result against the CT (PSNR, SSIM, RMSE in HU).")
    p.add_argument("cxr", type=_path, nargs="?", metavar="CXR",
                   help="world-model path: a radiograph (taken as the PA view) whose predicted projections over "
                        "the orbit are reconstructed — a learned estimate, not a CT (needs no --from-ct)")
    p.add_argument("--from-ct", type=_path,
                   metavar="CT", help="round trip: CT (DICOM series folder, .nii/.nii.gz, .nrrd, .mha)")
    p.add_argument("--checkpoint", type=_path,
                   help="world-model file or checkpoint folder for CXR (default: the embedded model)")
    p.add_argument("--views", type=int, metavar="N",
                   help="number of projections (default 180 for --from-ct, 13 for a CXR)")
    p.add_argument("--arc", type=float, metavar="DEG",
                   help="orbit arc in degrees (default 360 for --from-ct, 180 for a CXR; a short scan needs at least "
                        "180 + fan angle)")
    p.add_argument("--method", choices=("fdk", "sart", "cgls"), default="fdk", help="reconstruction (default fdk)")
    p.add_argument("--iters", type=int, metavar="K", help="iterations of sart (default 10) or cgls (default 20)")
    p.add_argument("--size", type=int, nargs=3, metavar=("NX", "NY", "NZ"),
                   help="output grid voxels (default: 128³ over the detector's field of view)")
    p.add_argument("--spacing", type=float, metavar="MM", help="output voxel size in mm (default: FOV / size)")
    g = p.add_argument_group("geometry (mm; see docs/geometry.md)")
    g.add_argument("--sid", type=float, default=SID_MM, help=f"source → isocenter distance in mm (default {SID_MM:g})")
    g.add_argument("--sdd", type=float, default=SDD_MM, help=f"source → detector distance in mm (default {SDD_MM:g})")
    g.add_argument("--det", type=int, nargs=2, default=DETECTOR_PIXELS, metavar=("H", "W"),
                   help="detector rows and columns (default %d %d)" % DETECTOR_PIXELS)
    g.add_argument("--pixel", type=float, default=PIXEL_MM, help=f"detector pixel size in mm (default {PIXEL_MM:g})")
    p.add_argument("--window", choices=("hann", "shepp-logan", "cosine", "ram-lak"), default="hann",
                   help="FDK ramp-filter window (default hann)")
    p.add_argument("--tv", type=float, default=0.0, metavar="WEIGHT",
                   help="total-variation weight in HU for sart/cgls (0 = none; e.g. 20)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--out", type=_path,
                   required=True, help="output volume: .nrrd, .nii.gz, .nii or .mha, or a folder name for a "
                                                "DICOM CT series (written atomically)")
    _identity_args(p)
    p.add_argument("--json", action="store_true",
                   help='print {"psnr", "ssim", "rmse_hu", "seconds"} as one JSON line on stdout')
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("export", help="segment a volume and write label maps for segmentation tools",
                       description="Threshold/connectivity masks (docs/reconstruction.md, Export) written as "
                                   "segmentation.nii.gz + labels.json and a Slicer segmentation.seg.nrrd.")
    p.add_argument("volume", type=_path, help="volume in HU: .nrrd, .nii.gz, .mha or a DICOM series folder")
    p.add_argument("--segment", default="lungs,body,bone",
                   help="comma-separated: body, lungs, lung_left, lung_right, bone (default lungs,body,bone)")
    p.add_argument("--out", type=_path, required=True, help="output folder")
    p.add_argument("--dicom", action="store_true", help="also write the volume as a DICOM CT series (OUT/dicom/)")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write a DICOM SEG (OUT/segmentation.dcm; needs highdicom, implies --dicom)")
    _identity_args(p)
    p.add_argument("--json", action="store_true", help="print labels, voxel counts and files as JSON")
    p.set_defaults(func=cmd_export)
    return parser


def _raise_terminated(signum, frame):
    for sig in STOP_SIGNALS:  # a second signal must not interrupt the cleanup
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def _on_stop_signals(handler) -> dict | None:
    """Install ``handler`` for `STOP_SIGNALS` (main thread only); returns the previous handlers, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}


# A library check that names no file speaks of its parameter ("geometry: sid must be ..."): the word → the command's
# options (argparse dests, the first one the command has) that set that parameter.
_PARAMETER_OPTIONS = {"height": ("det", "size"), "width": ("det", "size")}  # library parameter → its options


def _with_option(ns: argparse.Namespace, exc: XWinInputError) -> str:
    """A problem of no file prefixed with the option(s) behind it (the culprit of issue 16's contract): each library
    parameter it names (``exc.parameters``) as the first of its options (`_PARAMETER_OPTIONS`, else the option of its
    name) that this command has."""
    if exc.problem.startswith("-"):
        return exc.problem
    options: list[str] = []
    for name in exc.parameters:
        dest = next((d for d in _PARAMETER_OPTIONS.get(name, (name,)) if hasattr(ns, d)), None)
        if dest is not None and f"--{dest.replace('_', '-')}" not in options:
            options.append(f"--{dest.replace('_', '-')}")
    return f"{'/'.join(options)}: {exc.problem.removeprefix('geometry: ')}" if options else exc.problem


def _one_line_warning(command: str, message, category, filename, lineno, file=None, line=None) -> None:
    """What XWin warns of (a limited-angle FDK arc...) as one line, ``xwin CMD: warning: ...``, instead of Python's
    two lines with the source file, line number and code."""
    print(f"xwin {command}: warning: {_printable(str(message))}", file=file or sys.stderr)


def _printable(message: str) -> str:
    """``message`` as one line of plain text: whitespace runs become one space, and any other control or format
    character (an ESC in a file name would drive the terminal) is shown as its escape, e.g. \\x1b."""
    text = " ".join(message.split())
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # writes that fail for want of room


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: numpy's MemoryError, PyTorch's CPU allocator or CUDA out of memory."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        "can't allocate memory" in str(exc))


def _address_space_refusal(exc: BaseException) -> str | None:
    """What to say when ``exc`` is a shared library (torch's, llvmlite's) that could not be mapped under an
    address-space limit (``ulimit -v``, common on HPC login nodes): PyTorch and numba reserve far more address space
    than they use (campaign 12: 4 GiB fails, 6 GiB works). None for any other error, or without such a limit."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    chain: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 8:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    if soft == resource.RLIM_INFINITY or not any("shared object" in text for text in chain):
        return None
    return (f"a library could not be loaded under the address-space limit (ulimit -v {soft // 1024} KiB = "
            f"{soft / 2**30:.1f} GiB): PyTorch and numba reserve more address space than they use; raise it to at "
            "least 8 GiB (ulimit -v 8388608) or lift it (ulimit -v unlimited)")


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input ends in one readable line on stderr and exit status 2 (no traceback)."""
    ns = build_parser().parse_args(argv)
    # `xwin render` as a program (issue 15): its start-up creates some 10⁵ long-lived objects (imports, numba's type
    # system) whose cyclic garbage collections, while it runs and again at exit, find next to nothing yet cost
    # 0.15–0.25 s, more than the render; its arrays hold no cycles (reference counting frees them) and the process
    # ends with the command. Called from Python (``argv`` given), the collector is left alone.
    one_shot = argv is None and ns.command == "render"
    if one_shot:
        gc.disable()
    # a closed standard stream (`>&-`, `2>&-`) is None in Python: what would go there is dropped, as print() does,
    # rather than failing on flush or sending errors into the data stream
    sys.stdout = sys.stdout or open(os.devnull, "w")
    sys.stderr = sys.stderr or open(os.devnull, "w")
    for stream in (sys.stdout, sys.stderr):  # a name the output's encoding lacks (PYTHONIOENCODING=ascii) is escaped,
        if isinstance(stream, io.TextIOWrapper):  # not a UnicodeEncodeError traceback (campaign 9)
            stream.reconfigure(errors="backslashreplace")
    command = f"{ns.command} {ns.what}" if getattr(ns, "what", None) else ns.command  # "eval domain", as typed
    show_warning = warnings.showwarning
    warnings.showwarning = functools.partial(_one_line_warning, command)
    previous = _on_stop_signals(_raise_terminated)
    try:
        _check_environment()
        _check_device(ns)
        code = ns.func(ns)
        sys.stdout.flush()  # a reader that has gone (`| head`) shows here, not in Python's flush at exit
        return code
    except BrokenPipeError:  # the output's reader closed the pipe: stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit must not fail again
        return 141
    except XWinInputError as exc:
        text = _printable(str(exc) if exc.path else _with_option(ns, exc))
        print(f"xwin {command}: error: {text if len(text) <= 1000 else text[:997] + '...'}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the system refuses: missing, locked, too long (ENAMETOOLONG), a link loop...
        named = getattr(exc, "filename", None)
        if named is None and exc.errno in _FULL:  # a full disk or quota (an output file's, or `> /dev/full`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit must not fail again
            print(f"xwin {command}: error: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
            return 2
        refusal = _address_space_refusal(exc)
        if refusal:
            print(f"xwin {command}: error: {refusal}", file=sys.stderr)
            return 2
        if named is None and not isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError,
                                                  NotADirectoryError)):
            raise
        shown = str(named or "")
        shown = shown if len(shown) <= 600 else f"{shown[:300]}...{shown[-300:]}"  # a path of 4,000 characters
        where = f"{shown}: " if shown else ""
        print(f"xwin {command}: error: {_printable(f'{where}{exc.strerror or exc}')}", file=sys.stderr)
        return 2
    except ImportError as exc:  # torch's own libraries, mapped at first use
        refusal = _address_space_refusal(exc)
        if not refusal:
            raise
        print(f"xwin {command}: error: {refusal}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # an allocation the memory budget let through and the machine refused
        if not _out_of_memory(exc):
            raise
        from .io.validate import MEMORY_ENV
        print(f"xwin {command}: error: out of memory ({_printable(str(exc).splitlines()[-1][:200])}); ask for less, "
              f"or lower {MEMORY_ENV} so that such requests are refused up front", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated, SystemError) as exc:
        # Ctrl-C or SIGTERM inside a numba-compiled call surfaces as a SystemError caused by the interruption
        stop = exc.__cause__ if isinstance(exc, SystemError) else exc
        if isinstance(stop, KeyboardInterrupt):
            print(f"xwin {command}: interrupted", file=sys.stderr)
            return 130
        if isinstance(stop, Terminated):
            name = "" if stop.signum == signal.SIGTERM else f" ({signal.Signals(stop.signum).name})"
            print(f"xwin {command}: terminated{name}", file=sys.stderr)
            return 128 + stop.signum
        raise
    finally:
        warnings.showwarning = show_warning
        if argv is None and previous is not None:  # the process's own command, done: its outputs are in place and
            # its exit status decided, so a stop signal during the interpreter's (torch's, numba's) teardown must not
            # turn it into 130/143 with nothing said (campaign 9)
            for sig in (signal.SIGINT, *STOP_SIGNALS):
                signal.signal(sig, signal.SIG_IGN)
        else:
            for sig, handler in (previous or {}).items():
                signal.signal(sig, handler)
        if one_shot:
            gc.freeze()  # Python's collections at exit then skip every object alive now


if __name__ == "__main__":
    sys.exit(main())
