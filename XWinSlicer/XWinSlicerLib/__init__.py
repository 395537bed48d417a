"""XWinSlicer's Qt-free layer: `install` (pure decisions for installing the core; no xwin needed), `paths` (where the
core, the model and the export folder are, per source/build/install tree), `sampledata` (SampleData sources of the
demo CT and CXR), and `logic` (MRML
node conversions, RAS ↔ LPS, and `XWinLogic` over the shared xwin session; needs the core).

The names of `logic` are loaded on first access, so ``XWinSlicerLib.install`` imports before the core is installed.
"""
_LOGIC_NAMES = ("ParameterStore", "WindowLevelLink", "XWinLogic", "arrayFromNode", "lpsFromIjkOfNode", "nodeFromArray",
                "nodeFromProjection", "nodeFromVolume", "radiographFromNode", "volumeFromNode")


def __getattr__(name):
    if name in _LOGIC_NAMES:
        from . import logic
        return getattr(logic, name)
    raise AttributeError(name)
