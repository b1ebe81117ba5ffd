"""Data-quality and leakage audit of a BTXRD-layout release and its prepared cache.

Every number the audit reports is computed here into one metrics dict; the markdown report is rendered from
that dict (plus the image ids of the duplicate groups), so the report can never disagree with
``metrics/audit.json``. NOT FOR CLINICAL USE.
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

from assurexray import DISCLAIMER
from assurexray.atomic import atomic_dir, write_json, write_text
from assurexray.datasheet import build_datasheet, render_datasheet
from assurexray.schema import CLASS_NAMES, SITE_COLUMNS, SUBTYPE_COLUMNS
from assurexray.splits import grouping_statement, grouping_summary

__all__ = [
    "AuditResult", "audit_dataset", "write_audit", "render_report",
    "INDEX_COLUMNS", "PAIR_COLUMNS", "BURNED_IN_TEXT_CENTERS", "FIGURES",
]

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
#: Figure file names inside the figures directory.
FIGURES: dict[str, str] = {
    "composition": "class_by_center.png", "sizes": "image_sizes.png", "views": "views.png",
    "lesions": "lesion_size.png", "duplicates": "duplicate_review.png",
}
VIEWS: tuple[str, ...] = ("frontal", "lateral", "oblique", "unknown")
_DERIVED_COLUMNS = ("label", "label_idx", "view", "case_id", "sheet_row", "path")  # added by btxrd, not the sheet
_MONTAGE_MAX_MEMBERS = 4   # radiographs per montage row; larger groups say how many are hidden
_RASTER_LONG_SIDE = 2048   # lesion polygons are rasterised (union, not sum of areas) at most this long, px
_THUMB_LONG_SIDE = 384     # montage thumbnails, px
_CLASS_COLORS = ("#4C72B0", "#DD8452", "#C44E52")


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
    raw_dir: str | os.PathLike, prepared_dir: str | os.PathLike, *, montage_groups: int = 12
) -> AuditResult:
    """Audit composition, sizes, views, annotations, missing values, duplicates and leakage routes."""
    if isinstance(montage_groups, bool) or not isinstance(montage_groups, int) or montage_groups < 0:
        raise ValueError(
            f"audit.montage_groups must be a non-negative integer, got {montage_groups!r}; "
            "set it in params.yaml (e.g. 12)."
        )
    from assurexray import btxrd  # lazy: reading the release pulls in openpyxl

    raw_dir, prepared_dir = Path(raw_dir), Path(prepared_dir)
    class_names = _class_names(prepared_dir / "meta.json")
    index = _read_index(prepared_dir / "index.csv", class_names)
    pairs = _read_pairs(prepared_dir / "duplicate_pairs.csv", index)
    sheet_path = btxrd.find_metadata(raw_dir)
    table = btxrd.read_metadata(sheet_path, class_names=class_names)
    release_root = Path(sheet_path).parent
    annotations, orphans = _annotation_table(release_root / "Annotations", index, btxrd.read_labelme)
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
    metrics["duplicates"] = _duplicate_metrics(pair_table, group_table, montage_groups)
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


def write_audit(
    result: AuditResult,
    *,
    report_path: str | os.PathLike,
    figures_dir: str | os.PathLike,
    metrics_path: str | os.PathLike,
    datasheet_path: str | os.PathLike | None = None,
) -> None:
    """Write the figures directory (as a whole), the metrics JSON, the report that links both, the datasheet."""
    report_path, figures_dir = Path(report_path), Path(figures_dir)
    if datasheet_path is not None and result.datasheet is not None:
        write_text(datasheet_path, render_datasheet(result.datasheet))
    with atomic_dir(figures_dir) as tmp:
        _draw_figures(result, tmp)
        result.tables["duplicate_groups"].to_csv(tmp / "duplicate_groups.csv", index=False)
    write_json(metrics_path, result.metrics)
    rel = Path(os.path.relpath(figures_dir.resolve(), report_path.resolve().parent)).as_posix()
    write_text(report_path, render_report(result, figures_rel=rel))


def render_report(result: AuditResult, *, figures_rel: str = "audit") -> str:
    """Markdown audit report; every number in it is read from ``result.metrics``."""
    m, names = result.metrics, result.class_names
    centers = list(m["class_by_center"])
    fig = {key: f"{figures_rel}/{name}" for key, name in FIGURES.items()}
    ann, dup, leak = m["annotations"], m["duplicates"], m["leakage"]
    out = [
        "# AssureXRay data audit", "", f"> **{DISCLAIMER}**", "",
        f"{m['n_images']} prepared radiographs from {m['n_centers']} centres; the metadata sheet has "
        f"{m['n_metadata_rows']} rows ({m['n_metadata_rows_not_prepared']} not in the prepared index, "
        f"{m['n_prepared_rows_without_metadata']} prepared rows without a sheet row). "
        "Every number below is read from the audit metrics JSON written with this report.", "",
        "## Dataset composition", "",
        _table(["centre", *names, "total"],
               [[c, *[m["class_by_center"][c][n] for n in names], m["class_by_center"][c]["total"]]
                for c in centers]
               + [["all", *[m["class_counts"][n] for n in names], m["n_images"]]]),
        "", "Class shares: " + ", ".join(f"{n} {_f(m['class_share_pct'][n])}%" for n in names) + ".", "",
        f"![class by centre]({fig['composition']})", "",
        "## Image sizes and modes", "",
        _table(["centre", "width min", "width median", "width max", "height min", "height median",
                "height max", "modes"],
               [[c, *_size_row(m["image_size"]["by_center"][c]), _modes(m["modes_by_center"][c])]
                for c in centers]
               + [["all", *_size_row(m["image_size"]["all"]), _modes(m["modes"])]]),
        "", f"![image sizes by centre]({fig['sizes']})", "",
        "## Views", "",
        _table(["view", *names, "total"],
               [[v, *[m["views_by_class"][n][v] for n in names], m["views"][v]] for v in m["views"]]),
        "", f"Case identifiers ({m['case_source'] or 'none given'}): {m['cases']['n_images_with_case_id']} "
        f"images carry one; {m['cases']['n_cases']} cases, {m['cases']['n_cases_multi_image']} with several images "
        f"and {m['cases']['n_cases_multi_view']} with several views. Split groups: {m['groups']['n_groups']} "
        f"groups, {m['groups']['n_multi_image_groups']} with several images (largest "
        f"{m['groups']['largest_group']}; the five largest: "
        f"{', '.join(map(str, m['grouping']['largest_groups']))}).", "",
        m["grouping_statement"], "",
        f"![views]({fig['views']})", "",
        "## Annotation coverage", "",
        _table(["measure", "value"], [
            ["tumour images", ann["n_tumour_images"]],
            ["tumour images with an annotation", ann["tumour_with_annotation"]],
            ["tumour images without an annotation", ann["tumour_without_annotation"]],
            ["tumour images annotated (%)", ann["tumour_annotated_pct"]],
            ["Normal images with an annotation", ann["normal_with_annotation"]],
            ["annotation files", ann["n_files"]],
            ["annotation files matching no prepared image", ann["orphan_files"]],
            ["has_mask disagreeing with the annotation", ann["has_mask_mismatch"]],
        ]), "",
        _table(["per annotated image", "min", "median", "mean", "max"], [
            [what, *ann[key].values()] for what, key in (
                ("polygons (lesions)", "polygons_per_image"), ("boxes", "boxes_per_image"),
                ("lesion area, % of the image (union of polygons)", "lesion_area_pct"))
        ]),
        "", f"![lesion sizes]({fig['lesions']})", "",
        "## Missing values", "",
        f"{m['n_columns_with_missing']} of {m['n_columns_checked']} sheet columns have missing values "
        f"({m['missing_values_total']} missing cells in all).", "",
    ]
    missing = [[col, n] for col, n in m["missing_values"].items() if n]
    if missing:
        out += [_table(["column", "missing"], missing), ""]
    out += _duplicates_section(result, fig["duplicates"])
    out += _leakage_section(m, leak, dup, names, centers)
    return "\n".join(out) + "\n"


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
    from assurexray.imaging import rasterize_polygons

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


# ------------------------------------------------------------------------------------------------ report


def _f(value: Any) -> str:
    return "n/a" if value is None else str(value)


def _table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(_f(v) for v in row) + " |" for row in rows])


def _size_row(stats: dict[str, Any]) -> list[Any]:
    return [stats[f"{a}_{k}"] for a in ("width", "height") for k in ("min", "median", "max")]


def _modes(modes: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in modes.items())


def _duplicates_section(result: AuditResult, montage: str) -> list[str]:
    dup = result.metrics["duplicates"]
    out = [
        "## Duplicates", "",
        _table(["measure", "value"], [
            ["exact duplicate pairs", dup["exact_pairs"]], ["near duplicate pairs", dup["near_pairs"]],
            ["duplicate groups", dup["groups"]], ["images in duplicate groups", dup["images_in_groups"]],
            ["cross-class pairs", dup["cross_class_pairs"]], ["cross-class groups", dup["cross_class_groups"]],
            ["cross-centre pairs", dup["cross_center_pairs"]],
            ["pairs inside one split group", dup["pairs_in_one_split_group"]],
            ["pairs across split groups", dup["pairs_across_split_groups"]],
        ]), "",
        "Pairs by perceptual-hash distance (bits): "
        + (", ".join(f"{d}: {n}" for d, n in dup["distance_counts"].items()) or "none") + ".", "",
    ]
    if dup["cross_class_pairs"]:
        out += [f"**Cross-class duplicates exist (pairs: {dup['cross_class_pairs']}, groups: "
                f"{dup['cross_class_groups']}): the same radiograph appears under different labels.** "
                "They are kept with their released labels and grouped, so that no group straddles "
                "train/validation/test; they are listed first in the table and the montage for review.", ""]
    else:
        out += ["No duplicate pair crosses classes. Duplicates are grouped so that no group straddles "
                "train/validation/test.", ""]
    if dup["pairs_across_split_groups"]:
        out += [f"**Warning: {dup['pairs_across_split_groups']} duplicate pairs are in different split groups "
                "and could straddle train/test; re-run prepare.**", ""]
    shown = result.tables["duplicate_groups"].head(dup["groups_shown"])
    if len(shown):
        out += [f"The first {dup['groups_shown']} of {dup['groups']} groups, in review order "
                "(all groups: `duplicate_groups.csv` beside the figures):", "",
                _table(["images", "classes", "centres", "distance min", "distance max", "cross-class"],
                       [[r.images, r.labels, r.centers, r.min_distance, r.max_distance,
                         "**yes**" if r.cross_class else "no"] for r in shown.itertuples()]), ""]
    return out + [f"![duplicate review montage]({montage})", ""]


def _leakage_section(m: dict, leak: dict, dup: dict, names: Sequence[str], centers: list[str]) -> list[str]:
    rows = [[c, n, r["first"], r["last"], r["n"]] for c in centers
            for n, r in leak["id_ranges"].get(c, {}).items()]
    gray = ", ".join(f"centre {c}: {_f(p)}%" for c, p in leak["grayscale_mode_pct_by_center"].items())
    medians = ", ".join(f"centre {c}: {s['width_median']} x {s['height_median']} px"
                        for c, s in m["image_size"]["by_center"].items())
    return [
        "## Leakage and shortcut risks", "",
        "### Image-id ranges encode centre and class", "",
        _table(["centre", "class", "first id number", "last id number", "images"], rows), "",
        f"A leave-one-out nearest-neighbour rule on the id number alone predicts the class of "
        f"{_f(leak['id_1nn_class_accuracy_pct'])}% of images (majority class: "
        f"{_f(leak['majority_class_pct'])}%) and the centre of {_f(leak['id_1nn_center_accuracy_pct'])}% "
        f"(majority centre: {_f(leak['majority_center_pct'])}%). Ids without a number: "
        f"{leak['ids_without_number']}. **Pipeline:** file names and ids are never model inputs; splits "
        "are drawn by group, not by id order.", "",
        "### Site and subtype flags are zero for every Normal row", "",
        f"Normal rows with any of the {leak['n_site_columns']} site flags set: "
        f"{_f(leak['normal_rows_with_site_flag_pct'])}% (tumour rows: "
        f"{_f(leak['tumour_rows_with_site_flag_pct'])}%); with any of the {leak['n_subtype_columns']} "
        f"subtype flags: {_f(leak['normal_rows_with_subtype_flag_pct'])}% (tumour rows: "
        f"{_f(leak['tumour_rows_with_subtype_flag_pct'])}%). Any such flag identifies a tumour. "
        "**Pipeline:** sheet columns are never features; the model sees pixels only.", "",
        "### Centre-specific acquisition", "",
        f"Median size per centre: {medians}. Share of single-channel grayscale files (mode L) per centre: {gray}. "
        "Size, bit depth and colour mode tell centres apart, and centres differ in class mix (see "
        "composition). **Pipeline:** every image is decoded to grayscale and letterboxed to one size; "
        "a centre-holdout split measures how much performance depends on the centre.", "",
        "### Side markers, rulers and overlaid text (not measured)", "",
        f"{leak['burned_in_text']['statement']} **Pipeline:** centre-holdout evaluation and Grad-CAM "
        "localisation against the lesion masks expose a model that reads markers instead of bone.", "",
        "### Duplicates and multiple views", "",
        f"{dup['exact_pairs']} exact and {dup['near_pairs']} near duplicate pairs "
        f"({dup['cross_center_pairs']} across centres); cases with several views: "
        f"{m['cases']['n_cases_multi_view']}. {m['grouping_statement']} Each split keeps a group on one side; "
        "what each split actually guarantees is in its `metrics/<variant>/split.json` (`grouping`).", "",
        "### What the pipeline does", "",
        "- Ids, file names, sheet flags, centre and size are never used as features.",
        "- Splits are group-aware: " + ("duplicates and views of a case stay together."
                                        if m["grouping"]["basis"] == "cases+duplicates" else
                                        "duplicates stay together; without case information, views of one case "
                                        "may straddle partitions."),
        "- A centre-holdout evaluation reports the gap to the stratified split.",
        "",
    ]


# ----------------------------------------------------------------------------------------------- figures


def _draw_figures(result: AuditResult, out_dir: Path) -> None:
    from matplotlib.figure import Figure

    _save(_montage(result), out_dir / FIGURES["duplicates"])  # first: needs the raw files, fails early
    m, names, index = result.metrics, result.class_names, result.tables["index"]
    centers = list(m["class_by_center"])
    colors = {n: _CLASS_COLORS[i % len(_CLASS_COLORS)] for i, n in enumerate(names)}

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    _grouped_bars(ax, [f"centre {c}" for c in centers],
                  {n: [m["class_by_center"][c][n] for c in centers] for n in names}, colors)
    ax.set(title="Images per class and centre", ylabel="images")
    _save(fig, out_dir / FIGURES["composition"])

    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    for c, rows in index.groupby("center", sort=True):
        ax.scatter(rows["orig_width"], rows["orig_height"], s=10, alpha=0.6, label=f"centre {c}")
    ax.set(title="Original image size by centre", xlabel="width (px)", ylabel="height (px)")
    ax.legend(fontsize=8)
    _save(fig, out_dir / FIGURES["sizes"])

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    views = list(m["views"])
    _grouped_bars(ax, views, {n: [m["views_by_class"][n][v] for v in views] for n in names}, colors)
    ax.set(title="Views per class", ylabel="images")
    _save(fig, out_dir / FIGURES["views"])

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ann = result.tables["annotations"].dropna(subset=["lesion_area_pct"])
    for n in names:
        values = ann.loc[ann["label"] == n, "lesion_area_pct"]
        if len(values):
            ax.hist(values, bins=20, range=(0, max(1.0, ann["lesion_area_pct"].max())), alpha=0.6,
                    color=colors[n], label=n)
    if len(ann):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no annotated lesions", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="Lesion area (union of polygons)", xlabel="% of image area", ylabel="images")
    _save(fig, out_dir / FIGURES["lesions"])


def _grouped_bars(ax: Any, ticks: list[str], series: dict[str, list[int]], colors: dict[str, str]) -> None:
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        x = np.arange(len(ticks)) + (i - (len(series) - 1) / 2) * width
        bars = ax.bar(x, values, width, label=name, color=colors[name])
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(np.arange(len(ticks)), ticks)
    ax.legend(fontsize=8)


def _montage(result: AuditResult) -> Any:
    from matplotlib.figure import Figure
    from PIL import Image

    from assurexray.imaging import decode_gray

    groups = result.tables["duplicate_groups"].head(result.metrics["duplicates"]["groups_shown"])
    if not len(groups):
        fig = Figure(figsize=(6, 2))
        fig.text(0.5, 0.5, "No exact or near duplicate groups to review.", ha="center", va="center")
        return fig
    info = result.tables["index"].set_index("image_id")
    closest = _closest_distance(result.tables["duplicate_pairs"])
    files = {p.stem.lower(): p for p in result.images_dir.iterdir()} if result.images_dir.is_dir() else {}
    cols = min(_MONTAGE_MAX_MEMBERS, int(groups["n_images"].max()))
    fig = Figure(figsize=(2.6 * cols, 3.2 * len(groups) + 0.5))
    axes = fig.subplots(len(groups), cols, squeeze=False)
    for r, group in enumerate(groups.itertuples()):
        ids = group.images.split("; ")
        for k, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(ids):
                ax.axis("off")
                continue
            path = files.get(Path(ids[k]).stem.lower())
            if path is None:
                raise FileNotFoundError(f"{result.images_dir}: no image file for {ids[k]!r} (duplicate "
                                        "review montage). Restore the raw release.")
            thumb = Image.fromarray(decode_gray(path))
            thumb.thumbnail((_THUMB_LONG_SIDE, _THUMB_LONG_SIDE))
            ax.imshow(np.asarray(thumb), cmap="gray", vmin=0, vmax=255)
            row = info.loc[ids[k]]
            ax.set_title(f"{ids[k]}\n{row['label']} | centre {row['center']} | d={closest[ids[k]]}", fontsize=7,
                         color="crimson" if group.cross_class else "black")
            if group.cross_class:
                for spine in ax.spines.values():
                    spine.set(color="crimson", linewidth=3)
        hidden = len(ids) - cols
        axes[r][0].set_ylabel(("CROSS-CLASS\n" if group.cross_class else "")
                              + (f"+{hidden} more" if hidden > 0 else ""), fontsize=8,
                              color="crimson" if group.cross_class else "black")
    fig.suptitle("Duplicate review: one group per row (d = pHash bits to the closest duplicate)", fontsize=9)
    return fig


def _closest_distance(pairs: pd.DataFrame) -> dict[str, int]:
    """Each image's smallest recorded pHash distance to any of its duplicates."""
    both = pd.concat([pairs[["image_id_a", "distance"]].set_axis(["image_id", "distance"], axis=1),
                      pairs[["image_id_b", "distance"]].set_axis(["image_id", "distance"], axis=1)])
    return {str(k): int(v) for k, v in both.groupby("image_id")["distance"].min().items()}


def _save(fig: Any, path: Path) -> None:
    """Footer disclaimer on the figure and in the PNG metadata, then save."""
    fig.text(0.5, 0.003, DISCLAIMER, ha="center", va="bottom", fontsize=6, color="crimson")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110, metadata={"Description": DISCLAIMER})
