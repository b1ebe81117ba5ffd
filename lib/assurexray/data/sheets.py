"""The one reader of user-given image sheets: the dataset authors' .xlsx lists and plain CSV/TXT tables.

Used for the case sheets (:mod:`assurexray.data.cases`) and the published split lists (:mod:`assurexray.data.splits`), so
both accept the same formats and column spellings (``image_id``, ``Image ID``, ``image id``) and fail with the
same messages, naming the file and the fix.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pandas as pd

__all__ = ["read_sheet", "sheet_columns", "image_ids"]

_IMAGE_ID = "image id"  # the normalised spelling of the image-id column (see sheet_columns)


def read_sheet(path: str | Path, *, kind: str, txt: bool = False) -> pd.DataFrame:
    """Every cell of ``path`` as text (blank = ``""`` in CSV, NaN in Excel): .xlsx/.xlsm, .csv, and with ``txt``
    a .txt of image ids (one a line, ``#`` comments) as an ``image_id`` column.

    ``kind`` names the sheet in errors (``case sheet``, ``split sheet``). The file must exist (callers say which
    setting named it). An unknown suffix or an unreadable file is a ``ValueError`` naming the file and the fix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in {".xlsx", ".xlsm"}:
            return pd.read_excel(path, engine="openpyxl", dtype=str)
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if txt and suffix == ".txt":
            ids = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
            return pd.DataFrame({"image_id": [i for i in ids if i]})
    except (zipfile.BadZipFile, OSError, KeyError) as err:
        raise ValueError(f"{path}: cannot read the {kind} ({err}); re-save it as .xlsx or .csv.") from err
    expected = ".xlsx, .csv or .txt" if txt else ".xlsx or .csv"
    raise ValueError(f"{path}: unsupported {kind} format {suffix!r}; expected {expected}.")


def sheet_columns(frame: pd.DataFrame) -> dict[str, str]:
    """Column names by their normalised spelling (lower case, runs of spaces/underscores as one space)."""
    return {re.sub(r"[\s_]+", " ", str(c)).strip().lower(): c for c in frame.columns}


def image_ids(frame: pd.DataFrame, path: str | Path, *, hint: str = "") -> pd.Series:
    """The ``image_id`` column, stripped, blanks as ``""``; a sheet without one is a ``ValueError`` listing the
    columns found (and ``hint``, what the sheet should hold)."""
    columns = sheet_columns(frame)
    if _IMAGE_ID not in columns:
        found = [str(c) for c in frame.columns]
        raise ValueError(f"{path}: no image_id column; columns found: {found}.{' ' + hint if hint else ''}")
    return frame[columns[_IMAGE_ID]].fillna("").astype(str).str.strip()
