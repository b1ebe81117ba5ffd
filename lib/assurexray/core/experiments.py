"""DVC experiments as files: ``dvc exp show --json``, a file at an experiment's git revision, and whose it is.

An experiment's git revision holds every output of the pipeline, but ``dvc exp run`` of some stages leaves the
other stages' outputs as the parent wrote them. :class:`OwnFiles` reads a file only when it is the experiment's
own: the stage that wrote it (the one listing it among its ``outs`` in the revision's ``dvc.lock``) is up to date
with the experiment's params, and so is every stage upstream of it. A file no stage of the lock wrote, or one
written by a stage that is out of date, reads as absent (None): a parent's figure is never shown as this run's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Callable, Iterator, Mapping

import yaml

__all__ = ["Experiment", "Reader", "OwnFiles", "experiments_from_exp_show", "git_reader", "flatten_params",
           "producing_stage", "stage_is_stale"]

logger = logging.getLogger(__name__)

#: ``read(rev, path)``: the text of ``path`` at git revision ``rev``, None when the revision has no such file.
Reader = Callable[[str, str], str | None]


@dataclass(frozen=True)
class Experiment:
    """One DVC experiment (or a commit): its name, git revision and flattened params (``"train.epochs": 12``)."""

    name: str
    rev: str
    params: dict[str, Any]


def experiments_from_exp_show(data: list[dict[str, Any]]) -> list[Experiment]:
    """Flatten ``dvc exp show --json`` into experiments: the baseline commit(s) and every finished experiment."""
    out: list[Experiment] = []
    for entry in data:
        if entry.get("rev") == "workspace":
            continue
        out += _experiment(entry)
        for exp in entry.get("experiments") or []:
            # DVC 3 keeps a queued or running experiment's state in its executor, and lists it with the revision
            # of its queue stash (whose files are the parent's): only a finished one is measured.
            if (exp.get("executor") or {}).get("state") not in (None, "success"):
                continue
            for rev in exp.get("revs") or []:
                out += _experiment(rev)
    return out


def git_reader(repo: str | PurePath) -> Reader:
    """``read(rev, path)``: the file at ``path`` in git revision ``rev`` of ``repo`` (None when absent)."""
    def read(rev: str, path: str) -> str | None:
        done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None
    return read


def flatten_params(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 12}}`` -> ``{"train.epochs": 12}`` (a key already dotted, as dvc.lock records
    ``base.seed``, stays as it is)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flatten_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class OwnFiles:
    """The files of one experiment that its own run wrote, read from its git revision (see the module doc)."""

    def __init__(self, exp: Experiment, read: Reader) -> None:
        self.exp = exp
        self._read = read
        text = read(exp.rev, "dvc.lock")
        self.lock: Mapping[str, Any] | None = None if text is None else (yaml.safe_load(text) or {})
        #: The run's identity: two revisions with one dvc.lock hold the same outputs (None without a lock).
        self.lock_sha256 = None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()

    def read(self, path: str | PurePath) -> str | None:
        """The file at ``path`` when this experiment's run wrote it, else None.

        Without a dvc.lock nothing says whose a file is, and it is read as the experiment's (an old commit)."""
        path = PurePath(path).as_posix()
        if self.lock is None:
            return self._read(self.exp.rev, path)
        stage = producing_stage(self.lock, path)
        if stage is None:
            logger.info("%s: no stage of its dvc.lock wrote %s; n/a", self.exp.name, path)
            return None
        if stage_is_stale(self.lock, stage, self.exp.params):
            logger.info("%s: %s (by %s) is a parent's, not this experiment's; n/a", self.exp.name, path, stage)
            return None
        return self._read(self.exp.rev, path)


def producing_stage(lock: Mapping[str, Any], path: str) -> str | None:
    """The stage of ``lock`` (a parsed dvc.lock) whose ``outs`` hold ``path`` (itself, or a folder above it)."""
    for name, out in _outs(lock):
        if path == out["path"] or path.startswith(out["path"].rstrip("/") + "/"):
            return name
    return None


def stage_is_stale(lock: Mapping[str, Any], stage: str, params: Mapping[str, Any]) -> bool:
    """True when ``stage``'s outputs in ``lock`` are not those of a run with ``params`` (flattened).

    That is: the stage is not in the lock, a param it recorded differs from ``params``, or an input it ran on is
    not what the stage producing that input last wrote (an upstream stage such as ``prepare`` reran and this one
    did not), checked up the pipeline."""
    stages = lock.get("stages") or {}
    producers = {out["path"]: (name, out.get("md5")) for name, out in _outs(lock)}
    seen: dict[str, bool] = {}

    def stale(name: str) -> bool:
        if name not in seen:
            entry = stages.get(name)
            seen[name] = entry is None or _params_differ(entry, params)
            for dep in (entry or {}).get("deps") or []:
                producer = producers.get(dep.get("path"))
                if producer is not None and producer[0] != name and not seen[name]:
                    seen[name] = dep.get("md5") != producer[1] or stale(producer[0])
        return seen[name]

    return stale(stage)


# ----------------------------------------------------------------------------------------------- helpers


def _experiment(node: Mapping[str, Any]) -> list[Experiment]:
    """The finished experiment (or commit) of one ``exp show`` node; none for one still queued or running.

    An experiment running in the workspace is listed with rev ``workspace`` and no status: its files are
    half-written, and there is no commit to read them from."""
    data = node.get("data") or {}
    if data.get("status") not in (None, "Success") or "rev" not in data or data["rev"] == "workspace":
        return []
    params = flatten_params((data.get("params") or {}).get("params.yaml", {}).get("data", {}))
    name = data.get("name") or node.get("name") or data["rev"][:7]
    return [Experiment(name=str(name), rev=str(data["rev"]), params=params)]


def _outs(lock: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(stage, out entry) for every output recorded in ``lock``."""
    for name, entry in (lock.get("stages") or {}).items():
        for out in (entry or {}).get("outs") or []:
            if out.get("path"):
                yield name, out


def _params_differ(entry: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    """Whether a param the stage recorded in dvc.lock differs from ``params`` (one it never read is no matter)."""
    recorded = flatten_params(((entry.get("params") or {}).get("params.yaml")) or {})
    return any(_canonical(value) != _canonical(params.get(key)) for key, value in recorded.items() if key in params)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
