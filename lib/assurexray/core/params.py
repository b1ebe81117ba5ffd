"""Load one section of params.yaml into a frozen dataclass that defines and checks its keys.

One pattern for every stage: ``load_config("params.yaml", "evaluate", EvaluateConfig)``. The dataclass's fields
are the accepted keys; a field without a default is required. Unknown keys fail with the key name and the valid
keys, missing keys with their names and the file, so a typo never silently falls back to a default; type and
range checks live in each dataclass's ``__post_init__`` (as :class:`assurexray.assessment.explain.ExplainConfig` does).
Stages pass the dataclass whole to the library function that uses it (tests build one without DVC), so a new
setting is one field and its use.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

__all__ = ["AuditConfig", "BaseConfig", "ParamsSectionError", "load_config", "config_from_mapping", "load_params", "check_keys",
           "RUN_CACHE_BLIND_NAMES", "run_cache_blind_keys",
           "train_device"]

T = TypeVar("T")


class ParamsSectionError(KeyError, ValueError):
    """A params section is missing: a ``KeyError`` (it is a lookup) that reads as a user error (``ValueError``)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class BaseConfig:
    """The ``base`` section: what every stage shares."""

    seed: int  # global RNG seed (python, numpy, torch)
    class_names: tuple[str, ...]  # class order; a label's index is its position here

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"base.seed: expected an integer, got {self.seed!r}.")
        names = self.class_names
        if (isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)) or len(names) < 2
                or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names)):
            raise ValueError(f"base.class_names: expected a list of at least two distinct names, got {names!r}.")
        object.__setattr__(self, "class_names", tuple(names))


@dataclass(frozen=True)
class AuditConfig:
    """The ``audit`` section, passed whole to ``audit.audit_dataset``.

    Kept here, not beside ``audit_dataset``, while audit.py is being split into computing and rendering.
    """

    montage_groups: int  # duplicate groups shown in the review montage

    def __post_init__(self) -> None:
        value = self.montage_groups
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"audit.montage_groups must be a non-negative integer, got {value!r}; "
                             "set it in params.yaml (e.g. 12).")


def load_config(path: str | os.PathLike, section: str, cls: type[T]) -> T:
    """The params ``section`` (dotted for a nested block, e.g. ``"split.center"``) of ``path`` as a ``cls``.

    ``cls`` is a frozen dataclass. A field whose type is itself a dataclass is a nested section (e.g.
    ``train.augment`` -> :class:`assurexray.learning.transforms.AugmentConfig`), built and checked the same way; ``null``
    there means every nested default. Other nested blocks (``data.sample``) are plain mappings that the library
    function receiving them validates. Errors raised by ``__post_init__`` are re-raised prefixed with the file.
    """
    return config_from_mapping(cls, _section(path, section), where=f"{path} {section}", path=path)


def config_from_mapping(cls: type[T], values: Mapping[str, Any] | None, *, where: str,
                        path: str | os.PathLike | None = None) -> T:
    """``values`` (one params block; ``None`` = empty) as a ``cls``; ``where`` names the block in errors.

    ``path`` (the params file, if the values came from one) prefixes ``__post_init__``'s errors.
    """
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise TypeError(f"{where}: expected a mapping of keys, got {type(values).__name__} {values!r}; "
                        f"write the keys indented under it in {path or 'params.yaml'}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(values, set(fields), where=where, path=path or "params.yaml")
    missing = sorted(name for name, f in fields.items() if name not in values and _required(f))
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; add them to {path or 'params.yaml'} (see the "
                         "comments in the repository's params.yaml).")
    hints = typing.get_type_hints(cls)
    kwargs = dict(values)
    for name, value in values.items():
        nested = hints.get(name)
        if dataclasses.is_dataclass(nested):
            kwargs[name] = config_from_mapping(nested, value, where=f"{where}.{name}", path=path)
    if path is None:
        return cls(**kwargs)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"{path}: {err}") from err
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def load_params(path: str | os.PathLike = "params.yaml", section: str | None = None) -> dict[str, Any]:
    """Return the whole params file, or one top-level ``section`` of it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found; run from the repository root.")
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(data).__name__}.")
    blind = run_cache_blind_keys(data)
    if blind:
        raise ValueError(
            f"{path}: parameter(s) {blind} have a name DVC leaves out of its run-cache key "
            f"({sorted(RUN_CACHE_BLIND_NAMES)}: dvc hashes stage entries with those keys excluded at any depth), "
            "so changing one would silently restore outputs built with the old value. Rename the key "
            "(e.g. prepare.image_px, not prepare.size).")
    if section is None:
        return data
    if section not in data:
        raise ParamsSectionError(
            f"{path}: no section {section!r}; sections found: {sorted(data)}. Add the section (see the "
            "repository's params.yaml)."
        )
    return data[section]


#: Key names that dvc's run cache drops from the stage hash at every depth (``dvc.stage.cache._get_cache_hash``
#: excludes ``Meta.PARAM_SIZE`` / ``PARAM_NFILES`` recursively), params included: a param with one of these names
#: is invisible to ``dvc repro`` / ``dvc exp run``'s run cache, which then restores stale outputs.
RUN_CACHE_BLIND_NAMES = frozenset({"size", "nfiles"})


def run_cache_blind_keys(params: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every key in ``params`` (at any depth) named in :data:`RUN_CACHE_BLIND_NAMES`."""
    found = []
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if key in RUN_CACHE_BLIND_NAMES:
            found.append(dotted)
        if isinstance(value, Mapping):
            found.extend(run_cache_blind_keys(value, prefix=f"{dotted}."))
    return found


def check_keys(values: Mapping[str, Any], allowed: set[str] | list[str], *, where: str,
               path: str | os.PathLike = "params.yaml") -> Mapping[str, Any]:
    """Raise ``ValueError`` naming any key of ``values`` not in ``allowed``; return ``values``."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {unknown}; valid keys are {sorted(allowed)}. "
            f"Fix the spelling in {Path(path).name}."
        )
    return values


def train_device(path: str | os.PathLike = "params.yaml") -> str:
    """``train.device`` (cpu | cuda | cuda:N | auto): evaluate and explain run where training did."""
    train = load_params(path, "train")
    if "device" not in train:
        raise ValueError(f"{path}: train.device is missing; add `device: auto` (or cpu / cuda) under train.")
    return str(train["device"])


def _section(path: str | os.PathLike, section: str) -> Any:
    top, *rest = section.split(".")
    values = load_params(path, top)
    for depth, key in enumerate(rest, start=1):
        parent = ".".join([top, *rest[:depth - 1]])
        if not isinstance(values, Mapping) or key not in values:
            found = sorted(values) if isinstance(values, Mapping) else []
            raise ParamsSectionError(f"{path}: no section {section!r}; blocks under {parent}: {found}. Add the "
                                     "block (see the repository's params.yaml) or fix the name.")
        values = values[key]
    return values


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
