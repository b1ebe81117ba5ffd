"""Tests for the data audit (assurexray.data.audit and stages/audit.py) on a tiny hand-made release."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from assurexray import DISCLAIMER
from assurexray.core.params import AuditConfig
from assurexray.data.audit import audit_dataset
from assurexray.data.audit_report import FIGURES, render_report, write_audit
from assurexray.core.schema import RELEASE_COLUMNS


# id, centre, label, view, (width, height), mode, lesion polygon (None: no annotation file), age, gender, site
SQUARE = [(10, 10), (29, 10), (29, 29), (10, 29)]  # 20 x 20 px (vertices at pixel centres)
IMAGES = [
    ("IMG000001.png", 1, "Malignant", "frontal", (40, 40), "L", SQUARE, 30, "M", "femur"),
    ("IMG000002.png", 1, "Benign", "lateral", (40, 60), "L", SQUARE, 40, "F", "tibia"),
    ("IMG000003.png", 1, "Benign", "frontal", (40, 60), "L", None, None, "F", None),
    ("IMG000004.png", 2, "Normal", "frontal", (48, 32), "RGB", None, 50, "M", None),
    ("IMG000005.png", 2, "Normal", "oblique", (48, 32), "L", None, 60, None, None),
    ("IMG000006.png", 2, "Malignant", "frontal", (32, 32), "L", [(0, 0), (15, 0), (15, 15), (0, 15)], 70, "F",
     "humerus"),
]
# IMG000001/6: exact copy across centres; IMG000002/4: near copy across classes (Benign vs Normal) and centres.
PAIRS = [
    ("IMG000001.png", "IMG000006.png", 0, "exact"),
    ("IMG000002.png", "IMG000004.png", 3, "near"),
    ("IMG000004.png", "IMG000005.png", 2, "near"),
]
GROUPS = {"IMG000001.png": "g1", "IMG000006.png": "g1"}  # the rest (dups + the case below) share "g2"
CASES = {"IMG000002.png": "case-a", "IMG000003.png": "case-a"}  # one case, lateral + frontal


def _write_release(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    (root / "Annotations").mkdir()
    rows = []
    for k, (image_id, center, label, view, (w, h), mode, polygon, age, gender, site) in enumerate(IMAGES):
        pixels = (np.arange(w * h).reshape(h, w) * (k + 3) % 256).astype(np.uint8)
        image = Image.fromarray(pixels)
        (image.convert("RGB") if mode == "RGB" else image).save(root / "images" / image_id)
        row = dict.fromkeys(RELEASE_COLUMNS, 0)
        row.update({"image_id": image_id, "center": center, "age": age, "gender": gender, view: 1})
        if label != "Normal":
            row.update({"tumor": 1, label.lower(): 1, "osteosarcoma" if label == "Malignant" else "other bt": 1})
        if site:
            row[site] = 1
        rows.append(row)
        if polygon:
            shapes = [{"label": "tumour", "points": polygon, "shape_type": "polygon"},
                      {"label": "tumour", "points": [polygon[0], polygon[2]], "shape_type": "rectangle"}]
            (root / "Annotations" / f"{Path(image_id).stem}.json").write_text(json.dumps(
                {"shapes": shapes, "imageWidth": w, "imageHeight": h, "imagePath": image_id, "imageData": None}))
    pd.DataFrame(rows, columns=list(RELEASE_COLUMNS)).to_csv(root / "dataset.csv", index=False)


def _write_prepared(root: Path) -> None:
    root.mkdir(parents=True)
    index = pd.DataFrame([{
        "row": i, "image_id": image_id, "label": label,
        "label_idx": ["Normal", "Benign", "Malignant"].index(label), "center": center,
        "case_id": CASES.get(image_id, ""), "group": GROUPS.get(image_id, "g2"), "view": view,
        "has_mask": int(polygon is not None), "orig_width": w, "orig_height": h, "orig_mode": mode,
        "scale": 1.0, "pad_x": 0, "pad_y": 0, "phash": f"{i:016x}", "dup_of": "",
    } for i, (image_id, center, label, view, (w, h), mode, polygon, *_) in enumerate(IMAGES)])
    index.to_csv(root / "index.csv", index=False)
    pd.DataFrame(PAIRS, columns=["image_id_a", "image_id_b", "distance", "kind"]).to_csv(
        root / "duplicate_pairs.csv", index=False)


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    raw, prepared = tmp_path / "raw", tmp_path / "prepared"
    _write_release(raw)
    _write_prepared(prepared)
    return raw, prepared


@pytest.fixture()
def result(dataset):
    return audit_dataset(*dataset, AuditConfig(montage_groups=12))


def _numbers(obj) -> list[float]:
    """Every number among the keys and values of a JSON-like object."""
    if isinstance(obj, dict):
        return [n for k, v in obj.items() for n in _numbers(k) + _numbers(v)]
    if isinstance(obj, (list, tuple)):
        return [n for v in obj for n in _numbers(v)]
    if isinstance(obj, bool) or obj is None:
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    return [float(obj)] if re.fullmatch(r"-?\d+(\.\d+)?", str(obj)) else []


def _report_numbers(markdown: str) -> list[float]:
    """Standalone numbers of the report; identifiers (IMG000001.png, g2) and link targets are not numbers."""
    text = re.sub(r"\]\([^)]*\)", "]", markdown)
    return [float(x) for x in re.findall(r"(?<![\w.\-])-?\d+(?:\.\d+)?(?![\w])", text)]


def test_class_by_centre_counts_are_those_of_the_index(result):
    m = result.metrics
    assert m["n_images"] == 6 and m["n_centers"] == 2
    assert m["class_by_center"] == {"1": {"Normal": 0, "Benign": 2, "Malignant": 1, "total": 3},
                                    "2": {"Normal": 2, "Benign": 0, "Malignant": 1, "total": 3}}
    assert m["class_counts"] == {"Normal": 2, "Benign": 2, "Malignant": 2}
    assert m["class_share_pct"]["Benign"] == 33.3


def test_sizes_modes_and_views_are_counted_per_centre(result):
    m = result.metrics
    assert m["image_size"]["by_center"]["1"] == {"width_min": 40, "width_median": 40, "width_max": 40,
                                                 "height_min": 40, "height_median": 60, "height_max": 60}
    assert m["image_size"]["by_center"]["2"]["width_median"] == 48
    assert m["modes"] == {"L": 5, "RGB": 1}
    assert m["modes_by_center"]["2"] == {"L": 2, "RGB": 1}
    assert m["views"] == {"frontal": 4, "lateral": 1, "oblique": 1, "unknown": 0}
    assert m["cases"] == {"n_images_with_case_id": 2, "n_cases": 1, "n_cases_multi_image": 1,
                          "n_cases_multi_view": 1}
    assert m["groups"] == {"n_groups": 2, "n_multi_image_groups": 2, "largest_group": 4}


def test_annotation_coverage_and_lesion_area_are_measured(result):
    ann = result.metrics["annotations"]
    assert (ann["n_tumour_images"], ann["tumour_with_annotation"], ann["tumour_without_annotation"]) == (4, 3, 1)
    assert ann["normal_with_annotation"] == 0 and ann["orphan_files"] == 0 and ann["has_mask_mismatch"] == 0
    assert ann["polygons_per_image"]["max"] == 1 and ann["boxes_per_image"]["min"] == 1
    # 20 x 20 px squares: 400 / 2400 px (IMG000002) and 256 / 1024 px (IMG000006), 400 / 1600 px (IMG000001)
    assert ann["lesion_area_pct"]["min"] == pytest.approx(100 * 400 / 2400, abs=0.5)
    assert ann["lesion_area_pct"]["max"] == pytest.approx(25.0, abs=0.5)


def test_missing_values_are_counted_per_sheet_column(result):
    m = result.metrics
    assert m["missing_values"]["age"] == 1 and m["missing_values"]["gender"] == 1
    assert m["missing_values"]["center"] == 0
    assert (m["missing_values_total"], m["n_columns_with_missing"], m["n_columns_checked"]) == (2, 2, 37)


def test_duplicates_count_exact_near_cross_class_and_cross_centre_pairs(result):
    dup = result.metrics["duplicates"]
    assert (dup["exact_pairs"], dup["near_pairs"], dup["groups"], dup["images_in_groups"]) == (1, 2, 2, 5)
    assert (dup["cross_class_pairs"], dup["cross_class_groups"], dup["cross_center_pairs"]) == (1, 1, 2)
    assert (dup["pairs_in_one_split_group"], dup["pairs_across_split_groups"]) == (3, 0)
    assert dup["distance_counts"] == {"0": 1, "2": 1, "3": 1}
    assert dup["group_size_counts"] == {"2": 1, "3": 1}
    groups = result.tables["duplicate_groups"]
    assert groups["images"].tolist() == ["IMG000002.png; IMG000004.png; IMG000005.png",
                                         "IMG000001.png; IMG000006.png"]  # cross-class group first
    assert groups["cross_class"].tolist() == [True, False]


def test_leakage_measures_id_ranges_nearest_id_rule_and_flags(result):
    leak = result.metrics["leakage"]
    assert leak["id_ranges"]["1"] == {"Benign": {"first": 2, "last": 3, "n": 2},
                                      "Malignant": {"first": 1, "last": 1, "n": 1}}
    assert leak["id_ranges"]["2"]["Normal"] == {"first": 4, "last": 5, "n": 2}
    # labels by id M B B N N M: only ids 3 and 5 have a same-class nearest id (ties go to the lower id)
    assert leak["id_1nn_class_accuracy_pct"] == 33.3
    assert leak["id_1nn_center_accuracy_pct"] == 83.3
    assert leak["normal_rows_with_site_flag_pct"] == 0.0
    assert leak["tumour_rows_with_site_flag_pct"] == 75.0
    assert leak["tumour_rows_with_subtype_flag_pct"] == 100.0
    assert leak["grayscale_mode_pct_by_center"] == {"1": 100.0, "2": 66.7}
    # Overlaid text is not measured: the audit quotes the statement and claims no count.
    assert leak["burned_in_text"]["measured"] is False and leak["burned_in_text"]["centers_of_concern"] == [2]
    assert "not counted" in leak["burned_in_text"]["statement"]


def test_report_has_every_section_and_the_disclaimer(result):
    report = render_report(result)
    assert DISCLAIMER in report
    for section in ("## Dataset composition", "## Image sizes", "## Views", "## Annotation coverage",
                    "## Missing values", "## Duplicates", "## Leakage and shortcut risks",
                    "### Image-id ranges", "### Side markers, rulers and overlaid text (not measured)", "Cross-class duplicates exist"):
        assert section in report
    for name in FIGURES.values():
        assert f"](audit/{name})" in report


def test_every_number_in_the_report_comes_from_the_metrics(result):
    known = _numbers(result.metrics)
    found = _report_numbers(render_report(result))
    assert len(found) > 50
    strays = [x for x in found if not any(math.isclose(x, k, abs_tol=1e-9) for k in known)]
    assert strays == []


def test_write_audit_writes_metrics_report_and_valid_figures(result, tmp_path):
    figures = tmp_path / "reports" / "audit"
    figures.mkdir(parents=True)
    (figures / "stale.png").write_bytes(b"old")
    write_audit(result, report_path=tmp_path / "reports" / "audit.md", figures_dir=figures,
                metrics_path=tmp_path / "metrics" / "audit.json")
    assert json.loads((tmp_path / "metrics" / "audit.json").read_text()) == result.metrics
    assert not (figures / "stale.png").exists()  # the directory is replaced as a whole
    for name in FIGURES.values():
        with Image.open(figures / name) as png:
            png.verify()
            assert png.format == "PNG" and DISCLAIMER in png.info["Description"]
    groups = pd.read_csv(figures / "duplicate_groups.csv")
    assert len(groups) == 2
    report = (tmp_path / "reports" / "audit.md").read_text()
    for link in re.findall(r"\]\(([^)]+\.png)\)", report):
        assert (tmp_path / "reports" / link).is_file()


def test_montage_is_capped_at_montage_groups(dataset):
    assert audit_dataset(*dataset, AuditConfig(montage_groups=1)).metrics["duplicates"]["groups_shown"] == 1
    assert audit_dataset(*dataset, AuditConfig(montage_groups=0)).metrics["duplicates"]["groups_shown"] == 0


def _edit_csv(path: Path, **changes) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column, (row, value) in changes.items():
        frame.loc[row, column] = value
    frame.to_csv(path, index=False)


@pytest.mark.parametrize(("edit", "error", "match"), [
    (lambda p: (p / "index.csv").unlink(), FileNotFoundError, "prepared index not found"),
    (lambda p: (p / "duplicate_pairs.csv").unlink(), FileNotFoundError, "duplicate pairs not found"),
    (lambda p: pd.read_csv(p / "index.csv").drop(columns="view").to_csv(p / "index.csv", index=False),
     ValueError, r"missing column\(s\) \['view'\]"),
    (lambda p: _edit_csv(p / "index.csv", label=(1, "Cat")), ValueError, "row 3: label 'Cat' is not one of"),
    (lambda p: _edit_csv(p / "index.csv", center=(0, "one")), ValueError, "row 2: 'center' must be an integer"),
    (lambda p: _edit_csv(p / "index.csv", orig_width=(2, "4.5")), ValueError, "row 4: 'orig_width' must be an"),
    (lambda p: _edit_csv(p / "index.csv", image_id=(1, "IMG000001.png")), ValueError, "appears twice"),
    (lambda p: _edit_csv(p / "duplicate_pairs.csv", image_id_b=(0, "IMG9.png")), ValueError,
     "row 2: 'IMG9.png' is not in index.csv"),
    (lambda p: _edit_csv(p / "duplicate_pairs.csv", kind=(1, "fuzzy")), ValueError,
     "row 3: kind must be 'exact' or 'near', got 'fuzzy'"),
    (lambda p: _edit_csv(p / "duplicate_pairs.csv", distance=(1, "-2")), ValueError,
     "distance must be a non-negative integer"),
    (lambda p: (p / "meta.json").write_text('{"class_names": "Normal"}'), ValueError,
     "'class_names' must be a list of strings"),
])
def test_bad_prepared_inputs_are_reported_with_file_and_row(dataset, edit, error, match):
    raw, prepared = dataset
    edit(prepared)
    with pytest.raises(error, match=match):
        audit_dataset(raw, prepared, AuditConfig(montage_groups=12))


@pytest.mark.parametrize("bad", [-1, 2.5, True, "12"])
def test_montage_groups_must_be_a_non_negative_integer(dataset, bad):
    with pytest.raises(ValueError, match=rf"montage_groups must be a non-negative integer, got {re.escape(repr(bad))}"):
        audit_dataset(*dataset, AuditConfig(montage_groups=bad))


def test_montage_fails_naming_a_missing_radiograph(dataset, tmp_path):
    raw, prepared = dataset
    result = audit_dataset(raw, prepared, AuditConfig(montage_groups=12))
    (raw / "images" / "IMG000004.png").unlink()
    with pytest.raises(FileNotFoundError, match="no image file for 'IMG000004.png'"):
        write_audit(result, report_path=tmp_path / "r.md", figures_dir=tmp_path / "figs",
                    metrics_path=tmp_path / "m.json")
    assert not (tmp_path / "figs").exists() and not (tmp_path / "r.md").exists()


def _run_stage(repo_root: Path, tmp_path: Path, raw: Path, prepared: Path, params: str):
    (tmp_path / "params.yaml").write_text(params)
    return subprocess.run(
        [sys.executable, "stages/audit.py", "--raw", str(raw), "--prepared", str(prepared),
         "--report", str(tmp_path / "out" / "audit.md"), "--figures", str(tmp_path / "out" / "audit"),
         "--metrics", str(tmp_path / "out" / "audit.json"), "--datasheet", str(tmp_path / "out" / "datasheet.md"),
         "--params", str(tmp_path / "params.yaml")],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )


def test_stage_script_writes_every_output(repo_root, tmp_path, dataset):
    done = _run_stage(repo_root, tmp_path, *dataset, "audit:\n  montage_groups: 1\n")
    assert done.returncode == 0, done.stderr
    assert "1 exact + 2 near duplicate pairs (1 cross-class)" in done.stdout
    metrics = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert metrics["duplicates"]["groups_shown"] == 1
    assert "](audit/duplicate_review.png)" in (tmp_path / "out" / "audit.md").read_text()
    assert "# Datasheet" in (tmp_path / "out" / "datasheet.md").read_text()


def test_stage_script_rejects_unknown_params(repo_root, tmp_path, dataset):
    done = _run_stage(repo_root, tmp_path, *dataset, "audit:\n  montage_group: 1\n")
    assert done.returncode != 0
    assert "unknown key(s) ['montage_group']" in done.stderr


def test_audit_of_the_real_btxrd_excerpt(btxrd_mini, tmp_path):
    from assurexray.data import cache
    from assurexray.data.btxrd import load_release

    prepared = cache.build_cache(load_release(btxrd_mini), tmp_path / "prepared",
                                 cache.PrepareConfig(image_px=32, near_duplicate_distance=4, workers=1))
    result = audit_dataset(btxrd_mini, prepared, AuditConfig(montage_groups=4))
    m = result.metrics
    assert m["n_images"] == 30 and m["class_counts"] == {"Normal": 10, "Benign": 10, "Malignant": 10}
    assert {c: v["total"] for c, v in m["class_by_center"].items()} == {"1": 23, "2": 6, "3": 1}
    assert m["modes"] == {"L": 24, "RGB": 6}
    assert m["annotations"]["tumour_with_annotation"] == 20 and m["annotations"]["tumour_without_annotation"] == 0
    assert m["leakage"]["normal_rows_with_site_flag_pct"] == 0.0
    assert m["leakage"]["burned_in_text"]["centers_of_concern"] == [2, 3]
    # No case sheet given: the audit says only duplicates are grouped, and the report says views may straddle.
    assert m["grouping"]["basis"] == "duplicates only"
    assert "Other views of one case may sit in different partitions" in m["grouping_statement"]
    assert m["image_size"]["all"]["width_min"] == 277 and m["image_size"]["all"]["height_max"] == 4250
    write_audit(result, report_path=tmp_path / "reports" / "audit.md", figures_dir=tmp_path / "reports" / "audit",
                metrics_path=tmp_path / "metrics" / "audit.json")
    report = (tmp_path / "reports" / "audit.md").read_text()
    assert DISCLAIMER in report
    known = _numbers(m)
    assert [x for x in _report_numbers(report) if not any(math.isclose(x, k) for k in known)] == []


def test_the_datasheet_documents_every_sheet_column_with_counts_from_the_sheet(result, tmp_path):
    sheet = result.datasheet
    table_columns = [c["column"] for c in sheet["columns"]]
    assert "image_id" in table_columns and "center" in table_columns and "label" not in table_columns
    center = next(c for c in sheet["columns"] if c["column"] == "center")
    assert sum(center["values"].values()) == sheet["n_rows"] == result.metrics["n_metadata_rows"]
    assert all(c["meaning"] != "not documented by the release" for c in sheet["columns"])
    write_audit(result, report_path=tmp_path / "audit.md", figures_dir=tmp_path / "audit",
                metrics_path=tmp_path / "audit.json", datasheet_path=tmp_path / "datasheet.md")
    text = (tmp_path / "datasheet.md").read_text()
    assert DISCLAIMER in text and "CC BY-NC-ND 4.0" in text and "## Known traps" in text
    assert text.count("| `") == len(sheet["columns"])  # one table row per column


def test_the_montage_title_sits_above_its_first_row_of_thumbnails(result, tmp_path, monkeypatch):
    from assurexray.data import audit_report

    saved = {}
    original = audit_report._save

    def keep(fig, path):
        original(fig, path)  # laid out and drawn exactly as written to disk
        saved[Path(path).name] = fig

    monkeypatch.setattr(audit_report, "_save", keep)
    write_audit(result, report_path=tmp_path / "audit.md", figures_dir=tmp_path / "figures",
                metrics_path=tmp_path / "audit.json")
    fig = saved[FIGURES["duplicates"]]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # measure the layout _save computed (positions are kept)
    title = fig._suptitle.get_window_extent(renderer)  # matplotlib keeps the suptitle apart from fig.texts
    first_row = [ax for ax in fig.axes if ax.get_subplotspec().rowspan.start == 0 and ax.axison]
    assert first_row  # the fixture has duplicate groups to show
    for ax in first_row:
        assert ax.get_tightbbox(renderer).y1 <= title.y0, (ax.get_title(), title)  # display y grows upwards
