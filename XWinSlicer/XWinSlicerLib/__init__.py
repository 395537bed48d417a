"""XWinSlicer's Qt-free layer: MRML node conversions (RAS ↔ LPS) and `XWinLogic` over the shared xwin session."""
from .logic import (  # noqa: F401
    ParameterStore,
    WindowLevelLink,
    XWinLogic,
    arrayFromNode,
    lpsFromIjkOfNode,
    nodeFromArray,
    nodeFromProjection,
    nodeFromVolume,
    radiographFromNode,
    volumeFromNode,
)
