"""The audit's documents and figures, rendered from its metrics (``assurexray.data.audit``) and nothing else.

``write_audit`` writes everything the audit stage outputs: the metrics JSON, the figures folder (as a whole),
the markdown report that links both and the datasheet. The report is a list of blocks of
``assurexray.core.rendering``; every number in it is read from ``AuditResult.metrics`` (the same dict as
``metrics/audit.json``), so the report can never disagree with the metrics. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from assurexray import DISCLAIMER
from assurexray.core.atomic import atomic_dir, write_json, write_text
from assurexray.data.audit import AuditResult
from assurexray.data.datasheet import render_datasheet
from assurexray.core.rendering import Alert, Block, Bullets, Heading, Image, Para, Table, fmt_pct, to_markdown

__all__ = ["FIGURES", "write_audit", "render_report"]

#: Figure file names inside the figures directory.
FIGURES: dict[str, str] = {
    "composition": "class_by_center.png", "sizes": "image_sizes.png", "views": "views.png",
    "lesions": "lesion_size.png", "duplicates": "duplicate_review.png",
}
_MONTAGE_MAX_MEMBERS = 4   # radiographs per montage row; larger groups say how many are hidden
_THUMB_LONG_SIDE = 384     # montage thumbnails, px
_CLASS_COLORS = ("#4C72B0", "#DD8452", "#C44E52")


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
    ann = m["annotations"]
    cases, groups = m["cases"], m["groups"]
    blocks: list[Block] = [
        Heading(1, "AssureXRay data audit"), Alert(DISCLAIMER),
        Para(f"{m['n_images']} prepared radiographs from {m['n_centers']} centres; the metadata sheet has "
             f"{m['n_metadata_rows']} rows ({m['n_metadata_rows_not_prepared']} not in the prepared index, "
             f"{m['n_prepared_rows_without_metadata']} prepared rows without a sheet row). "
             "Every number below is read from the audit metrics JSON written with this report."),
        Heading(2, "Dataset composition"),
        _table(["centre", *names, "total"],
               [[c, *[m["class_by_center"][c][n] for n in names], m["class_by_center"][c]["total"]]
                for c in centers]
               + [["all", *[m["class_counts"][n] for n in names], m["n_images"]]]),
        Para("Class shares: " + ", ".join(f"{n} {fmt_pct(m['class_share_pct'][n])}" for n in names) + "."),
        Image("class by centre", fig["composition"]),
        Heading(2, "Image sizes and modes"),
        _table(["centre", "width min", "width median", "width max", "height min", "height median",
                "height max", "modes"],
               [[c, *_size_row(m["image_size"]["by_center"][c]), _modes(m["modes_by_center"][c])]
                for c in centers]
               + [["all", *_size_row(m["image_size"]["all"]), _modes(m["modes"])]]),
        Image("image sizes by centre", fig["sizes"]),
        Heading(2, "Views"),
        _table(["view", *names, "total"],
               [[v, *[m["views_by_class"][n][v] for n in names], m["views"][v]] for v in m["views"]]),
        Para(f"Case identifiers ({m['case_source'] or 'none given'}): {cases['n_images_with_case_id']} images carry "
             f"one; {cases['n_cases']} cases, {cases['n_cases_multi_image']} with several images and "
             f"{cases['n_cases_multi_view']} with several views. Split groups: {groups['n_groups']} groups, "
             f"{groups['n_multi_image_groups']} with several images (largest {groups['largest_group']}; the five "
             f"largest: {', '.join(map(str, m['grouping']['largest_groups']))})."),
        Para(m["grouping_statement"]),
        Image("views", fig["views"]),
        Heading(2, "Annotation coverage"),
        _table(["measure", "value"], [
            ["tumour images", ann["n_tumour_images"]],
            ["tumour images with an annotation", ann["tumour_with_annotation"]],
            ["tumour images without an annotation", ann["tumour_without_annotation"]],
            ["tumour images annotated (%)", ann["tumour_annotated_pct"]],
            ["Normal images with an annotation", ann["normal_with_annotation"]],
            ["annotation files", ann["n_files"]],
            ["annotation files matching no prepared image", ann["orphan_files"]],
            ["has_mask disagreeing with the annotation", ann["has_mask_mismatch"]],
        ]),
        _table(["per annotated image", "min", "median", "mean", "max"], [
            [what, *ann[key].values()] for what, key in (
                ("polygons (lesions)", "polygons_per_image"), ("boxes", "boxes_per_image"),
                ("lesion area, % of the image (union of polygons)", "lesion_area_pct"))
        ]),
        Image("lesion sizes", fig["lesions"]),
        Heading(2, "Missing values"),
        Para(f"{m['n_columns_with_missing']} of {m['n_columns_checked']} sheet columns have missing values "
             f"({m['missing_values_total']} missing cells in all)."),
    ]
    missing = [[col, n] for col, n in m["missing_values"].items() if n]
    if missing:
        blocks.append(_table(["column", "missing"], missing))
    blocks += _duplicates_section(result, fig["duplicates"])
    blocks += _leakage_section(m, centers)
    # The report has always ended with a blank line; kept so reports/audit.md keeps its hash in dvc.lock.
    return to_markdown(blocks) + "\n"


# ------------------------------------------------------------------------------------------------ report


def _raw(value: Any) -> str:
    """An audit number as stored: the audit rounds where it computes (percentages 1 decimal, sizes 2)."""
    return "n/a" if value is None else str(value)


def _table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> Table:
    return Table(tuple(map(str, header)), tuple(tuple(_raw(v) for v in row) for row in rows))


def _size_row(stats: dict[str, Any]) -> list[Any]:
    return [stats[f"{a}_{k}"] for a in ("width", "height") for k in ("min", "median", "max")]


def _modes(modes: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in modes.items())


def _duplicates_section(result: AuditResult, montage: str) -> list[Block]:
    dup = result.metrics["duplicates"]
    blocks: list[Block] = [
        Heading(2, "Duplicates"),
        _table(["measure", "value"], [
            ["exact duplicate pairs", dup["exact_pairs"]], ["near duplicate pairs", dup["near_pairs"]],
            ["duplicate groups", dup["groups"]], ["images in duplicate groups", dup["images_in_groups"]],
            ["cross-class pairs", dup["cross_class_pairs"]], ["cross-class groups", dup["cross_class_groups"]],
            ["cross-centre pairs", dup["cross_center_pairs"]],
            ["pairs inside one split group", dup["pairs_in_one_split_group"]],
            ["pairs across split groups", dup["pairs_across_split_groups"]],
        ]),
        Para("Pairs by perceptual-hash distance (bits): "
             + (", ".join(f"{d}: {n}" for d, n in dup["distance_counts"].items()) or "none") + "."),
    ]
    if dup["cross_class_pairs"]:
        blocks.append(Para(
            f"**Cross-class duplicates exist (pairs: {dup['cross_class_pairs']}, groups: "
            f"{dup['cross_class_groups']}): the same radiograph appears under different labels.** "
            "They are kept with their released labels and grouped, so that no group straddles "
            "train/validation/test; they are listed first in the table and the montage for review."))
    else:
        blocks.append(Para("No duplicate pair crosses classes. Duplicates are grouped so that no group straddles "
                           "train/validation/test."))
    if dup["pairs_across_split_groups"]:
        blocks.append(Para(f"**Warning: {dup['pairs_across_split_groups']} duplicate pairs are in different split "
                           "groups and could straddle train/test; re-run prepare.**"))
    shown = result.tables["duplicate_groups"].head(dup["groups_shown"])
    if len(shown):
        blocks += [Para(f"The first {dup['groups_shown']} of {dup['groups']} groups, in review order "
                        "(all groups: `duplicate_groups.csv` beside the figures):"),
                   _table(["images", "classes", "centres", "distance min", "distance max", "cross-class"],
                          [[r.images, r.labels, r.centers, r.min_distance, r.max_distance,
                            "**yes**" if r.cross_class else "no"] for r in shown.itertuples()])]
    return blocks + [Image("duplicate review montage", montage)]


def _leakage_section(m: dict[str, Any], centers: list[str]) -> list[Block]:
    leak, dup = m["leakage"], m["duplicates"]
    rows = [[c, n, r["first"], r["last"], r["n"]] for c in centers
            for n, r in leak["id_ranges"].get(c, {}).items()]
    gray = ", ".join(f"centre {c}: {fmt_pct(p)}" for c, p in leak["grayscale_mode_pct_by_center"].items())
    medians = ", ".join(f"centre {c}: {s['width_median']} x {s['height_median']} px"
                        for c, s in m["image_size"]["by_center"].items())
    return [
        Heading(2, "Leakage and shortcut risks"),
        Heading(3, "Image-id ranges encode centre and class"),
        _table(["centre", "class", "first id number", "last id number", "images"], rows),
        Para(f"A leave-one-out nearest-neighbour rule on the id number alone predicts the class of "
             f"{fmt_pct(leak['id_1nn_class_accuracy_pct'])} of images (majority class: "
             f"{fmt_pct(leak['majority_class_pct'])}) and the centre of {fmt_pct(leak['id_1nn_center_accuracy_pct'])} "
             f"(majority centre: {fmt_pct(leak['majority_center_pct'])}). Ids without a number: "
             f"{leak['ids_without_number']}. **Pipeline:** file names and ids are never model inputs; splits "
             "are drawn by group, not by id order."),
        Heading(3, "Site and subtype flags are zero for every Normal row"),
        Para(f"Normal rows with any of the {leak['n_site_columns']} site flags set: "
             f"{fmt_pct(leak['normal_rows_with_site_flag_pct'])} (tumour rows: "
             f"{fmt_pct(leak['tumour_rows_with_site_flag_pct'])}); with any of the {leak['n_subtype_columns']} "
             f"subtype flags: {fmt_pct(leak['normal_rows_with_subtype_flag_pct'])} (tumour rows: "
             f"{fmt_pct(leak['tumour_rows_with_subtype_flag_pct'])}). Any such flag identifies a tumour. "
             "**Pipeline:** sheet columns are never features; the model sees pixels only."),
        Heading(3, "Centre-specific acquisition"),
        Para(f"Median size per centre: {medians}. Share of single-channel grayscale files (mode L) per centre: "
             f"{gray}. Size, bit depth and colour mode tell centres apart, and centres differ in class mix (see "
             "composition). **Pipeline:** every image is decoded to grayscale and letterboxed to one size; "
             "a centre-holdout split measures how much performance depends on the centre."),
        Heading(3, "Side markers, rulers and overlaid text (not measured)"),
        Para(f"{leak['burned_in_text']['statement']} **Pipeline:** centre-holdout evaluation and Grad-CAM "
             "localisation against the lesion masks expose a model that reads markers instead of bone."),
        Heading(3, "Duplicates and multiple views"),
        Para(f"{dup['exact_pairs']} exact and {dup['near_pairs']} near duplicate pairs "
             f"({dup['cross_center_pairs']} across centres); cases with several views: "
             f"{m['cases']['n_cases_multi_view']}. {m['grouping_statement']} Each split keeps a group on one side; "
             "what each split actually guarantees is in its `metrics/<variant>/split.json` (`grouping`)."),
        Heading(3, "What the pipeline does"),
        Bullets((
            "Ids, file names, sheet flags, centre and size are never used as features.",
            "Splits are group-aware: " + ("duplicates and views of a case stay together."
                                          if m["grouping"]["basis"] == "cases+duplicates" else
                                          "duplicates stay together; without case information, views of one case "
                                          "may straddle partitions."),
            "A centre-holdout evaluation reports the gap to the stratified split.",
        )),
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

    from assurexray.data.imaging import decode_gray

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
