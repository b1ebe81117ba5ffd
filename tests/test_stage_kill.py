"""No half-written outputs: each data stage is SIGKILLed at a write and the previous outputs must survive.

Each stage runs once to completion (the "previous" outputs), then again with other params so every output
would change, in a forked child that SIGKILLs itself at its k-th ``os.replace`` (the moment an atomic write
commits), for every k the stage reaches. After each kill every output is byte-identical to the previous run
or absent (a folder swap killed between its two renames), never truncated or mixed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")

# stage -> (argv with {root}, outputs relative to root)
STAGES = {
    "fetch": (["--out", "{root}/data/raw"], ["data/raw"]),
    "prepare": (["--raw", "{root}/data/raw", "--out", "{root}/data/prepared"], ["data/prepared"]),
    "split": (["--variant", "stratified", "--index", "{root}/data/prepared/index.csv", "--out",
               "{root}/data/splits/stratified", "--metrics", "{root}/metrics/stratified/split.json"],
              ["data/splits/stratified", "metrics/stratified/split.json"]),
    "audit": (["--raw", "{root}/data/raw", "--prepared", "{root}/data/prepared", "--report", "{root}/reports/audit.md",
               "--figures", "{root}/reports/audit", "--metrics", "{root}/metrics/audit.json"],
              ["reports/audit.md", "reports/audit", "metrics/audit.json"]),
}


def write_params(root: Path, *, seed: int) -> Path:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["base"]["seed"] = seed
    params["data"]["sample"].update(n_cases=40, image_size=64)
    params["prepare"].update(size=32, workers=1)
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


def _killed_at(k: int, main, argv: list[str]) -> None:
    """Child: run ``main`` and SIGKILL this process at the k-th os.replace, before it happens."""
    calls = {"n": 0}
    real_replace = os.replace

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    os.replace = replace
    main(argv)
    os._exit(0 if calls["n"] < k else 3)  # 0: the stage finished before reaching the k-th write


def run_killed(k: int, main, argv: list[str]) -> int:
    child = multiprocessing.get_context("fork").Process(target=_killed_at, args=(k, main, argv))
    child.start()
    child.join(timeout=300)
    return child.exitcode


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """fetch -> prepare -> split -> audit completed once on a small synthetic sample (40 cases, 64 px)."""
    root = tmp_path_factory.mktemp("killed")
    params = write_params(root, seed=1)
    for name, (argv, _) in STAGES.items():
        assert stage_main(name)([a.format(root=root) for a in argv] + ["--params", str(params)]) == 0
    return root


@pytest.mark.parametrize("name", STAGES)
def test_a_stage_killed_at_any_write_leaves_the_previous_outputs_intact_or_absent(project, name):
    argv, outputs = STAGES[name]
    other = write_params(project, seed=2)  # a rerun would change every output
    args = [a.format(root=project) for a in argv] + ["--params", str(other)]
    main = stage_main(name)
    previous = snapshot(project, outputs)
    killed = 0
    for k in range(1, 50):
        code = run_killed(k, main, args)
        if code == 0:
            break  # the stage has fewer than k writes
        assert code == -signal.SIGKILL, f"{name}: child exited {code} before reaching write {k}"
        killed += 1
        after = snapshot(project, outputs)
        for rel, digest in after.items():
            assert digest is None or previous.get(rel) == digest, f"{name} killed at write {k}: {rel} changed"
        for rel in outputs:  # restore the previous state if a folder swap was cut between its renames
            old = (project / rel).with_name(f".{Path(rel).name}.old")
            if not (project / rel).exists() and old.exists():
                os.replace(old, project / rel)
        assert snapshot(project, outputs) == previous
    assert killed >= 1, f"{name}: no write was reached"
