"""The prepared cache: real mini release and a synthetic release with planted duplicates and cases."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from assurexray.data.btxrd import load_release, sheet_modified
from assurexray.data.cache import INDEX_COLUMNS, PrepareConfig, build_cache, load_cache, read_index
from assurexray.data.groups import PAIR_COLUMNS
from assurexray.core.schema import RELEASE_COLUMNS

REPO = Path(__file__).resolve().parents[1]


def pattern(seed: int, width: int = 60, height: int = 40) -> np.ndarray:
    """A smooth, seed-specific gray pattern (distinct perceptual hashes per seed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    fx, fy, phase = rng.uniform(0.05, 0.4, 3)
    return (127 + 120 * np.sin(xx * fx + phase) * np.cos(yy * fy)).astype(np.uint8)


def synthetic_release(root: Path) -> Path:
    """6 images: IMG2 is a byte copy of IMG1, IMG3 a noisy re-save of IMG1, IMG4/IMG5 views of case P7."""
    (root / "images").mkdir(parents=True)
    (root / "Annotations").mkdir()
    rows = []
    labels = ["Malignant", "Normal", "Normal", "Benign", "Benign", "Normal"]
    for i, label in enumerate(labels, start=1):
        row = {c: 0 for c in RELEASE_COLUMNS}
        row.update(image_id=f"IMG{i:06d}.jpeg", center=1 + i % 2, age=40, gender="M", lateral=1,
                   tumor=int(label != "Normal"), benign=int(label == "Benign"), malignant=int(label == "Malignant"))
        row["case_id"] = "P7" if i in (4, 5) else ""
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "dataset.csv", index=False)
    images = root / "images"
    Image.fromarray(pattern(1)).save(images / "IMG000001.jpeg", format="PNG")
    shutil.copyfile(images / "IMG000001.jpeg", images / "IMG000002.jpeg")
    noisy = np.clip(pattern(1) + np.random.default_rng(0).normal(0, 2, (40, 60)), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(images / "IMG000003.png")
    for i in (4, 5, 6):
        Image.fromarray(pattern(10 * i, width=30 + 10 * i)).save(images / f"IMG{i:06d}.jpeg", format="PNG")
    polygon = [[10, 10], [20, 10], [20, 30], [10, 30]]
    for i in (1, 4):  # IMG000005 (Benign) has no annotation: empty mask, logged
        (root / "Annotations" / f"IMG{i:06d}.json").write_text(json.dumps({
            "shapes": [{"label": "t", "shape_type": "polygon", "points": polygon},
                       {"label": "t", "shape_type": "rectangle", "points": [[10, 10], [20, 30]]}],
            "imagePath": f"IMG{i:06d}.jpeg", "imageData": None, "imageWidth": 60 if i == 1 else 70,
            "imageHeight": 40}))
    return root


def test_cache_of_the_mini_release_has_one_row_per_image_and_masks_only_where_annotated(btxrd_mini, tmp_path):
    release = load_release(btxrd_mini)
    out = build_cache(release, tmp_path / "prepared", PrepareConfig(image_px=64, near_duplicate_distance=4, workers=2))
    cache = load_cache(out)
    assert isinstance(cache.images, np.memmap) and isinstance(cache.masks, np.memmap)
    assert cache.images.shape == cache.masks.shape == (30, 64, 64) and cache.images.dtype == np.uint8
    index = cache.index
    assert list(index.columns) == list(INDEX_COLUMNS)
    assert index["row"].tolist() == list(range(30))
    assert index["image_id"].tolist() == release.table["image_id"].tolist()
    annotated = index["image_id"].isin(release.annotations)
    assert (index["has_mask"] == annotated.astype(int)).all() and annotated.sum() == 20
    mask_pixels = cache.masks.reshape(30, -1).sum(axis=1)
    assert (mask_pixels[annotated.to_numpy()] > 0).all() and (mask_pixels[~annotated.to_numpy()] == 0).all()
    assert set(np.unique(cache.masks)) == {0, 1}
    for i, row in index.iterrows():  # masks and content lie inside the letterboxed image, never in padding
        content = np.zeros((64, 64), dtype=bool)
        new_w, new_h = round(row.orig_width * row.scale), round(row.orig_height * row.scale)
        content[row.pad_y:row.pad_y + new_h, row.pad_x:row.pad_x + new_w] = True
        assert cache.masks[i][~content].sum() == 0 and cache.images[i][~content].sum() == 0
    big = index.set_index("image_id").loc["IMG001452.jpeg"]
    assert (big.orig_width, big.orig_height, big.orig_mode) == (2768, 4250, "RGB")
    assert index["phash"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert cache.meta["class_counts"] == {"Normal": 10, "Benign": 10, "Malignant": 10}
    assert cache.meta["size"] == 64 and cache.meta["n_images"] == 30 and cache.meta["source"] == "dataset.xlsx"
    # the data's own date, for the checkpoint's provenance: the sheet's document properties, not the clock
    assert cache.meta["sheet_modified"] == sheet_modified(btxrd_mini / "dataset.xlsx") is not None
    assert list(pd.read_csv(out / "duplicate_pairs.csv").columns) == list(PAIR_COLUMNS)


def test_cache_of_a_synthetic_release_groups_duplicates_and_cases(tmp_path):
    release = load_release(synthetic_release(tmp_path / "raw"))
    out = build_cache(release, tmp_path / "prepared", PrepareConfig(image_px=32, near_duplicate_distance=4, workers=1))
    cache = load_cache(out, mmap=False)
    index = cache.index.set_index("image_id")
    assert not isinstance(cache.images, np.memmap)
    assert index["group"].tolist() == ["IMG000001.jpeg"] * 3 + ["IMG000004.jpeg"] * 2 + ["IMG000006.jpeg"]
    assert index["dup_of"].tolist() == ["", "IMG000001.jpeg", "IMG000001.jpeg", "", "", ""]
    assert index["case_id"].tolist() == ["", "", "", "P7", "P7", ""]
    assert index["label_idx"].tolist() == [2, 0, 0, 1, 1, 0]
    assert index["has_mask"].tolist() == [1, 0, 0, 1, 0, 0]
    assert index.loc["IMG000003.jpeg", "orig_mode"] == "L" and index.loc["IMG000006.jpeg", "orig_width"] == 90
    pairs = pd.read_csv(out / "duplicate_pairs.csv")
    assert pairs[["image_id_a", "image_id_b"]].values.tolist()[:2] == [["IMG000001.jpeg", "IMG000002.jpeg"],
                                                                       ["IMG000001.jpeg", "IMG000003.jpeg"]]
    assert pairs["kind"].iloc[0] == "exact"
    # IMG000001: 60x40 -> 32x21 at scale 32/60, pad_y 5; polygon x 10..20, y 10..30 -> x 5.3..10.7, y 10.3..21
    geom = index.loc["IMG000001.jpeg", ["scale", "pad_x", "pad_y"]]
    assert (geom.scale, geom.pad_x, geom.pad_y) == (32 / 60, 0, 5)
    ys, xs = np.nonzero(cache.masks[0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (5, 11, 10, 21)
    assert cache.meta["n_groups"] == 3 and cache.meta["n_with_mask"] == 2


def test_an_annotation_drawn_on_a_wider_image_is_scaled_per_axis_and_counted(tmp_path, caplog):
    raw = synthetic_release(tmp_path / "raw")
    ann = raw / "Annotations" / "IMG000001.json"
    ann.write_text(ann.read_text().replace('"imageWidth": 60', '"imageWidth": 120'))
    out = build_cache(load_release(raw), tmp_path / "prepared",
                      PrepareConfig(image_px=32, near_duplicate_distance=4, workers=1))
    cache = load_cache(out)
    ys, xs = np.nonzero(cache.masks[0])  # x 10..20 of 120 px -> 5..10 of 60 px -> 2.7..5.3 prepared px
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (3, 5, 10, 21)
    assert cache.meta["n_stretched_annotations"] == 1 and "lesion shapes were scaled per axis" in caplog.text


def test_a_failed_rebuild_leaves_the_previous_cache_untouched_and_names_the_file(tmp_path):
    raw = synthetic_release(tmp_path / "raw")
    out = build_cache(load_release(raw), tmp_path / "prepared",
                      PrepareConfig(image_px=16, near_duplicate_distance=4, workers=1))
    before = (out / "index.csv").read_bytes()
    (raw / "images" / "IMG000006.jpeg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"IMG000006.jpeg: (not a readable|unreadable or corrupt) image"):
        build_cache(load_release(raw), out, PrepareConfig(image_px=32, near_duplicate_distance=4, workers=1))
    assert (out / "index.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]  # no temp dir left behind


@pytest.mark.parametrize("options, message", [
    ({"image_px": 4}, r"prepare.image_px must be an integer >= 8, got 4"),
    ({"image_px": 64.0}, r"prepare.image_px must be an integer >= 8, got 64.0"),
    ({"workers": 0}, r"prepare.workers must be an integer >= 1, got 0"),
    ({"near_duplicate_distance": 70}, r"near_duplicate_distance must be an integer in \[0, 64\]"),
])
def test_build_cache_rejects_bad_options(tmp_path, options, message):
    release = load_release(synthetic_release(tmp_path / "raw"))
    kwargs = {"image_px": 16, "near_duplicate_distance": 4, "workers": 1, **options}
    with pytest.raises(ValueError, match=message):
        build_cache(release, tmp_path / "prepared", PrepareConfig(**kwargs))
    assert not (tmp_path / "prepared").exists()


def test_load_cache_names_a_missing_file_and_refuses_inconsistent_arrays(tmp_path):
    out = build_cache(load_release(synthetic_release(tmp_path / "raw")), tmp_path / "prepared",
                      PrepareConfig(image_px=16, near_duplicate_distance=4, workers=1))
    np.save(out / "masks.npy", np.zeros((5, 16, 16), dtype=np.uint8))
    message = r"masks \(5, 16, 16\) do not match index.csv rows and meta size \(6, 16, 16\)"
    with pytest.raises(ValueError, match=message):
        load_cache(out)
    (out / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta.json: missing from the prepared cache"):
        load_cache(out)


def test_read_index_keeps_empty_text_and_leading_zero_hashes(tmp_path):
    pd.DataFrame({"row": [0], "image_id": ["IMG1"], "case_id": [""], "phash": ["00ab000000000001"],
                  "dup_of": [""]}).to_csv(tmp_path / "index.csv", index=False)
    index = read_index(tmp_path / "index.csv")
    assert index.loc[0, "case_id"] == "" and index.loc[0, "phash"] == "00ab000000000001"
    with pytest.raises(FileNotFoundError, match=r"index not found; run `dvc repro prepare`"):
        read_index(tmp_path / "nope.csv")


def load_stage():
    sys.path.insert(0, str(REPO / "stages"))
    try:
        import prepare
    finally:
        sys.path.remove(str(REPO / "stages"))
    return prepare


def write_params(path: Path, prepare: dict) -> Path:
    path.write_text(yaml.safe_dump({"base": {"seed": 1, "class_names": ["Normal", "Benign", "Malignant"]},
                                    "prepare": prepare}))
    return path


def test_prepare_stage_builds_the_cache_from_params(tmp_path):
    raw = synthetic_release(tmp_path / "raw")
    params = write_params(tmp_path / "params.yaml", {"image_px": 24, "near_duplicate_distance": 4, "workers": 1})
    assert load_stage().main(["--raw", str(raw), "--out", str(tmp_path / "prepared"), "--params", str(params)]) == 0
    cache = load_cache(tmp_path / "prepared")
    assert cache.images.shape == (6, 24, 24) and cache.meta["class_names"] == ["Normal", "Benign", "Malignant"]


def test_prepare_stage_rejects_an_unknown_params_key(tmp_path):
    params = write_params(tmp_path / "params.yaml", {"image_px": 24, "near_duplicate_distance": 4, "worker": 1})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['worker'\]"):
        load_stage().main(["--raw", str(tmp_path), "--out", str(tmp_path / "p"), "--params", str(params)])
