"""Case keys from the dataset authors' original file names, and the case sheets that carry them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from assurexray.data.cases import case_key, read_case_sheets
from conftest import skip_or_fail

AUTHORS = Path(__file__).resolve().parents[2] / "shared" / "btxrd-dev" / "authors"

#: Real name shapes from the authors' detection sheets (one per kind seen), with the case each belongs to.
NAME_SHAPES = [
    # centre 1 tumours: <ward><n>-<sex>-<age>-<benign/malignant>-<diagnosis>-<site>-<view>
    ("b1-M-12-恶-骨肉瘤-胫骨-2.jpeg", "b1-m-12-恶-骨肉瘤-胫骨"),
    ("b1-M-12-恶-骨肉瘤-胫骨-1.jpeg", "b1-m-12-恶-骨肉瘤-胫骨"),
    ("y22-F-69-良-？-髂骨-1.jpeg", "y22-f-69-良-?-髂骨"),  # full-width ？ folds to ? (NFKC)
    ("b10-M-48-良-？滑膜骨软骨瘤-踝-3.jpeg", "b10-m-48-良-?滑膜骨软骨瘤-踝"),
    # centre 1 normals: an age/sex bucket and a counter carry no case
    ("30f_12.jpeg", ""), ("m59_4.jpeg", ""), ("f60_14.jpeg", ""), ("9m_1.jpeg", ""),
    # centre 2 teaching cases: a title, a counter and a re-download suffix
    ("15m-hereditary-multiple-exostoses-6 (1).jpeg", "15m-hereditary-multiple-exostoses"),
    ("15m-hereditary-multiple-exostoses-6.jpeg", "15m-hereditary-multiple-exostoses"),
    ("7f-normal-hip-radiographs-pediatric (3).jpeg", "7f-normal-hip-radiographs-pediatric"),
    ("25m-giant-cell-tumour-of-bone.jpeg", "25m-giant-cell-tumour-of-bone"),
    ("30m-normal-hand-series (2).png", "30m-normal-hand-series"),
    ("6m-normal-elbow-radius-and-ulna-x-ray-6-year-old-2.jpeg", "6m-normal-elbow-radius-and-ulna-x-ray-6-year-old"),
    # centre 3: Chinese diagnosis with a bare trailing view number; normals numbered imgN
    ("34m右腓骨骨软骨瘤1.jpeg", "34m右腓骨骨软骨瘤"),
    ("8m髋关节纤维发育不良2.jpeg", "8m髋关节纤维发育不良"),
    ("8m髋关节纤维发育不良.jpeg", "8m髋关节纤维发育不良"),
    ("img7.jpeg", ""), ("IMG12.JPG", ""),
    # nothing to go on
    ("", ""), ("12.jpeg", ""),
]


@pytest.mark.parametrize(("name", "case"), NAME_SHAPES, ids=[n or "empty" for n, _ in NAME_SHAPES])
def test_case_key_drops_the_view_index_and_keeps_nameless_images_alone(name, case):
    assert case_key(name) == case


def test_case_sheets_accept_original_names_or_plain_case_ids(tmp_path):
    pd.DataFrame({"Original Name": ["b1-M-12-恶-骨肉瘤-胫骨-2.jpeg", "30f_12.jpeg"],
                  "image_id": ["IMG000001.jpeg", "IMG000002.jpeg"]}).to_excel(tmp_path / "train.xlsx", index=False)
    (tmp_path / "hospital.csv").write_text("image_id,case_id\nIMG000003.jpeg,P-17\nIMG000001.jpeg,b1-m-12-恶-骨肉瘤-胫骨\n",
                                           encoding="utf-8")
    table = read_case_sheets([tmp_path / "train.xlsx", tmp_path / "hospital.csv"])
    assert dict(zip(table["image_id"], table["case_id"])) == {
        "IMG000001.jpeg": "b1-m-12-恶-骨肉瘤-胫骨", "IMG000002.jpeg": "", "IMG000003.jpeg": "P-17"}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("name,case_id\nIMG1,a\n", r"no image_id column; columns found: \['name', 'case_id'\]"),
        ("image_id,site\nIMG1,knee\n", r"neither 'Original Name' nor case_id"),
        ("image_id,case_id\nIMG1,a\nIMG1.jpeg,b\n", r"image 'img1' gets different cases"),
        ("image_id,case_id\n,a\n", r"row 2: image_id is blank"),
    ],
    ids=["no-id", "no-case-column", "conflict", "blank-id"],
)
def test_a_bad_case_sheet_is_refused_naming_the_problem(tmp_path, content, match):
    (tmp_path / "cases.csv").write_text(content)
    with pytest.raises(ValueError, match=match):
        read_case_sheets([tmp_path / "cases.csv"])


def test_a_missing_or_misformatted_case_sheet_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"case_sheets: '.*nope\.xlsx' not found"):
        read_case_sheets([tmp_path / "nope.xlsx"])
    (tmp_path / "fake.xlsx").write_text("not a zip")
    with pytest.raises(ValueError, match=r"fake\.xlsx: cannot read the case sheet"):
        read_case_sheets([tmp_path / "fake.xlsx"])


def test_the_real_authors_sheets_group_views_into_cases():
    """On the real sheets: most tumour images belong to a multi-view case; normals bucket names stay alone."""
    sheets = [AUTHORS / "detection_task_train.xlsx", AUTHORS / "detection_task_val.xlsx"]
    if not all(p.is_file() for p in sheets):
        skip_or_fail(f"authors' sheets absent: {AUTHORS}")
    table = read_case_sheets(sheets)
    with_case = table[table["case_id"] != ""]
    sizes = with_case.groupby("case_id").size()
    assert len(table) > 3000 and len(with_case) > 1500
    assert sizes.size < 0.7 * len(with_case)  # views collapse into fewer cases
    bucket = table["original_name"].str.fullmatch(r"(\d+[mf]|[mf]\d+)_\d+\.jpe?g", case=False)
    assert (table.loc[bucket, "case_id"] == "").all() and bucket.sum() > 1000
