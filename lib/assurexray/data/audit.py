"""Data-quality and leakage audit of a BTXRD-layout release and its prepared cache.

Every number the audit reports is computed here into one metrics dict (``metrics/audit.json``), with the
per-item tables behind it; ``assurexray.data.audit_report`` renders the report, the figures and the datasheet from
that result alone, so the report can never disagree with the metrics. No markup is written here.
NOT FOR CLINICAL USE.
Over 400 lines on purpose: many small checks sharing the index and the release table. It reads index.csv as
text on purpose (not through ``manifests.read_index``): it is the check of prepare's output and names a bad
value's row instead of failing inside pandas.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from assurexray.core.params import AuditConfig
from assurexray.data.datasheet import build_datasheet
from assurexray.core.schema import CLASS_NAMES, SITE_COLUMNS, SUBTYPE_COLUMNS
from assurexray.data.splits import grouping_statement, grouping_summary

__all__ = ["AuditResult", "audit_dataset", "INDEX_COLUMNS", "PAIR_COLUMNS", "BURNED_IN_TEXT_CENTERS"]

logger = logging.getLogger(__name__)

#: index.csv columns the audit reads (the prepare contract in docs/ARCHITECTURE.md).
INDEX_COLUMNS: tuple[str, ...] = (
    "image_id", "label", "center", "case_id", "group", "view", "has_mask", "orig_width", "orig_height",
    "orig_mode",
)
PAIR_COLUMNS: tuple[str, ...] = ("image_id_a", "image_id_b", "distance", "kind")
#: Overlaid text, side markers ('L'/'R') and rulers: the dataset description says many radiographs carry them,
#: and centres 2 and 3 are web-collected teaching images. The audit does NOT count them (no detector has been
#: validated on BTXRD); it quotes the statement and names the centres, instead of pretending every image of a
#: centre has text.
BURNED_IN_TEXT_CENTERS: tuple[int, ...] = (2, 3)
BURNED_IN_TEXT_STATEMENT = (
    "The dataset authors and readers of the release report side markers ('L'/'R'), rulers and overlaid text on "
    "many radiographs, and centres 2 and 3 are teaching-collection images gathered from the web. These overlays "
    "are not counted here (no validated detector); Grad-CAM has been seen sitting on an 'R' marker."
)
VIEWS: tuple[str, ...] = ("frontal", "lateral", "oblique", "unknown")
_DERIVED_COLUMNS = ("label", "label_idx", "view", "case_id", "sheet_row", "path")  # added by btxrd, not the sheet
_RASTER_LONG_SIDE = 2048   # lesion polygons are rasterised (union, not sum of areas) at most this long, px


@dataclass(frozen=True)
class AuditResult:
    """What ``audit_dataset`` found: ``metrics`` (JSON-able numbers) and the per-item ``tables`` behind it.

    tables: ``index`` (prepared rows), ``annotations`` (one row per image), ``duplicate_pairs`` (pairs with
    both sides' class/centre/group) and ``duplicate_groups`` (connected pairs, review order).
    """

    metrics: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    images_dir: Path
    class_names: tuple[str, ...]
    datasheet: dict[str, Any] | None = None  # datasheet.build_datasheet of the metadata sheet


def audit_dataset(
    raw_dir: str | os.PathLike, prepared_dir: str | os.PathLike, config: AuditConfig
) -> AuditResult:
    """Audit composition, sizes, views, annotations, missing values, duplicates and leakage routes.

    ``config``: the ``audit`` params section (``montage_groups``: duplicate groups shown in the montage).
    """
    from assurexray.data import annotations, btxrd  # lazy: reading the release pulls in openpyxl

    raw_dir, prepared_dir = Path(raw_dir), Path(prepared_dir)
    class_names = _class_names(prepared_dir / "meta.json")
    index = _read_index(prepared_dir / "index.csv", class_names)
    pairs = _read_pairs(prepared_dir / "duplicate_pairs.csv", index)
    sheet_path = btxrd.find_metadata(raw_dir)
    table = btxrd.read_metadata(sheet_path, class_names=class_names)
    release_root = Path(sheet_path).parent
    annotations, orphans = _annotation_table(release_root / "Annotations", index, annotations.read_labelme)
    pair_table, group_table = _duplicate_tables(index, pairs)

    metrics: dict[str, Any] = {
        "n_images": len(index),
        "n_metadata_rows": len(table),
        "n_metadata_rows_not_prepared": int((~table["image_id"].isin(index["image_id"])).sum()),
        "n_prepared_rows_without_metadata": int((~index["image_id"].isin(table["image_id"])).sum()),
    }
    metrics.update(_composition(index, class_names))
    metrics.update(_acquisition(index))
    metrics.update(_views(index, class_names))
    metrics["annotations"] = _annotation_metrics(annotations, orphans)
    metrics.update(_missing_values(table))
    metrics["duplicates"] = _duplicate_metrics(pair_table, group_table, config.montage_groups)
    metrics["leakage"] = _leakage(index, table, class_names)
    metrics["case_source"] = _case_source(prepared_dir / "meta.json")
    metrics["grouping"] = grouping_summary(index)
    metrics["grouping_statement"] = grouping_statement({"grouping": metrics["grouping"]})
    tables = {"index": index, "annotations": annotations,
              "duplicate_pairs": pair_table, "duplicate_groups": group_table}
    logger.info("audited %d images: %d duplicate pairs in %d groups",
                len(index), len(pair_table), len(group_table))
    sheet = build_datasheet(table, source=str(sheet_path.name), case_source=metrics["case_source"])
    return AuditResult(metrics, tables, release_root / "images", class_names, datasheet=sheet)


# ------------------------------------------------------------------------------------------------ inputs


def _class_names(meta_path: Path) -> tuple[str, ...]:
    if not meta_path.is_file():
        return CLASS_NAMES
    names = json.loads(meta_path.read_text(encoding="utf-8")).get("class_names", list(CLASS_NAMES))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{meta_path}: 'class_names' must be a list of strings, got {names!r}. "
                         "Re-run the prepare stage.")
    return tuple(names)


def _read_index(path: Path, class_names: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prepared index not found; run the prepare stage first.")
    index = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; columns found: {list(index.columns)}. "
                         "Re-run the prepare stage.")
    for column in ("center", "has_mask", "orig_width", "orig_height"):
        values = pd.to_numeric(index[column], errors="coerce")
        bad = values.isna().to_numpy() | (values.fillna(0) % 1 != 0).to_numpy()
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path} row {i + 2}: {column!r} must be an integer, got "
                             f"{index[column].iloc[i]!r}. Re-run the prepare stage.")
        index[column] = values.astype(np.int64)
    bad = ~index["label"].isin(class_names).to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path} row {i + 2}: label {index['label'].iloc[i]!r} is not one of "
                         f"{list(class_names)}. Re-run the prepare stage with the same base.class_names.")
    dup = index["image_id"].duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ValueError(f"{path} row {i + 2}: image_id {index['image_id'].iloc[i]!r} appears twice; "
                         "the index has one row per image. Re-run the prepare stage.")
    return index


def _read_pairs(path: Path, index: pd.DataFrame) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: duplicate pairs not found; run the prepare stage first.")
    pairs = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; columns found: {list(pairs.columns)}. "
                         "Re-run the prepare stage.")
    known = set(index["image_id"])
    for i, row in enumerate(pairs.itertuples(index=False)):
        for image_id in (row.image_id_a, row.image_id_b):
            if image_id not in known:
                raise ValueError(f"{path} row {i + 2}: {image_id!r} is not in index.csv. "
                                 "Re-run the prepare stage so both files agree.")
        if row.kind not in ("exact", "near"):
            raise ValueError(f"{path} row {i + 2}: kind must be 'exact' or 'near', got {row.kind!r}.")
        if not row.distance.isdigit():
            raise ValueError(f"{path} row {i + 2}: distance must be a non-negative integer (Hamming "
                             f"bits), got {row.distance!r}.")
    return pairs.assign(distance=pairs["distance"].astype(np.int64))


def _annotation_table(
    ann_dir: Path, index: pd.DataFrame, read_labelme: Callable[..., Any]
) -> tuple[pd.DataFrame, list[str]]:
    """One row per prepared image (annotated, polygons, boxes, lesion area %) and the orphan file names."""
    files = {p.stem.lower(): p for p in sorted(ann_dir.glob("*.json"))} if ann_dir.is_dir() else {}
    stems = [Path(i).stem.lower() for i in index["image_id"]]
    rows = []
    for stem, row in tqdm(zip(stems, index.itertuples(index=False)), total=len(index),
                          desc="audit annotations", disable=len(index) < 200):
        path = files.get(stem)
        if path is None:
            rows.append((row.image_id, row.label, row.has_mask, 0, 0, 0, np.nan))
            continue
        ann = read_labelme(path, image_size=(row.orig_width, row.orig_height))
        area = _lesion_area_pct(ann.polygons, row.orig_width, row.orig_height) if ann.polygons else np.nan
        rows.append((row.image_id, row.label, row.has_mask, 1, len(ann.polygons), len(ann.boxes), area))
    table = pd.DataFrame(rows, columns=["image_id", "label", "has_mask", "annotated", "n_polygons",
                                        "n_boxes", "lesion_area_pct"])
    known = set(stems)
    orphans = sorted(p.name for stem, p in files.items() if stem not in known)
    return table, orphans


def _lesion_area_pct(polygons: Sequence[np.ndarray], width: int, height: int) -> float:
    from assurexray.data.imaging import rasterize_polygons

    scale = min(1.0, _RASTER_LONG_SIDE / max(width, height))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    mask = rasterize_polygons([np.asarray(p, dtype=np.float64) * scale for p in polygons], w, h)
    return 100.0 * float(mask.mean())


def _duplicate_tables(index: pd.DataFrame, pairs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairs with both sides' attributes; groups = connected components of pairs, cross-class first."""
    info = index.set_index("image_id")[["label", "center", "group"]]
    a = info.loc[pairs["image_id_a"]].reset_index(drop=True).add_suffix("_a")
    b = info.loc[pairs["image_id_b"]].reset_index(drop=True).add_suffix("_b")
    pair_table = pd.concat([pairs.reset_index(drop=True), a, b], axis=1)
    pair_table["cross_class"] = pair_table["label_a"] != pair_table["label_b"]
    pair_table["cross_center"] = pair_table["center_a"] != pair_table["center_b"]
    pair_table["same_split_group"] = pair_table["group_a"] == pair_table["group_b"]

    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for x, y in zip(pair_table["image_id_a"], pair_table["image_id_b"]):
        rx, ry = root(x), root(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    members: dict[str, list[str]] = {}
    for image_id in sorted(set(pair_table["image_id_a"]) | set(pair_table["image_id_b"])):
        members.setdefault(root(image_id), []).append(image_id)
    rows = []
    for ids in members.values():
        inside = pair_table[pair_table["image_id_a"].isin(ids)]
        labels, centers = info.loc[ids, "label"].tolist(), info.loc[ids, "center"].tolist()
        rows.append({
            "images": "; ".join(ids), "labels": "; ".join(labels),
            "centers": "; ".join(str(c) for c in centers), "n_images": len(ids),
            "min_distance": int(inside["distance"].min()), "max_distance": int(inside["distance"].max()),
            "kinds": "; ".join(sorted(set(inside["kind"]))),
            "cross_class": len(set(labels)) > 1, "cross_center": len(set(centers)) > 1,
            "split_groups": "; ".join(sorted(set(info.loc[ids, "group"]))),
        })
    columns = ["images", "labels", "centers", "n_images", "min_distance", "max_distance", "kinds",
               "cross_class", "cross_center", "split_groups"]
    groups = pd.DataFrame(rows, columns=columns)
    if len(groups):
        groups = groups.sort_values(["cross_class", "cross_center", "n_images", "images"],
                                    ascending=[False, False, False, True], kind="stable")
    return pair_table, groups.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- metrics


def _composition(index: pd.DataFrame, class_names: Sequence[str]) -> dict[str, Any]:
    counts = index["label"].value_counts()
    by_center = {}
    for center, rows in index.groupby("center", sort=True):
        c = rows["label"].value_counts()
        by_center[str(center)] = {**{n: int(c.get(n, 0)) for n in class_names}, "total": len(rows)}
    return {
        "n_centers": len(by_center),
        "class_counts": {n: int(counts.get(n, 0)) for n in class_names},
        "class_share_pct": {n: _pct(counts.get(n, 0), len(index)) for n in class_names},
        "class_by_center": by_center,
    }


def _acquisition(index: pd.DataFrame) -> dict[str, Any]:
    by_center = dict(tuple(index.groupby("center", sort=True)))
    return {
        "image_size": {"all": _size_stats(index),
                       "by_center": {str(c): _size_stats(r) for c, r in by_center.items()}},
        "modes": _counts(index["orig_mode"]),
        "modes_by_center": {str(c): _counts(r["orig_mode"]) for c, r in by_center.items()},
    }


def _views(index: pd.DataFrame, class_names: Sequence[str]) -> dict[str, Any]:
    views = list(VIEWS) + sorted(set(index["view"]) - set(VIEWS))
    with_case = index[index["case_id"].str.strip() != ""]
    per_case = with_case.groupby("case_id")
    known = with_case[with_case["view"] != "unknown"].groupby("case_id")["view"].nunique()
    group_sizes = index["group"].value_counts()
    return {
        "views": {v: int((index["view"] == v).sum()) for v in views},
        "views_by_class": {n: {v: int(((index["label"] == n) & (index["view"] == v)).sum()) for v in views}
                           for n in class_names},
        "cases": {"n_images_with_case_id": len(with_case), "n_cases": int(per_case.ngroups),
                  "n_cases_multi_image": int((per_case.size() > 1).sum()),
                  "n_cases_multi_view": int((known > 1).sum())},
        "groups": {"n_groups": len(group_sizes), "n_multi_image_groups": int((group_sizes > 1).sum()),
                   "largest_group": int(group_sizes.max()) if len(group_sizes) else 0},
    }


def _annotation_metrics(ann: pd.DataFrame, orphans: list[str]) -> dict[str, Any]:
    tumour = ann["label"] != "Normal"
    annotated = ann[ann["annotated"] == 1]
    n_tumour, n_tumour_ann = int(tumour.sum()), int((tumour & (ann["annotated"] == 1)).sum())
    return {
        "n_files": len(annotated) + len(orphans),
        "n_tumour_images": n_tumour,
        "tumour_with_annotation": n_tumour_ann,
        "tumour_without_annotation": n_tumour - n_tumour_ann,
        "tumour_annotated_pct": _pct(n_tumour_ann, n_tumour),
        "normal_with_annotation": int((~tumour & (ann["annotated"] == 1)).sum()),
        "orphan_files": len(orphans),
        "has_mask_mismatch": int((ann["has_mask"] != (ann["n_polygons"] > 0).astype(int)).sum()),
        "polygons_per_image": _stats(annotated["n_polygons"]),
        "boxes_per_image": _stats(annotated["n_boxes"]),
        "lesion_area_pct": _stats(annotated["lesion_area_pct"].dropna()),
    }


def _missing_values(table: pd.DataFrame) -> dict[str, Any]:
    columns = [c for c in table.columns if c not in _DERIVED_COLUMNS]
    blank = table[columns].apply(lambda col: col.isna() | col.astype(str).str.strip().eq(""))
    counts = {str(c): int(blank[c].sum()) for c in columns}
    return {"missing_values": counts, "missing_values_total": sum(counts.values()),
            "n_columns_checked": len(columns), "n_columns_with_missing": sum(1 for n in counts.values() if n)}


def _duplicate_metrics(pairs: pd.DataFrame, groups: pd.DataFrame, montage_groups: int) -> dict[str, Any]:
    return {
        "exact_pairs": int((pairs["kind"] == "exact").sum()),
        "near_pairs": int((pairs["kind"] == "near").sum()),
        "groups": len(groups),
        "images_in_groups": int(groups["n_images"].sum()) if len(groups) else 0,
        "cross_class_pairs": int(pairs["cross_class"].sum()),
        "cross_center_pairs": int(pairs["cross_center"].sum()),
        "cross_class_groups": int(groups["cross_class"].sum()) if len(groups) else 0,
        "pairs_in_one_split_group": int(pairs["same_split_group"].sum()),
        "pairs_across_split_groups": int((~pairs["same_split_group"]).sum()),
        "distance_counts": {str(d): int(n) for d, n in pairs["distance"].value_counts().sort_index().items()},
        "group_size_counts": ({str(s): int(n) for s, n in groups["n_images"].value_counts().sort_index().items()}
                              if len(groups) else {}),
        "groups_shown": min(montage_groups, len(groups)),
    }


def _leakage(index: pd.DataFrame, table: pd.DataFrame, class_names: Sequence[str]) -> dict[str, Any]:
    numbers = index["image_id"].map(_id_number)
    has_number = numbers.notna()
    ids = index[has_number].assign(number=numbers[has_number].astype(np.int64)).sort_values("number")
    ranges = {
        str(c): {n: {"first": int(r["number"].min()), "last": int(r["number"].max()), "n": len(r)}
                 for n in class_names if len(r := rows[rows["label"] == n])}
        for c, rows in ids.groupby("center", sort=True)
    }
    flags = index[["image_id", "label"]].merge(table.drop(columns=["label"]), on="image_id", how="inner")
    normal = flags["label"] == "Normal"
    out: dict[str, Any] = {
        "id_ranges": ranges,
        "ids_without_number": int((~has_number).sum()),
        "id_1nn_class_accuracy_pct": _nn_accuracy(ids["number"].to_numpy(), ids["label"].to_numpy()),
        "id_1nn_center_accuracy_pct": _nn_accuracy(ids["number"].to_numpy(), ids["center"].to_numpy()),
        "majority_class_pct": _pct(index["label"].value_counts().max(), len(index)),
        "majority_center_pct": _pct(index["center"].value_counts().max(), len(index)),
    }
    for family, columns in (("site", SITE_COLUMNS), ("subtype", SUBTYPE_COLUMNS)):
        present = [c for c in columns if c in flags.columns]
        any_flag = flags[present].apply(pd.to_numeric, errors="coerce").eq(1).any(axis=1)
        out[f"n_{family}_columns"] = len(present)
        n_normal, n_tumour = (int(normal.sum()), int((~normal).sum())) if present else (0, 0)
        out[f"normal_rows_with_{family}_flag_pct"] = _pct(int((any_flag & normal).sum()), n_normal)
        out[f"tumour_rows_with_{family}_flag_pct"] = _pct(int((any_flag & ~normal).sum()), n_tumour)
    out["grayscale_mode_pct_by_center"] = {
        str(c): _pct(int((r["orig_mode"] == "L").sum()), len(r)) for c, r in index.groupby("center", sort=True)}
    out["burned_in_text"] = {"measured": False, "statement": BURNED_IN_TEXT_STATEMENT,
                             "centers_of_concern": [c for c in BURNED_IN_TEXT_CENTERS
                                                    if (index["center"] == c).any()]}
    return out


def _case_source(meta_path: Path) -> str:
    """Where prepare took the case ids from (cache meta.json ``case_source``), or "" when none."""
    return str(json.loads(meta_path.read_text(encoding="utf-8")).get("case_source", "")) if meta_path.is_file() else ""


def _id_number(image_id: str) -> float:
    """The last digit run of the file stem (IMG000123.jpeg -> 123); NaN when there is none."""
    digits = re.findall(r"\d+", Path(image_id).stem)
    return float(int(digits[-1])) if digits else np.nan


def _nn_accuracy(numbers: np.ndarray, labels: np.ndarray) -> float | None:
    """Leave-one-out 1-nearest-neighbour accuracy on the id number alone (sorted ``numbers``)."""
    if len(numbers) < 2:
        return None
    gap_prev = np.r_[np.inf, np.diff(numbers)]
    gap_next = np.r_[np.diff(numbers), np.inf]
    neighbour = np.where(gap_prev <= gap_next, np.arange(len(numbers)) - 1, np.arange(len(numbers)) + 1)
    return _pct(int((labels[neighbour] == labels).sum()), len(numbers))


def _size_stats(rows: pd.DataFrame) -> dict[str, Any]:
    out = {}
    for axis, column in (("width", "orig_width"), ("height", "orig_height")):
        out.update({f"{axis}_{k}": v for k, v in _stats(rows[column]).items() if k != "mean"})
    return out


def _stats(values: pd.Series) -> dict[str, Any]:
    if not len(values):
        return {"min": None, "median": None, "mean": None, "max": None}
    return {"min": _num(values.min()), "median": _num(values.median()),
            "mean": _num(values.mean()), "max": _num(values.max())}


def _num(x: Any) -> int | float:
    x = float(x)
    return int(x) if x.is_integer() else round(x, 2)


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * float(part) / whole, 1) if whole else None


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}
