"""Shared fixtures. Real-data fixtures skip cleanly where ../shared/btxrd-mini is absent, except in CI.

In CI (``CI=true``) a missing fixture or tool (the real-data excerpt, chromium) is a failure, not a skip:
a green CI run must mean every test ran. Use :func:`skip_or_fail` for such prerequisites (:func:`import_or_skip`
for a module), never ``pytest.skip`` or ``pytest.importorskip``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BTXRD_MINI = Path(os.environ.get("BTXRD_MINI", REPO_ROOT.parent / "shared" / "btxrd-mini"))
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test for a missing prerequisite; in CI (``CI=true``) fail loudly instead."""
    __tracebackhide__ = True  # the skip or failure is reported at the caller's line, not here
    if IN_CI:
        pytest.fail(f"{reason}; CI=true requires it (install it or provide the fixture)", pytrace=False)
    pytest.skip(reason)


def import_or_skip(name: str, reason: str) -> ModuleType:
    """``pytest.importorskip`` under the same rule: the module, else a skip (a failure in CI) naming ``reason``.

    Call it inside a test or fixture, not at module level: a module-level failure is a collection error, which
    stops the whole run instead of failing the tests that need the module.
    """
    __tracebackhide__ = True
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing = f"{reason} ({type(err).__name__}: {err})"
    skip_or_fail(missing)  # outside the except block: the report is the reason, not a chained ImportError


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def btxrd_mini() -> Path:
    """The 30-image real BTXRD excerpt (read-only). Never copy it into the repo."""
    if not (BTXRD_MINI / "dataset.xlsx").is_file():
        skip_or_fail(f"real-data fixture absent: {BTXRD_MINI}")
    return BTXRD_MINI
