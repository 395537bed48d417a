"""`python -m xwin ...` (also what `torchrun -m xwin ...` runs)."""
import sys

from .cli import main

sys.exit(main())
