"""`xwin viewer`: the XWinSlicer panel as a standalone Qt window (Qt.py over PySide6, VTK render widgets).

Same controls and the same functions as the Slicer module: every action calls `xwin.viewer.session.Session` or
`xwin.viewer.training`. Views: real CXR | predicted projection | DRR (linked window/level: drag in any of them),
and a 3D view with the reconstruction's volume rendering. Images are shown as read: row 0 at the top, column 0 at
the left (PA reading convention, patient's right on the viewer's left).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401 - OpenGL back end
from Qt import QtCore, QtWidgets
from vtkmodules.qt.QVTKRenderWindowInteractor import QVTKRenderWindowInteractor
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import vtkCommand
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPiecewiseFunction
from vtkmodules.vtkCommonMath import vtkMatrix4x4
from vtkmodules.vtkInteractionStyle import vtkInteractorStyleImage, vtkInteractorStyleTrackballCamera
from vtkmodules.vtkIOImage import vtkPNGWriter
from vtkmodules.vtkRenderingCore import (
    vtkColorTransferFunction,
    vtkImageSlice,
    vtkImageSliceMapper,
    vtkRenderer,
    vtkVolume,
    vtkVolumeProperty,
    vtkWindowToImageFilter,
)
from vtkmodules.vtkRenderingVolumeOpenGL2 import vtkSmartVolumeMapper  # noqa: F401 - registers the GPU mapper

from ..io.image import Volume
from .controller import POLL_MS, PREVIEW, Job, PanelController
from .session import DEVICES, PREVIEW_FACTOR, Session, Settings, preload_before_opengl, volume_rendering_points
from .training import TrainingProcess, new_stop_file, train_command

ALIGN = "Align DRR to CXR"
#: what the DRR view shows at full quality (`xwin.viewer.session.Session.overlay` for the comparisons)
OVERLAYS = ("DRR", "checkerboard", "difference")

preload_before_opengl()  # before any VTK window: see its docstring (triton vs Mesa's LLVM)


def _vtk_image(array_kji: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> vtkImageData:
    """vtkImageData of a ``[k, j, i]`` array (i fastest), origin 0, the given spacing (mm)."""
    a = np.ascontiguousarray(array_kji, dtype=np.float32)
    image = vtkImageData()
    image.SetDimensions(a.shape[2], a.shape[1], a.shape[0])
    image.SetSpacing(*spacing)
    scalars = numpy_support.numpy_to_vtk(a.reshape(-1), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


class ImageView(QtWidgets.QWidget):
    """One 2D projection in a VTK widget: row 0 at the top; window/level by dragging (shared via ``changed``)."""

    def __init__(self, title: str, parent=None):
        super().__init__(parent)
        self.title = title
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.label = QtWidgets.QLabel(title)
        self.label.setAlignment(QtCore.Qt.AlignCenter)  # type: ignore[attr-defined]  # Qt.py: unscoped enum name
        layout.addWidget(self.label)
        self.vtk = QVTKRenderWindowInteractor(self)
        layout.addWidget(self.vtk, 1)
        self.renderer = vtkRenderer()
        self.renderer.SetBackground(0.08, 0.08, 0.1)
        self.vtk.GetRenderWindow().AddRenderer(self.renderer)
        self.style = vtkInteractorStyleImage()  # type: ignore[method-assign, assignment]  # hides QWidget.style
        self.vtk.SetInteractorStyle(self.style)
        self.mapper = vtkImageSliceMapper()
        self.slice = vtkImageSlice()
        self.slice.SetMapper(self.mapper)
        self.slice.GetProperty().SetColorWindow(1.0)
        self.slice.GetProperty().SetColorLevel(0.5)
        self.slice.GetProperty().SetInterpolationTypeToLinear()
        self.slice.SetVisibility(False)
        self.renderer.AddViewProp(self.slice)
        self._shape: tuple[int, int] | None = None
        self.array: np.ndarray | None = None
        # self.style: the VTK style above, which mypy takes for QWidget.style
        self.style.AddObserver(vtkCommand.WindowLevelEvent, self._window_level)  # type: ignore[attr-defined]
        self.on_window_level: Callable[[ImageView, float, float], None] | None = None

    def show_image(self, image: np.ndarray | None, caption: str = "") -> None:
        """Show (H, W) image in [0, 1]; the camera is reset only when the field (shape) changes."""
        self.label.setText(f"{self.title} {caption}".strip())
        if image is None:
            self.slice.SetVisibility(False)
            self.array = None
            self.vtk.GetRenderWindow().Render()
            return
        h, w = image.shape
        # flip rows so that row 0 is at the top of the screen (VTK's y axis points up); pixel spacing 1/H
        self.array = np.asarray(image, np.float32)
        self.mapper.SetInputData(_vtk_image(self.array[::-1][None], (1.0 / h, 1.0 / h, 1.0)))
        self.slice.SetVisibility(True)
        if self._shape != (h, w):
            self._shape = (h, w)
            self.renderer.ResetCamera()
            cam = self.renderer.GetActiveCamera()
            cam.ParallelProjectionOn()
            cam.SetParallelScale(0.52)
        self.vtk.GetRenderWindow().Render()

    def window_level(self) -> tuple[float, float]:
        p = self.slice.GetProperty()
        return p.GetColorWindow(), p.GetColorLevel()

    def set_window_level(self, window: float, level: float) -> None:
        p = self.slice.GetProperty()
        if (p.GetColorWindow(), p.GetColorLevel()) != (window, level):
            p.SetColorWindow(window)
            p.SetColorLevel(level)
            self.vtk.GetRenderWindow().Render()

    def _window_level(self, *_):
        if self.on_window_level is not None:
            self.on_window_level(self, *self.window_level())

    def capture(self, path: str | Path) -> Path:
        """PNG of what the view shows, through VTK (QWidget.grab is black for VTK views)."""
        return capture_render_window(self.vtk.GetRenderWindow(), path)


class VolumeView(QtWidgets.QWidget):
    """3D view: volume rendering of the reconstruction (LPS mm; camera looks from the patient's front)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.label = QtWidgets.QLabel("Reconstruction (3D)")
        self.label.setAlignment(QtCore.Qt.AlignCenter)
        layout.addWidget(self.label)
        self.vtk = QVTKRenderWindowInteractor(self)
        layout.addWidget(self.vtk, 1)
        self.renderer = vtkRenderer()
        self.renderer.SetBackground(0.05, 0.05, 0.08)
        self.vtk.GetRenderWindow().AddRenderer(self.renderer)
        self.vtk.SetInteractorStyle(vtkInteractorStyleTrackballCamera())
        self.volume = vtkVolume()
        self.mapper = vtkSmartVolumeMapper()
        self.volume.SetMapper(self.mapper)
        self.volume.SetVisibility(False)
        self.renderer.AddVolume(self.volume)

    def show_volume(self, volume: Volume | None) -> None:
        if volume is None:
            self.volume.SetVisibility(False)
            self.vtk.GetRenderWindow().Render()
            return
        # axis-aligned image (spacing 1, origin 0) placed by the volume's user matrix = lps_from_ijk (mm, LPS)
        self.mapper.SetInputData(_vtk_image(volume.array))
        matrix = vtkMatrix4x4()
        matrix.DeepCopy(volume.lps_from_ijk.ravel())  # type: ignore[call-overload]  # VTK takes any sequence of 16
        self.volume.SetUserMatrix(matrix)
        opacity_points, color_points = volume_rendering_points(volume.array)
        opacity = vtkPiecewiseFunction()
        for x, a in opacity_points:
            opacity.AddPoint(x, a)
        color = vtkColorTransferFunction()
        for x, r, g, b in color_points:
            color.AddRGBPoint(x, r, g, b)
        prop = vtkVolumeProperty()
        prop.SetScalarOpacity(opacity)
        prop.SetColor(color)
        prop.ShadeOn()
        prop.SetInterpolationTypeToLinear()
        self.volume.SetProperty(prop)
        self.volume.SetVisibility(True)
        self.renderer.ResetCamera()
        cam = self.renderer.GetActiveCamera()  # look at the patient's front (anterior = −y in LPS), head up (+z)
        focal = np.asarray(cam.GetFocalPoint())
        dist = cam.GetDistance()
        cam.SetPosition(*(focal + np.array([0.0, -dist, 0.0])))
        cam.SetViewUp(0.0, 0.0, 1.0)
        self.renderer.ResetCameraClippingRange()
        self.label.setText(f"Reconstruction (3D) — {volume.meta.get('method', '')}".rstrip(" —"))
        self.vtk.GetRenderWindow().Render()

    def capture(self, path: str | Path) -> Path:
        return capture_render_window(self.vtk.GetRenderWindow(), path)


def capture_render_window(window, path: str | Path) -> Path:
    """Write a render window's pixels to PNG (vtkWindowToImageFilter on the back buffer)."""
    window.Render()
    grab = vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    writer = vtkPNGWriter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    return path


class LossPlot(QtWidgets.QWidget):
    """Live training loss curves (matplotlib on the Qt canvas)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3, 2), dpi=80)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax = self.figure.add_subplot(111)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.setMinimumHeight(150)

    def update_losses(self, losses: dict[str, list[tuple[int, float]]]) -> None:
        self.ax.clear()
        for name, points in sorted(losses.items()):
            steps, values = zip(*points)
            self.ax.plot(steps, values, label=name.removeprefix("loss_"), lw=1)
        self.ax.set_xlabel("step")
        self.ax.set_ylabel("loss")
        if losses:
            self.ax.legend(fontsize=6)
        self.figure.tight_layout()
        self.canvas.draw_idle()


class ViewerWindow(QtWidgets.QMainWindow):
    """The panel: inputs, geometry, pose sliders (preview while dragging, full on release), side-by-side views,
    Reconstruct, Export, Train. State lives in ``self.session`` (`xwin.viewer.session.Session`)."""

    def __init__(self, session: Session | None = None):
        super().__init__()
        self.setWindowTitle("XWin viewer")
        self.session = session or Session()
        # when to render (throttled previews while dragging, full on release/settle) and the reconstruction job
        self.controller = PanelController(self.session)
        self.training = TrainingProcess()
        self.future: Job | None = None
        self.recon: Volume | None = None
        self.last_drr_ms = 0.0

        central = QtWidgets.QWidget()
        self.setCentralWidget(central)
        root = QtWidgets.QHBoxLayout(central)
        panel = QtWidgets.QWidget()
        panel.setFixedWidth(330)
        self.form = QtWidgets.QVBoxLayout(panel)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidget(panel)
        scroll.setWidgetResizable(True)
        scroll.setFixedWidth(350)
        root.addWidget(scroll)

        views = QtWidgets.QWidget()
        grid = QtWidgets.QGridLayout(views)
        self.cxr_view = ImageView("Chest X-ray")
        self.pred_view = ImageView("Predicted")
        self.drr_view = ImageView("DRR")
        self.volume_view = VolumeView()
        grid.addWidget(self.cxr_view, 0, 0)
        grid.addWidget(self.pred_view, 0, 1)
        grid.addWidget(self.drr_view, 0, 2)
        grid.addWidget(self.volume_view, 1, 0, 1, 3)
        for v in self.image_views:
            v.on_window_level = self._link_window_level
        root.addWidget(views, 1)

        self._build_inputs()
        self._build_geometry()
        self._build_pose()
        self._build_recon_export()
        self._build_training()
        self.form.addStretch(1)
        self.status = self.statusBar()

        self.frame_timer = self._timer(0, self.render_due, single=True)
        self.poll_timer = self._timer(POLL_MS, self.poll)
        self.resize(1400, 900)

    # construction ----------------------------------------------------------------------------------------------
    @property
    def image_views(self) -> list[ImageView]:
        return [self.cxr_view, self.pred_view, self.drr_view]

    def _timer(self, ms: int, slot, single: bool = False) -> QtCore.QTimer:
        t = QtCore.QTimer(self)
        t.setInterval(ms)
        t.setSingleShot(single)
        t.timeout.connect(slot)
        return t

    def _group(self, title: str) -> QtWidgets.QFormLayout:
        box = QtWidgets.QGroupBox(title)
        layout = QtWidgets.QFormLayout(box)
        self.form.addWidget(box)
        return layout

    def _button(self, text: str, slot, tip: str = "") -> QtWidgets.QPushButton:
        b = QtWidgets.QPushButton(text)
        b.setToolTip(tip)
        b.clicked.connect(lambda *_: slot())
        return b

    def _build_inputs(self) -> None:
        f = self._group("Inputs")
        f.addRow(self._button("Open CT…", self.open_ct, "CT: DICOM folder, NIfTI, NRRD, MHA (HU)"))
        f.addRow(self._button("Open chest X-ray…", self.open_cxr, "DICOM, PNG, JPEG"))
        f.addRow(self._button("Load sample data", self.load_demo, "The embedded demo CT and chest X-ray"))
        self.checkpoint_edit = QtWidgets.QLineEdit(self.session.settings.checkpoint)
        self.checkpoint_edit.setPlaceholderText("embedded model")
        self.checkpoint_edit.setToolTip("World model file or run folder (empty: the embedded model)")
        self.checkpoint_edit.editingFinished.connect(
            lambda: self.session.update(checkpoint=self.checkpoint_edit.text().strip()))
        f.addRow("Model:", self.checkpoint_edit)
        self.device_combo = QtWidgets.QComboBox()
        self.device_combo.addItems(DEVICES)
        self.device_combo.setCurrentText(self.session.settings.device)
        self.device_combo.setToolTip("Where prediction, reconstruction and training run: auto (the GPU when PyTorch "
                                     "sees CUDA, else the CPU), cpu or cuda; the interactive DRR stays on the CPU")
        self.device_combo.currentTextChanged.connect(lambda name: self.session.update(device=name))
        f.addRow("Compute on:", self.device_combo)

    def _build_geometry(self) -> None:
        f = self._group("Geometry (mm)")
        s = self.session.settings
        self.geometry_widgets: dict[str, QtWidgets.QDoubleSpinBox | QtWidgets.QSpinBox] = {}
        for name, lo, hi, step, suffix in (("sid", 100, 5000, 10, " mm"), ("sdd", 100, 5000, 10, " mm"),
                                           ("pixel", 0.05, 20, 0.1, " mm")):
            w = QtWidgets.QDoubleSpinBox()
            w.setRange(lo, hi)
            w.setSingleStep(step)
            w.setDecimals(3 if name == "pixel" else 1)
            w.setSuffix(suffix)
            w.setValue(getattr(s, name))
            w.valueChanged.connect(self._geometry_changed)
            self.geometry_widgets[name] = w
            f.addRow(name.upper() + ":" if name != "pixel" else "Pixel:", w)
        for name in ("height", "width"):
            box = QtWidgets.QSpinBox()
            box.setRange(16, 2048)
            box.setSuffix(" px")
            box.setValue(getattr(s, name))
            box.valueChanged.connect(self._geometry_changed)
            self.geometry_widgets[name] = box
            f.addRow("Rows:" if name == "height" else "Columns:", box)

    def _build_pose(self) -> None:
        f = self._group("C-arm pose (degrees)")
        self.lao_slider, self.lao_label = self._slider(-180, 180)
        self.cran_slider, self.cran_label = self._slider(-90, 90)
        f.addRow("LAO+/RAO−:", self._row(self.lao_slider, self.lao_label))
        f.addRow("CRAN+/CAUD−:", self._row(self.cran_slider, self.cran_label))
        self.predict_check = QtWidgets.QCheckBox("Predict on release")
        self.predict_check.setChecked(True)
        f.addRow(self.predict_check)
        f.addRow(self._button("Predict projection", lambda: self.update_views(False, predict=True)))
        self.align_button = self._button(ALIGN, self.align, "Register the CT to the CXR (LAO, CRAN, roll, isocenter) "
                                                            "from the current pose: xwin register")
        self.overlay_combo = QtWidgets.QComboBox()
        self.overlay_combo.addItems(OVERLAYS)
        self.overlay_combo.setToolTip("What the DRR view shows at full quality: the DRR, or the DRR against the CXR")
        self.overlay_combo.currentIndexChanged.connect(lambda *_: self.update_views(False, predict=False))
        f.addRow(self.align_button)
        f.addRow("DRR view:", self.overlay_combo)

    def _slider(self, lo: int, hi: int):
        s = QtWidgets.QSlider(QtCore.Qt.Horizontal)  # type: ignore[attr-defined]  # Qt.py: unscoped enum name
        s.setRange(lo * 2, hi * 2)  # half-degree steps
        s.setValue(0)
        label = QtWidgets.QLabel("+0.0°")
        label.setFixedWidth(48)
        s.valueChanged.connect(self._pose_changed)
        s.sliderReleased.connect(self._slider_released)
        return s, label

    @staticmethod
    def _row(*widgets) -> QtWidgets.QWidget:
        w = QtWidgets.QWidget()
        layout = QtWidgets.QHBoxLayout(w)
        layout.setContentsMargins(0, 0, 0, 0)
        for x in widgets:
            layout.addWidget(x)
        return w

    def _build_recon_export(self) -> None:
        f = self._group("Reconstruction and export")
        self.source_combo = QtWidgets.QComboBox()
        self.source_combo.addItems(["ct", "cxr"])
        self.source_combo.setToolTip("ct: DRRs of the CT; cxr: the model's predicted projections")
        self.method_combo = QtWidgets.QComboBox()
        self.method_combo.addItems(["fdk", "sart", "cgls"])
        f.addRow("From:", self.source_combo)
        f.addRow("Method:", self.method_combo)
        self.recon_button = self._button("Reconstruct", self.reconstruct)
        f.addRow(self.recon_button)
        f.addRow(self._button("Export…", self.export, "Threshold masks: multi-label NIfTI and .seg.nrrd"))

    def _build_training(self) -> None:
        f = self._group("Train")
        self.train_edits = {}
        for key, label in (("train_ct_dir", "CT folder:"), ("train_cxr_dir", "CXR folder:"),
                           ("train_config", "Config:"), ("train_run_dir", "Run folder:"),
                           ("train_init", "Start from:")):
            e = QtWidgets.QLineEdit(getattr(self.session.settings, key))
            self.train_edits[key] = e
            f.addRow(label, e)
        self.start_button = self._button("Start", lambda: self.start_training(False))
        self.resume_button = self._button("Resume", lambda: self.start_training(True))
        self.stop_button = self._button("Stop", self.stop_training, "SIGTERM: checkpoint and exit")
        self.stop_button.setEnabled(False)
        f.addRow(self._row(self.start_button, self.resume_button, self.stop_button))
        self.progress = QtWidgets.QProgressBar()
        self.progress_label = QtWidgets.QLabel("idle")
        self.log = QtWidgets.QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.log.setFixedHeight(90)
        self.loss_plot = LossPlot()
        f.addRow(self.progress)
        f.addRow(self.progress_label)
        f.addRow(self.loss_plot)
        f.addRow(self.log)
        self._log_lines = 0

    # inputs ----------------------------------------------------------------------------------------------------
    def open_ct(self, path: str | None = None) -> None:
        path = path or QtWidgets.QFileDialog.getOpenFileName(self, "Open CT")[0]
        if path:
            from ..io import read_ct
            self.set_ct(read_ct(path))

    def open_cxr(self, path: str | None = None) -> None:
        path = path or QtWidgets.QFileDialog.getOpenFileName(self, "Open chest X-ray")[0]
        if path:
            from ..io import read_radiograph
            radiograph = read_radiograph(path)
            spacing = radiograph.pixel_spacing  # mm at the detector, when the header says (square pixels only)
            square = spacing is not None and abs(spacing[0] - spacing[1]) <= 1e-3 * max(spacing)
            self.set_cxr(radiograph.array, float(spacing[0]) if square else None)

    def load_demo(self) -> None:
        from ..sample_data import demo_ct_path, demo_cxr_path
        self.open_ct(str(demo_ct_path()))
        self.open_cxr(str(demo_cxr_path()))

    def set_ct(self, volume: Volume) -> None:
        self.session.set_ct(volume)
        self.update_views(preview=False)

    def set_cxr(self, image: np.ndarray, pixel: float | None = None) -> None:
        self.session.set_cxr(image, pixel)
        self.cxr_view.show_image(self.session.cxr)
        self.update_views(preview=False)

    # pose and views --------------------------------------------------------------------------------------------
    def set_pose(self, lao: float, cran: float) -> None:
        """Move the sliders (degrees) as a user would: preview follows via the debounce timer."""
        self.lao_slider.setValue(int(round(lao * 2)))
        self.cran_slider.setValue(int(round(cran * 2)))

    def _show_pose(self) -> None:
        """Sliders and labels to the session's pose without feeding it back (the sliders' half-degree steps must
        not round a registered pose)."""
        s = self.session.settings
        for slider, label, value in ((self.lao_slider, self.lao_label, s.lao),
                                     (self.cran_slider, self.cran_label, s.cran)):
            slider.blockSignals(True)
            slider.setValue(int(round(value * 2)))
            slider.blockSignals(False)
            label.setText(f"{value:+.1f}°")

    def _pose_changed(self, *_):
        lao, cran = self.lao_slider.value() / 2, self.cran_slider.value() / 2
        self.lao_label.setText(f"{lao:+.1f}°")
        self.cran_label.setText(f"{cran:+.1f}°")
        self.controller.pose_changed(lao, cran,
                                     dragging=self.lao_slider.isSliderDown() or self.cran_slider.isSliderDown())
        self.render_due()

    def _slider_released(self) -> None:
        self.controller.released()
        self.render_due()

    def render_due(self) -> None:
        """Render what the controller says is due now, then re-arm the timer for the next frame (if any)."""
        kind = self.controller.take_frame()
        if kind is not None:
            self.update_views(preview=kind == PREVIEW)
        wait = self.controller.wait_ms()
        if wait is None:
            self.frame_timer.stop()
        else:
            self.frame_timer.start(wait)

    def _geometry_changed(self, *_):
        try:
            self.controller.settings_changed(**{k: w.value() for k, w in self.geometry_widgets.items()})
        except Exception as exc:  # noqa: BLE001 - impossible geometry is reported, not raised into Qt
            self.status.showMessage(str(exc))
            return
        self.render_due()

    def update_views(self, preview: bool, predict: bool | None = None) -> None:
        """DRR at the sliders' pose (preview: 2× coarser, ~10 ms); at full quality also the prediction."""
        s = self.session.settings
        try:
            if self.session.ct is not None:
                t0 = time.perf_counter()
                overlay = self.overlay_combo.currentText()
                if overlay != "DRR" and not preview and self.session.cxr is not None:
                    drr = self.session.overlay(overlay)
                else:
                    drr, overlay = self.session.drr(preview=preview), "DRR"
                self.last_drr_ms = 1000 * (time.perf_counter() - t0)
                roll = f" roll {s.roll:+.1f}°" if s.roll else ""
                self.drr_view.show_image(drr.image, f"LAO {s.lao:+.1f}° CRAN {s.cran:+.1f}°{roll}"
                                         + (f" (preview 1/{PREVIEW_FACTOR})" if preview else "")
                                         + ("" if overlay == "DRR" else f" — {overlay} with the CXR"))
            if self.session.cxr is not None and not preview and (predict or self.predict_check.isChecked()):
                pred = self.session.predict()
                self.pred_view.show_image(pred.image, f"LAO {s.lao:+.1f}° CRAN {s.cran:+.1f}°")
        except Exception as exc:  # noqa: BLE001 - shown in the status bar
            self.status.showMessage(f"{type(exc).__name__}: {exc}")
            if not preview and predict:
                raise
        else:
            self.status.showMessage(f"DRR {self.last_drr_ms:.0f} ms" + (" (preview)" if preview else ""))

    def _link_window_level(self, source: ImageView, window: float, level: float) -> None:
        for v in self.image_views:
            if v is not source:
                v.set_window_level(window, level)

    # reconstruction and export ---------------------------------------------------------------------------------
    def reconstruct(self) -> None:
        """Start a reconstruction job; pressed again while it runs, Cancel."""
        if self._busy("reconstruction"):
            return
        self.session.update(recon_source=self.source_combo.currentText(), recon_method=self.method_combo.currentText())
        self.future = self.controller.start_reconstruction()
        self.recon_button.setText("Cancel")
        self.status.showMessage("Reconstructing…")
        self.poll_timer.start()

    def _busy(self, name: str) -> bool:
        """True when a job runs (one at a time): a job of this button's kind is cancelled, another is named."""
        if self.future is None:
            return False
        if self.future.name == name:
            self.future.cancel()
            self.status.showMessage(f"Cancelling the {name}…")
        else:
            self.status.showMessage(f"wait for the {self.future.name} to finish (or cancel it)")
        return True

    def align(self, settings=None) -> None:
        """"Align DRR to CXR": register the CT to the CXR from the current pose on the worker thread (progress in the
        status bar); pressed again while it runs, Cancel. A converged pose moves the sliders, roll and isocenter.
        settings: `xwin.register.Settings` (default: the command line's)."""
        if self._busy("alignment"):
            return
        if self.session.ct is None or self.session.cxr is None:
            self.status.showMessage("open a CT and a chest X-ray first")
            return
        self.future = self.controller.start_alignment(settings=settings)
        self.align_button.setText("Cancel alignment")
        self.status.showMessage("Aligning…")
        self.poll_timer.start()

    def _alignment_done(self) -> None:
        job, self.future = self.future, None
        assert job is not None  # polled while the job runs
        self.controller.finished_job()
        self.align_button.setText(ALIGN)
        if job.status == "cancelled":
            self.status.showMessage("Alignment cancelled; the pose was left unchanged")
            return
        try:
            message = self.controller.apply_alignment(job)
        except Exception as exc:  # noqa: BLE001 - shown in the status bar
            self.status.showMessage(f"alignment failed: {exc}")
            return
        self._show_pose()
        self.render_due()
        self.status.showMessage(message)

    def _reconstruction_done(self) -> None:
        job, self.future = self.future, None
        assert job is not None  # polled while the job runs
        self.controller.finished_job()
        self.recon_button.setText("Reconstruct")
        if job.status == "cancelled":
            self.status.showMessage("Reconstruction cancelled")
            return
        try:
            self.recon = job.result()
        except Exception as exc:  # noqa: BLE001
            self.status.showMessage(f"reconstruction failed: {exc}")
            return
        self.volume_view.show_volume(self.recon)
        self.status.showMessage("Reconstruction ready")

    def export(self, folder: str | None = None) -> list[Path]:
        """Masks of the reconstruction (else the CT) → multi-label NIfTI, labels.json and .seg.nrrd in ``folder``."""
        volume = self.recon if self.recon is not None else self.session.ct
        if volume is None:
            self.status.showMessage("nothing to export: reconstruct or open a CT first")
            return []
        folder = folder or QtWidgets.QFileDialog.getExistingDirectory(self, "Export to folder")
        if not folder:
            return []
        written = [Path(p) for p in self.session.export_files(volume, folder)]
        self.status.showMessage(f"wrote {', '.join(p.name for p in written)}")
        return written

    # training --------------------------------------------------------------------------------------------------
    def start_training(self, resume: bool, command: list[str] | None = None) -> None:
        """Start ``xwin train`` (or ``command``) in its own process; progress is polled every 200 ms."""
        if self.training.running:
            return
        values = {k: e.text().strip() for k, e in self.train_edits.items()}
        self.session.update(**values)
        try:
            cmd = command or train_command(values["train_config"], values["train_run_dir"], resume,
                                           values["train_ct_dir"], values["train_cxr_dir"], values["train_init"],
                                           stop_file=new_stop_file(), device=self.session.settings.device)
        except ValueError as exc:
            self.status.showMessage(str(exc))
            return
        self.training.start(cmd)
        self.log.clear()
        self._log_lines = 0
        self.progress.setValue(0)
        self._training_buttons()
        self.poll_timer.start()

    def stop_training(self) -> None:
        self.training.stop()
        self._training_buttons()

    def _training_buttons(self) -> None:
        running = self.training.running
        self.start_button.setEnabled(not running)
        self.resume_button.setEnabled(not running)
        self.stop_button.setEnabled(running)

    def poll(self) -> None:
        """Timer: background reconstruction and the training process (never blocks the GUI)."""
        if self.future is not None:
            if self.future.done():
                (self._alignment_done if self.future.name == "alignment" else self._reconstruction_done)()
            else:
                self.status.showMessage(f"{self.future.name.capitalize()}: {self.future.stage} "
                                        f"({100 * self.future.progress:.0f} %)")
        t = self.training
        if t.proc is not None:
            records = t.poll()
            state = t.state
            for line in state.log[self._log_lines:]:
                self.log.appendPlainText(line)
            self._log_lines = len(state.log)
            self.progress.setValue(int(100 * state.fraction))
            self.progress_label.setText(f"{state.status}: {state.summary()}")
            if records and state.losses:
                self.loss_plot.update_losses(state.losses)
            if not t.running and state.status not in ("running", "stopping"):
                if state.checkpoint and state.checkpoint != self.session.settings.checkpoint:
                    self.session.update(checkpoint=state.checkpoint)  # the panel's model now
                    self.checkpoint_edit.setText(state.checkpoint)
                self._training_buttons()
        if self.future is None and not t.running:
            self.poll_timer.stop()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt name
        for timer in (self.frame_timer, self.poll_timer):  # a frame due after close would render into finalised views
            timer.stop()
        self.training.terminate()  # never blocks: stop file (checkpoint), tree killed after the grace period
        self.controller.cancel()
        self.session.close()
        views: tuple[ImageView | VolumeView, ...] = (*self.image_views, self.volume_view)
        for v in views:
            v.vtk.Finalize()
        super().closeEvent(event)


def main(ct: str | None = None, cxr: str | None = None, demo: bool = False, settings: Settings | None = None) -> int:
    """Open the viewer window (optionally with a CT, a CXR or the demo data) and run the Qt event loop."""
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    window = ViewerWindow(Session(settings))
    window.show()
    if demo:
        window.load_demo()
    if ct:
        window.open_ct(ct)
    if cxr:
        window.open_cxr(cxr)
    return app.exec()
