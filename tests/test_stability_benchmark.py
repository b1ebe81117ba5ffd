"""benchmarks/stability.py: the control is exactly 0, a real change is measured, the record is complete, bad input
is named. A tiny random model on small synthetic files (seconds); the btxrd-mini part skips where it is absent."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from test_infer import tiny_checkpoint

if str(REPO_ROOT) not in sys.path:  # benchmarks/ is a top-level package beside lib/, not installed
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import stability  # noqa: E402
from benchmarks.stability import PERTURBATION_NAMES  # noqa: E402

RECORD_KEYS = {"note", "model", "model_sha256", "trained_on", "clahe", "input_size", "operating_point", "images",
               "n_images", "goal", "perturbations", "diagnostic"}
ROW_KEYS = {"name", "description", "control", "against", "max_abs_change", "median_abs_change", "class_flips",
            "malignant_flag_flips", "input_mean_abs_change", "input_mean_abs_change_clahe_flipped", "meets_goal",
            "per_image"}
DIAGNOSTIC_ROW_KEYS = {"name", "max_abs_change", "median_abs_change", "class_flips", "malignant_flag_flips",
                       "input_mean_abs_change", "per_image"}


def radiographs(folder: Path, n: int = 3, *, suffix: str = ".jpeg") -> Path:
    """``n`` noisy grey images spanning 0..255 (a black corner, a white blob): small, but JPEG noise shows."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:72, 0:96]
    for i in range(n):
        blob = 200 * np.exp(-(((xx - 30 - 15 * i) / 12) ** 2 + ((yy - 36) / 18) ** 2))
        pixels = np.clip(rng.normal(70, 25, (72, 96)) + blob, 0, 255).astype(np.uint8)
        pixels[:4, :4], pixels[-4:, -4:] = 0, 255
        Image.fromarray(pixels).save(folder / f"IMG{i:06d}{suffix}", **({"quality": 95} if suffix == ".jpeg" else {}))
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("stability") / "model.pt")  # clahe: False, 32 px


@pytest.fixture(scope="module")
def record(model, tmp_path_factory) -> dict:
    folder = radiographs(tmp_path_factory.mktemp("originals"))
    predictor = stability.load_predictor(model, operating_point=stability.OperatingPoint())
    return stability.run_benchmark(predictor, stability.image_files(folder))


def rows(record: dict, *, diagnostic: bool = False) -> dict[str, dict]:
    found = record["diagnostic"]["perturbations"] if diagnostic else record["perturbations"]
    return {row["name"]: row for row in found}


@pytest.mark.parametrize("diagnostic", [False, True])
def test_the_lossless_png_control_changes_nothing_with_or_without_clahe(record, diagnostic):
    control = rows(record, diagnostic=diagnostic)["png"]
    assert control["max_abs_change"] == control["median_abs_change"] == 0.0
    assert control["class_flips"] == 0 and control["input_mean_abs_change"] == 0.0
    assert set(control["per_image"].values()) == {0.0}


def test_jpeg_reencoding_changes_the_input_and_reports_a_non_negative_probability_change(record):
    jpeg = rows(record)["jpeg90"]
    assert jpeg["input_mean_abs_change"] > 0  # the copy really differs: the row measures something
    assert 0.0 <= jpeg["median_abs_change"] <= jpeg["max_abs_change"] <= 1.0
    assert jpeg["max_abs_change"] == pytest.approx(max(jpeg["per_image"].values()), abs=1e-6)  # 6 decimals
    assert 0 <= jpeg["class_flips"] <= record["n_images"]


def test_a_16_bit_export_of_a_full_range_image_reads_back_as_the_same_picture(record):
    # 0..255 x 257 spans 0..65535, and the reader's min-max scaling maps it back exactly: a real change is a bug.
    assert rows(record)["png16"]["input_mean_abs_change"] == 0.0


def test_a_resize_changes_the_input_and_the_draft_row_reads_the_original_jpeg(record):
    assert rows(record)["resize0.9"]["input_mean_abs_change"] > 0
    assert rows(record)["draft"]["input_mean_abs_change"] >= 0


def test_the_record_has_the_documented_keys_and_flips_clahe_for_the_diagnostic(record, model):
    assert set(record) == RECORD_KEYS
    assert [row["name"] for row in record["perturbations"]] == list(PERTURBATION_NAMES)
    assert all(set(row) == ROW_KEYS for row in record["perturbations"])
    assert all(set(row) == DIAGNOSTIC_ROW_KEYS for row in record["diagnostic"]["perturbations"])
    assert record["clahe"] is False and record["diagnostic"]["clahe"] is True  # the tiny model has no CLAHE
    assert "not the product's" in record["diagnostic"]["caveat"]
    assert "NOT FOR CLINICAL USE" in record["note"]
    assert record["n_images"] == 3 and record["model"] == str(model)
    assert [row["meets_goal"] for row in record["perturbations"]] == [
        row["median_abs_change"] <= stability.GOAL_MEDIAN for row in record["perturbations"]]


def test_the_diagnostic_really_preprocesses_with_clahe_flipped(record):
    # Were the diagnostic scored through the product's own transform, both columns would be equal.
    jpeg, diagnostic = rows(record)["jpeg90"], rows(record, diagnostic=True)["jpeg90"]
    assert jpeg["input_mean_abs_change_clahe_flipped"] == diagnostic["input_mean_abs_change"]
    assert diagnostic["input_mean_abs_change"] != jpeg["input_mean_abs_change"]


def test_the_command_prints_both_tables_and_writes_the_json(model, tmp_path, capsys):
    folder = radiographs(tmp_path / "originals", 2, suffix=".png")
    out = tmp_path / "stability.json"
    assert stability.main(["--model", str(model), "--images", str(folder), "--operating-point", "none",
                           "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| perturbation | max abs change |" in printed and "Diagnostic, clahe=True" in printed
    written = json.loads(out.read_text(encoding="utf-8"))
    assert set(written) == RECORD_KEYS and written["n_images"] == 2
    assert rows(written)["draft"]["max_abs_change"] == 0.0  # a PNG original is read in full: no draft decode
    # ... so the codec-alone row, scored against that read, is the JPEG row image for image.
    assert rows(written)["jpeg90_vs_draft"]["per_image"] == rows(written)["jpeg90"]["per_image"]
    assert rows(written)["jpeg90"]["input_mean_abs_change"] > 0


def test_a_missing_image_folder_is_a_clear_error(model, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere: image folder not found\. Pass --images DIR"):
        stability.image_files(missing)
    status = stability.run_stage(stability.main, ["--model", str(model), "--images", str(missing)], prog="stability")
    assert status == 2
    assert "stability: error: " in capsys.readouterr().err


def test_a_folder_without_images_and_a_bad_limit_are_named(tmp_path):
    (tmp_path / "notes.txt").write_text("no radiographs here", encoding="utf-8")
    with pytest.raises(ValueError, match="folder holds no image files"):
        stability.image_files(tmp_path)
    radiographs(tmp_path / "originals", 1)
    with pytest.raises(ValueError, match="--limit must be >= 1, got 0"):
        stability.image_files(tmp_path / "originals", limit=0)


def test_on_btxrd_mini_the_release_layout_is_read_and_the_control_stays_exactly_zero(btxrd_mini, model):
    files = stability.image_files(btxrd_mini, limit=2)  # the release layout: its images/ folder
    assert [f.parent.name for f in files] == ["images", "images"]
    predictor = stability.load_predictor(model, operating_point=stability.OperatingPoint())
    found = rows(stability.run_benchmark(predictor, files))
    assert found["png"]["max_abs_change"] == 0.0
    assert found["jpeg90"]["input_mean_abs_change"] > 0
    assert all(0.0 <= row["median_abs_change"] <= row["max_abs_change"] <= 1.0 for row in found.values())
