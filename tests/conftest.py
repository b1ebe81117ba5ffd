"""Shared fixtures. Real-data fixtures skip cleanly where ../shared/btxrd-mini is absent, except in CI.

In CI (``CI=true``) a missing fixture or tool (the real-data excerpt, chromium) is a failure, not a skip:
a green CI run must mean every test ran. Use :func:`skip_or_fail` for such prerequisites.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BTXRD_MINI = Path(os.environ.get("BTXRD_MINI", REPO_ROOT.parent / "shared" / "btxrd-mini"))
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """Skip the test for a missing prerequisite; in CI (``CI=true``) fail loudly instead."""
    if IN_CI:
        pytest.fail(f"{reason}; CI=true requires it (install it or provide the fixture)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def btxrd_mini() -> Path:
    """The 30-image real BTXRD excerpt (read-only). Never copy it into the repo."""
    if not (BTXRD_MINI / "dataset.xlsx").is_file():
        skip_or_fail(f"real-data fixture absent: {BTXRD_MINI}")
    return BTXRD_MINI
