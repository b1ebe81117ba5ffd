"""No half-written outputs: each stage is SIGKILLed at each of its writes; no output may be left truncated.

Each stage runs once to completion (the "previous" outputs) and once with other params / inputs (the "new"
outputs). Then, from the previous state each time, a forked child reruns it and SIGKILLs itself at its k-th
kill point, for every k the stage reaches. After each kill every output is byte-identical to its previous or
its new version, or absent (a folder swap killed between its two renames), never truncated or a mix of both
runs. Kill points, so that a plain ``open(path, "w")`` onto an output is caught as well as a folder filled in
place:

- each ``os.replace`` (the moment an atomic write commits), killed before it happens;
- each file opened for writing under the project, killed just after ``open`` returns: a write straight onto
  an output leaves it truncated (empty), while an atomic write only leaves a temporary file beside it.

The model stages are killed the same way in ``test_stage_kill_model``.
"""

from __future__ import annotations

import builtins
import hashlib
import importlib.util
import io
import json
import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO_ROOT
from test_compare import _eval_metrics

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")

# stage -> (argv with {root}, outputs relative to root)
STAGES = {
    "fetch": (["--out", "{root}/data/raw"], ["data/raw"]),
    "prepare": (["--raw", "{root}/data/raw", "--out", "{root}/data/prepared"], ["data/prepared"]),
    "split": (["--variant", "stratified", "--index", "{root}/data/prepared/index.csv", "--out",
               "{root}/data/splits/stratified", "--metrics", "{root}/metrics/stratified/split.json"],
              ["data/splits/stratified", "metrics/stratified/split.json"]),
    "audit": (["--raw", "{root}/data/raw", "--prepared", "{root}/data/prepared", "--report", "{root}/reports/audit.md",
               "--figures", "{root}/reports/audit", "--metrics", "{root}/metrics/audit.json",
               "--datasheet", "{root}/reports/datasheet.md"],
              ["reports/audit.md", "reports/audit", "metrics/audit.json", "reports/datasheet.md"]),
    "compare": (["--stratified", "{root}/metrics/stratified", "--center", "{root}/metrics/center", "--out",
                 "{root}/metrics/compare.json", "--report", "{root}/reports/comparison.md"],
                ["metrics/compare.json", "reports/comparison.md"]),
}
NO_PARAMS = {"compare"}  # stages without --params: their rerun differs through their inputs
MAX_KILLS = 200  # more kill points than any stage here reaches (fetch: about 110); the test fails if one reaches it


def write_eval_metrics(root: Path, *, shift: float) -> None:
    """Hand-made evaluate outputs for compare (schema of docs/ARCHITECTURE.md, as in test_compare)."""
    for variant, offset in (("stratified", 0.0), ("center", shift)):
        path = root / "metrics" / variant / "eval" / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_eval_metrics(offset)), encoding="utf-8")


def write_params(root: Path, *, seed: int) -> Path:
    """Small-sample params; seed 2 also changes the cache size and the montage, so every stage's outputs change."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["base"]["seed"] = seed
    params["data"]["sample"].update(n_cases=40, image_size=64)
    params["prepare"].update(image_px=32 if seed == 1 else 48, workers=1)
    params["audit"]["montage_groups"] = 12 if seed == 1 else 1
    params["split"]["stratified"]["missing_test_classes"] = "allow"
    path = root / f"params-{seed}.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def stage_main(name: str):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", REPO_ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def snapshot(root: Path, outputs: list[str]) -> dict[str, str | None]:
    """SHA-256 of every file under each output (None: absent), keyed by relative path."""
    state: dict[str, str | None] = {}
    for rel in outputs:
        path = root / rel
        if not path.exists():
            state[rel] = None
            continue
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            state[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return state


def snapshot_of(state: dict[str, str | None], rel: str) -> dict[str, str | None]:
    """The part of a :func:`snapshot` under output ``rel``."""
    return {k: v for k, v in state.items() if k == rel or k.startswith(rel + "/")}


def _killed_at(k: int, root: Path, main, argv: list[str]) -> None:
    """Child: run ``main``; SIGKILL this process at its k-th kill point (see the module docstring)."""
    torch.set_num_threads(1)  # a forked child must not use an OpenMP pool it inherited from the parent
    calls = {"n": 0}
    real_replace, real_open = os.replace, io.open
    inside = str(root) + os.sep

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    def open_(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        writes = any(flag in mode for flag in "wax+")
        if writes and isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)).startswith(inside):
            calls["n"] += 1
            if calls["n"] == k:
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return handle

    os.replace, io.open, builtins.open = replace, open_, open_
    main(argv)
    os._exit(0 if calls["n"] < k else 3)  # 0: the stage finished before reaching its k-th kill point


def run_killed(k: int, root: Path, main, argv: list[str]) -> int:
    child = multiprocessing.get_context("fork").Process(target=_killed_at, args=(k, root, main, argv))
    child.start()
    child.join(timeout=600)
    return child.exitcode


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """fetch -> prepare -> split -> audit completed once on a small synthetic sample (40 cases, 64 px)."""
    root = tmp_path_factory.mktemp("killed")
    params = write_params(root, seed=1)
    write_eval_metrics(root, shift=0.1)
    for name, (argv, _) in STAGES.items():
        extra = [] if name in NO_PARAMS else ["--params", str(params)]
        assert stage_main(name)([a.format(root=root) for a in argv] + extra) == 0
    return root


def backup(root: Path, outputs: list[str], to: Path) -> None:
    for rel in outputs:
        source, target = root / rel, to / rel
        if source.is_dir():
            shutil.copytree(source, target)
        elif source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def restore(root: Path, outputs: list[str], source: Path) -> None:
    """Put the backed-up outputs back, removing whatever a killed run left (temp files and folders too)."""
    for rel in outputs:
        path = root / rel
        for leftover in [path, *path.parent.glob(f".{path.name}.*")]:
            if leftover.is_dir():
                shutil.rmtree(leftover)
            elif leftover.exists():
                leftover.unlink()
    backup(source, outputs, root)


@pytest.mark.parametrize("name", STAGES)
def test_a_stage_killed_at_any_write_leaves_each_output_whole_old_new_or_absent(project, name, tmp_path):
    argv, outputs = STAGES[name]
    saved = tmp_path / "previous"
    backup(project, outputs, saved)
    previous = snapshot(project, outputs)
    if name in NO_PARAMS:
        write_eval_metrics(project, shift=0.2)  # a rerun changes every output
        extra = []
    else:
        extra = ["--params", str(write_params(project, seed=2))]  # a rerun changes every output
    args = [a.format(root=project) for a in argv] + extra
    main = stage_main(name)
    assert run_killed(10_000, project, main, args) == 0  # a complete rerun: the "new" outputs
    new = snapshot(project, outputs)
    assert new != previous, f"{name}: the rerun must change some output for the kills to tell old from new"
    kill_at_every_write(name, project, main, args, outputs, saved=saved, previous=previous, new=new)
    if name in NO_PARAMS:
        write_eval_metrics(project, shift=0.1)
    assert snapshot(project, outputs) == previous


def kill_at_every_write(name: str, project: Path, main, args: list[str], outputs: list[str], *, saved: Path,
                        previous: dict, new: dict, before_each=lambda: None, max_kills: int = MAX_KILLS) -> None:
    """Kill the stage at its 1st, 2nd, ... write until it completes; after each kill every output must be
    whole: as before (``previous``), as after a full run (``new``), or absent, never truncated. Ends with the
    previous outputs restored (``before_each`` also runs then), so the next test starts from the project."""
    killed = 0
    for k in range(1, max_kills + 1):
        restore(project, outputs, saved)
        before_each()
        code = run_killed(k, project, main, args)
        if code == 0:
            break  # the stage has fewer than k kill points
        assert code == -signal.SIGKILL, f"{name}: child exited {code} before reaching kill point {k}"
        killed += 1
        for rel in outputs:  # each output whole, as before or as after a full run, or absent: never truncated
            after = snapshot(project, [rel])
            allowed = ({rel: None}, snapshot_of(previous, rel), snapshot_of(new, rel))
            assert after in allowed, f"{name} killed at point {k}: {rel} is neither the old, the new nor absent"
    else:
        pytest.fail(f"{name}: more than {max_kills} kill points; raise MAX_KILLS")
    assert killed >= len(outputs), f"{name}: fewer kill points than outputs: some write escapes the hooks"
    restore(project, outputs, saved)
    before_each()
