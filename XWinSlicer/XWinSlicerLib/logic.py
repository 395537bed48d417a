"""XWinSlicer logic over MRML: DRRs, predicted projections, reconstruction and export as scene nodes.

No Qt, no ``slicer.app``: only MRML/VTK classes (present in 3D Slicer and in the ``slicer-core`` wheel), NumPy and
``xwin``. The work itself is done by `xwin.viewer.session.Session` (shared with ``xwin viewer``); this layer converts
at the boundary:

* frames: XWin is LPS, Slicer is RAS; ``RAS = diag(-1, -1, 1) · LPS`` (docs/geometry.md). A node's IJKToRAS is
  ``diag(-1, -1, 1, 1) · lps_from_ijk`` exactly, with no reorientation of the voxels.
* arrays: vtkImageData scalars are i-fastest, i.e. a NumPy ``[k, j, i]`` array, the same order as `Volume.array`.
* a projection is a single-slice volume (k = 1) whose IJKToRAS puts pixel (r, c) — voxel (i=c, j=r, k=0) — at its
  position on the detector of the geometry contract, converted to RAS (mm).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from xwin.export.terminology import slicer_terminology_entry, term
from xwin.io.image import Volume
from xwin.viewer.session import LPS_TO_RAS, Projection, Session, Settings, volume_rendering_points
from xwin.viewer.training import (  # noqa: F401
    ProgressParser,
    TrainingProcess,
    TrainingState,
    new_stop_file,
    train_command,
)

MODULE_NAME = "XWinSlicer"
#: Parameter-node node-reference roles (same names as the @parameterNodeWrapper fields in XWinSlicer.py).
NODE_ROLES = ("ctVolume", "cxrVolume", "drrVolume", "predictionVolume", "reconVolume", "segmentation")


# --- matrices ---------------------------------------------------------------------------------------------------
def arrayFromVTKMatrix(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def vtkMatrixFromArray(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r][c]))
    return m


# --- node ↔ xwin conversions ------------------------------------------------------------------------------------
def lpsFromIjkOfNode(node) -> np.ndarray:
    """4×4 IJK → LPS (mm) of a volume node, including a linear parent transform (non-linear ones are refused)."""
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ras = arrayFromVTKMatrix(m)
    parent = node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise ValueError(f"{node.GetName()}: harden or remove its non-linear transform first")
        w = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(w)
        ras = arrayFromVTKMatrix(w) @ ras
    return LPS_TO_RAS @ ras


def arrayFromNode(node) -> np.ndarray:
    """The voxels of a scalar volume node as a float32 ``[k, j, i]`` copy (first component if several)."""
    image = node.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        raise ValueError(f"{node.GetName()} holds no image data")
    i, j, k = image.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    if scalars.ndim == 2:
        scalars = scalars[:, 0]
    return np.array(scalars.reshape(k, j, i), dtype=np.float32)


def volumeFromNode(node) -> Volume:
    """An xwin `Volume` (HU, ``[k, j, i]``, LPS mm) with exactly the node's geometry."""
    lps = lpsFromIjkOfNode(node)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return Volume(arrayFromNode(node), spacing, lps[:3, 3], lps[:3, :3] / spacing,
                  meta={"source": node.GetName()})


def radiographFromNode(node) -> np.ndarray:
    """A 2D image (rows, columns) from a single-slice volume node (e.g. a loaded PNG/DICOM CXR)."""
    a = arrayFromNode(node)
    if 1 not in a.shape:
        raise ValueError(f"{node.GetName()} is a 3D volume {a.shape[::-1]}, not a radiograph")
    return a.reshape([n for n in a.shape if n != 1] or [1])


def pixelOfNode(node) -> float | None:
    """A 2D radiograph node's pixel size in mm (its spacing; square pixels only, else None: unknown)."""
    sx, sy = node.GetSpacing()[:2]
    return float(sx) if abs(sx - sy) <= 1e-3 * max(sx, sy) else None


def nodeFromArray(scene, array_kji: np.ndarray, lps_from_ijk: np.ndarray, name: str, node=None,
                  nodeClass: str = "vtkMRMLScalarVolumeNode"):
    """Create (or refill ``node``) a volume node of ``array_kji`` placed by ``lps_from_ijk`` (converted to RAS)."""
    a = np.ascontiguousarray(array_kji)
    if a.ndim == 2:
        a = a[None]
    ras = LPS_TO_RAS @ np.asarray(lps_from_ijk, np.float64)
    spacing = np.linalg.norm(ras[:3, :3], axis=0)
    if node is None:
        node = scene.AddNewNodeByClass(nodeClass, scene.GenerateUniqueName(name))
    image = vtk.vtkImageData()
    image.SetDimensions(a.shape[2], a.shape[1], a.shape[0])
    vtk_array = numpy_support.numpy_to_vtk(a.reshape(-1), deep=True)
    vtk_array.SetName("ImageScalars")
    image.GetPointData().SetScalars(vtk_array)
    wasModified = node.StartModify()
    node.SetSpacing(*spacing)
    node.SetOrigin(*ras[:3, 3])
    node.SetIJKToRASDirectionMatrix(vtkMatrixFromArray(np.block([[ras[:3, :3] / spacing, np.zeros((3, 1))],
                                                                [np.zeros((1, 3)), np.ones((1, 1))]])))
    node.SetAndObserveImageData(image)
    node.EndModify(wasModified)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def nodeFromVolume(scene, volume: Volume, name: str, node=None):
    """A scalar volume node of an xwin `Volume` (RAS = diag(−1, −1, 1) · LPS)."""
    return nodeFromArray(scene, volume.array, volume.lps_from_ijk, name, node=node)


def nodeFromProjection(scene, projection: Projection, name: str, node=None):
    """A single-slice volume node on the detector plane (pixel (r, c) → voxel (c, r, 0)), window/level 1/0.5 (the
    image is in [0, 1]; a real CXR node is never given this window, see `XWinLogic.linkWindowLevel`)."""
    node = nodeFromArray(scene, projection.image, projection.lps_from_ijk, name, node=node)
    for key, value in (("xwin.lao_deg", projection.lao), ("xwin.cran_deg", projection.cran),
                       ("xwin.preview", int(projection.preview))):
        node.SetAttribute(key, str(value))
    setWindowLevel([node], 1.0, 0.5)
    return node


def setWindowLevel(nodes, window: float, level: float) -> None:
    """Fixed window/level on each node's scalar display node (grey colour table where one is set)."""
    for node in nodes:
        if node is None:
            continue
        display = node.GetDisplayNode()
        if display is None:
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevel(float(window), float(level))


DETECTOR_FRAME_ATTRIBUTE = "xwin.detectorFrame"  # on a slice node: 16 numbers, the detector frame it was planed on


def detectorFrameOfNode(projectionNode) -> tuple[np.ndarray, tuple[float, float]]:
    """(4×4 RAS frame, (width mm, height mm)) of a projection node: x along its columns (left → right on screen),
    y against its rows (row 0 at the top), z = x × y, origin at the image centre."""
    m = vtk.vtkMatrix4x4()
    projectionNode.GetIJKToRASMatrix(m)
    ijk_to_ras = arrayFromVTKMatrix(m)
    w, h = projectionNode.GetImageData().GetDimensions()[:2]
    u, v = ijk_to_ras[:3, 0], ijk_to_ras[:3, 1]
    su, sv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    x, y = u / su, -v / sv
    frame = np.eye(4)
    frame[:3, 0], frame[:3, 1], frame[:3, 2] = x, y, np.cross(x, y)
    frame[:3, 3] = (ijk_to_ras @ np.array([(w - 1) / 2.0, (h - 1) / 2.0, 0.0, 1.0]))[:3]
    return frame, (w * su, h * sv)


def planSliceToProjection(sliceNode, projectionNode, fit: bool = False) -> None:
    """Turn a slice view with a projection's detector so the image is shown face-on at every pose.

    The detector plane turns with the C-arm pose; a slice view left on the previous plane cuts the single-slice image
    along a line (issue 14: at LAO 15° a preview covered 2.7 % of the view). Here the view's plane follows the
    detector: the new SliceToRAS is the old one carried by the rigid motion from the previous detector frame to the
    new one, so the user's zoom and pan are kept while dragging. ``fit`` (or a first image, or a detector of a new
    size) fits the whole image in the view instead, centred, as Slicer's FitSliceToAll does for a face-on volume.
    Only MRML calls (vtkMRMLSliceNode::GetSliceToRAS/UpdateMatrices/SetFieldOfView), so it is tested on slicer-core.
    """
    frame, extent = detectorFrameOfNode(projectionNode)
    saved = sliceNode.GetAttribute(DETECTOR_FRAME_ATTRIBUTE)
    old = np.array([float(x) for x in saved.split()]) if saved else None
    refit = fit or old is None or old.size != 18 or not np.allclose(old[16:], extent, rtol=1e-6, atol=1e-6)
    sliceToRas = arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
    planed = frame if refit else frame @ np.linalg.inv(old[:16].reshape(4, 4)) @ sliceToRas
    sliceNode.GetSliceToRAS().DeepCopy(vtkMatrixFromArray(planed))
    sliceNode.SetAttribute(DETECTOR_FRAME_ATTRIBUTE, " ".join(f"{x:.9g}" for x in [*frame.ravel(), *extent]))
    if refit:
        dims = sliceNode.GetDimensions()
        dx, dy = max(int(dims[0]), 1), max(int(dims[1]), 1)
        mm_per_pixel = max(extent[0] / dx, extent[1] / dy)
        spacing = float(projectionNode.GetSpacing()[0])
        sliceNode.SetFieldOfView(mm_per_pixel * dx, mm_per_pixel * dy, spacing)
    sliceNode.UpdateMatrices()


class WindowLevelLink:
    """Keeps window/level equal on several volume nodes: changing one display node updates the others."""

    def __init__(self, nodes=()):
        self._observed: list[tuple[object, int]] = []
        self._busy = False
        self.nodes: list = []
        self.set(nodes)

    def set(self, nodes) -> None:
        self.clear()
        self.nodes = [n for n in nodes if n is not None]
        for node in self.nodes:
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
            self._observed.append((display, display.AddObserver(vtk.vtkCommand.ModifiedEvent, self._changed)))

    def _changed(self, caller, event) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            window, level = caller.GetWindow(), caller.GetLevel()
            for node in self.nodes:
                display = node.GetDisplayNode()
                if display is not caller and (display.GetWindow(), display.GetLevel()) != (window, level):
                    display.AutoWindowLevelOff()
                    display.SetWindowLevel(window, level)
        finally:
            self._busy = False

    def clear(self) -> None:
        for display, tag in self._observed:
            display.RemoveObserver(tag)
        self._observed = []


# --- parameter node ---------------------------------------------------------------------------------------------
class ParameterStore:
    """Typed access to the module's vtkMRMLScriptedModuleNode, serialised like Slicer's @parameterNodeWrapper
    (numbers and strings via ``str``, nodes as node references), so scenes saved either way read back the same."""

    def __init__(self, node):
        self.node = node

    def settings(self) -> Settings:
        values = {}
        for name, default in vars(Settings()).items():
            raw = self.node.GetParameter(name)
            if isinstance(default, str) and raw == ".":  # an empty pathlib.Path written by @parameterNodeWrapper
                raw = ""
            if raw or isinstance(default, str):
                values[name] = type(default)(float(raw)) if isinstance(default, int) else type(default)(raw)
        return Settings(**values)

    def setSettings(self, settings: Settings) -> None:
        wasModified = self.node.StartModify()
        for name, value in vars(settings).items():
            self.node.SetParameter(name, str(value))
        self.node.EndModify(wasModified)

    def nodeRef(self, role: str):
        return self.node.GetNodeReference(role)

    def setNodeRef(self, role: str, node) -> None:
        self.node.SetNodeReferenceID(role, node.GetID() if node is not None else None)


# --- the logic --------------------------------------------------------------------------------------------------
class XWinLogic:
    """Every action of the panel on a MRML scene. Units: mm, degrees; node geometry RAS, core geometry LPS.

    volumesLogic / volumeRenderingLogic / applicationLogic: Slicer's when running in Slicer; when omitted
    (slicer-core, tests) private ones are created on ``scene``.
    """

    def __init__(self, scene, volumesLogic=None, volumeRenderingLogic=None, applicationLogic=None,
                 session: Session | None = None):
        self.scene = scene
        self._applicationLogic = applicationLogic
        self.session = session or Session()
        self._volumesLogic = volumesLogic
        self._volumeRenderingLogic = volumeRenderingLogic
        self._ctKey = None
        self._cxrKey = None
        self._wlLink: WindowLevelLink | None = None

    # helpers ---------------------------------------------------------------------------------------------------
    @property
    def applicationLogic(self):
        """Slicer's application logic, or (slicer-core) a private one holding the Colors and VolumeRendering logics."""
        if self._applicationLogic is None:
            app = slicer.vtkSlicerApplicationLogic()
            app.SetMRMLScene(self.scene)
            colors = slicer.vtkSlicerColorLogic()
            colors.SetMRMLApplicationLogic(app)
            colors.SetMRMLScene(self.scene)
            app.SetModuleLogic("Colors", colors)
            if hasattr(app, "SetColorLogic"):
                app.SetColorLogic(colors)
            self._applicationLogic = app
        return self._applicationLogic

    @property
    def volumesLogic(self):
        if self._volumesLogic is None:
            self._volumesLogic = slicer.vtkSlicerVolumesLogic()
            self._volumesLogic.SetMRMLApplicationLogic(self.applicationLogic)
            self._volumesLogic.SetMRMLScene(self.scene)
        return self._volumesLogic

    @property
    def volumeRenderingLogic(self):
        if self._volumeRenderingLogic is None:
            self._volumeRenderingLogic = slicer.vtkSlicerVolumeRenderingLogic()
            self._volumeRenderingLogic.SetMRMLApplicationLogic(self.applicationLogic)
            self._volumeRenderingLogic.SetMRMLScene(self.scene)
            self.applicationLogic.SetModuleLogic("VolumeRendering", self._volumeRenderingLogic)
        return self._volumeRenderingLogic

    def parameterNode(self):
        """The module's singleton parameter node (created on first use)."""
        node = None
        for n in _nodesByClass(self.scene, "vtkMRMLScriptedModuleNode"):
            if n.GetAttribute("ModuleName") == MODULE_NAME or n.GetModuleName() == MODULE_NAME:
                node = n
                break
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", MODULE_NAME)
            node.SetModuleName(MODULE_NAME)
            node.SetAttribute("ModuleName", MODULE_NAME)
            node.SetSingletonTag(MODULE_NAME)
            ParameterStore(node).setSettings(Settings())
        return node

    def parameters(self) -> ParameterStore:
        return ParameterStore(self.parameterNode())

    def applySettings(self, settings: Settings | None = None) -> None:
        """Take geometry/model/recon settings from the parameter node (or ``settings``) into the session."""
        s = settings or self.parameters().settings()
        self.session.update(**vars(s))

    def loadVolume(self, path: str | os.PathLike, name: str | None = None):
        """Load a volume file with the Volumes logic (a CT, or a 2D image as a single-slice volume)."""
        node = self.volumesLogic.AddArchetypeVolume(str(path), name or Path(path).name.split(".")[0], 0)
        if node is None:
            raise ValueError(f"{path}: the Volumes logic could not read it")
        return node

    def loadSampleData(self):
        """The embedded demo CT and CXR (``xwin.sample_data``) as nodes: (ctNode, cxrNode)."""
        from xwin.sample_data import demo_ct_path, demo_cxr_path
        return self.loadVolume(demo_ct_path(), "XWinDemoCT"), self.loadVolume(demo_cxr_path(), "XWinDemoCXR")

    def setCt(self, ctNode) -> None:
        """Give the session the CT of ``ctNode`` (μ is rebuilt only when the node or its voxels changed)."""
        key = (ctNode.GetID(), ctNode.GetMTime(), ctNode.GetImageData().GetMTime()) if ctNode else None
        if key != self._ctKey:
            self.session.set_ct(volumeFromNode(ctNode) if ctNode is not None else None)
            self._ctKey = key

    def setCxr(self, cxrNode) -> None:
        key = (cxrNode.GetID(), cxrNode.GetMTime(), cxrNode.GetImageData().GetMTime()) if cxrNode else None
        if key != self._cxrKey:
            self.session.set_cxr(radiographFromNode(cxrNode) if cxrNode is not None else None,
                                 pixelOfNode(cxrNode) if cxrNode is not None else None)
            self._cxrKey = key

    def linkWindowLevel(self, cxrNode, predictionNode, drrNode) -> WindowLevelLink:
        """Link window/level across the side-by-side projections that are in [0, 1]: the predicted image and the DRR
        (both rendered at 1/0.5 by `nodeFromProjection`; changing one changes the other).

        ``cxrNode`` is never linked: a real radiograph has its own range (the demo CXR: 6255–31964), and its window
        is the one the Volumes logic gave it (auto W/L, or the DICOM window) or the one the user sets. Linking it made
        each render force 1/0.5 on it, a fully saturated film (issue 14).
        """
        nodes = [n for n in (predictionNode, drrNode) if n is not None]
        if self._wlLink is None:
            self._wlLink = WindowLevelLink()
        if [n.GetID() for n in nodes] != [n.GetID() for n in self._wlLink.nodes]:
            self._wlLink.set(nodes)
        return self._wlLink

    @staticmethod
    def planSliceToProjection(sliceNode, projectionNode, fit: bool = False) -> None:
        """`planSliceToProjection` (the view turns with the detector; zoom/pan kept unless ``fit``)."""
        planSliceToProjection(sliceNode, projectionNode, fit)

    # actions ---------------------------------------------------------------------------------------------------
    def renderDrr(self, ctNode, lao: float, cran: float, preview: bool = False, outputNode=None, **geometry):
        """Radiograph-mode DRR of ``ctNode`` at (lao, cran) degrees as a single-slice node on the detector plane.

        geometry: optional sid, sdd, pixel (mm), height, width (pixels) overriding the parameter node's. The voxels
        equal ``xwin render CT --lao L --cran C --mode radiograph`` of the same CT and geometry.
        """
        if geometry:
            self.session.update(**geometry)
        self.setCt(ctNode)
        projection = self.session.drr(lao, cran, preview=preview)
        return nodeFromProjection(self.scene, projection, f"{ctNode.GetName()}_DRR", node=outputNode)

    def predictProjection(self, cxrNode, lao: float, cran: float, outputNode=None):
        """The world model's predicted projection of ``cxrNode`` at (lao, cran) degrees ([0, 1], detector plane)."""
        self.setCxr(cxrNode)
        projection = self.session.predict(lao, cran)
        return nodeFromProjection(self.scene, projection, f"{cxrNode.GetName()}_predicted", node=outputNode)

    def prepareAlignment(self, ctNode, cxrNode) -> None:
        """Give the session the CT and the CXR before `PanelController.start_alignment` (GUI thread: reads nodes)."""
        if ctNode is None or cxrNode is None:
            raise ValueError("Choose a CT and a chest X-ray to align the DRR to")
        self.setCt(ctNode)
        self.setCxr(cxrNode)

    def applyAlignment(self, controller, job) -> str:
        """A finished alignment `Job`: a converged pose goes into the session and the parameter node (LAO/CRAN
        sliders, roll, isocenter offset); returns the status line (`PanelController.apply_alignment`)."""
        message = controller.apply_alignment(job)
        self.parameters().setSettings(self.session.settings)
        return message

    def align(self, ctNode, cxrNode, **options):
        """"Align DRR to CXR" in one call (scripting, tests): register from the parameter node's pose, apply a
        converged result as `applyAlignment` does; returns the `xwin.register.RegistrationResult`."""
        self.applySettings()
        self.prepareAlignment(ctNode, cxrNode)
        result = self.session.align(**options)
        if result.converged:
            self.session.apply_pose(result.pose)
            self.parameters().setSettings(self.session.settings)
        return result

    def renderOverlay(self, ctNode, cxrNode, kind: str = "checkerboard", outputNode=None):
        """The DRR at the current pose against the CXR (`Session.overlay`: 'checkerboard' or 'difference') as a
        single-slice node on the detector plane."""
        self.prepareAlignment(ctNode, cxrNode)
        projection = self.session.overlay(kind)
        return nodeFromProjection(self.scene, projection, f"{ctNode.GetName()}_{kind}", node=outputNode)

    def computeReconstruction(self, cxrOrCtNode, method: str | None = None, views: int | None = None,
                              arc: float | None = None, **options) -> Volume:
        """The reconstruction as an xwin `Volume` (no scene change: safe on a worker thread after `prepare`).

        A single-slice node is a CXR (the model predicts the views); a 3D node is a CT (its DRRs are the views).
        """
        source = self.prepareReconstruction(cxrOrCtNode)
        return self.session.reconstruct(source, method, views, arc, **options)

    def prepareReconstruction(self, cxrOrCtNode) -> str:
        """Load the input into the session (main thread); returns 'cxr' or 'ct'."""
        if cxrOrCtNode.GetImageData().GetDimensions()[2] == 1:
            self.setCxr(cxrOrCtNode)
            return "cxr"
        self.setCt(cxrOrCtNode)
        return "ct"

    def reconstruct(self, cxrOrCtNode, method: str | None = None, views: int | None = None, arc: float | None = None,
                    outputNode=None, **options):
        """Reconstruct (`computeReconstruction`: ``views`` over ``arc`` degrees) and show the result: a scalar volume
        node (HU) with volume rendering."""
        volume = self.computeReconstruction(cxrOrCtNode, method, views, arc, **options)
        return self.showReconstruction(volume, f"{cxrOrCtNode.GetName()}_recon", outputNode)

    def showReconstruction(self, volume: Volume, name: str, outputNode=None):
        node = nodeFromVolume(self.scene, volume, name, node=outputNode)
        self.showVolumeRendering(node)
        return node

    def showVolumeRendering(self, volumeNode, preset: str = "CT-Chest-Contrast-Enhanced"):
        """Volume rendering display nodes for ``volumeNode`` (Slicer preset when available, else an HU ramp)."""
        logic = self.volumeRenderingLogic
        display = logic.GetFirstVolumeRenderingDisplayNode(volumeNode) if hasattr(
            logic, "GetFirstVolumeRenderingDisplayNode") else None
        if display is None:
            display = logic.CreateDefaultVolumeRenderingNodes(volumeNode)
        logic.UpdateDisplayNodeFromVolumeNode(display, volumeNode)
        presetNode = logic.GetPresetByName(preset) if logic.GetPresetsScene() is not None else None
        if presetNode is not None:
            display.GetVolumePropertyNode().Copy(presetNode)
        else:
            _hu_ramp(display.GetVolumePropertyNode().GetVolumeProperty(), arrayFromNode(volumeNode))
        display.SetVisibility(True)
        return display

    def masks(self, volumeNode) -> dict[str, np.ndarray]:
        """Threshold masks (`xwin.export`) of a CT or reconstruction node: name → bool ``[k, j, i]``."""
        return self.session.masks(volumeFromNode(volumeNode))

    def exportSegmentation(self, volumeNode, masks: dict[str, np.ndarray] | None = None, outputNode=None):
        """A segmentation node (one segment per mask, geometry of ``volumeNode``) for the Segment Editor."""
        masks = self.masks(volumeNode) if masks is None else masks
        seg = outputNode or self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                         self.scene.GenerateUniqueName(
                                                             f"{volumeNode.GetName()}_segmentation"))
        if seg.GetDisplayNode() is None:
            seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        lps = lpsFromIjkOfNode(volumeNode)
        for name, mask in masks.items():
            labelmap = nodeFromArray(self.scene, np.asarray(mask, np.uint8), lps, f"_xwin_{name}",
                                     nodeClass="vtkMRMLLabelMapVolumeNode")
            segmentation = seg.GetSegmentation()
            before = set(segmentation.GetSegmentIDs())
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg, "")
            for node in (labelmap.GetDisplayNode(), labelmap.GetStorageNode(), labelmap):
                if node is not None:
                    self.scene.RemoveNode(node)
            added = [s for s in segmentation.GetSegmentIDs() if s not in before]
            if not ok or not added:  # an empty mask imports nothing: keep an empty segment with the name
                segmentation.AddEmptySegment(name, name)
                added = [name]
            segment = segmentation.GetSegment(added[0])
            segment.SetName(name)
            segment.SetColor(*term(name).color)  # colour and standard term as the .seg.nrrd export writes them
            segment.SetTag(segment.GetTerminologyEntryTagName(), slicer_terminology_entry(name))
        return seg

    def saveSegmentation(self, segmentationNode, path: str | os.PathLike) -> Path:
        """Write ``segmentationNode`` as a ``.seg.nrrd`` file (Slicer's segmentation storage)."""
        storage = segmentationNode.GetStorageNode()
        if storage is None:
            storage = self.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
            segmentationNode.SetAndObserveStorageNodeID(storage.GetID())
        storage.SetFileName(str(path))
        if not storage.WriteData(segmentationNode):
            raise OSError(f"could not write {path}")
        return Path(path)

    def loadSegmentation(self, path: str | os.PathLike, name: str | None = None):
        """Read a ``.seg.nrrd`` file into a new segmentation node."""
        seg = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or Path(path).name.split(".")[0])
        storage = self.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        seg.SetAndObserveStorageNodeID(storage.GetID())
        storage.SetFileName(str(path))
        if not storage.ReadData(seg):
            raise OSError(f"could not read {path}")
        seg.CreateDefaultDisplayNodes()
        return seg

    def exportFiles(self, volumeNode, folder: str | os.PathLike) -> list[Path]:
        """`xwin.export.export_segmentation` of the node's volume: multi-label NIfTI, labels.json, ``.seg.nrrd``."""
        return [Path(p) for p in self.session.export_files(volumeFromNode(volumeNode), folder)]

    # training --------------------------------------------------------------------------------------------------
    def trainingCommand(self, resume: bool = False, python: str | None = None, stopFile: str = "") -> list[str]:
        """argv of the trainer from the parameter node's train_* settings (``python``: the interpreter or launcher,
        e.g. PythonSlicer; ``stopFile``: the trainer checkpoints and stops when this file appears)."""
        s = self.parameters().settings()
        return train_command(s.train_config, s.train_run_dir, resume, s.train_ct_dir, s.train_cxr_dir, s.train_init,
                             python=python, stop_file=stopFile, device=s.device)

    def startTraining(self, resume: bool = False, python: str | None = None, **startOptions) -> TrainingProcess:
        """Start the trainer in its own process and return it (poll it from a timer; `TrainingProcess.stop` stops it).

        The command names a fresh stop file: in Slicer the trainer runs under PythonSlicer, a CTKAppLauncher that
        starts the real Python as a child and forwards no signal, so Stop creates that file instead of signalling
        (the trainer checkpoints, logs "stopped" and exits); the process tree is killed only as a last resort."""
        process = TrainingProcess()
        process.start(self.trainingCommand(resume, python=python, stopFile=new_stop_file()), **startOptions)
        return process

    def updateLossPlot(self, state: TrainingState, chartNode=None):
        """Table + one plot series per loss + a chart node, refreshed from ``state`` (step on x); returns chart."""
        chart = chartNode or _firstByName(self.scene, "vtkMRMLPlotChartNode", "XWin training loss")
        if chart is None:
            chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "XWin training loss")
            chart.SetTitle("XWin training loss")
            chart.SetXAxisTitle("step")
            chart.SetYAxisTitle("loss")
        table = chart.GetNodeReference("xwinTable")
        if table is None:
            table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", "XWin training loss table")
            chart.SetNodeReferenceID("xwinTable", table.GetID())
        names = sorted(state.losses)
        steps = sorted({s for name in names for s, _ in state.losses[name]})
        vtable = vtk.vtkTable()
        col = vtk.vtkFloatArray()
        col.SetName("step")
        for s in steps:
            col.InsertNextValue(s)
        vtable.AddColumn(col)
        for name in names:
            by_step = dict(state.losses[name])
            c = vtk.vtkFloatArray()
            c.SetName(name)
            for s in steps:
                c.InsertNextValue(by_step.get(s, np.nan))
            vtable.AddColumn(c)
        table.SetAndObserveTable(vtable)
        have = {chart.GetNthPlotSeriesNode(i).GetName() for i in range(chart.GetNumberOfPlotSeriesNodes())}
        for name in names:
            if name in have:
                continue
            series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("step")
            series.SetYColumnName(name)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetMarkerStyle(series.MarkerStyleNone)
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return chart


def _nodesByClass(scene, className: str):
    col = scene.GetNodesByClass(className)
    return [col.GetItemAsObject(i) for i in range(col.GetNumberOfItems())]


def _firstByName(scene, className: str, name: str):
    return next((n for n in _nodesByClass(scene, className) if n.GetName() == name), None)


def _hu_ramp(volumeProperty, array: np.ndarray) -> None:
    """Opacity/colour transfer functions (`xwin.viewer.session.volume_rendering_points`) when Slicer's presets are
    not available (slicer-core)."""
    opacity_points, color_points = volume_rendering_points(array)
    opacity = vtk.vtkPiecewiseFunction()
    for x, a in opacity_points:
        opacity.AddPoint(x, a)
    color = vtk.vtkColorTransferFunction()
    for x, r, g, b in color_points:
        color.AddRGBPoint(x, r, g, b)
    volumeProperty.SetScalarOpacity(opacity)
    volumeProperty.SetColor(color)
    volumeProperty.ShadeOn()
    volumeProperty.SetInterpolationTypeToLinear()
