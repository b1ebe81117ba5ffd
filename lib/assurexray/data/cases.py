"""Case identifiers: which radiographs are views of one patient's case, so that no case straddles a split.

The BTXRD release has no case column. The dataset authors' detection sheets (SHUNHANYAO/BTXRD on GitHub,
``detection task/Distribution/{train,val}.xlsx``) carry ``Original Name``, the file name before
anonymisation, which encodes the case and a view index:

- centre 1 tumours ``b1-M-12-恶-骨肉瘤-胫骨-2.jpeg`` (case ``b1-m-12-恶-骨肉瘤-胫骨``, view 2);
- centre 2 teaching cases ``15m-hereditary-multiple-exostoses-6 (1).jpeg`` (case
  ``15m-hereditary-multiple-exostoses``; both the ``-6`` and the `` (1)`` of a re-download are dropped);
- centre 3 ``34m右腓骨骨软骨瘤1.jpeg`` (case ``34m右腓骨骨软骨瘤``).

Names that carry no case stay single-image groups: centre-1 normals named by an age/sex bucket and a counter
(``30f_12``, ``m59_4``, ``f60_14``) and centre-3 normals ``img7``. Dropping every trailing number is deliberately
greedy: two patients of the same age, sex and diagnosis share a key and so a group, which costs a little split
granularity but never leaks one case across train and test.

A hospital user can give a plain ``image_id,case_id`` table instead; its case ids are used as they are.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from pathlib import Path
from typing import Sequence

import pandas as pd

from assurexray.data.sheets import image_ids, read_sheet, sheet_columns

__all__ = ["CASE_TABLE_COLUMNS", "case_key", "read_case_sheets"]

logger = logging.getLogger(__name__)

#: Columns of the normalised case table written to ``data/raw/cases.csv``.
CASE_TABLE_COLUMNS: tuple[str, ...] = ("image_id", "case_id", "original_name", "sheet")

# `30f_12`, `9m_1`, `m59_4`, `f60_14`: an age/sex bucket and a counter, not a case.
_BUCKET_NAME = re.compile(r"^(\d{1,3}[mfw]|[mfw]\d{1,3})_\d+$")
# `img7`: centre-3 normals, numbered.
_NUMBERED_NAME = re.compile(r"^img\d+$")
_REDOWNLOAD = re.compile(r"\s*\(\d+\)$")  # ` (1)`: a second download of the same page
_VIEW_INDEX = re.compile(r"[\s_\-]*\d+$")  # `-2`, `_3`, `1`: a view counter
_IMAGE_SUFFIX = re.compile(r"\.(jpe?g|png|bmp|tiff?|webp)$", re.IGNORECASE)


def case_key(original_name: str) -> str:
    """The case an original file name belongs to, or ``""`` when the name carries none (see module doc)."""
    name = unicodedata.normalize("NFKC", str(original_name)).strip()
    name = _IMAGE_SUFFIX.sub("", Path(name).name).strip().lower()
    if not name or _BUCKET_NAME.match(name) or _NUMBERED_NAME.match(name):
        return ""
    while True:  # `-6 (1)`: strip every trailing index, re-downloads first
        stripped = _VIEW_INDEX.sub("", _REDOWNLOAD.sub("", name)).strip(" -_")
        if stripped == name:
            break
        name = stripped
    # A name that was only digits (and separators) carries no case either.
    return name if re.search(r"[^\d\W]", name) else ""


def read_case_sheets(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per image: ``image_id``, ``case_id``, ``original_name``, ``sheet`` (CASE_TABLE_COLUMNS).

    Each sheet (.xlsx or .csv) has an ``image_id`` column and either ``Original Name`` (the authors' sheets: the
    case is derived by :func:`case_key`) or ``case_id`` (used as given). An image listed in several sheets must
    get the same case everywhere.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    frames = [_read_one(Path(p)) for p in paths]
    if not frames:
        return pd.DataFrame(columns=list(CASE_TABLE_COLUMNS))
    table = pd.concat(frames, ignore_index=True)
    table["stem"] = table["image_id"].map(_stem)
    conflicts = table.groupby("stem")["case_id"].nunique()
    if (conflicts > 1).any():
        stem = sorted(conflicts[conflicts > 1].index)[0]
        rows = table[table["stem"] == stem]
        raise ValueError(
            f"case sheets: image {stem!r} gets different cases: "
            f"{sorted(set(zip(rows['sheet'], rows['case_id'])))}; one image belongs to one case. Fix the sheets."
        )
    table = table.drop_duplicates("stem").drop(columns="stem").reset_index(drop=True)
    n_case = int((table["case_id"] != "").sum())
    logger.info("case sheets: %d images, %d with a case key, %d cases", len(table), n_case,
                table.loc[table["case_id"] != "", "case_id"].nunique())
    return table[list(CASE_TABLE_COLUMNS)]


def _read_one(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(
            f"data.btxrd.case_sheets: {str(path)!r} not found. Give the dataset authors' detection sheets "
            "(SHUNHANYAO/BTXRD, 'detection task/Distribution/train.xlsx' and 'val.xlsx') or an image_id,case_id CSV."
        )
    raw = read_sheet(path, kind="case sheet")
    columns = sheet_columns(raw)
    ids = image_ids(raw, path, hint="A case sheet needs image_id and either 'Original Name' or case_id.")
    if "case id" in columns:
        original = pd.Series([""] * len(raw))
        cases = raw[columns["case id"]].fillna("").astype(str).str.strip()
    elif "original name" in columns:
        original = raw[columns["original name"]].fillna("").astype(str).str.strip()
        cases = original.map(case_key)
    else:
        raise ValueError(f"{path}: neither 'Original Name' nor case_id; columns found: "
                         f"{[str(c) for c in raw.columns]}. Give the authors' detection sheets or an image_id,case_id CSV.")
    blank = ids == ""
    if blank.any():
        raise ValueError(f"{path} row {int(blank.to_numpy().argmax()) + 2}: image_id is blank. Fill it in or drop the row.")
    return pd.DataFrame({"image_id": ids.to_numpy(), "case_id": cases.to_numpy(),
                         "original_name": original.to_numpy(), "sheet": path.name})


def _stem(image_id: str) -> str:
    name = Path(str(image_id)).name
    return _IMAGE_SUFFIX.sub("", name).lower()
