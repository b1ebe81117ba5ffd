"""BTXRD release reader: real mini release, column variants, every bad sheet/JSON/file layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from assurexray.data.annotations import read_labelme
from assurexray.data.btxrd import find_metadata, load_release, read_metadata
from assurexray.data.imaging import rasterize_polygons
from assurexray.core.schema import RELEASE_COLUMNS, SITE_COLUMNS

LABEL_FLAGS = {"Normal": (0, 0, 0), "Benign": (1, 1, 0), "Malignant": (1, 0, 1)}


def sheet(rows: list[dict]) -> pd.DataFrame:
    """A release-shaped sheet: every column 0 unless given; ``label`` expands to tumor/benign/malignant."""
    records = []
    for i, row in enumerate(rows):
        record = {c: 0 for c in RELEASE_COLUMNS}
        record.update(image_id=f"IMG{i + 1:06d}.jpeg", center=1, age=30, gender="F", frontal=1)
        row = dict(row)
        tumor, benign, malignant = LABEL_FLAGS[row.pop("label", "Normal")]
        record.update(tumor=tumor, benign=benign, malignant=malignant)
        record.update(row)
        records.append(record)
    return pd.DataFrame(records)


def write_release(root: Path, table: pd.DataFrame, *, size=(40, 30), annotate=True, fmt="csv") -> Path:
    """Images (one per row, gray ramp) + LabelMe JSON for tumour rows + the sheet."""
    (root / "images").mkdir(parents=True)
    (root / "Annotations").mkdir()
    w, h = size
    for image_id, benign, malignant in zip(table["image_id"], table["benign"], table["malignant"]):
        Image.fromarray(np.tile(np.arange(w, dtype=np.uint8) * 5, (h, 1))).save(root / "images" / image_id,
                                                                                   format="JPEG")
        if annotate and (benign or malignant):
            write_json(root / "Annotations" / f"{Path(image_id).stem}.json", size=size)
    if fmt == "csv":
        table.to_csv(root / "dataset.csv", index=False)
    else:
        table.to_excel(root / "dataset.xlsx", index=False)
    return root


def write_json(path: Path, *, size=(40, 30), shapes=None) -> Path:
    w, h = size
    if shapes is None:
        shapes = [
            {"label": "osteosarcoma", "shape_type": "rectangle", "points": [[4, 6], [12, 14]]},
            {"label": "osteosarcoma", "shape_type": "polygon", "points": [[4, 6], [12, 6], [12, 14], [4, 14]]},
        ]
    path.write_text(json.dumps({"version": "5.4.1", "shapes": shapes, "imagePath": path.stem + ".jpeg",
                                "imageData": None, "imageWidth": w, "imageHeight": h}))
    return path


# ------------------------------------------------------------------------------------------ real data


def test_mini_release_reads_30_images_10_per_class_and_20_annotations(btxrd_mini):
    release = load_release(btxrd_mini)
    table = release.table
    assert len(table) == 30
    assert table["label"].value_counts().to_dict() == {"Normal": 10, "Benign": 10, "Malignant": 10}
    assert table["center"].value_counts().to_dict() == {1: 23, 2: 6, 3: 1}
    assert len(release.annotations) == 20
    assert set(table.loc[table["image_id"].isin(release.annotations), "label"]) == {"Benign", "Malignant"}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["path"])
    assert set(table["view"]) <= {"frontal", "lateral", "oblique"}
    assert (table["case_id"] == "").all()
    assert list(table.columns[: len(RELEASE_COLUMNS)]) == list(RELEASE_COLUMNS)


def test_mini_annotations_rasterise_to_non_empty_masks_inside_the_image(btxrd_mini):
    release = load_release(btxrd_mini)
    for image_id, json_path in release.annotations.items():
        path = release.table.set_index("image_id").loc[image_id, "path"]
        with Image.open(path) as im:
            width, height = im.size
        ann = read_labelme(json_path, image_size=(width, height))
        assert len(ann.polygons) >= 1 and len(ann.boxes) == len(ann.polygons)
        for poly, (x0, y0, x1, y1) in zip(ann.polygons, ann.boxes):
            assert poly.min() >= 0 and poly[:, 0].max() <= width - 1 and poly[:, 1].max() <= height - 1
            # the rectangle is the polygon's box, drawn by hand: allow a few pixels of slack
            assert poly[:, 0].min() >= x0 - 5 and poly[:, 0].max() <= x1 + 5
            assert poly[:, 1].min() >= y0 - 5 and poly[:, 1].max() <= y1 + 5
        mask = rasterize_polygons(ann.polygons, width, height)
        assert mask.shape == (height, width) and 0 < mask.sum() < mask.size


def test_resized_copy_of_the_release_scales_polygons_and_finds_renamed_files(btxrd_mini, tmp_path):
    table = read_metadata(btxrd_mini / "dataset.xlsx")
    keep = ["IMG000169.jpeg", "IMG000419.jpeg", "IMG002225.jpeg"]
    subset = table.loc[table["image_id"].isin(keep), list(RELEASE_COLUMNS)]
    root = tmp_path / "half"
    (root / "images").mkdir(parents=True)
    (root / "Annotations").mkdir()
    subset.to_csv(root / "dataset.csv", index=False)
    for image_id, suffix in zip(keep, [".png", ".jpg", ".png"]):
        with Image.open(btxrd_mini / "images" / image_id) as im:
            im.resize((im.width // 2, im.height // 2)).save(root / "images" / (Path(image_id).stem + suffix))
        ann = btxrd_mini / "Annotations" / (Path(image_id).stem + ".json")
        if ann.exists():
            (root / "Annotations" / ann.name).write_bytes(ann.read_bytes())
    release = load_release(root)
    assert [Path(p).suffix for p in release.table["path"]] == [".png", ".jpg", ".png"]
    full = read_labelme(btxrd_mini / "Annotations" / "IMG000169.json")
    half = read_labelme(release.annotations["IMG000169.jpeg"], image_size=(570 // 2, 822 // 2))
    assert half.json_size == (570, 822) and half.image_size == (285, 411)
    np.testing.assert_allclose(half.polygons[0], full.polygons[0] * [285 / 570, 411 / 822], atol=1e-9)
    np.testing.assert_allclose(half.boxes[0], np.array(full.boxes[0]) * [0.5, 0.5, 0.5, 0.5], atol=1e-9)


# ----------------------------------------------------------------------------------------- metadata


def test_find_metadata_prefers_xlsx_then_csv_and_ignores_office_lock_files(tmp_path):
    (tmp_path / "~$dataset.xlsx").write_bytes(b"lock")
    with pytest.raises(FileNotFoundError, match=r"no dataset.xlsx or dataset.csv.*~\$dataset.xlsx"):
        find_metadata(tmp_path)
    sheet([{}]).to_csv(tmp_path / "dataset.csv", index=False)
    assert find_metadata(tmp_path).name == "dataset.csv"
    sheet([{}]).to_excel(tmp_path / "dataset.xlsx", index=False)
    assert find_metadata(tmp_path).name == "dataset.xlsx"


def test_find_metadata_names_a_missing_release_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="release folder not found"):
        find_metadata(tmp_path / "nowhere")


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_read_metadata_applies_the_label_rule_and_derives_view(tmp_path, fmt):
    table = sheet([
        {"label": "Normal", "frontal": 0, "lateral": 1},
        {"label": "Benign", "frontal": 0, "oblique": 1},
        {"label": "Malignant"},
        {"label": "Normal", "frontal": 0},
    ])
    path = tmp_path / f"dataset.{fmt}"
    table.to_csv(path, index=False) if fmt == "csv" else table.to_excel(path, index=False)
    out = read_metadata(path, class_names=["Malignant", "Normal", "Benign"])
    assert out["label"].tolist() == ["Normal", "Benign", "Malignant", "Normal"]
    assert out["label_idx"].tolist() == [1, 2, 0, 1]
    assert out["view"].tolist() == ["lateral", "oblique", "frontal", "unknown"]
    assert out["sheet_row"].tolist() == [2, 3, 4, 5]
    assert out["image_id"].tolist() == ["IMG000001.jpeg", "IMG000002.jpeg", "IMG000003.jpeg", "IMG000004.jpeg"]


@pytest.mark.parametrize("variant", [
    {"image_id": "Image ID", "center": "Centre", "ankle-joint": "ankle", "lower limb": "lower limbs"},
    {"image_id": "image-id", "center": " CENTER ", "knee-joint": "knee_joint", "upper limb": "Upper Limbs"},
    {"image_id": "IMAGE_ID", "hip bone": "hip_bone", "hip-joint": "hip joint", "wrist-joint": "Wrist"},
])
def test_read_metadata_accepts_column_spelling_variants(tmp_path, variant):
    table = sheet([{"label": "Benign"}, {"label": "Normal"}]).rename(columns=variant)
    table.to_csv(tmp_path / "dataset.csv", index=False)
    out = read_metadata(tmp_path / "dataset.csv")
    assert set(variant) <= set(out.columns)
    assert set(RELEASE_COLUMNS) <= set(out.columns)
    assert out["label"].tolist() == ["Benign", "Normal"]


def test_read_metadata_keeps_site_flags_in_the_table_untouched(tmp_path):
    sheet([{"label": "Benign", "femur": 1}]).to_csv(tmp_path / "dataset.csv", index=False)
    out = read_metadata(tmp_path / "dataset.csv")
    assert out.loc[0, "femur"] == 1 and set(SITE_COLUMNS) <= set(out.columns)


def test_read_metadata_takes_the_case_id_from_case_id_as_given(tmp_path):
    table = sheet([{}, {}, {}])
    table["case_id"] = ["P1", np.nan, 7.0]
    table.to_excel(tmp_path / "dataset.xlsx", index=False)
    assert read_metadata(tmp_path / "dataset.xlsx")["case_id"].tolist() == ["P1", "", "7"]


def test_read_metadata_derives_the_case_from_the_authors_original_name(tmp_path):
    table = sheet([{}, {}, {}, {}])
    table["Original Name"] = ["b1-M-12-恶-骨肉瘤-胫骨-2.jpeg", "b1-M-12-恶-骨肉瘤-胫骨-1.jpeg", np.nan, "30f_12.jpeg"]
    table.to_excel(tmp_path / "dataset.xlsx", index=False)
    assert read_metadata(tmp_path / "dataset.xlsx")["case_id"].tolist() == [
        "b1-m-12-恶-骨肉瘤-胫骨", "b1-m-12-恶-骨肉瘤-胫骨", "", ""]


def test_read_metadata_skips_fully_blank_rows_but_keeps_sheet_row_numbers(tmp_path):
    table = sheet([{}, {}])
    table = pd.concat([table.iloc[:1], pd.DataFrame([{c: np.nan for c in table.columns}]), table.iloc[1:]])
    table.to_csv(tmp_path / "dataset.csv", index=False)
    out = read_metadata(tmp_path / "dataset.csv")
    assert out["sheet_row"].tolist() == [2, 4]


def test_read_metadata_names_the_missing_required_column_and_the_columns_found(tmp_path):
    sheet([{}]).drop(columns=["malignant"]).to_csv(tmp_path / "dataset.csv", index=False)
    message = r"required column\(s\) \['malignant'\] not found; columns found: \['image_id'"
    with pytest.raises(ValueError, match=message):
        read_metadata(tmp_path / "dataset.csv")


def test_read_metadata_refuses_two_columns_with_the_same_meaning(tmp_path):
    table = sheet([{}])
    table["Image ID"] = table["image_id"]
    table.to_csv(tmp_path / "dataset.csv", index=False)
    with pytest.raises(ValueError, match="columns 'image_id' and 'Image ID' both mean 'image_id'"):
        read_metadata(tmp_path / "dataset.csv")


@pytest.mark.parametrize("rows, message", [
    ([{}, {"image_id": "IMG000001.jpeg"}], r"rows \[2, 3\]: image_id 'IMG000001.jpeg' appears 2 times"),
    ([{}, {"tumor": 1, "benign": 1, "malignant": 1}], r"row 3: 'benign' and 'malignant' are both 1 for 'IMG000002"),
    ([{"tumor": 1}], r"row 2: 'tumor' is 1 but neither 'benign' nor 'malignant' is 1"),
    ([{}, {}, {"benign": 2}], r"row 4: flag 'benign' must be 0 or 1, got 2"),
    ([{"malignant": "yes"}], r"row 2: flag 'malignant' must be 0 or 1, got 'yes'"),
    ([{}, {"tumor": np.nan}], r"row 3: flag 'tumor' is blank; every flag must be 0 or 1"),
    ([{}, {"image_id": " "}], r"row 3: 'image_id' is blank"),
    ([{"center": np.nan}], r"row 2: 'center' is blank"),
    ([{"center": "B"}], r"row 2: 'center' must be an integer, got 'B'"),
    ([{"frontal": 1, "lateral": 1}], r"row 2: several view flags are 1 .*\['frontal', 'lateral'\]"),
    ([{"lateral": 3}], r"row 2: flag 'lateral' must be 0 or 1, got 3"),
])
def test_read_metadata_reports_bad_rows_with_their_sheet_row_number(tmp_path, rows, message):
    table = sheet(rows).astype(object)
    table.to_csv(tmp_path / "dataset.csv", index=False)
    with pytest.raises(ValueError, match=message):
        read_metadata(tmp_path / "dataset.csv")


def test_read_metadata_rejects_class_names_that_are_not_the_three_classes(tmp_path):
    sheet([{}]).to_csv(tmp_path / "dataset.csv", index=False)
    with pytest.raises(ValueError, match=r"class_names must order exactly .* got \['Normal', 'Tumour'\]"):
        read_metadata(tmp_path / "dataset.csv", class_names=["Normal", "Tumour"])


def test_read_metadata_rejects_an_unsupported_file_type(tmp_path):
    (tmp_path / "dataset.txt").write_text("image_id\n")
    with pytest.raises(ValueError, match=r"unsupported metadata format '.txt'"):
        read_metadata(tmp_path / "dataset.txt")


# ------------------------------------------------------------------------------------------ LabelMe


def test_read_labelme_keeps_polygons_and_rectangles_apart(tmp_path):
    ann = read_labelme(write_json(tmp_path / "IMG000001.json"))
    assert ann.json_size == (40, 30) and ann.image_size == (40, 30)
    assert len(ann.polygons) == 1 and ann.polygons[0].shape == (4, 2)
    assert ann.boxes == ((4.0, 6.0, 12.0, 14.0),)
    assert ann.labels == ("osteosarcoma",) and ann.box_labels == ("osteosarcoma",)


def test_read_labelme_scales_to_the_real_image_size_and_clips_border_clicks_counting_them(tmp_path):
    # Drawn on 40x30; three vertices lie within the 2 px tolerance outside it (border clicks).
    shapes = [{"label": "x", "shape_type": "polygon", "points": [[-1, 2], [30, 2], [40, 29], [10, 30.5]]},
              {"label": "x", "shape_type": "rectangle", "points": [[30, 20], [2, 2]]}]
    ann = read_labelme(write_json(tmp_path / "a.json", shapes=shapes), image_size=(20, 15))
    np.testing.assert_allclose(ann.polygons[0], [[0, 1], [15, 1], [19, 14], [5, 14]])
    assert ann.boxes == ((1.0, 1.0, 15.0, 10.0),)
    assert (ann.rescaled, ann.stretched, ann.n_clipped) == (True, False, 3)


@pytest.mark.parametrize("content, message", [
    ("{not json", r"a.json: not a valid LabelMe JSON file"),
    ("[1, 2]", r"a.json: expected a JSON object \(LabelMe\), got list"),
    ('{"shapes": [], "imageHeight": 30}', r"a.json: missing key 'imageWidth'"),
    ('{"shapes": [], "imageWidth": 0, "imageHeight": 30}', r"'imageWidth' must be a positive integer, got 0"),
    ('{"shapes": {}, "imageWidth": 40, "imageHeight": 30}', r"'shapes' must be a list, got dict"),
])
def test_read_labelme_reports_malformed_files(tmp_path, content, message):
    (tmp_path / "a.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_labelme(tmp_path / "a.json")


@pytest.mark.parametrize("shape, message", [
    ({"label": "x", "shape_type": "circle", "points": [[1, 1], [3, 3]]}, r"shape 1 has type 'circle'"),
    ({"label": "x", "shape_type": "point", "points": [[1, 1]]}, r"shape 1 has type 'point'"),
    ({"label": "x", "points": [[1, 1], [3, 3], [1, 3]]}, r"shape 1 has no 'shape_type' key"),
    ({"label": "x", "shape_type": "polygon"}, r"shape 1 has no 'points' key"),
    ({"label": "x", "shape_type": "polygon", "points": [[1, 1], [3, 3]]}, r"shape 1 \(polygon\) has 2 points"),
    ({"label": "x", "shape_type": "rectangle", "points": [[1, 1]]}, r"shape 1 \(rectangle\) has 1 points"),
    ({"label": "x", "shape_type": "polygon", "points": [[1, "a"], [3, 3], [1, 3]]}, r"shape 1 \(polygon\) has non"),
    ({"label": "x", "shape_type": "polygon", "points": [[1, 1, 1], [3, 3, 3], [1, 3, 3]]},
     r"shape 1 \(polygon\) points must be finite \[x, y\] pairs"),
    ("polygon", r"shape 1 is not an object, got str"),
])
def test_read_labelme_reports_the_bad_shape_by_index_and_type(tmp_path, shape, message):
    good = {"label": "x", "shape_type": "polygon", "points": [[1, 1], [3, 3], [1, 3]]}
    path = write_json(tmp_path / "a.json", shapes=[good, shape])
    with pytest.raises(ValueError, match=f"a.json: {message}"):
        read_labelme(path)


def test_read_labelme_scales_a_squashed_copy_per_axis_and_flags_it(tmp_path):
    path = write_json(tmp_path / "a.json", size=(40, 30))
    assert not read_labelme(path, image_size=(21, 15)).stretched  # rounding of a resized copy
    squashed = read_labelme(path, image_size=(20, 20))
    assert squashed.stretched
    np.testing.assert_allclose(squashed.boxes, [(4 * 0.5, 6 * 20 / 30, 12 * 0.5, 14 * 20 / 30)])


def test_read_labelme_refuses_an_image_rotated_by_90_degrees(tmp_path):
    path = write_json(tmp_path / "a.json", size=(40, 30))
    with pytest.raises(ValueError, match=r"drawn on a 40x30 image but the image file is 30x40, i.e. rotated"):
        read_labelme(path, image_size=(30, 40))


# ------------------------------------------------------------------------------------------ release


def test_load_release_matches_files_by_stem_and_logs_the_nested_annotations_folder(tmp_path, caplog):
    root = write_release(tmp_path / "r", sheet([{"label": "Benign"}, {"label": "Normal"}]), fmt="xlsx")
    (root / "~$dataset.xlsx").write_bytes(b"lock")
    (root / "Annotations" / "Annotations").mkdir()
    write_json(root / "Annotations" / "Annotations" / "IMG000009.json")
    (root / "images" / "IMG000002.jpeg").rename(root / "images" / "IMG000002.png")
    (root / "images" / "Thumbs.db").write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="assurexray.data.btxrd"):
        release = load_release(root)
    assert [Path(p).name for p in release.table["path"]] == ["IMG000001.jpeg", "IMG000002.png"]
    assert list(release.annotations) == ["IMG000001.jpeg"]
    assert release.n_nested_annotations == 1
    assert "ignoring the stray nested folder (1 files)" in caplog.text
    assert release.metadata_path.name == "dataset.xlsx"


def test_load_release_warns_about_image_files_without_a_sheet_row(tmp_path, caplog):
    root = write_release(tmp_path / "r", sheet([{}]))
    Image.new("L", (8, 8)).save(root / "images" / "IMG000099.jpeg")
    with caplog.at_level(logging.WARNING, logger="assurexray.data.btxrd"):
        load_release(root)
    assert "1 image file(s) have no row in dataset.csv" in caplog.text and "IMG000099.jpeg" in caplog.text


def test_load_release_names_the_sheet_row_of_a_missing_image(tmp_path):
    root = write_release(tmp_path / "r", sheet([{}, {}]))
    (root / "images" / "IMG000002.jpeg").unlink()
    with pytest.raises(FileNotFoundError, match=r"dataset.csv row 3: no image file for 'IMG000002.jpeg'"):
        load_release(root)


def test_load_release_refuses_several_files_for_one_image(tmp_path):
    root = write_release(tmp_path / "r", sheet([{}]))
    Image.new("L", (8, 8)).save(root / "images" / "IMG000001.png")
    with pytest.raises(ValueError, match=r"row 2: several files match 'IMG000001.jpeg': \['IMG000001.jpeg', 'IMG"):
        load_release(root)


def test_load_release_refuses_an_annotation_that_matches_no_image(tmp_path):
    root = write_release(tmp_path / "r", sheet([{}]))
    write_json(root / "Annotations" / "IMG000777.json")
    with pytest.raises(ValueError, match=r"IMG000777.json: annotation matches no image_id in dataset.csv"):
        load_release(root)


def test_load_release_refuses_an_annotation_on_a_normal_image(tmp_path):
    root = write_release(tmp_path / "r", sheet([{"label": "Normal"}]))
    write_json(root / "Annotations" / "IMG000001.json")
    message = r"IMG000001.json: annotation for 'IMG000001.jpeg', which dataset.csv labels Normal"
    with pytest.raises(ValueError, match=message):
        load_release(root)


def test_load_release_needs_an_images_folder(tmp_path):
    (tmp_path / "r").mkdir()
    sheet([{}]).to_csv(tmp_path / "r" / "dataset.csv", index=False)
    with pytest.raises(FileNotFoundError, match=r"images folder not found"):
        load_release(tmp_path / "r")


def test_load_release_without_annotations_folder_warns_and_has_no_annotations(tmp_path, caplog):
    root = write_release(tmp_path / "r", sheet([{"label": "Malignant"}]), annotate=False)
    (root / "Annotations").rmdir()
    with caplog.at_level(logging.WARNING, logger="assurexray.data.btxrd"):
        release = load_release(root)
    assert release.annotations == {} and "no Annotations/ folder" in caplog.text
