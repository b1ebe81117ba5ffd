"""Training-data provenance: the record the train stage puts in the checkpoint and the labels shown with it."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from assurexray.data.btxrd import sheet_modified
from assurexray.core.provenance import (
    trained_on,
    training_data_fingerprint,
    training_data_info,
    training_data_sentence,
)

CLASSES = ["Normal", "Benign", "Malignant"]


def prepared_and_split(root: Path, *, sheet_date: str | None = "2024-12-20") -> tuple[Path, Path]:
    prepared, split = root / "data" / "prepared", root / "data" / "splits" / "center"
    prepared.mkdir(parents=True)
    split.mkdir(parents=True)
    (prepared / "index.csv").write_text(
        "row,image_id,label\n0,a.jpeg,Normal\n1,b.jpeg,Benign\n2,c.jpeg,Malignant\n3,d.jpeg,Benign\n4,e.jpeg,Normal\n",
        encoding="utf-8")
    (prepared / "meta.json").write_text(json.dumps({
        "class_names": CLASSES, "n_images": 5, "centers": [1, 2], "sheet_modified": sheet_date}), encoding="utf-8")
    (split / "train.csv").write_text("row,image_id,label\n0,a.jpeg,Normal\n1,b.jpeg,Benign\n3,d.jpeg,Benign\n",
                                     encoding="utf-8")
    (split / "val.csv").write_text("row,image_id,label\n2,c.jpeg,Malignant\n", encoding="utf-8")
    return prepared, split


def test_the_record_names_the_source_fingerprint_counts_split_and_the_sheet_date(tmp_path):
    prepared, split = prepared_and_split(tmp_path)
    info = training_data_info(prepared, split, source="sample")
    assert info == {
        "source": "sample", "synthetic": True,
        "index_sha256": hashlib.sha256((prepared / "index.csv").read_bytes()).hexdigest(),
        "n_images": 5, "split": "center", "n_train": 3, "n_val": 1,
        "train_counts": {"Normal": 1, "Benign": 2, "Malignant": 0}, "centers": [1, 2],
        "data_date": "2024-12-20", "data_date_basis": info["data_date_basis"],
    }
    assert "dataset.xlsx" in info["data_date_basis"]
    json.dumps(info, allow_nan=False)  # plain JSON: the checkpoint loads with weights_only=True


def test_the_record_depends_on_the_data_only_not_on_file_times(tmp_path):
    prepared, split = prepared_and_split(tmp_path)
    first = training_data_info(prepared, split, source="btxrd")
    os.utime(prepared / "index.csv", (0, 0))  # a copy elsewhere has other mtimes
    assert training_data_info(prepared, split, source="btxrd") == first and first["synthetic"] is False
    (prepared / "index.csv").write_text("row,image_id,label\n0,a.jpeg,Benign\n", encoding="utf-8")
    assert training_data_info(prepared, split, source="btxrd")["index_sha256"] != first["index_sha256"]


def test_a_missing_split_file_is_named_with_the_command(tmp_path):
    prepared, split = prepared_and_split(tmp_path)
    (split / "val.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.csv: not found; run the prepare and split stages"):
        training_data_info(prepared, split, source="sample")


def test_an_empty_source_is_refused(tmp_path):
    prepared, split = prepared_and_split(tmp_path)
    with pytest.raises(ValueError, match=r"data.source must be a non-empty string .* got ''"):
        training_data_info(prepared, split, source="")


def test_labels_say_synthetic_for_the_sample_and_unknown_for_an_old_checkpoint(tmp_path):
    prepared, split = prepared_and_split(tmp_path)
    sample = {"data": training_data_info(prepared, split, source="sample")}
    real = {"data": training_data_info(prepared, split, source="btxrd")}
    assert (trained_on(sample), trained_on(real), trained_on({}), trained_on({"data": None})) == (
        "synthetic-sample", "btxrd", "unknown", "unknown")
    assert training_data_fingerprint(sample) == sample["data"]["index_sha256"]
    assert training_data_fingerprint({}) is None
    sentence = training_data_sentence(sample)
    assert sentence.startswith("Trained on the built-in SYNTHETIC sample")
    assert "3 training and 1 validation images of the center split" in sentence
    assert sample["data"]["index_sha256"][:12] in sentence and "dated 2024-12-20" in sentence
    assert training_data_sentence(real).startswith("Trained on BTXRD radiographs")
    assert training_data_sentence({}).startswith("Training data unknown: this checkpoint records no data")


def test_no_recorded_sheet_date_is_said_not_invented(tmp_path):
    prepared, split = prepared_and_split(tmp_path, sheet_date=None)
    meta = {"data": training_data_info(prepared, split, source="btxrd")}
    assert meta["data"]["data_date"] is None and "no dataset date recorded" in training_data_sentence(meta)


def _xlsx(path: Path, core: str | None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
        if core is not None:
            archive.writestr("docProps/core.xml", core)
    return path


@pytest.mark.parametrize("core,expected", [
    ('<cp:coreProperties><dcterms:created xsi:type="dcterms:W3CDTF">2020-01-01T00:00:00Z</dcterms:created>'
     '<dcterms:modified xsi:type="dcterms:W3CDTF">2024-11-29T04:52:00Z</dcterms:modified></cp:coreProperties>',
     "2024-11-29"),
    ('<cp:coreProperties><dcterms:created xsi:type="dcterms:W3CDTF">2021-05-06T00:00:00Z</dcterms:created>'
     "</cp:coreProperties>", "2021-05-06"),
    ("<cp:coreProperties/>", None),
    (None, None),
])
def test_the_sheet_date_comes_from_the_workbook_properties(tmp_path, core, expected):
    assert sheet_modified(_xlsx(tmp_path / "dataset.xlsx", core)) == expected


def test_a_csv_sheet_or_a_broken_workbook_has_no_date(tmp_path):
    (tmp_path / "dataset.csv").write_text("image_id\n", encoding="utf-8")
    (tmp_path / "broken.xlsx").write_bytes(b"not a zip")
    assert sheet_modified(tmp_path / "dataset.csv") is None and sheet_modified(tmp_path / "broken.xlsx") is None
