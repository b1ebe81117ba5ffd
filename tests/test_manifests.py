"""One validated reader of the prepared cache and the split manifests (train, evaluate, explain, split)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from assurexray.learning import training
from assurexray.assessment import evaluation, explain
from assurexray.data.manifests import INDEX_COLUMNS, open_images, read_index, read_meta, read_split

N, S = 4, 8


def _row(i: int) -> dict:
    values = dict(row=i, image_id=f"IMG{i:06d}.jpeg", label="Normal", label_idx=0, center=1, case_id="",
                  group=f"00{i}", view="", has_mask=0, orig_width=S, orig_height=S, orig_mode="L", scale=1.0,
                  pad_x=0, pad_y=0, phash="0012ab", dup_of="")
    return {c: values[c] for c in INDEX_COLUMNS}


def _prepared(tmp_path, rows=(0, 1)):
    np.save(tmp_path / "images.npy", np.arange(N * S * S, dtype=np.uint8).reshape(N, S, S))
    np.save(tmp_path / "masks.npy", np.zeros((N, S, S), dtype=np.uint8))
    (tmp_path / "meta.json").write_text(json.dumps({"size": S, "class_names": ["Normal", "Benign", "Malignant"]}))
    for part in ("train", "val", "test"):
        pd.DataFrame([_row(i) for i in rows]).to_csv(tmp_path / f"{part}.csv", index=False)
    return tmp_path


def test_text_columns_stay_text_so_ids_keep_their_zeros_and_blanks_stay_empty(tmp_path):
    frame = read_split(_prepared(tmp_path), "val", n_images=N)
    assert frame["group"].tolist() == ["000", "001"] and frame["phash"].tolist() == ["0012ab", "0012ab"]
    assert frame["case_id"].tolist() == ["", ""] and frame["row"].dtype.kind == "i"
    assert read_index(tmp_path / "val.csv").equals(frame)


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda p: (p / "val.csv").unlink(), FileNotFoundError, r"val\.csv: not found; run the prepare and split"),
        (lambda p: pd.DataFrame([_row(0)]).drop(columns="label_idx").to_csv(p / "val.csv", index=False), ValueError,
         r"val\.csv: missing column\(s\) \['label_idx'\]; found \["),
        (lambda p: pd.DataFrame(columns=INDEX_COLUMNS).to_csv(p / "val.csv", index=False), ValueError,
         r"val\.csv: no rows; the val partition must hold at least one image"),
        (lambda p: pd.DataFrame([_row(0), _row(7)]).to_csv(p / "val.csv", index=False), ValueError,
         r"val\.csv line 3: row 7 is outside images\.npy \(0\.\.3\); the split does not belong to this prepared"),
    ],
    ids=["missing", "column", "empty", "row-outside"],
)
def test_a_bad_split_fails_alike_in_train_evaluate_and_explain(tmp_path, mutate, error, match):
    mutate(_prepared(tmp_path))
    classes = ["Normal", "Benign", "Malignant"]
    (tmp_path / "predictions.csv").write_text("partition,row,pred_idx,pred,prob_Normal,prob_Benign,prob_Malignant\n")
    with pytest.raises(error, match=match):
        read_split(tmp_path, "val", n_images=N, columns=["label_idx"])
    with pytest.raises(error, match=match):
        training.load_training_data(tmp_path, tmp_path)
    with pytest.raises(error, match=match):
        evaluation.load_partition(tmp_path, tmp_path, "val")
    with pytest.raises(error, match=match):
        explain._load_inputs(tmp_path, tmp_path, tmp_path / "predictions.csv", classes)


def test_the_arrays_are_memory_mapped_and_must_share_one_shape(tmp_path):
    _prepared(tmp_path)
    images, masks = open_images(tmp_path)
    assert isinstance(images, np.memmap) and images.shape == masks.shape == (N, S, S)
    assert open_images(tmp_path, masks=False)[1] is None
    (tmp_path / "masks.npy").unlink()
    assert open_images(tmp_path, masks=None)[1] is None  # optional: training without lesion masks
    with pytest.raises(FileNotFoundError, match=r"masks\.npy: not found; run the prepare stage"):
        open_images(tmp_path)
    np.save(tmp_path / "masks.npy", np.zeros((N, S, S + 1), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"images\.npy \(4, 8, 8\) and masks\.npy \(4, 8, 9\) must share one"):
        open_images(tmp_path)


def test_meta_must_name_the_classes(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"size": S}))
    with pytest.raises(ValueError, match=r"meta\.json: no 'class_names'; rerun the prepare stage"):
        read_meta(tmp_path)
