"""Read the BTXRD release: metadata sheet, the image files it names and their annotation files
(read by :mod:`assurexray.data.annotations`).

Everything the user may have edited (sheet, JSON, file names) is validated here with row numbers and file
names, so a bad release fails at `prepare` with a message that says where, instead of deep inside training.
The site and subtype flags stay in the table for the audit but are never features: they leak the label.
Over 400 lines on purpose: most of it is the sheet's cell-by-cell validation, each error naming its row.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from assurexray.data.cases import case_key
from assurexray.core.filetypes import DATASET_SUFFIXES
from assurexray.core.schema import CLASS_NAMES, RELEASE_COLUMNS, REQUIRED_COLUMNS, VIEW_COLUMNS

__all__ = [
    "IMAGE_SUFFIXES",
    "Release",
    "find_metadata",
    "read_metadata",
    "load_release",
    "sheet_modified",
]

logger = logging.getLogger(__name__)

#: File suffixes accepted as radiographs (resized copies may be re-saved as .jpg or .png): assurexray.core.filetypes'.
IMAGE_SUFFIXES: frozenset[str] = frozenset(DATASET_SUFFIXES)

#: Optional columns naming the case (views of one patient/lesion): the sample's `case_id`, the authors'
#: `Original Name`. The first one present wins.
CASE_COLUMNS: tuple[str, ...] = ("case_id", "original name")

_LABEL_FLAGS: tuple[str, ...] = ("tumor", "benign", "malignant")


@dataclass(frozen=True)
class Release:
    """A BTXRD-layout folder: the validated sheet (+ absolute ``path`` column) and annotation files."""

    root: Path
    table: pd.DataFrame
    annotations: dict[str, Path] = field(default_factory=dict)
    metadata_path: Path | None = None
    n_nested_annotations: int = 0
    #: Where ``case_id`` came from: "cases.csv", a sheet column name, or "" (no case information).
    case_source: str = ""


def find_metadata(root: str | os.PathLike) -> Path:
    """Return ``root/dataset.xlsx``, else ``root/dataset.csv``; Office lock files (``~$*``) are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: release folder not found; expected the extracted BTXRD folder.")
    for name in ("dataset.xlsx", "dataset.csv"):
        candidate = root / name
        if candidate.is_file():
            return candidate
    found = sorted(p.name for p in root.iterdir() if p.suffix.lower() in {".xlsx", ".csv"})
    raise FileNotFoundError(
        f"{root}: no dataset.xlsx or dataset.csv (metadata sheet) found; spreadsheet-like files present: "
        f"{found}. Point --raw at the folder holding images/, Annotations/ and dataset.xlsx."
    )


def read_metadata(path: str | os.PathLike, *, class_names: Sequence[str] = CLASS_NAMES) -> pd.DataFrame:
    """Read and validate the metadata sheet; add ``label``, ``label_idx``, ``view``, ``case_id``, ``sheet_row``.

    Column names are matched tolerantly (case, spaces, ``_``/``-``, ``-joint``, ``limbs``, ``centre``) and
    renamed to the release spelling (schema.RELEASE_COLUMNS). Errors name the row as the user sees it in
    the sheet (header = row 1).
    """
    path = Path(path)
    class_names = _check_class_names(class_names)
    raw = _read_table(path)
    table = _canonical_columns(raw, path)
    blank = table.apply(lambda col: col.map(_is_blank)).all(axis=1)
    if blank.any():
        logger.info("%s: ignoring %d fully blank row(s)", path.name, int(blank.sum()))
    sheet_rows = pd.Series(np.arange(len(table)) + 2, index=table.index)  # header is row 1
    keep = ~blank.to_numpy()
    table = table.loc[keep].reset_index(drop=True)
    sheet_rows = sheet_rows.loc[keep].reset_index(drop=True)

    table["image_id"] = [_text_cell(v, path, r, "image_id") for v, r in zip(table["image_id"], sheet_rows)]
    table["center"] = [_int_cell(v, path, r, "center") for v, r in zip(table["center"], sheet_rows)]
    _check_duplicates(table["image_id"], sheet_rows, path)
    for name in _LABEL_FLAGS + tuple(c for c in VIEW_COLUMNS if c in table.columns):
        table[name] = [_flag_cell(v, path, r, name) for v, r in zip(table[name], sheet_rows)]

    both = (table["benign"] == 1) & (table["malignant"] == 1)
    if both.any():
        i = int(np.flatnonzero(both)[0])
        raise ValueError(
            f"{path.name} row {sheet_rows[i]}: 'benign' and 'malignant' are both 1 for "
            f"{table['image_id'][i]!r}; a radiograph has one label. Fix the sheet or drop the row."
        )
    neither = (table["tumor"] == 1) & (table["benign"] == 0) & (table["malignant"] == 0)
    if neither.any():
        i = int(np.flatnonzero(neither)[0])
        raise ValueError(
            f"{path.name} row {sheet_rows[i]}: 'tumor' is 1 but neither 'benign' nor 'malignant' is 1 for "
            f"{table['image_id'][i]!r}. Set the tumour's class in the sheet or drop the row."
        )
    untumoured = (table["tumor"] == 0) & ((table["benign"] == 1) | (table["malignant"] == 1))
    if untumoured.any():
        logger.warning(
            "%s: %d row(s) have tumor=0 but benign/malignant=1 (rows %s); labelled by benign/malignant",
            path.name, int(untumoured.sum()), sheet_rows[untumoured].tolist()[:10],
        )

    label = np.where(table["malignant"] == 1, "Malignant", np.where(table["benign"] == 1, "Benign", "Normal"))
    table["label"] = label.astype(str)
    table["label_idx"] = [class_names.index(name) for name in table["label"]]
    table["view"] = _views(table, sheet_rows, path)
    table["case_id"] = _case_ids(table)
    table["sheet_row"] = sheet_rows.to_numpy()
    return table


def load_release(root: str | os.PathLike, *, class_names: Sequence[str] = CLASS_NAMES) -> Release:
    """Read a BTXRD-layout folder and match every sheet row to one image file (by stem) and annotations."""
    root = Path(root).resolve()
    metadata_path = find_metadata(root)
    table = read_metadata(metadata_path, class_names=class_names)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"{images_dir}: images folder not found; the release keeps radiographs in images/.")

    by_stem: dict[str, list[Path]] = {}
    skipped = []
    for file in sorted(images_dir.iterdir()):
        if file.name.startswith((".", "~$")) or not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(file.name)
            continue
        by_stem.setdefault(file.stem.lower(), []).append(file)
    if skipped:
        logger.info("%s: %d non-image entries ignored (e.g. %s)", images_dir, len(skipped), skipped[:3])

    paths = []
    for image_id, row in zip(table["image_id"], table["sheet_row"]):
        candidates = by_stem.pop(_stem(image_id), [])
        if not candidates:
            raise FileNotFoundError(
                f"{metadata_path.name} row {row}: no image file for {image_id!r} in {images_dir} "
                f"(looked for {_stem(image_id)}.* with suffix in {sorted(IMAGE_SUFFIXES)}). "
                "Restore the file or drop the row."
            )
        if len(candidates) > 1:
            raise ValueError(
                f"{metadata_path.name} row {row}: several files match {image_id!r}: "
                f"{[c.name for c in candidates]}. Keep one copy per image."
            )
        paths.append(str(candidates[0]))
    if by_stem:
        extra = sorted(p.name for files in by_stem.values() for p in files)
        logger.warning(
            "%s: %d image file(s) have no row in %s and are not used (e.g. %s)",
            images_dir, len(extra), metadata_path.name, extra[:5],
        )
    table = table.assign(path=paths)
    case_source = next((f"{metadata_path.name} column {c!r}" for c in CASE_COLUMNS if c in table.columns), "")
    table, case_source = _merge_case_table(root, table, case_source)

    annotations, n_nested = _annotation_files(root, table, metadata_path)
    return Release(
        root=root, table=table, annotations=annotations, metadata_path=metadata_path,
        n_nested_annotations=n_nested, case_source=case_source,
    )


def _merge_case_table(root: Path, table: pd.DataFrame, case_source: str) -> tuple[pd.DataFrame, str]:
    """Take ``case_id`` from ``root/cases.csv`` (written by fetch from data.btxrd.case_sheets) when present."""
    path = root / "cases.csv"
    if not path.is_file():
        return table, case_source
    cases = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("image_id", "case_id") if c not in cases.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; columns found: {list(cases.columns)}. "
                         "Re-run the fetch stage (it writes this file from data.btxrd.case_sheets).")
    by_stem = dict(zip(cases["image_id"].map(_stem), cases["case_id"].str.strip()))
    stems = table["image_id"].map(_stem)
    unknown = sorted(set(by_stem) - set(stems))
    if unknown:
        logger.warning("%s: %d listed image(s) are not in the release and are ignored (e.g. %s)",
                       path.name, len(unknown), unknown[:5])
    unlisted = int((~stems.isin(by_stem)).sum())
    if unlisted:
        logger.warning("%s: %d image(s) of the release are not listed; each stays its own case", path.name, unlisted)
    table = table.assign(case_id=[by_stem.get(s, "") for s in stems])
    logger.info("%s: %d of %d images carry a case key (%d cases)", path.name, int((table["case_id"] != "").sum()),
                len(table), table.loc[table["case_id"] != "", "case_id"].nunique())
    return table, "cases.csv"


# --------------------------------------------------------------------------------------------- helpers


def _check_class_names(class_names: Sequence[str]) -> list[str]:
    names = list(class_names)
    if sorted(names) != sorted(CLASS_NAMES):
        raise ValueError(
            f"class_names must order exactly {list(CLASS_NAMES)}, got {names!r}. Fix base.class_names."
        )
    return names


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metadata sheet not found.")
    suffix = path.suffix.lower()
    if suffix not in {".xlsx", ".xlsm", ".csv"}:
        raise ValueError(f"{path}: unsupported metadata format {suffix!r}; expected .xlsx or .csv.")
    try:
        if suffix in {".xlsx", ".xlsm"}:
            return pd.read_excel(path, engine="openpyxl")
        return pd.read_csv(path)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as err:
        kind = _sniff_format(path)
        hint = f" The file's content looks like {kind}, not {suffix}." if kind and kind != suffix else ""
        raise ValueError(
            f"{path}: cannot read the metadata sheet as {suffix} ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:200]}).{hint} Re-save it from Excel as .xlsx, or export it as .csv."
        ) from err


def _sniff_format(path: Path) -> str | None:
    """What the first bytes say the file is (a renamed sheet is common): '.xlsx', '.xls', '.csv' or None."""
    try:
        with path.open("rb") as fh:
            head = fh.read(512)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return ".xlsx"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        return ".xls"  # legacy binary Excel (OLE2), which pandas reads only with xlrd
    if not head.strip():
        return "an empty file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return ".csv"


def _column_key(name: Any) -> str:
    """Spelling-insensitive key: 'Ankle_Joint ' -> 'ankle', 'Lower limbs' -> 'lower limb'."""
    key = re.sub(r"[\s_\-]+", " ", str(name).strip().lower()).strip()
    key = re.sub(r" joint$", "", key)
    key = re.sub(r"\blimbs\b", "limb", key)
    return key.replace("centre", "center")


def _canonical_columns(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    known = {_column_key(c): c for c in RELEASE_COLUMNS + CASE_COLUMNS}
    renames: dict[Any, str] = {}
    seen: dict[str, Any] = {}
    for column in raw.columns:
        canonical = known.get(_column_key(column))
        if canonical is None:
            continue
        if canonical in seen:
            raise ValueError(
                f"{path.name}: columns {seen[canonical]!r} and {column!r} both mean {canonical!r}. "
                "Delete one of them."
            )
        seen[canonical] = column
        renames[column] = canonical
    missing = [c for c in REQUIRED_COLUMNS if c not in seen]
    if missing:
        raise ValueError(
            f"{path.name}: required column(s) {missing} not found; columns found: {[str(c) for c in raw.columns]}. "
            "Use the release's dataset.xlsx (or a CSV export of it)."
        )
    return raw.rename(columns=renames)


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or (
        isinstance(value, str) and not value.strip()
    ) or value is pd.NA


def _text_cell(value: Any, path: Path, row: int, column: str) -> str:
    if _is_blank(value):
        raise ValueError(f"{path.name} row {row}: {column!r} is blank. Fill it in or drop the row.")
    return str(value).strip()


def _number(value: Any) -> float | None:
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _int_cell(value: Any, path: Path, row: int, column: str) -> int:
    if _is_blank(value):
        raise ValueError(f"{path.name} row {row}: {column!r} is blank. Fill it in or drop the row.")
    number = _number(value)
    if number is None or not np.isfinite(number) or number != int(number):
        raise ValueError(f"{path.name} row {row}: {column!r} must be an integer, got {value!r}.")
    return int(number)


def _flag_cell(value: Any, path: Path, row: int, column: str) -> int:
    if _is_blank(value):
        raise ValueError(
            f"{path.name} row {row}: flag {column!r} is blank; every flag must be 0 or 1 (a blank is not read "
            "as 0). Fill it in or drop the row."
        )
    number = _number(value)
    if number not in (0.0, 1.0):
        raise ValueError(
            f"{path.name} row {row}: flag {column!r} must be 0 or 1, got {value!r}. Fix the sheet."
        )
    return int(number)


def _check_duplicates(ids: pd.Series, sheet_rows: pd.Series, path: Path) -> None:
    # Files are matched by stem, case-insensitively ("IMG1.jpeg" and "img1.JPG" are one file): so are ids.
    keys = ids.map(_stem)
    dup = keys.duplicated(keep=False)
    if dup.any():
        first = keys[dup].iloc[0]
        same = keys == first
        rows, spellings = sheet_rows[same].tolist(), list(dict.fromkeys(ids[same]))
        what = (f"image_id {spellings[0]!r} appears {len(rows)} times" if len(spellings) == 1 else
                f"image_ids {spellings} name the same image file (ids match files case-insensitively, "
                "suffix ignored)")
        raise ValueError(
            f"{path.name} rows {rows}: {what}; {int(keys.duplicated().sum())} duplicate id(s) in all. "
            "Keep one row per image."
        )


def _views(table: pd.DataFrame, sheet_rows: pd.Series, path: Path) -> list[str]:
    present = [c for c in VIEW_COLUMNS if c in table.columns]
    if not present:
        return ["unknown"] * len(table)
    flags = table[present].to_numpy(dtype=int)
    several = flags.sum(axis=1) > 1
    if several.any():
        i = int(np.flatnonzero(several)[0])
        raise ValueError(
            f"{path.name} row {sheet_rows[i]}: several view flags are 1 for {table['image_id'][i]!r} "
            f"({[c for c, f in zip(present, flags[i]) if f]}); a radiograph has one view. Fix the sheet."
        )
    return [present[int(np.argmax(f))] if f.any() else "unknown" for f in flags]


def _case_ids(table: pd.DataFrame) -> list[str]:
    """Case per row from ``case_id`` (as given) or ``Original Name`` (the authors' file names, see cases.py)."""
    for column in CASE_COLUMNS:
        if column in table.columns:
            values = ["" if _is_blank(v) else str(v).strip() for v in table[column]]
            if column == "original name":
                return [case_key(v) if v else "" for v in values]
            # Excel turns numeric ids into floats: '12.0' -> '12'.
            return [v[:-2] if re.fullmatch(r"\d+\.0", v) else v for v in values]
    return [""] * len(table)


def _stem(image_id: str) -> str:
    name = Path(image_id).name
    return (Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name).lower()


def _annotation_files(root: Path, table: pd.DataFrame, metadata_path: Path) -> tuple[dict[str, Path], int]:
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        logger.warning("%s: no Annotations/ folder; every lesion mask will be empty", root)
        return {}, 0
    nested = ann_dir / "Annotations"
    n_nested = sum(1 for p in nested.rglob("*") if p.is_file()) if nested.is_dir() else 0
    if n_nested:
        logger.info("%s: ignoring the stray nested folder (%d files)", nested, n_nested)
    ids = {_stem(i): (i, label) for i, label in zip(table["image_id"], table["label"])}
    annotations: dict[str, Path] = {}
    for file in sorted(ann_dir.glob("*.json")):
        if file.name.startswith((".", "~$")):
            continue
        match = ids.get(file.stem.lower())
        if match is None:
            raise ValueError(
                f"{file}: annotation matches no image_id in {metadata_path.name}. "
                "Remove the file or add the image's row."
            )
        image_id, label = match
        if label == "Normal":
            raise ValueError(
                f"{file}: annotation for {image_id!r}, which {metadata_path.name} labels Normal "
                "(tumor/benign/malignant all 0). Fix the sheet or remove the annotation."
            )
        annotations[image_id] = file
    missing = sorted(set(table.loc[table["label"] != "Normal", "image_id"]) - set(annotations))
    if missing:
        logger.warning("%d tumour image(s) have no annotation; their masks are empty (e.g. %s)",
                       len(missing), missing[:5])
    return annotations, n_nested


def sheet_modified(path: str | os.PathLike) -> str | None:
    """The ``YYYY-MM-DD`` last-modified (else created) date an .xlsx sheet records in ``docProps/core.xml``.

    A property of the file's content, so the same sheet gives the same date everywhere (a file's mtime does
    not survive copies). None for a CSV, a sheet without the property, or a file that is not a zip.
    """
    path = Path(path)
    if path.suffix.lower() != ".xlsx":
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            core = archive.read("docProps/core.xml").decode("utf-8", errors="replace")
    except (KeyError, zipfile.BadZipFile, OSError):
        return None
    for tag in ("modified", "created"):
        found = re.search(rf"<dcterms:{tag}[^>]*>\s*(\d{{4}}-\d{{2}}-\d{{2}})", core)
        if found:
            return found.group(1)
    return None
