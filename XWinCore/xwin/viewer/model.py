"""Former name of `xwin.viewer.session` (kept so that existing imports keep working)."""
from .session import *  # noqa: F401,F403
from .session import LPS_TO_RAS, PREVIEW_FACTOR  # noqa: F401
