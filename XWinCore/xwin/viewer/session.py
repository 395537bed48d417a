"""`Session`: the state and the actions of an XWin panel, shared by the 3D Slicer module and `xwin viewer`.

No Qt and no MRML here: images are NumPy arrays, volumes are `xwin.io.image.Volume` (LPS mm, ``[k, j, i]``), and a
projection comes with the 4×4 affine that places it on the detector plane of the geometry contract
(docs/geometry.md). The GUIs only convert these to their own objects (MRML nodes, vtkImageData).
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, cast

import numpy as np
import torch

from ..defaults import DETECTOR_PIXELS, PIXEL_MM, SDD_MM, SID_MM
from ..drr.projector import MU_WATER, Projector
from ..errors import XWinInputError
from ..geometry import Geometry, carm_views
from ..io.image import Volume


def preload_before_opengl() -> None:
    """Import torch's compiler stack (it loads triton and its LLVM) before any OpenGL context exists.

    With Mesa (llvmpipe: Xvfb, EGL, VMs) importing triton *after* a context was created crashes the process (two
    LLVMs); the world model imports it through timm → torchvision → torch._dynamo. Call before the first render.
    """
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # noqa: BLE001 - a torch without dynamo/triton has nothing to preload
        pass


#: RAS = LPS_TO_RAS · LPS (and back: the matrix is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Choices of ``Settings.device`` (`Session.compute_device`).
DEVICES = ("auto", "cpu", "cuda")
#: Interactive preview: μ pooled 2× and a detector with 2× fewer pixels per side (docs/geometry.md).
PREVIEW_FACTOR = 2


def pose_arguments(lao: float, cran: float, roll: float = 0.0) -> dict:
    """Keyword arguments of `carm_views` / `Projector.render` for a C-arm at (lao, cran, roll) degrees: the angles,
    or at a non-zero roll the full 4×4 rotation of `xwin.register.Pose` (R = Rz(lao)·Rx(−cran)·Ry(roll))."""
    if roll == 0.0:
        return {"lao": float(lao), "cran": float(cran)}
    from ..register import Pose
    return {"pose": Pose(float(lao), float(cran), float(roll), (0.0, 0.0, 0.0)).matrix()}


def detector_lps_from_ijk(geometry: Geometry, isocenter, lao: float, cran: float, roll: float = 0.0) -> np.ndarray:
    """4×4 affine taking a projection's voxel index (i = column c, j = row r, k = 0) to LPS mm on the detector.

    Pixel (r, c) lands at ``P(r, c) = corner + c·du + r·dv`` (docs/geometry.md); the k axis is ``du × dv`` scaled to
    one pixel (it points toward the source), so the matrix is a proper rotation times spacing (p, p, p). Angles in
    degrees (``roll``: the detector rolled about the beam, as `xwin register` estimates it); isocenter LPS mm.
    """
    v = carm_views(geometry, np.asarray(isocenter, np.float64), **pose_arguments(lao, cran, roll))
    du, dv, corner = (t[0].detach().double().numpy() for t in (v.du, v.dv, v.corner))
    n = np.cross(du, dv)
    n *= geometry.pixel / np.linalg.norm(n)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = du, dv, n, corner
    return m


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """A radiograph as float32 in [0, 1] (bone bright): kept as is when already there, else min–max scaled."""
    a = np.asarray(image, np.float32)
    if a.size == 0 or not np.all(np.isfinite(a)):
        raise XWinInputError(None, "the radiograph is empty or holds NaN/infinite pixels")
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return a
    return ((a - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(a)


def volume_rendering_points(
        array: np.ndarray) -> tuple[list[tuple[float, float]], list[tuple[float, float, float, float]]]:
    """Transfer functions for a CT or CT-like reconstruction: (value, opacity) and (value, r, g, b) points.

    HU-like data (values below −500 present): soft tissue faint, bone opaque. Otherwise (μ or arbitrary units) a
    ramp from the median to the 99.5th percentile. Shared by the Slicer logic and the viewer.
    """
    a = np.asarray(array)
    if a.size and float(a.min()) < -500.0 and float(a.max()) > 200.0:
        opacity = [(-400.0, 0.0), (-100.0, 0.03), (150.0, 0.08), (300.0, 0.35), (1200.0, 0.8)]
        color = [(-400.0, 0.55, 0.25, 0.15), (40.0, 0.88, 0.6, 0.48), (300.0, 1.0, 0.94, 0.82),
                 (1200.0, 1.0, 1.0, 1.0)]
        return opacity, color
    lo, hi = (float(x) for x in np.percentile(a, [50, 99.5])) if a.size else (0.0, 1.0)
    hi = max(hi, lo + 1e-3)
    opacity = [(lo, 0.0), (lo + 0.3 * (hi - lo), 0.05), (hi, 0.6)]
    color = [(lo, 0.55, 0.25, 0.15), (lo + 0.5 * (hi - lo), 0.9, 0.6, 0.45), (hi, 1.0, 1.0, 0.95)]
    return opacity, color


def compare_images(a: np.ndarray, b: np.ndarray, kind: str = "checkerboard", tiles: int = 8) -> np.ndarray:
    """Two (H, W) images of one detector, each scaled to its 1st–99th percentile, as one float32 image in [0, 1]:
    'checkerboard' (``tiles`` squares per side, ``a`` in the top-left one) or 'difference' (|a − b|)."""
    if a.shape != b.shape:
        raise XWinInputError(None, f"images of different shapes {a.shape} and {b.shape} cannot be compared")

    def scaled(x):
        lo, hi = np.percentile(x, [1, 99])
        return np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)

    a, b = scaled(np.asarray(a, np.float32)), scaled(np.asarray(b, np.float32))
    if kind == "difference":
        return np.abs(a - b)
    if kind != "checkerboard":
        raise XWinInputError(None, f"unknown overlay {kind!r}: use 'checkerboard' or 'difference'")
    h, w = a.shape
    rows = (np.arange(h) * tiles // h)[:, None]
    cols = (np.arange(w) * tiles // w)[None, :]
    return np.where((rows + cols) % 2 == 0, a, b)


@dataclass(frozen=True)
class Projection:
    """One image on the detector: ``image`` (H, W) float32 in [0, 1], ``lps_from_ijk`` (4×4, see
    `detector_lps_from_ijk`), the pose (degrees) and whether it is preview quality."""

    image: np.ndarray
    lps_from_ijk: np.ndarray
    lao: float
    cran: float
    preview: bool = False
    roll: float = 0.0

    @property
    def ras_from_ijk(self) -> np.ndarray:
        return LPS_TO_RAS @ self.lps_from_ijk


@dataclass
class Settings:
    """Every panel setting (saved in the Slicer parameter node / restored by the viewer).

    sid, sdd, pixel: mm; height, width: detector pixels; lao, cran: degrees (RAO/CAUD negative); roll: the detector
    rolled about the beam (degrees); iso_dx, iso_dy, iso_dz: the isocenter's offset from the CT grid centre (LPS mm)
    — roll and offset are what "Align DRR to CXR" (`Session.align`) sets; checkpoint: model file or run folder ('' =
    the embedded model); device: where prediction, reconstruction and training run — 'auto' (CUDA when PyTorch sees
    it, else the CPU), 'cpu' or 'cuda' (`compute_device`; the interactive DRR stays on the CPU); recon_method: 'fdk',
    'sart' or 'cgls'; recon_source: 'ct' (DRRs of the CT) or 'cxr' (the model's predicted projections of the CXR);
    recon_views over recon_arc degrees (LAO orbit at CRAN 0); train_*: paths for `xwin train`.
    """

    sid: float = SID_MM
    sdd: float = SDD_MM
    height: int = DETECTOR_PIXELS[0]
    width: int = DETECTOR_PIXELS[1]
    pixel: float = PIXEL_MM
    lao: float = 0.0
    cran: float = 0.0
    roll: float = 0.0
    iso_dx: float = 0.0
    iso_dy: float = 0.0
    iso_dz: float = 0.0
    checkpoint: str = ""
    device: str = "auto"
    recon_method: str = "fdk"
    recon_source: str = "ct"
    recon_views: int = 120
    recon_arc: float = 360.0
    train_ct_dir: str = ""
    train_cxr_dir: str = ""
    train_config: str = ""
    train_run_dir: str = ""
    train_init: str = ""

    def geometry(self) -> Geometry:
        return Geometry(sid=self.sid, sdd=self.sdd, height=int(self.height), width=int(self.width), pixel=self.pixel)

    @property
    def iso_offset(self) -> np.ndarray:
        """(3,) LPS mm."""
        return np.array([self.iso_dx, self.iso_dy, self.iso_dz], np.float64)


class Session:
    """One CT, one CXR and the settings; every action of the panel as a plain function call.

    Thread use: `drr`/`predict` are meant for the GUI thread (a preview takes ~10 ms, a full 256² DRR ~30 ms);
    `submit` runs long work (reconstruction, export) on one worker thread and returns a `Future` a GUI timer polls.
    """

    def __init__(self, settings: Settings | None = None, mu_water: float = MU_WATER):
        self.settings = settings or Settings()
        self.mu_water = mu_water
        self.ct: Volume | None = None
        self.cxr: np.ndarray | None = None
        self.cxr_pixel: float | None = None  # mm per CXR pixel at the detector, when its header says
        self._center = np.zeros(3)  # LPS mm: the CT grid centre (the isocenter before any offset)
        self._projector: Projector | None = None
        self._predictor = None
        self._predictor_key: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xwin-session")
        self.warmed = threading.Event()  # set once the projector of the current CT is warmed up (`set_ct`)
        self.warmed.set()

    # --- inputs -----------------------------------------------------------------------------------------------
    def set_ct(self, volume: Volume | None, warm_up: bool = True) -> None:
        """Use ``volume`` (HU, LPS) for DRRs; the isocenter is its grid centre.

        warm_up: prepare the projector's other ray axes (preview pyramid, padded layouts, compiled kernel) on a
        background thread, so that the first pose past 45° does not stall the drag (`Projector.warm_up`);
        ``warmed`` is set when it is done."""
        self.ct = volume
        self._projector = None if volume is None else Projector(volume, self.geometry, mu_water=self.mu_water)
        self._center = np.zeros(3) if self._projector is None else np.array(self._projector.isocenter, np.float64)
        self._place_isocenter()
        if self._projector is not None and warm_up:
            projector, done = self._projector, threading.Event()
            self.warmed = done

            def _warm():
                try:
                    projector.warm_up(preview_factors=(PREVIEW_FACTOR,))
                except Exception:  # noqa: BLE001 - an optimisation only: a failure shows up on the first render
                    pass
                finally:
                    done.set()

            threading.Thread(target=_warm, name="xwin-warm-up", daemon=True).start()

    def set_cxr(self, image: np.ndarray | None, pixel: float | None = None) -> None:
        """Use ``image`` ((H, W), any range: brought to [0, 1]) as the model's context view (and the target of
        `align`). pixel: its pixel size at the detector in mm (square pixels), when known; else the film is taken
        to span the panel's detector width."""
        self.cxr = None if image is None else to_unit_range(np.squeeze(np.asarray(image)))
        if self.cxr is not None and self.cxr.ndim != 2:
            raise XWinInputError(None, f"a chest X-ray must be one 2D image, got shape {self.cxr.shape}")
        if pixel is not None and not (np.isfinite(pixel) and pixel > 0):
            raise XWinInputError(None, f"the CXR pixel size must be a positive number of mm, got {pixel}")
        self.cxr_pixel = None if pixel is None else float(pixel)

    def update(self, **changes) -> None:
        """Change settings; a new geometry is applied to the projector without recomputing μ.

        The world model is reloaded (on its next use) only when the checkpoint or device *value* changes: the panels
        push every setting on each update (the Slicer logic's ``applySettings``), and a key that is merely present
        must not reload the model; a changed value drops the model at once (its memory).
        """
        def model_key(s: Settings) -> tuple[str, str]:
            return s.checkpoint or "", s.device or "auto"

        old = model_key(self.settings)
        self.settings = replace(self.settings, **changes)
        if self._projector is not None:
            self._projector.geometry = self.geometry
        self._place_isocenter()
        if model_key(self.settings) != old:
            self._predictor = None
            self._predictor_key = None

    def compute_device(self) -> str:
        """'cuda' or 'cpu' for ``settings.device`` ('auto' or '': CUDA when PyTorch sees a GPU). Raises
        `XWinInputError` for 'cuda' without a CUDA device, or an unknown name."""
        name = (self.settings.device or "auto").lower()
        if name not in DEVICES:
            raise XWinInputError(None, f"unknown compute device {self.settings.device!r}: choose auto, cpu or cuda")
        cuda = torch.cuda.is_available()
        if name == "cuda" and not cuda:
            raise XWinInputError(None, "CUDA was chosen, but this PyTorch sees no CUDA GPU (a CPU-only build, or no "
                                       "driver): choose auto or cpu")
        return "cuda" if name == "cuda" or (name == "auto" and cuda) else "cpu"

    @property
    def geometry(self) -> Geometry:
        return self.settings.geometry()

    def _place_isocenter(self) -> None:
        if self._projector is not None:
            self._projector.isocenter = self.isocenter

    @property
    def isocenter(self) -> np.ndarray:
        """LPS mm: the CT grid centre (the origin when there is no CT: prediction only) plus the settings' offset."""
        return self._center + self.settings.iso_offset

    # --- images -----------------------------------------------------------------------------------------------
    def drr(self, lao: float | None = None, cran: float | None = None, preview: bool = False) -> Projection:
        """Radiograph-mode DRR of the CT (identical voxels to ``xwin render --mode radiograph``); ``preview``: the
        fast 2×-coarser image of `Projector.preview` on the same detector."""
        if self._projector is None:
            raise XWinInputError(None, "no CT loaded: choose a CT volume first")
        lao = self.settings.lao if lao is None else float(lao)
        cran = self.settings.cran if cran is None else float(cran)
        roll = self.settings.roll
        pose = pose_arguments(lao, cran, roll)
        with torch.no_grad(), self._lock:
            if preview:
                img = self._projector.preview(**pose, mode="radiograph", factor=PREVIEW_FACTOR)
                geometry = self.geometry.scaled(PREVIEW_FACTOR)
            else:
                img = self._projector.render(**pose, mode="radiograph")
                geometry = self.geometry
        image = img[0].cpu().numpy().astype(np.float32)
        return Projection(image, detector_lps_from_ijk(geometry, self.isocenter, lao, cran, roll), lao, cran,
                          preview, roll)

    @property
    def predictor(self):
        """The world model (`xwin.predict.load_predictor`) from ``settings.checkpoint`` on `compute_device`, loaded
        on first use and again only when either changes."""
        key = (self.settings.checkpoint or "", self.compute_device())
        if self._predictor is None or self._predictor_key != key:
            from ..predict import load_predictor
            self._predictor = None  # a failed load leaves no model of the previous key behind
            self._predictor = load_predictor(key[0] or None, device=key[1])
            self._predictor_key = key
        return self._predictor

    def predict(self, lao: float | None = None, cran: float | None = None) -> Projection:
        """The model's decoded projection of the CXR at (lao, cran) degrees, [0, 1], on this panel's detector."""
        images = self.predict_many([self.settings.lao if lao is None else lao],
                                   [self.settings.cran if cran is None else cran])
        lao = self.settings.lao if lao is None else float(lao)
        cran = self.settings.cran if cran is None else float(cran)
        image = images[0]
        g = self.geometry
        g = Geometry(g.sid, g.sdd, image.shape[0], image.shape[1], g.pixel * g.height / image.shape[0])
        return Projection(image, detector_lps_from_ijk(g, self.isocenter, lao, cran), lao, cran)

    def predict_many(self, lao, cran) -> np.ndarray:
        """(B, H, W) predicted projections of the CXR at paired angles (degrees)."""
        if self.cxr is None:
            raise XWinInputError(None, "no chest X-ray loaded: choose a CXR volume first")
        with torch.no_grad():
            out = self.predictor.predict(self.cxr, [float(a) for a in np.atleast_1d(lao)],
                                         [float(c) for c in np.atleast_1d(cran)])
        return np.asarray(out, np.float32)

    # --- registration ("Align DRR to CXR", issue 17) ------------------------------------------------------------
    def cxr_on_detector(self, geometry: Geometry | None = None) -> np.ndarray:
        """The CXR resampled onto the panel's detector (H, W), centres aligned, [0, 1]: at ``cxr_pixel`` mm per pixel
        when known, else spanning the detector's width."""
        if self.cxr is None:
            raise XWinInputError(None, "no chest X-ray loaded: choose a CXR volume first")
        from ..register import resample_image
        g = geometry or self.geometry
        pixel = self.cxr_pixel or g.pixel * g.width / self.cxr.shape[1]
        return resample_image(torch.from_numpy(self.cxr), pixel, g).numpy()

    def align(self, report: Callable[[float, str], None] | None = None, settings=None):
        """Register the CT to the CXR from the current pose (`xwin.register.register`: LAO, CRAN, roll, isocenter;
        the film compared within the CT's footprint). Returns the `RegistrationResult` and changes nothing: apply a
        converged result with `apply_pose` (on the GUI thread). report(fraction, stage): called during the
        optimisation; it may raise (`Job.report` after Cancel) to stop it. settings: `xwin.register.Settings`."""
        from ..register import Pose, level_geometries, register
        from ..register import Settings as RegistrationSettings
        if self._projector is None:
            raise XWinInputError(None, "no CT loaded: choose a CT volume to align")
        settings = settings or RegistrationSettings()
        g = self.geometry
        target = self.cxr_on_detector(g)
        s = self.settings
        start = Pose(s.lao, s.cran, s.roll, cast("tuple[float, float, float]", tuple(float(x) for x in self.isocenter)))
        levels = len(level_geometries(g, settings.sizes))

        def progress(level: int, evaluations: int, similarity: float) -> None:
            if report is not None:
                report(min(0.99, (level + min(evaluations, 50) / 50.0) / max(levels, 1)),
                       f"aligning: level {level + 1} of {levels}, similarity {similarity:.3f}")

        # the μ and pyramid levels are read only; the torch renderer runs no numba kernel (no lock needed)
        return register(self._projector, target, g, start, mode="radiograph", settings=settings, mask_to_ct=True,
                        progress=progress)

    def apply_pose(self, pose) -> None:
        """Take an `xwin.register.Pose` (degrees, isocenter LPS mm) into the settings: LAO, CRAN, roll and the
        isocenter's offset from the CT grid centre."""
        dx, dy, dz = (float(v) for v in np.asarray(pose.isocenter, np.float64) - self._center)
        self.update(lao=float(pose.lao), cran=float(pose.cran), roll=float(pose.roll), iso_dx=dx, iso_dy=dy, iso_dz=dz)

    def overlay(self, kind: str = "checkerboard", tiles: int = 8) -> Projection:
        """The DRR at the current pose against the CXR on the same detector (each scaled to its 1st–99th
        percentile): 'checkerboard' (``tiles`` × ``tiles`` squares alternating DRR / CXR) or 'difference'
        (|DRR − CXR|). Shows how well the pose matches the film."""
        drr = self.drr()
        film = self.cxr_on_detector()
        return replace(drr, image=compare_images(drr.image, film, kind, tiles))

    # --- long work --------------------------------------------------------------------------------------------
    def reconstruct(self, source: str | None = None, method: str | None = None, views: int | None = None,
                    arc: float | None = None, report: Callable[[float, str], None] | None = None,
                    **options) -> Volume:
        """A CT-like volume in HU (LPS, ``[k, j, i]``, `xwin.recon.default_grid` 128³ over the field of view).

        source 'ct': the loaded CT's DRRs reconstructed and scored as `xwin.recon.reconstruct_from_ct` does (same
        volume, meta and scores), with the views rendered in chunks by this session's projector; 'cxr': the world
        model's predicted projections of the CXR over the same orbit (`xwin.recon.reconstruct_from_cxr`).
        method: 'fdk', 'sart' or 'cgls'; views over ``arc`` degrees of LAO at CRAN 0. options: passed on (iters,
        size, spacing, tv, window...). report(fraction, stage): called between chunks of views and iterations; it may
        raise (`xwin.viewer.controller.Job.report` raises `Cancelled` after Cancel) to stop the work there.
        """
        from .. import recon

        report = report or (lambda fraction, stage: None)
        s = self.settings
        source, method = source or s.recon_source, method or s.recon_method
        views, arc = int(views or s.recon_views), float(arc if arc is not None else s.recon_arc)
        if source == "ct":
            if self.ct is None:
                raise XWinInputError(None, "no CT loaded: choose a CT volume to reconstruct from its DRRs")
            volume, scores = self._reconstruct_ct(method, views, arc, report, **options)
            return replace(volume, meta={**volume.meta, "method": method, "source": "ct", **scores})
        if source != "cxr":
            raise XWinInputError(None, f"reconstruct from 'ct' or 'cxr', not {source!r}")
        if self.cxr is None:
            raise XWinInputError(None, "no CXR loaded: choose a radiograph to reconstruct from its predictions")
        report(0.0, f"predicting {views} views and reconstructing ({method.upper()})")
        predictor = self.predictor
        report(0.1, f"predicting {views} views and reconstructing ({method.upper()})")
        volume = recon.reconstruct_from_cxr(predictor, self.cxr, views=views, arc=arc, method=method,
                                            isocenter=self.isocenter, **options)
        report(1.0, "done")
        return volume

    def _reconstruct_ct(self, method: str, views: int, arc: float, report, *, iters=None, size=None, spacing=None,
                        window: str = "hann", tv: float = 0.0, chunk: int = 8, **rest):
        """`xwin.recon.reconstruct_from_ct` step by step (same orbit, grid, reconstruction, coverage mask and
        scores), reporting after each chunk of rendered views (first half) and each iteration (second half)."""
        import time

        from .. import recon
        from ..recon.roundtrip import DEFAULT_ITERS, check_options

        assert self.ct is not None  # `reconstruct` checked it
        if rest:
            return recon.reconstruct_from_ct(self.ct, views=views, arc=arc, method=method, iters=iters, size=size,
                                             spacing=spacing, geometry=self.geometry, window=window, tv=tv,
                                             mu_water=self.mu_water, device=self.compute_device(), **rest)
        check_options(method, iters, tv, window)
        geometry = self.geometry
        device = self.compute_device()
        projector = self._projector
        if projector is None or device != "cpu":  # the session's projector is the CPU one of the live preview
            projector = Projector(self.ct, geometry, isocenter=self.isocenter, mu_water=self.mu_water, device=device)
        lao = recon.orbit_angles(views, arc)
        grid = recon.default_grid(geometry, projector.isocenter, size, spacing)
        poses = projector.views(lao, np.zeros_like(lao))
        k = 0 if method == "fdk" else int(iters or DEFAULT_ITERS[method])
        with torch.no_grad():
            parts = []
            for start in range(0, views, chunk):
                report(0.5 * start / views, f"rendering views {start + 1}–{min(views, start + chunk)} of {views}")
                part = lao[start:start + chunk]
                parts.append(projector.render(part, np.zeros_like(part), mode="line").float())
            projections = torch.cat(parts)
            report(0.5, f"reconstructing ({method.upper()})")
            t0 = time.perf_counter()

            def callback(iteration, *_):
                report(0.5 + 0.5 * (iteration + 1) / max(k, 1), f"{method.upper()} iteration {iteration + 1} of {k}")

            def back_projected(done, total):  # FDK: Cancel takes effect between chunks of views
                report(0.5 + 0.5 * done / total, f"FDK: back-projected {done} of {total} views")

            mu = recon.reconstruct(projections, poses, grid, method, iters=iters, window=window,
                                   tv=tv * self.mu_water / 1000.0, isocenter=projector.isocenter,
                                   callback=back_projected if method == "fdk" else callback)
            seconds = time.perf_counter() - t0
            seen = recon.coverage(poses.to(device=projections.device), grid, device=projections.device).cpu().numpy()
        meta = {"xwin_recon_method": method, "xwin_recon_views": int(views), "xwin_recon_arc_deg": float(arc),
                "xwin_recon_iters": k, "xwin_sid_mm": geometry.sid, "xwin_sdd_mm": geometry.sdd,
                "xwin_mu_water": self.mu_water,
                "xwin_isocenter_lps_mm": " ".join(f"{x:.3f}" for x in projector.isocenter)}
        volume = recon.to_volume(grid, mu, self.mu_water, meta)
        scores = recon.compare(volume, self.ct, mask=seen >= views - 0.5)
        report(1.0, "done")
        return volume, {**scores, "seconds": seconds}

    @staticmethod
    def masks(volume: Volume, names=("body", "lungs", "bone")) -> dict[str, np.ndarray]:
        """Threshold masks of a CT or reconstruction in HU (`xwin.export.segment`): name → bool ``[k, j, i]``."""
        from .. import export
        return export.segment(volume, names)

    @staticmethod
    def export_files(volume: Volume, folder, names=("body", "lungs", "bone")) -> list[str]:
        """`xwin.export.export_segmentation`: multi-label NIfTI + labels.json + ``.seg.nrrd`` in ``folder``."""
        from .. import export
        return export.export_segmentation(volume, names, folder)["files"]

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        """Run ``fn`` on the session's worker thread (one at a time); poll ``future.done()`` from a GUI timer."""
        return self._pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
