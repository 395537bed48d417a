"""Shared test set-up: the tests folder on sys.path (for `phantoms`) and the location of ../shared/data."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout, or a clear skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data test skipped: {SHARED_DATA} not found (the shared data sits beside the checkout)")
    return SHARED_DATA
