"""Load one section of params.yaml, checked against the keys the code knows.

Unknown keys fail with the key name and the valid keys, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ParamsSectionError", "load_params", "check_keys", "train_device"]


class ParamsSectionError(KeyError, ValueError):
    """A params section is missing: a ``KeyError`` (it is a lookup) that reads as a user error (``ValueError``)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def load_params(path: str | os.PathLike = "params.yaml", section: str | None = None) -> dict[str, Any]:
    """Return the whole params file, or one top-level ``section`` of it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found; run from the repository root.")
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(data).__name__}.")
    if section is None:
        return data
    if section not in data:
        raise ParamsSectionError(
            f"{path}: no section {section!r}; sections found: {sorted(data)}. Add the section (see the "
            "repository's params.yaml)."
        )
    return data[section]


def check_keys(values: dict[str, Any], allowed: set[str] | list[str], *, where: str) -> dict[str, Any]:
    """Raise ``ValueError`` naming any key of ``values`` not in ``allowed``; return ``values``."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(allowed)}. "
            "Fix the spelling in params.yaml."
        )
    return values


def train_device(path: str | os.PathLike = "params.yaml") -> str:
    """``train.device`` (cpu | cuda | cuda:N | auto): evaluate and explain run where training did."""
    train = load_params(path, "train")
    if "device" not in train:
        raise ValueError(f"{path}: train.device is missing; add `device: auto` (or cpu / cuda) under train.")
    return str(train["device"])
