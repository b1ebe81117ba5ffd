"""The README's `dvc exp run -S ...` commands, run as written (paths to local fixtures substituted).

A documented override of a key absent from params.yaml fails in DVC ("Key 'list_file' is not in struct"), so
every `-S` key in the README must exist in params.yaml, and the real-data and published-split commands are run
through the split stage on real DVC. The real-data one runs on ../shared/btxrd-dev with the authors' sheets and
asserts that no case straddles the stratified split.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import skip_or_fail

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
SHARED = REPO_ROOT.parent / "shared"
BTXRD_DEV = SHARED / "btxrd-dev"

#: Tiny settings so fetch + prepare + split of the sample take seconds.
TINY = {("data", "sample", "n_cases"): 60, ("data", "sample", "image_size"): 96, ("prepare", "image_px"): 48,
        ("prepare", "workers"): 1}


def _documented_commands() -> list[list[str]]:
    """Every `dvc exp run` command in the README's fenced blocks, continuation lines joined, as argv."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("dvc exp run"):
                commands.append(shlex.split(line))
    return commands


def _overrides(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-S")


def test_every_documented_override_names_a_key_of_params_yaml():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    text = README.read_text(encoding="utf-8")
    keys = set(re.findall(r"-S ['\"]?([a-z_][a-z0-9_.]*)=", text))  # -S key=v, -S 'key=v', -S "key='v w'"
    assert len(keys) > 10, keys
    for key in sorted(keys):
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, (
                f"README documents -S {key}=..., but params.yaml has no such key (DVC would refuse it)")
            node = node[part]


def test_the_readme_documents_the_real_data_and_published_commands():
    kinds = [_overrides(c) for c in _documented_commands()]
    assert any(k.get("data.source") == "btxrd" and "data.btxrd.case_sheets" in k for k in kinds)
    assert any(k.get("split.stratified.strategy") == "published" for k in kinds)


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _repo(tmp_path: Path, updates: dict) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(REPO_ROOT / name, repo / name)
    for folder in ("stages", "lib"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for keys, value in updates.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["init", "-q"], ["config", "user.email", "t@example.invalid"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    _dvc(repo, "init", "-q")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "pipeline"], cwd=repo, check=True, capture_output=True)
    return repo


def _run_documented(repo: Path, predicate, substitute: dict[str, str], *targets: str) -> dict[str, str]:
    command = next(c for c in _documented_commands() if predicate(_overrides(c)))
    argv = []
    for arg in command[3:]:
        for old, new in substitute.items():
            arg = arg.replace(old, new)
        argv.append(arg)
    _dvc(repo, "exp", "run", *argv, *targets)
    return _overrides(command)


@pytest.mark.slow
def test_the_documented_published_split_command_replicates_the_authors_sheets(tmp_path):
    repo = _repo(tmp_path, TINY)
    _dvc(repo, "repro", "prepare")
    index = pd.read_csv(repo / "data/prepared/index.csv", dtype=str)
    ids = index["image_id"].tolist()
    authors = tmp_path / "authors"
    authors.mkdir()
    held_out = ids[::4]  # every class in both sheets
    pd.DataFrame({"image_id": [i for i in ids if i not in held_out] + ["IMG999999.jpeg"]}).to_excel(
        authors / "classification_task_train.xlsx", index=False)
    pd.DataFrame({"image_id": held_out}).to_excel(authors / "classification_task_val.xlsx", index=False)
    _run_documented(repo, lambda o: o.get("split.stratified.strategy") == "published",
                    {"../shared/btxrd-dev/authors": str(authors)}, "split@stratified")
    split = json.loads((repo / "metrics/stratified/split.json").read_text())
    assert split["strategy"] == "published"
    assert split["published"]["listed_absent"] == 1  # reported, not fatal
    test = pd.read_csv(repo / "data/splits/stratified/test.csv", dtype=str)["image_id"]
    assert sorted(test) == sorted(held_out)
    assert "image-level" in split_statement(split)


def split_statement(split: dict) -> str:
    from assurexray.data.splits import grouping_statement

    return grouping_statement(split)


@pytest.mark.slow
def test_on_real_btxrd_with_the_authors_sheets_no_case_straddles_the_stratified_split(tmp_path):
    if not (BTXRD_DEV / "dataset.xlsx").is_file() or not (BTXRD_DEV / "authors").is_dir():
        skip_or_fail(f"real-data fixture absent: {BTXRD_DEV} (dataset.xlsx and authors/)")
    repo = _repo(tmp_path, {("prepare", "workers"): 2})
    _run_documented(repo, lambda o: o.get("data.source") == "btxrd",
                    {"../shared/btxrd-dev": str(BTXRD_DEV)}, "split@stratified", "split@center")
    for variant in ("stratified", "center"):
        split = json.loads((repo / f"metrics/{variant}/split.json").read_text())
        g = split["grouping"]
        assert g["basis"] == "cases+duplicates" and g["n_cases"] > 900 and g["n_images_with_case"] > 1500
        assert g["cases_straddling"] == 0 and g["groups_straddling"] == 0
        assert g["test_images_with_case_elsewhere"] == 0
        assert "No group straddles" in split_statement(split)
    parts = {p: pd.read_csv(repo / f"data/splits/stratified/{p}.csv", dtype=str, keep_default_na=False)
             for p in ("train", "val", "test")}
    cases = {p: set(f.loc[f["case_id"] != "", "case_id"]) for p, f in parts.items()}
    assert not cases["test"] & (cases["train"] | cases["val"])  # checked on the rows themselves, too
