"""The synthetic BTXRD-layout sample: determinism, release layout, label rules, annotations, styles, duplicates."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import cv2
import imagehash
import numpy as np
import openpyxl
import pandas as pd
import pytest
from PIL import Image

from assurexray.data.sample import CENTRE_STYLES, MIN_CASES, generate_sample
from assurexray.core.schema import (
    BENIGN_SUBTYPES, CLASS_NAMES, MALIGNANT_SUBTYPES, REGION_COLUMNS, RELEASE_COLUMNS, SITE_COLUMNS,
    SUBTYPE_COLUMNS, VIEW_COLUMNS,
)

SMALL = {"n_cases": 20, "image_size": 96, "duplicate_fraction": 0.15}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "raw"
    summary = generate_sample(out, **SMALL, seed=3)
    sheet = pd.read_excel(out / "dataset.xlsx")
    sheet["label"] = np.where(sheet.malignant == 1, "Malignant", np.where(sheet.benign == 1, "Benign", "Normal"))
    return out, summary, sheet


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def test_the_same_seed_writes_byte_identical_files_and_another_seed_does_not(tmp_path):
    args = {"n_cases": 12, "image_size": 96, "duplicate_fraction": 0.1}
    first = _hashes(generate_sample(tmp_path / "a", **args, seed=5).out_dir)
    again = _hashes(generate_sample(tmp_path / "b", **args, seed=5).out_dir)
    other = _hashes(generate_sample(tmp_path / "c", **args, seed=6).out_dir)
    assert first == again
    assert "dataset.xlsx" in first and len(first) > 12
    shared_images = [k for k in first if k.startswith("images/") and k in other]
    assert sum(first[k] != other[k] for k in shared_images) == len(shared_images)


def test_the_workbook_carries_fixed_metadata_so_its_bytes_depend_on_neither_clock_nor_module_path(sample):
    """The creator once followed the module's location, so a refactor changed every hash in dvc.lock."""
    out, _, _ = sample
    props = openpyxl.load_workbook(out / "dataset.xlsx").properties
    assert props.created == props.modified == datetime.datetime(2020, 1, 1)
    assert props.creator == "assurexray.sample"


def test_the_layout_is_the_release_layout_with_37_columns_in_order_plus_case_id(sample):
    out, summary, sheet = sample
    assert list(pd.read_excel(out / "dataset.xlsx").columns) == list(RELEASE_COLUMNS) + ["case_id"]
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == [f"IMG{i:06d}.jpeg" for i in range(1, len(images) + 1)]
    assert sorted(sheet.image_id) == images
    assert summary.n_images == len(images) and summary.n_cases == SMALL["n_cases"]
    assert {p.suffix for p in (out / "Annotations").iterdir()} == {".json"}


def test_image_ids_are_numbered_by_centre_then_class_like_the_release(sample):
    _, _, sheet = sample
    ordered = sheet.sort_values("image_id")
    keys = list(zip(ordered.center, ordered.label.map(CLASS_NAMES.index)))
    assert keys == sorted(keys)
    assert set(sheet.center) == {1, 2, 3} and set(sheet.label) == set(CLASS_NAMES)


def test_flags_follow_the_label_rule_and_normal_rows_have_no_site_or_subtype(sample):
    _, summary, sheet = sample
    tumour = sheet.label != "Normal"
    assert (sheet.tumor == tumour.astype(int)).all()
    assert ((sheet.benign + sheet.malignant) <= 1).all()
    assert (sheet.loc[~tumour, list(SITE_COLUMNS) + list(SUBTYPE_COLUMNS)].to_numpy() == 0).all()
    assert (sheet.loc[tumour, list(SITE_COLUMNS)].sum(axis=1) == 1).all()
    assert (sheet.loc[tumour, list(SUBTYPE_COLUMNS)].sum(axis=1) == 1).all()
    assert (sheet.loc[sheet.label == "Benign", list(MALIGNANT_SUBTYPES)].to_numpy() == 0).all()
    assert (sheet.loc[sheet.label == "Malignant", list(BENIGN_SUBTYPES)].to_numpy() == 0).all()
    assert (sheet[list(REGION_COLUMNS)].sum(axis=1) == 1).all()
    assert (sheet[list(VIEW_COLUMNS)].sum(axis=1) == 1).all()
    assert sheet.age.between(1, 100).all() and set(sheet.gender) <= {"M", "F"}
    counted = {c: sum(summary.counts[c].values()) for c in CLASS_NAMES}
    assert counted == sheet.label.value_counts().reindex(list(CLASS_NAMES), fill_value=0).to_dict()


def test_annotations_exist_exactly_for_tumour_images_and_their_shapes_lie_inside_the_image(sample):
    out, summary, sheet = sample
    n_lesions = 0
    for _, row in sheet.iterrows():
        path = out / "Annotations" / f"{Path(row.image_id).stem}.json"
        assert path.is_file() == (row.label != "Normal"), row.image_id
        if not path.is_file():
            continue
        doc = json.loads(path.read_text())
        width, height = Image.open(out / "images" / row.image_id).size
        assert (doc["imagePath"], doc["imageData"], doc["imageWidth"], doc["imageHeight"]) == (
            row.image_id, None, width, height)
        subtype = next(c for c in SUBTYPE_COLUMNS if row[c] == 1)
        shapes = doc["shapes"]
        assert shapes and len(shapes) % 2 == 0
        for rect, poly in zip(shapes[::2], shapes[1::2]):
            assert (rect["shape_type"], poly["shape_type"]) == ("rectangle", "polygon")
            assert rect["label"] == poly["label"] == subtype and poly["group_id"] is None
            pts = np.array(poly["points"])
            assert 8 <= len(pts) <= 30
            assert (pts >= 0).all() and (pts[:, 0] <= width - 1).all() and (pts[:, 1] <= height - 1).all()
            assert np.allclose(rect["points"], [pts.min(axis=0), pts.max(axis=0)], atol=0.01)
            n_lesions += 1
    assert n_lesions == summary.n_lesions > 0


def test_lesion_polygons_cover_a_region_that_differs_from_the_ring_around_it(sample):
    out, _, sheet = sample
    contrasts = []
    for row in sheet[sheet.label != "Normal"].itertuples():
        gray = _gray(out / "images" / row.image_id).astype(float)
        doc = json.loads((out / "Annotations" / f"{Path(row.image_id).stem}.json").read_text())
        for shape in doc["shapes"][1::2]:
            inside = np.zeros(gray.shape, np.uint8)
            cv2.fillPoly(inside, [np.rint(shape["points"]).astype(np.int32)], 1)
            ring = cv2.dilate(inside, np.ones((7, 7), np.uint8)) - inside
            contrasts.append(abs(gray[inside == 1].mean() - gray[ring == 1].mean()))
    contrasts = np.array(contrasts)
    assert np.mean(contrasts >= 3) >= 0.7, contrasts.round(1)


def test_the_centres_differ_in_measured_style(sample):
    out, _, sheet = sample
    stats: dict[int, list[tuple[float, float]]] = {1: [], 2: [], 3: []}
    for row in sheet.itertuples():
        gray = _gray(out / "images" / row.image_id).astype(np.float32)
        noise = float(np.median(np.abs(gray - cv2.GaussianBlur(gray, (0, 0), 2))))   # robust to edges
        stats[row.center].append((float(np.percentile(gray, 10)), noise, gray.size))
    level, noise, area = ({c: np.median([s[k] for s in v]) for c, v in stats.items()} for k in range(3))
    assert level[3] > level[1] + 15, level        # centre 3: washed-out, grey background
    assert noise[2] > 1.5 * noise[1], noise       # centre 2: grainy detector
    assert area[2] > 1.3 * area[1], area          # centre 2: larger images
    modes = {c: {Image.open(out / "images" / i).mode for i in sheet.image_id[sheet.center == c]} for c in stats}
    assert all(modes[c] == {"L"} for c in stats if CENTRE_STYLES[c].rgb_fraction == 0)
    assert "RGB" in modes[2]


def test_duplicates_are_found_by_perceptual_hash_and_never_share_the_case_id(sample):
    out, summary, sheet = sample
    by_id = sheet.set_index("image_id")
    kinds = {kind for _, _, kind in summary.duplicates}
    assert "exact" in kinds and "cross-class" in kinds and kinds - {"exact", "cross-class"}
    for dup, src, kind in summary.duplicates:
        a, b = Image.open(out / "images" / dup), Image.open(out / "images" / src)
        assert imagehash.phash(a.convert("L")) - imagehash.phash(b.convert("L")) <= 4, (dup, src, kind)
        assert by_id.case_id[dup] != by_id.case_id[src]
        if kind in ("exact", "cross-class"):
            assert np.array_equal(np.asarray(a), np.asarray(b))
        assert (by_id.label[dup] != by_id.label[src]) == (kind == "cross-class")
    assert summary.n_duplicates == len(summary.duplicates)


def test_two_view_cases_share_the_case_id_and_show_frontal_and_lateral(sample):
    _, summary, sheet = sample
    dup_ids = {d for d, _, _ in summary.duplicates}
    cases = sheet[~sheet.image_id.isin(dup_ids)].groupby("case_id")
    assert cases.ngroups == SMALL["n_cases"]
    pairs = [g for _, g in cases if len(g) == 2]
    assert 0.2 <= len(pairs) / cases.ngroups <= 0.8
    for g in pairs:
        assert (g.frontal.sum(), g.lateral.sum()) == (1, 1)
        assert g[["center", "age", "gender", "label"]].nunique().max() == 1
    gray = [_gray(Path(sample[0]) / "images" / i) for i in pairs[0].image_id]
    assert gray[0].shape != gray[1].shape or not np.array_equal(gray[0], gray[1])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_cases": MIN_CASES - 1}, ValueError, rf"n_cases={MIN_CASES - 1} is too small.*at least {MIN_CASES}"),
        ({"n_cases": 12.5}, TypeError, r"n_cases must be an integer, got 12\.5"),
        ({"image_size": 32}, ValueError, r"image_size=32 px is out of range; use 64 to 4096"),
        ({"duplicate_fraction": 0.9}, ValueError, r"duplicate_fraction=0\.9 must be a number from 0 to 0\.5"),
        ({"seed": "42"}, TypeError, r"seed must be an integer, got '42'"),
    ],
)
def test_bad_arguments_are_refused_with_the_parameter_and_value(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        generate_sample(tmp_path / "out", **({"n_cases": 12, "image_size": 96} | kwargs))
    assert not (tmp_path / "out").exists()


def test_a_non_empty_or_file_out_dir_is_refused(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "old.txt").write_text("stale")
    with pytest.raises(FileExistsError, match=r"out_dir '.*raw' is not empty \(1 entries\); pass a new or empty"):
        generate_sample(tmp_path / "raw", n_cases=12, image_size=96)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"out_dir '.*file' is a file; pass a new or empty directory"):
        generate_sample(tmp_path / "file", n_cases=12, image_size=96)


def test_an_existing_empty_out_dir_is_filled(tmp_path):
    (tmp_path / "raw").mkdir()
    summary = generate_sample(tmp_path / "raw", n_cases=MIN_CASES, image_size=64, duplicate_fraction=0.0)
    assert summary.n_duplicates == 0 and (tmp_path / "raw" / "dataset.xlsx").is_file()
    assert all(n >= 1 for row in summary.counts.values() for n in row.values())
