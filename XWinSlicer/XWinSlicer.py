"""XWinSlicer: chest-radiograph world models (X-WIN) in 3D Slicer.

Thin Qt layer over `XWinSlicerLib.logic.XWinLogic` (MRML, tested without Qt) and the shared `xwin` core. Units: mm,
degrees (LAO/CRAN positive, RAO/CAUD negative); nodes are RAS, the core is LPS (docs/geometry.md).
"""
from __future__ import annotations

import logging
import os
import pathlib
import sys
from typing import Annotated

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:  # Slicer ≥ 5.2
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
except ImportError:  # older Slicer: the logic's ParameterStore alone
    parameterNodeWrapper = None

POLL_MS = 200           # training / background-work polling (the preview throttle lives in xwin.viewer.controller)
LAYOUT_ID = 8642        # custom layout: CXR | predicted | DRR over 3D | reconstruction slice
VIEW_TAGS = {"cxr": "XWinCXR", "prediction": "XWinPredicted", "drr": "XWinDRR", "recon": "XWinRecon"}


# --- where the core and the embedded model live ------------------------------------------------------------------
def sharedFolder() -> pathlib.Path | None:
    """Folder holding ``XWinCore/`` and ``Resources/Models/`` in a source, build or install tree (macOS bundle
    included), or $XWIN_SHARE_DIR: `XWinSlicerLib.paths.shared_folder_candidates`."""
    _libraryOnPath()
    from XWinSlicerLib import paths
    return paths.find_shared_folder(pathlib.Path(__file__).resolve().parent)


def embeddedCheckpoint() -> str:
    from XWinSlicerLib import paths
    path = paths.embedded_checkpoint(sharedFolder())
    return str(path) if path else ""


def _install():
    """`XWinSlicerLib.install` (pure decisions; importable without the core, on Slicer 5.8's Python 3.9)."""
    _libraryOnPath()
    from XWinSlicerLib import install
    return install


def coreInstallState() -> tuple[str, str]:
    """(state, message) without installing or importing the core. state: 'unsupported' (Slicer's Python is older than
    XWinCore needs), 'missing', 'outdated' (installed core older than the module's), 'current', or 'notfound'
    (XWinCore is not beside the module)."""
    install = _install()
    folder = sharedFolder()
    if folder is None:
        return "notfound", "XWinCore was not found beside the module: reinstall the XWinSlicer extension."
    project = install.read_core_project(folder / "XWinCore" / "pyproject.toml")
    slicerVersion = (int(slicer.app.majorVersion), int(slicer.app.minorVersion)) if hasattr(slicer, "app") else None
    reason = install.unsupported_reason(install.python_version(), slicerVersion, project.requires_python)
    if reason:
        return "unsupported", reason
    installed = install.installed_distributions().get("xwin")
    state = install.core_status(installed, project.version)
    return state, {"missing": "The XWin Python core is not installed yet: the first action that needs it installs it.",
                   "outdated": f"The installed XWin core ({installed}) is older than this module's "
                               f"({project.version}): the next action offers an upgrade.",
                   "current": f"XWin core {installed}."}[state]


def ensureCore(askConfirmation: bool = True) -> bool:
    """Make ``import xwin`` work in Slicer's Python, asking first; called by the first action that needs the core
    (never when the module opens). Returns False when declined or impossible (the next action asks again).

    Follows the decisions of `XWinSlicerLib.install`: refuse when Slicer's Python is too old; install torch through the
    PyTorch extension only when it is missing (PyTorchUtils picks the CUDA/CPU wheel); install XWinCore with
    ``--no-deps`` and then each of its requirements except the packages Slicer bundles, as SlicerTotalSegmentator does
    (lassoan/SlicerTotalSegmentator, TotalSegmentator/TotalSegmentator.py, ``setupPythonRequirements`` and
    ``pipInstallSelective`` with ``packagesToSkip``); offer an upgrade when the installed core is older than the
    module's. ``slicer.util.pip_install`` (Slicer v5.10.0, Base/Python/slicer/util.py) raises on a pip failure: caught
    and shown. ``slicer.packaging.pip_ensure`` exists only from Slicer 5.12 and is not used.
    """
    install = _install()
    state, message = coreInstallState()
    if state in ("unsupported", "notfound"):
        slicer.util.errorDisplay(message)
        return False
    if state == "current" or (state == "outdated" and "xwin" in sys.modules):
        if state == "outdated":
            logging.warning("XWin: %s (restart Slicer after upgrading)", message)
        return _importCore()
    folder = sharedFolder()
    project = install.read_core_project(folder / "XWinCore" / "pyproject.toml")
    plan = install.plan_install(project.dependencies, install.installed_distributions())
    if askConfirmation:
        question = ("XWinSlicer needs its Python core (xwin) in Slicer's Python. Install it now? This takes a few "
                    "minutes and needs a network connection." if state == "missing" else
                    f"{message}\nUpgrade it now? (Declining keeps the installed core.)")
        if not slicer.util.confirmOkCancelDisplay(question, "XWin core", detailedText=plan.summary() or "nothing else"):
            return state == "outdated" and _importCore()
    try:
        with slicer.util.WaitCursor():
            if plan.torch:
                try:
                    import PyTorchUtils
                except ImportError:
                    slicer.util.errorDisplay("XWinSlicer needs the PyTorch extension: install it from the Extensions "
                                             "Manager, restart Slicer, then try again.")
                    return False
                torchLogic = PyTorchUtils.PyTorchUtilsLogic()
                if not torchLogic.torchInstalled():
                    if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=plan.torch
                                               if plan.torch != "any version" else None) is None:
                        slicer.util.errorDisplay("PyTorch could not be installed (PyTorch extension).")
                        return False
            slicer.util.pip_install(["--upgrade", "--no-deps", str(folder / "XWinCore")])
            for requirement in plan.install:
                slicer.util.pip_install([requirement])
    except Exception as exc:  # noqa: BLE001 - pip and network errors: shown, retried on the next action
        slicer.util.errorDisplay(f"Installing the XWin core failed: {exc}", detailedText=plan.summary())
        return False
    if plan.kept:
        logging.warning("XWin: kept Slicer's bundled packages: %s", plan.summary())
    return _importCore()


def _importCore() -> bool:
    import importlib
    importlib.invalidate_caches()
    try:
        import xwin  # noqa: F401
        return True
    except ImportError as exc:
        slicer.util.errorDisplay(f"The XWin core is installed but does not import: {exc}")
        return False


def _libraryOnPath() -> None:
    here = str(pathlib.Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)


# --- module ------------------------------------------------------------------------------------------------------
class XWinSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "XWin"
        self.parent.categories = ["Radiology"]
        self.parent.dependencies = []
        self.parent.contributors = ["XWin founding engineers"]
        self.parent.helpText = (
            "Chest-radiograph world models (X-WIN): DRRs of a CT at any C-arm angle (LAO/RAO, CRAN/CAUD in degrees), "
            "the model's predicted projection beside a real chest X-ray, reconstruction of a CT-like volume, export "
            "to a segmentation, and training. Geometry contract: "
            "<a href='https://github.com/xwin-project/XWin/blob/main/docs/geometry.md'>docs/geometry.md</a>.")
        self.parent.acknowledgementText = (
            "X-WIN method: Yang et al., 2025, Building Chest Radiograph World Model via Predictive Sensing. Demo CT: "
            "LIDC-IDRI-0001 (TCIA, CC BY 3.0).")
        # the embedded demo CT and CXR in the Sample Data module, once the application has started (the pattern of
        # Slicer's scripted-module template: slicer.app.connect("startupCompleted()", registerSampleData))
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """`XWinSlicerLib.sampledata.sample_data_sources` registered with SampleData (no network: file:// URIs)."""
    try:
        import SampleData
    except ImportError:
        return
    _libraryOnPath()
    from XWinSlicerLib import sampledata
    icon = pathlib.Path(__file__).resolve().parent / "Resources" / "Icons" / "XWinSlicer.png"
    for arguments in sampledata.sample_data_sources(sharedFolder(), icon if icon.is_file() else None):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**arguments)


if parameterNodeWrapper is not None:
    @parameterNodeWrapper
    class XWinSlicerParameterNode:
        """Same names as `xwin.viewer.session.Settings` and `XWinSlicerLib.logic.NODE_ROLES` (the logic reads them).

        Each annotation must be one that Slicer's GUI connector for the bound widget of
        XWinSlicer/Resources/UI/XWinSlicer.ui
        accepts (Slicer/Slicer, tag v5.8.1, Base/Python/slicer/parameterNodeWrapper/guiConnectors.py): a QComboBox
        needs ``Choice`` on a str (QComboBoxToStringableConnector raises "requires the Choice annotation"), a
        ctkSliderWidget needs bounds (QDoubleSpinBoxCtkSliderWidgetToFloatConnector raises on an unbounded float),
        and the connectors overwrite a spin box's range with the annotation's (±inf / ±2³¹ without one), so the
        bounds here are the .ui's minimum/maximum. Testing/Python/test_slicer_ui_binding.py checks every pair.
        """

        ctVolume: slicer.vtkMRMLScalarVolumeNode
        cxrVolume: slicer.vtkMRMLScalarVolumeNode
        drrVolume: slicer.vtkMRMLScalarVolumeNode
        predictionVolume: slicer.vtkMRMLScalarVolumeNode
        reconVolume: slicer.vtkMRMLScalarVolumeNode
        segmentation: slicer.vtkMRMLSegmentationNode
        sid: Annotated[float, WithinRange(100.0, 5000.0)] = 1600.0
        sdd: Annotated[float, WithinRange(100.0, 5000.0)] = 1800.0
        height: Annotated[int, WithinRange(16, 2048)] = 256
        width: Annotated[int, WithinRange(16, 2048)] = 256
        pixel: Annotated[float, WithinRange(0.05, 20.0)] = 1.7
        lao: Annotated[float, WithinRange(-180.0, 180.0)] = 0.0
        cran: Annotated[float, WithinRange(-90.0, 90.0)] = 0.0
        roll: float = 0.0  # set by "Align DRR to CXR" (degrees; no widget)
        iso_dx: float = 0.0  # isocenter offset from the CT grid centre, LPS mm (set by "Align DRR to CXR")
        iso_dy: float = 0.0
        iso_dz: float = 0.0
        checkpoint: pathlib.Path
        device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
        recon_method: Annotated[str, Choice(["fdk", "sart", "cgls"])] = "fdk"
        recon_source: Annotated[str, Choice(["ct", "cxr"])] = "ct"
        recon_views: Annotated[int, WithinRange(4, 720)] = 120
        recon_arc: Annotated[float, WithinRange(30.0, 360.0)] = 360.0
        train_ct_dir: pathlib.Path
        train_cxr_dir: pathlib.Path
        train_config: pathlib.Path
        train_run_dir: pathlib.Path
        train_init: pathlib.Path
else:
    XWinSlicerParameterNode = None


# --- widget ------------------------------------------------------------------------------------------------------
class XWinSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, geometry, pose sliders (throttled previews while dragging, full quality on release),
    side-by-side views with linked window/level, Reconstruct (progress, Cancel), Export, Train. The work is in
    `XWinSlicerLogic`; when to render and the reconstruction job are `xwin.viewer.controller.PanelController`'s
    (shared with ``xwin viewer``): this class lays out widgets, forwards events and renders."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._guiConnections = None
        self._training = None
        self._future = None  # the reconstruction or alignment `Job` while one runs
        self._wlLink = None
        self.controller = None  # `PanelController`, once the core is there

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/XWinSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        _libraryOnPath()
        # The core (xwin, torch...) is not installed or imported here: the first action that needs it does it
        # (`requireCore`), after asking; opening the module only says where things stand.
        self.logic = XWinSlicerLogic()
        self.ui.statusLabel.text = coreInstallState()[1]

        # one single-shot timer: the controller says what to render and when to ask again (throttle, settle)
        self.frameTimer = qt.QTimer(uiWidget)
        self.frameTimer.setSingleShot(True)
        self.frameTimer.connect("timeout()", self.renderDue)
        self.pollTimer = qt.QTimer(uiWidget)
        self.pollTimer.setInterval(POLL_MS)
        self.pollTimer.connect("timeout()", self.poll)

        for slider in (self.ui.laoSlider, self.ui.cranSlider):
            slider.connect("valueChanged(double)", self.onPoseChanged)
            inner = slider.slider() if hasattr(slider, "slider") else None
            if inner is not None:
                inner.connect("sliderReleased()", self.onSliderReleased)
        for w in (self.ui.sidSpinBox, self.ui.sddSpinBox, self.ui.pixelSpinBox, self.ui.heightSpinBox,
                  self.ui.widthSpinBox):
            w.connect("valueChanged(double)" if isinstance(w, qt.QDoubleSpinBox) else "valueChanged(int)",
                      lambda *_: self.onSettingsChanged())
        self.ui.ctSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda *_: self.onSettingsChanged(fit=True))
        self.ui.cxrSelector.connect("currentNodeChanged(vtkMRMLNode*)", lambda *_: self.onSettingsChanged(fit=True))
        # Export's default folder: Slicer's default scene location, not the working directory (Slicer v5.8.1,
        # Base/QTCore/qSlicerCoreApplication.h, property defaultScenePath)
        self.ui.exportDirectoryButton.directory = _defaultExportFolder()
        self.ui.sampleDataButton.connect("clicked(bool)", self.onSampleData)
        self.ui.predictButton.connect("clicked(bool)", self.onPredict)
        self.ui.reconstructButton.connect("clicked(bool)", self.onReconstruct)
        self.ui.alignButton.connect("clicked(bool)", self.onAlign)
        self.ui.overlayComboBox.connect("currentIndexChanged(int)", lambda *_: self.updateViews(preview=False,
                                                                                               predict=False))
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.startTrainingButton.connect("clicked(bool)", lambda: self.onStartTraining(resume=False))
        self.ui.resumeTrainingButton.connect("clicked(bool)", lambda: self.onStartTraining(resume=True))
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTraining)

        self.plotWidget = slicer.qMRMLPlotWidget()
        self.plotWidget.setMRMLScene(slicer.mrmlScene)
        self.plotViewNode = None
        self.ui.trainingCollapsibleButton.layout().addWidget(self.plotWidget)
        self.plotWidget.setMinimumHeight(180)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    # parameter node --------------------------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        node = self.logic.getParameterNode()
        if XWinSlicerParameterNode is not None:
            wrapped = XWinSlicerParameterNode(node)
            if not str(wrapped.checkpoint) or str(wrapped.checkpoint) == ".":
                embedded = embeddedCheckpoint()
                if embedded:
                    wrapped.checkpoint = pathlib.Path(embedded)
            if not wrapped.ctVolume:
                wrapped.ctVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            self.setParameterNode(wrapped)
        elif self.logic.core is not None:  # no wrapper: push/pull by hand through the logic's ParameterStore
            self.ui.checkpointPathLineEdit.currentPath = self.logic.parameters().settings().checkpoint or \
                embeddedCheckpoint()

    def setParameterNode(self, wrapped) -> None:
        if self._parameterNode and self._guiConnections:
            self._parameterNode.disconnectGui(self._guiConnections)
        self._parameterNode = wrapped
        if wrapped:
            self._guiConnections = wrapped.connectGui(self.ui)

    def cleanup(self) -> None:
        self.removeObservers()
        if self._parameterNode and self._guiConnections:
            self._parameterNode.disconnectGui(self._guiConnections)
        if self._training is not None:
            # returns at once: the trainer sees its stop file, checkpoints and exits on its own; a watchdog kills the
            # process tree if it is still alive after the grace period (`TrainingProcess.terminate`)
            self._training.terminate()
        if self.logic is not None and self.logic.core is not None:
            self.logic.session.close()

    def requireCore(self) -> bool:
        """For an action that needs the core: install it (asking first) when missing, then create the logic's core.
        Declining is not remembered: the next action asks again."""
        if self.logic.core is not None:
            return True
        if not ensureCore():
            self.ui.statusLabel.text = coreInstallState()[1]
            return False
        self.logic.setupCore()
        self.ui.statusLabel.text = coreInstallState()[1]
        return True

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode and self._guiConnections:
            self._parameterNode.disconnectGui(self._guiConnections)
            self._guiConnections = None

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
        # Close Scene removed the plot nodes: rebuild the loss plot from the training state still held here
        self.plotViewNode = None
        if self._training is not None and self._training.state.losses and self.logic.core is not None:
            self._showLossPlot(self._training.state)

    # views -----------------------------------------------------------------------------------------------------
    def panelController(self):
        """`xwin.viewer.controller.PanelController` over the logic's session (None until the core is installed)."""
        if self.controller is None and self.logic.core is not None:
            from xwin.viewer.controller import PanelController
            self.controller = PanelController(self.logic.session)
        return self.controller

    def _dragging(self) -> bool:
        return any(getattr(s, "slider", lambda: None)() is not None and s.slider().isSliderDown()
                   for s in (self.ui.laoSlider, self.ui.cranSlider))

    def onPoseChanged(self, _value=None) -> None:
        c = self.panelController()
        if c is None:
            self.ui.statusLabel.text = coreInstallState()[1]
            return
        c.pose_changed(self.ui.laoSlider.value, self.ui.cranSlider.value, dragging=self._dragging())
        self.renderDue()

    def onSettingsChanged(self, fit: bool = False) -> None:
        c = self.panelController()
        if c is None:
            return
        self._fitNext = self._fitNext or fit
        c.settings_changed()
        self.renderDue()

    def onSliderReleased(self) -> None:
        c = self.panelController()
        if c is not None:
            c.released()
            self.renderDue()

    def renderDue(self) -> None:
        """Render what the controller says is due now (a preview at most every ~70 ms while dragging, full quality
        once settled or released), then re-arm the timer for the next one."""
        c = self.panelController()
        if c is None:
            return
        kind = c.take_frame()
        if kind is not None:
            fit, self._fitNext = self._fitNext, False
            self.updateViews(preview=kind == "preview", fit=fit)
        wait = c.wait_ms()
        if wait is None:
            self.frameTimer.stop()
        else:
            self.frameTimer.start(wait)

    def onPredict(self) -> None:
        if self.requireCore():
            self.updateViews(preview=False, predict=True)

    _fitNext = False

    def updateViews(self, preview: bool, predict: bool | None = None, fit: bool = False) -> None:
        """DRR (preview or full) and, at full quality, the predicted projection; both into the layout, each view
        re-planed on its detector (`planSliceToProjection`: zoom and pan kept; ``fit``: the whole image). Slider and
        geometry events never install the core (no dialog while dragging): without it they only say so."""
        if self.logic.core is None:
            self.ui.statusLabel.text = coreInstallState()[1]
            return
        with slicer.util.tryWithErrorDisplay("XWin: could not update the views.", waitCursor=not preview):
            p = self.logic.parameters()
            self.logic.applySettings()
            s = p.settings()
            # the sliders' values, not the parameter node's: our valueChanged slot may run before the GUI connector's
            s.lao, s.cran = float(self.ui.laoSlider.value), float(self.ui.cranSlider.value)
            self.logic.session.update(lao=s.lao, cran=s.cran)
            ct, cxr = self.ui.ctSelector.currentNode(), self.ui.cxrSelector.currentNode()
            overlay = self.ui.overlayComboBox.currentText
            if ct is not None and cxr is not None and not preview and overlay != "DRR":
                drr = self.logic.renderOverlay(ct, cxr, overlay, outputNode=p.nodeRef("drrVolume"))
                p.setNodeRef("drrVolume", drr)
            elif ct is not None:
                drr = self.logic.renderDrr(ct, s.lao, s.cran, preview=preview, outputNode=p.nodeRef("drrVolume"))
                p.setNodeRef("drrVolume", drr)
            if cxr is not None and not preview and (predict or self.ui.autoPredictCheckBox.checked):
                pred = self.logic.predictProjection(cxr, s.lao, s.cran, outputNode=p.nodeRef("predictionVolume"))
                p.setNodeRef("predictionVolume", pred)
            self.logic.showSideBySide(cxr, p.nodeRef("predictionVolume"), p.nodeRef("drrVolume"),
                                      p.nodeRef("reconVolume"), fit=fit)
            self.ui.statusLabel.text = f"LAO {s.lao:+.1f}°, CRAN {s.cran:+.1f}°" + (" (preview)" if preview else "")

    def onSampleData(self) -> None:
        if not self.requireCore():
            return
        with slicer.util.tryWithErrorDisplay("XWin: could not load the sample data.", waitCursor=True):
            ct, cxr = self.logic.loadSampleData()
            self.ui.ctSelector.setCurrentNode(ct)
            self.ui.cxrSelector.setCurrentNode(cxr)
            self.updateViews(preview=False, fit=True)

    # registration ----------------------------------------------------------------------------------------------
    def onAlign(self) -> None:
        """"Align DRR to CXR" (`xwin.register` from the current pose, a `Job` on the session's worker: progress in
        the status line); pressed again while it runs, it cancels it. A converged pose is written to the parameter
        node: the sliders, roll and isocenter follow."""
        if self._future is not None:
            if self._future.name == "alignment":
                self._future.cancel()
                self.ui.statusLabel.text = "Cancelling the alignment..."
            else:
                self.ui.statusLabel.text = f"Wait for the {self._future.name} to finish (or cancel it)."
            return
        if not self.requireCore():
            return
        with slicer.util.tryWithErrorDisplay("XWin: could not start the alignment."):
            self.logic.applySettings()
            self.logic.prepareAlignment(self.ui.ctSelector.currentNode(), self.ui.cxrSelector.currentNode())
            self._future = self.panelController().start_alignment()
            self.ui.alignButton.text = "Cancel alignment"
            self.ui.statusLabel.text = "Aligning the DRR to the CXR..."
            self.pollTimer.start()

    def _alignmentDone(self) -> None:
        job, self._future = self._future, None
        self.panelController().finished_job()
        self.ui.alignButton.text = "Align DRR to CXR"
        if job.status == "cancelled":
            self.ui.statusLabel.text = "Alignment cancelled; the pose was left unchanged"
            return
        with slicer.util.tryWithErrorDisplay("XWin: the alignment failed."):
            self.ui.statusLabel.text = self.logic.applyAlignment(self.panelController(), job)
            self.updateViews(preview=False)

    # reconstruction and export ---------------------------------------------------------------------------------
    def onReconstruct(self) -> None:
        """Start a reconstruction (a `Job` on the session's worker: progress in the status line); pressed again while
        one runs, it cancels it (the work stops at its next chunk of views or iteration)."""
        if self._future is not None:
            if self._future.name == "reconstruction":
                self._future.cancel()
                self.ui.statusLabel.text = "Cancelling the reconstruction..."
            else:
                self.ui.statusLabel.text = f"Wait for the {self._future.name} to finish (or cancel it)."
            return
        if not self.requireCore():
            return
        s = self.logic.parameters().settings()
        node = self.ui.cxrSelector.currentNode() if s.recon_source == "cxr" else self.ui.ctSelector.currentNode()
        if node is None:
            slicer.util.errorDisplay(f"Choose a {s.recon_source.upper()} volume first.")
            return
        with slicer.util.tryWithErrorDisplay("XWin: could not start the reconstruction."):
            self.logic.applySettings()
            self.logic.prepareReconstruction(node)
            self._reconName = f"{node.GetName()}_recon"
            self._future = self.panelController().start_reconstruction(s.recon_source)
            self._reconButtonText = self.ui.reconstructButton.text
            self.ui.reconstructButton.text = "Cancel reconstruction"
            self.ui.statusLabel.text = f"Reconstructing ({s.recon_method.upper()})..."
            self.pollTimer.start()

    def _reconstructionDone(self) -> None:
        job, self._future = self._future, None
        self.panelController().finished_job()
        self.ui.reconstructButton.text = getattr(self, "_reconButtonText", "Reconstruct")
        if job.status == "cancelled":
            self.ui.statusLabel.text = "Reconstruction cancelled"
            return
        with slicer.util.tryWithErrorDisplay("XWin: the reconstruction failed."):
            p = self.logic.parameters()
            node = self.logic.showReconstruction(job.result(), self._reconName, p.nodeRef("reconVolume"))
            p.setNodeRef("reconVolume", node)
            self.logic.showSideBySide(self.ui.cxrSelector.currentNode(), p.nodeRef("predictionVolume"),
                                      p.nodeRef("drrVolume"), node, fit=False)
            slicer.util.resetThreeDViews()
            self.ui.statusLabel.text = f"Reconstruction: {node.GetName()}"

    def onExport(self) -> None:
        if not self.requireCore():
            return
        p = self.logic.parameters()
        volume = p.nodeRef("reconVolume") or self.ui.ctSelector.currentNode()
        if volume is None:
            slicer.util.errorDisplay("Reconstruct first, or choose a CT.")
            return
        with slicer.util.tryWithErrorDisplay("XWin: export failed.", waitCursor=True):
            seg = self.logic.exportSegmentation(volume, outputNode=p.nodeRef("segmentation"))
            p.setNodeRef("segmentation", seg)
            folder = self.ui.exportDirectoryButton.directory
            if folder:
                pathlib.Path(folder).mkdir(parents=True, exist_ok=True)  # the default XWin/ may not exist yet
            written = self.logic.exportFiles(volume, folder) if folder else []
            self.ui.statusLabel.text = f"Segmentation {seg.GetName()}" + (f"; wrote {len(written)} files"
                                                                          if written else "")

    # training --------------------------------------------------------------------------------------------------
    def onStartTraining(self, resume: bool) -> None:
        if (self._training is not None and self._training.active) or not self.requireCore():
            return
        with slicer.util.tryWithErrorDisplay("XWin: could not start training."):
            # through PythonSlicer (a launcher that forwards no signal): Stop works through the command's stop file
            self._training = self.logic.startTraining(resume=resume, python=_pythonExecutable())
            self.ui.trainingLog.clear()
            self.ui.trainingProgressBar.value = 0
            self._logLines = 0
            self.pollTimer.start()
            self._updateTrainingButtons()

    def onStopTraining(self) -> None:
        if self._training is not None:
            self._training.stop()  # stop file: the trainer checkpoints and exits; tree killed after the grace period
            self._updateTrainingButtons()

    def _showLossPlot(self, state) -> None:
        chart = self.logic.updateLossPlot(state)
        if self.plotViewNode is None or self.plotViewNode.GetScene() is None:
            self.plotViewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode", "XWinLossView")
            self.plotWidget.setMRMLPlotViewNode(self.plotViewNode)
        self.plotViewNode.SetPlotChartNodeID(chart.GetID())

    def _updateTrainingButtons(self) -> None:
        running = self._training is not None and self._training.active
        self.ui.startTrainingButton.enabled = not running
        self.ui.resumeTrainingButton.enabled = not running
        self.ui.stopTrainingButton.enabled = running

    def poll(self) -> None:
        """Timer: background reconstruction or alignment, and the training process (never blocks)."""
        if self._future is not None:
            if self._future.done():
                (self._alignmentDone if self._future.name == "alignment" else self._reconstructionDone)()
            else:
                future = self._future
                self.ui.statusLabel.text = (f"{future.name.capitalize()}: {future.stage} "
                                            f"({100 * future.progress:.0f} %)" + (", cancelling" if future.cancelled
                                                                                  else ""))
        t = self._training
        if t is not None:
            records = t.poll()
            state = t.state
            for line in state.log[self._logLines:]:
                self.ui.trainingLog.appendPlainText(line)
            self._logLines = len(state.log)
            self.ui.trainingProgressBar.value = int(100 * state.fraction)
            self.ui.trainingStatusLabel.text = f"{state.status}: {state.summary()}"
            if records and state.losses:
                self._showLossPlot(state)
            if not t.active and state.status not in ("running", "stopping"):
                if state.checkpoint:
                    self.ui.checkpointPathLineEdit.currentPath = state.checkpoint  # the panel's model now
                self._updateTrainingButtons()
        if self._future is None and (t is None or (not t.active and t.state.status != "stopping")):
            self.pollTimer.stop()


def _coreImportable() -> bool:
    """Installed and current, without importing it (opening the module must not import torch or install anything)."""
    try:
        return coreInstallState()[0] == "current"
    except Exception:  # noqa: BLE001 - a broken pyproject or metadata: the first action reports it
        return False


def _defaultExportFolder() -> str:
    """`XWinSlicerLib.install.default_export_folder` under Slicer's default scene location."""
    _libraryOnPath()
    from XWinSlicerLib import paths
    return paths.default_export_folder(getattr(slicer.app, "defaultScenePath", "") if hasattr(slicer, "app") else "")


def _pythonExecutable() -> str:
    """Slicer's own Python (PythonSlicer) for the trainer process."""
    return getattr(slicer.app, "pythonExecutable", None) or \
        str(pathlib.Path(slicer.app.slicerHome) / "bin" / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"))


# --- logic -------------------------------------------------------------------------------------------------------
class XWinSlicerLogic(ScriptedLoadableModuleLogic):
    """Slicer adapter: `XWinSlicerLib.logic.XWinLogic` on ``slicer.mrmlScene`` with Slicer's module logics, plus the
    layout (views are Qt-side). Every other call is forwarded to that logic."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        _libraryOnPath()
        self.core = None  # `setupCore` once the xwin core is installed (the widget's `requireCore`)
        if "xwin" in sys.modules or _coreImportable():
            self.setupCore()

    def setupCore(self) -> None:
        from XWinSlicerLib.logic import XWinLogic
        self.core = XWinLogic(slicer.mrmlScene, volumesLogic=slicer.modules.volumes.logic(),
                              volumeRenderingLogic=slicer.modules.volumerendering.logic(),
                              applicationLogic=slicer.app.applicationLogic())

    def __getattr__(self, name):
        core = self.__dict__.get("core")
        if core is None:
            raise AttributeError(f"{name}: the XWin core is not installed yet")
        return getattr(core, name)

    def getParameterNode(self):
        """The module's singleton parameter node. Without the core, Slicer's own (same node: ModuleName attribute
        'XWinSlicer', Slicer v5.10.0 Base/Python/slicer/ScriptedLoadableModule.py ``getParameterNode``), which
        `XWinLogic.parameterNode` finds by that attribute once the core is there."""
        if self.core is None:
            return ScriptedLoadableModuleLogic.getParameterNode(self)
        return self.core.parameterNode()

    def showSideBySide(self, cxr, prediction, drr, recon, fit: bool = True) -> None:
        """CXR | predicted | DRR on top (each slice view turned face-on to its image), 3D | reconstruction below;
        window/level linked across the predicted image and the DRR (both [0, 1]); the CXR keeps its own
        (`XWinLogic.linkWindowLevel`)."""
        lm = slicer.app.layoutManager()
        if not lm.layoutLogic().GetLayoutNode().IsLayoutDescription(LAYOUT_ID):
            lm.layoutLogic().GetLayoutNode().AddLayoutDescription(LAYOUT_ID, _layoutXml())
        if lm.layout != LAYOUT_ID:
            lm.setLayout(LAYOUT_ID)
        for key, node in (("cxr", cxr), ("prediction", prediction), ("drr", drr), ("recon", recon)):
            widget = lm.sliceWidget(VIEW_TAGS[key])
            if widget is None:
                continue
            logic = widget.sliceLogic()
            composite = logic.GetSliceCompositeNode()
            composite.SetBackgroundVolumeID(node.GetID() if node else None)
            if node is None or key == "recon":
                continue
            if key in ("prediction", "drr"):
                # every frame, previews included: the detector plane turns with the pose (issue 14)
                self.core.planSliceToProjection(logic.GetSliceNode(), node, fit=fit)
            elif fit:
                # the CXR: vtkMRMLSliceNode::RotateToVolumePlane and vtkMRMLSliceLogic::FitSliceToAll
                # (Slicer v5.8.1, Libs/MRML/Core/vtkMRMLSliceNode.h, Libs/MRML/Logic/vtkMRMLSliceLogic.h)
                logic.GetSliceNode().RotateToVolumePlane(node)
                logic.FitSliceToAll()
        self.core.linkWindowLevel(cxr, prediction, drr)


def _layoutXml() -> str:
    def slice_view(tag, label, color, orientation="Axial"):
        return (f'<item><view class="vtkMRMLSliceNode" singletontag="{tag}">'
                f'<property name="orientation" action="default">{orientation}</property>'
                f'<property name="viewlabel" action="default">{label}</property>'
                f'<property name="viewcolor" action="default">{color}</property></view></item>')
    return ('<layout type="vertical">'
            '<item><layout type="horizontal">'
            + slice_view(VIEW_TAGS["cxr"], "CXR", "#F34A33")
            + slice_view(VIEW_TAGS["prediction"], "Predicted", "#EDD54C")
            + slice_view(VIEW_TAGS["drr"], "DRR", "#6EB04B")
            + '</layout></item><item><layout type="horizontal">'
            '<item><view class="vtkMRMLViewNode" singletontag="1">'
            '<property name="viewlabel" action="default">1</property></view></item>'
            + slice_view(VIEW_TAGS["recon"], "Recon", "#4B6EB0")
            + '</layout></item></layout>')


# --- test --------------------------------------------------------------------------------------------------------
class XWinSlicerTest(ScriptedLoadableModuleTest):
    """End to end inside Slicer: sample data, sliders, predict, reconstruct, export (thin over the tested logic;
    the logic itself is tested with pytest against slicer-core in Testing/Python)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_XWinSlicer_end_to_end()

    def test_XWinSlicer_end_to_end(self):
        import time

        import numpy as np

        self.assertTrue(ensureCore(askConfirmation=False), "the XWin core could not be installed")
        slicer.util.selectModule("XWinSlicer")
        widget = slicer.modules.XWinSlicerWidget
        logic = widget.logic
        widget.onSampleData()
        self.delayDisplay("Sample data loaded")
        p = logic.parameters()
        drr0 = slicer.util.arrayFromVolume(p.nodeRef("drrVolume")).copy()

        widget.ui.laoSlider.value = 30.0
        widget.ui.cranSlider.value = 10.0
        t0 = time.perf_counter()
        widget.updateViews(preview=True)
        self.assertLess(time.perf_counter() - t0, 0.5, "a preview must not block the GUI")
        widget.onSliderReleased()
        drr1 = slicer.util.arrayFromVolume(p.nodeRef("drrVolume"))
        self.assertEqual(drr1.shape, drr0.shape)
        self.assertGreater(float(np.abs(drr1 - drr0).mean()), 1e-3, "the DRR did not follow the sliders")
        self.assertEqual(float(p.nodeRef("drrVolume").GetAttribute("xwin.lao_deg")), 30.0)

        widget.updateViews(preview=False, predict=True)
        pred = slicer.util.arrayFromVolume(p.nodeRef("predictionVolume"))
        self.assertTrue(0.0 <= pred.min() and pred.max() <= 1.0)
        self.delayDisplay("Predicted projection shown")

        widget.onReconstruct()
        deadline = time.time() + 600
        while widget._future is not None and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        recon = p.nodeRef("reconVolume")
        self.assertIsNotNone(recon, "no reconstruction node")
        self.assertGreater(float(slicer.util.arrayFromVolume(recon).std()), 0.0)
        self.delayDisplay("Reconstruction shown")

        widget.onExport()
        seg = p.nodeRef("segmentation")
        self.assertIsNotNone(seg)
        self.assertGreater(seg.GetSegmentation().GetNumberOfSegments(), 0)
        self.delayDisplay("Test passed")
