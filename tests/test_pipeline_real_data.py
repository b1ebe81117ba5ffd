"""The real-data path end to end: `dvc repro` with `data.source: btxrd` on the 30 real BTXRD radiographs.

The excerpt has the release's layout, sheet and annotations, and its quirks: Normal images from centre 1 only,
so the centre-holdout test set holds tumours alone. Skips where ../shared/btxrd-mini is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_pipeline_e2e import REPO_ROOT, _dvc, _git, _set_params

pytestmark = pytest.mark.slow

TINY_REAL = {
    ("prepare", "image_px"): 64,
    ("prepare", "workers"): 1,
    ("model", "backbone"): "test_efficientnet",
    ("model", "pretrained"): "none",
    ("train", "epochs"): 1,
    ("train", "batch_size"): 8,
    ("evaluate", "bootstrap_resamples"): 50,
    ("explain", "bootstrap_resamples"): 50,
    ("explain", "gallery_top_k"): 1,
}


@pytest.fixture(scope="module")
def real_repo(btxrd_mini, tmp_path_factory) -> Path:
    """A temp git + DVC repo where `dvc repro` ran once on the real excerpt."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path_factory.mktemp("real") / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(REPO_ROOT / name, repo / name)
    for folder in ("stages", "lib"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _set_params(repo / "params.yaml", {**TINY_REAL, ("data", "source"): "btxrd",
                                       ("data", "btxrd", "path"): str(btxrd_mini)})
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "e2e@example.invalid")
    _git(repo, "config", "user.name", "e2e")
    _dvc(repo, "init", "-q")
    shutil.copytree(REPO_ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "pipeline definition")
    _dvc(repo, "repro")
    return repo


def test_dvc_repro_runs_the_whole_pipeline_on_real_btxrd_radiographs(real_repo):
    repo = real_repo
    assert len(list((repo / "data" / "raw" / "images").iterdir())) == 30
    audit = json.loads((repo / "metrics" / "audit.json").read_text())
    assert audit["n_images"] == 30 and audit["annotations"]["tumour_with_annotation"] == 20
    center_split = json.loads((repo / "metrics" / "center" / "split.json").read_text())
    assert center_split["missing_classes"]["test"] == ["Normal"]  # no Normal image outside centre 1
    assert center_split["counts"]["test"]["Benign"] > 0 and center_split["counts"]["test"]["Malignant"] > 0
    center = json.loads((repo / "metrics" / "center" / "eval" / "metrics.json").read_text())
    assert center["per_class"]["Normal"]["support"] == 0
    assert center["headline"]["macro_auc"]["value"] is not None  # averaged over the classes present
    explain = json.loads((repo / "metrics" / "stratified" / "explain" / "metrics.json").read_text())
    assert explain["n_images"] + explain["n_skipped_no_mask"] >= 1
    report = (repo / "reports" / "report.md").read_text()
    assert "NOT FOR CLINICAL USE" in report and "`btxrd`" in report
    assert json.loads(_dvc(repo, "status", "--json").stdout or "{}") == {}


def test_the_exploratory_notebook_runs_on_the_real_data_outputs(real_repo, monkeypatch):
    from test_notebook import VARIANTS, expected, run_notebook  # skips where nbclient is absent

    summary = run_notebook(real_repo, monkeypatch)
    assert sorted(summary) == sorted(VARIANTS)
    for variant in VARIANTS:
        got = {k: summary[variant][k] for k in ("n_test", "errors_argmax", "missed_at_operating_point",
                                                "false_negatives_listed")}
        assert got == expected(real_repo, variant), variant
    assert "1" not in summary["center"]["ece_by_center"]  # centre 1 trains the centre variant: not in its test
