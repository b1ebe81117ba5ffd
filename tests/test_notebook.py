"""notebooks/explore.ipynb runs top to bottom (nbclient) on the committed outputs and on altered ones, and its
summary agrees with numbers computed here independently and with the evaluate stage's metrics.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import import_or_skip

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "notebooks" / "explore.ipynb"
VARIANTS = ("stratified", "center")


def run_notebook(root: Path, monkeypatch) -> dict:
    """Execute the notebook against project ``root``; return its JSON summary (the last cell's output)."""
    # Missing notebook tools skip here, and fail under CI=true (conftest.skip_or_fail).
    nbclient = import_or_skip("nbclient", "nbclient not installed (pip install -r requirements.txt)")
    nbformat = import_or_skip("nbformat", "nbformat not installed (pip install -r requirements.txt)")
    import_or_skip("ipykernel", "ipykernel not installed (pip install -r requirements.txt); nbclient runs it")
    monkeypatch.setenv("ASSUREXRAY_ROOT", str(root))  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.get("output_type") == "stream")
    return json.loads(text)


def expected(root: Path, variant: str) -> dict:
    frame = pd.read_csv(root / "metrics" / variant / "eval" / "predictions.csv", keep_default_na=False)
    test = frame[frame["partition"] == "test"]
    probs = test[[c for c in test.columns if c.startswith("prob_")]]
    fn = test[(test["label"] == "Malignant") & (test["pred"] != "Malignant")]
    fn = fn.assign(conf=probs.loc[fn.index].max(axis=1)).sort_values("image_id").sort_values(
        "conf", ascending=False, kind="stable")
    return {
        "n_test": len(test),
        "errors_argmax": int((test["pred"] != test["label"]).sum()),
        "missed_at_operating_point": int(((test["label"] == "Malignant") & (test["malignant_flag"] == 0)).sum()),
        "false_negatives_listed": fn["image_id"].head(5).tolist(),
    }


def test_the_notebook_summarises_the_committed_outputs_of_both_variants(monkeypatch):
    summary = run_notebook(REPO_ROOT, monkeypatch)
    assert sorted(summary) == sorted(VARIANTS)
    for variant in VARIANTS:
        metrics = json.loads((REPO_ROOT / "metrics" / variant / "eval" / "metrics.json").read_text())
        got = {k: summary[variant][k] for k in ("n_test", "errors_argmax", "missed_at_operating_point",
                                                "false_negatives_listed")}
        assert got == expected(REPO_ROOT, variant)
        assert summary[variant]["n_test"] == metrics["n_test"]
        # pooled ECE recomputed from predictions.csv equals the evaluate stage's own number
        assert summary[variant]["ece_by_center"]["all"] == pytest.approx(metrics["calibration"]["ece_after"], abs=1e-4)
        frame = pd.read_csv(REPO_ROOT / "metrics" / variant / "eval" / "predictions.csv")
        centres = frame.loc[frame["partition"] == "test", "center"].astype(str)
        assert set(summary[variant]["ece_by_center"]) == {"all", *centres}  # one ECE per test centre


def test_the_notebook_reads_the_files_it_is_given_not_fixed_numbers(tmp_path, monkeypatch):
    shutil.copytree(REPO_ROOT / "metrics", tmp_path / "metrics")
    path = tmp_path / "metrics" / "center" / "eval" / "predictions.csv"
    frame = pd.read_csv(path, keep_default_na=False)
    right = frame.index[(frame["partition"] == "test") & (frame["pred"] == frame["label"])][0]
    wrong = next(c for c in ("Normal", "Benign", "Malignant") if c != frame.at[right, "label"])
    frame.at[right, "pred"] = wrong  # one correct test prediction made wrong
    frame.to_csv(path, index=False)
    (tmp_path / "metrics" / "stratified" / "explain" / "per_image.csv").unlink()  # optional input absent
    summary = run_notebook(tmp_path, monkeypatch)
    assert summary["center"]["errors_argmax"] == expected(REPO_ROOT, "center")["errors_argmax"] + 1
    assert summary["center"]["errors_argmax"] == expected(tmp_path, "center")["errors_argmax"]
    # the stratified summary is unaffected by the centre edit and by its missing per_image.csv
    assert {k: summary["stratified"][k] for k in expected(tmp_path, "stratified")} == expected(tmp_path, "stratified")
