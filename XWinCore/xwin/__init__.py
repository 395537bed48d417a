"""XWin core: chest-radiograph world models (X-WIN) for radiology research."""
from .errors import XWinInputError

__version__ = "0.1.0"
__all__ = ["XWinInputError", "__version__"]
