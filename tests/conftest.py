"""Shared fixtures. Real-data fixtures skip cleanly where ../shared/btxrd-mini is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BTXRD_MINI = Path(os.environ.get("BTXRD_MINI", REPO_ROOT.parent / "shared" / "btxrd-mini"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def btxrd_mini() -> Path:
    """The 30-image real BTXRD excerpt (read-only). Never copy it into the repo."""
    if not (BTXRD_MINI / "dataset.xlsx").is_file():
        pytest.skip(f"real-data fixture absent: {BTXRD_MINI}")
    return BTXRD_MINI
