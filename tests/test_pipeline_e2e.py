"""End to end: the real `dvc` CLI over the whole pipeline, on a tiny synthetic sample, in a temp git repo.

One module-scoped repo is built once (the expensive part: every stage runs), then each test asks one question of
it, in order: does it build, is a second repro a no-op, does a split.center change touch only its own branch, does
the documented experiment/compare sequence work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("stratified", "center")

#: Tiny settings: the machinery runs end to end in about a minute on 2 cores; values are not judged here.
TINY_PARAMS = {
    ("data", "sample", "n_cases"): 70,
    ("data", "sample", "image_size"): 96,
    ("prepare", "size"): 48,
    ("prepare", "workers"): 1,
    ("model", "backbone"): "test_efficientnet",
    ("model", "pretrained"): "none",
    ("train", "epochs"): 1,
    ("train", "batch_size"): 16,
    ("evaluate", "bootstrap_resamples"): 50,
    ("explain", "bootstrap_resamples"): 50,
    ("explain", "gallery_top_k"): 1,
}


def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONHASHSEED"] = "0"
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=1500
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)


def _set_params(path: Path, updates: dict[tuple[str, ...], object]) -> None:
    params = yaml.safe_load(path.read_text())
    for keys, value in updates.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def build_pipeline_repo(repo: Path, params: dict[tuple[str, ...], object] = TINY_PARAMS,
                        targets: tuple[str, ...] = ()) -> Path:
    """Copy the project into ``repo`` (a new git + DVC repo), run the pipeline (or ``targets``) once, commit."""
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(REPO_ROOT / name, repo / name)
    for folder in ("stages", "lib"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _set_params(repo / "params.yaml", params)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "e2e@example.invalid")
    _git(repo, "config", "user.name", "e2e")
    _dvc(repo, "init", "-q")
    shutil.copytree(REPO_ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")  # custom plot templates
    _dvc(repo, "config", "core.autostage", "true")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "pipeline definition")  # dvclive needs a repository with a commit
    first = _dvc(repo, "repro", *targets)
    (repo / "first_repro.log").write_text(first.stdout + first.stderr)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "tiny pipeline run")
    return repo


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    return build_pipeline_repo(tmp_path_factory.mktemp("e2e") / "repo")


def test_repro_builds_every_declared_output(pipeline_repo: Path):
    repo = pipeline_repo
    for path in ("data/raw/dataset.xlsx", "data/prepared/images.npy", "data/prepared/index.csv",
                 "reports/audit.md", "metrics/audit.json", "metrics/compare.json", "reports/comparison.md",
                 "reports/model_card.md", "reports/report.md", "reports/report.html"):
        assert (repo / path).is_file(), path
    for variant in VARIANTS:
        for part in ("train", "val", "test"):
            assert (repo / f"data/splits/{variant}/{part}.csv").is_file()
        assert (repo / f"models/{variant}/model.pt").is_file()
        metrics = json.loads((repo / f"metrics/{variant}/eval/metrics.json").read_text())
        auc = metrics["headline"]["macro_auc"]
        assert 0.0 <= auc["ci_low"] <= auc["value"] <= auc["ci_high"] <= 1.0
        assert (repo / f"metrics/{variant}/explain/metrics.json").is_file()
    assert "NOT FOR CLINICAL USE" in (repo / "reports/report.md").read_text()


def test_second_repro_runs_nothing_and_status_is_clean(pipeline_repo: Path):
    again = _dvc(pipeline_repo, "repro")
    assert _ran_stages(again.stdout) == set(), again.stdout
    status = json.loads(_dvc(pipeline_repo, "status", "--json").stdout or "{}")
    assert status == {}


def test_metrics_show_lists_both_variants(pipeline_repo: Path):
    shown = _dvc(pipeline_repo, "metrics", "show", "--json").stdout
    for variant in VARIANTS:
        assert f"metrics/{variant}/eval/metrics.json" in shown


def test_center_split_change_reruns_only_the_center_branch(pipeline_repo: Path):
    repo = pipeline_repo
    params = repo / "params.yaml"
    original = params.read_text()
    try:
        _set_params(params, {("split", "center", "val_fraction"): 0.25})
        status = json.loads(_dvc(repo, "status", "--json").stdout or "{}")
        assert set(status) == {"split@center"}, status
        ran = _ran_stages(_dvc(repo, "repro").stdout)
        assert "split@center" in ran
        stratified_or_upstream = {"fetch", "prepare", "audit"} | {f"{s}@stratified" for s in
                                                                  ("split", "train", "evaluate", "explain")}
        assert not ran & stratified_or_upstream, ran
        assert ran <= {"split@center", "train@center", "evaluate@center", "explain@center", "compare", "report"}
    finally:
        params.write_text(original)
        _dvc(repo, "repro")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", "back to baseline", "--allow-empty")


def test_documented_experiment_and_comparison_sequence(pipeline_repo: Path):
    repo = pipeline_repo
    run = _dvc(repo, "exp", "run", "-n", "lower-target", "-S", "evaluate.malignant_target_sensitivity=0.5")
    ran = _ran_stages(run.stdout)
    assert ran and all(s.startswith(("evaluate@", "explain@", "compare", "report")) for s in ran), ran
    exp_diff = _dvc(repo, "exp", "diff", "HEAD", "lower-target", "--json").stdout
    assert "malignant_target_sensitivity" in exp_diff
    _dvc(repo, "exp", "apply", "lower-target")
    metrics_diff = _dvc(repo, "metrics", "diff", "HEAD", "--json").stdout
    assert "metrics/" in metrics_diff
    plots = _dvc(repo, "plots", "diff", "HEAD", "-o", str(repo / "plots_diff"))
    assert (repo / "plots_diff" / "index.html").is_file(), plots.stdout
