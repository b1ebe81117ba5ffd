"""One reader for the image sheets: the case sheets (cases.py) and the published split lists (splits.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from assurexray.data.cases import read_case_sheets
from assurexray.data.sheets import image_ids, read_sheet
from assurexray.data.splits import _read_partition_sheets


@pytest.mark.parametrize("column", ["image_id", "Image ID", " IMAGE_ID ", "image  id"])
@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_both_readers_accept_the_same_image_id_spellings_and_formats(tmp_path, column, suffix):
    path = tmp_path / f"list{suffix}"
    frame = pd.DataFrame({column: ["IMG000001.jpeg", "IMG000002.jpeg"], "case_id": ["a", "b"]})
    frame.to_excel(path, index=False) if suffix == ".xlsx" else frame.to_csv(path, index=False)
    assert list(read_case_sheets([path])["image_id"]) == ["IMG000001.jpeg", "IMG000002.jpeg"]
    assert dict(_read_partition_sheets({"train": str(path)})) == {"IMG000001": "train", "IMG000002": "train"}


def test_a_text_list_is_read_only_where_a_list_of_ids_is_enough(tmp_path):
    path = tmp_path / "val.txt"
    path.write_text("IMG000003.jpeg  # a comment\n\nIMG000004\n", encoding="utf-8")
    assert dict(_read_partition_sheets({"val": str(path)})) == {"IMG000003": "val", "IMG000004": "val"}
    with pytest.raises(ValueError, match=r"val\.txt: unsupported case sheet format '\.txt'; expected \.xlsx or \.csv\."):
        read_case_sheets([path])


@pytest.mark.parametrize(("kind", "txt", "expected"), [("case sheet", False, r"\.xlsx or \.csv"),
                                                       ("split sheet", True, r"\.xlsx, \.csv or \.txt")])
def test_an_unknown_or_unreadable_sheet_is_named_with_the_fix(tmp_path, kind, txt, expected):
    (tmp_path / "list.ods").write_text("x")
    with pytest.raises(ValueError, match=rf"list\.ods: unsupported {kind} format '\.ods'; expected {expected}\."):
        read_sheet(tmp_path / "list.ods", kind=kind, txt=txt)
    (tmp_path / "fake.xlsx").write_text("not a zip")
    with pytest.raises(ValueError, match=rf"fake\.xlsx: cannot read the {kind} \(.*\); re-save it as \.xlsx or \.csv\."):
        read_sheet(tmp_path / "fake.xlsx", kind=kind, txt=txt)


def test_a_sheet_without_image_ids_lists_its_columns_and_what_it_needs(tmp_path):
    frame = pd.DataFrame({"name": ["IMG1"]})
    with pytest.raises(ValueError, match=r"s\.csv: no image_id column; columns found: \['name'\]\. Add one\.$"):
        image_ids(frame, tmp_path / "s.csv", hint="Add one.")
    with pytest.raises(ValueError, match=r"s\.csv: no image_id column; columns found: \['name'\]\.$"):
        image_ids(frame, tmp_path / "s.csv")
    assert list(image_ids(pd.DataFrame({"Image ID": [" IMG1 ", None]}), "s.csv")) == ["IMG1", ""]
