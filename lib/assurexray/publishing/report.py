"""The proof-of-concept report (markdown + self-contained HTML) and the writer of all three report documents.

No number is typed by hand: every value shown is read from a metrics file or params.yaml
(``assurexray.publishing.report_data``) and passes through the formatters of ``assurexray.core.rendering``, so the documents
cannot drift from the results. Markdown and HTML are rendered from one list of blocks, so they never disagree;
the HTML embeds its figures as base64 data URIs and loads no external resource (it opens offline, as one file).
No timestamps: the same inputs give byte-identical documents. The model card is ``assurexray.publishing.model_card``; the
parts both documents show are ``assurexray.publishing.report_sections``. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from assurexray import DISCLAIMER
from assurexray.core.atomic import write_text
from assurexray.publishing.learning_curves import LOSS_FILES, loss_curve_png
from assurexray.publishing.model_card import MODEL_CARD_REFERENCE, render_model_card
from assurexray.core.rendering import (
    Alert,
    Block,
    Bullets,
    Chart,
    Figure,
    Heading,
    Para,
    Table,
    fmt,
    fmt_ci,
    fmt_diff,
    fmt_level,
    fmt_param,
    fmt_pct,
    to_html,
    to_markdown,
    unavailable,
)
from assurexray.publishing.report_data import (
    FIGURES,
    VARIANT_TITLES,
    VARIANTS,
    ReportData,
    ci_level,
    explain_name,
    lookup,
)
from assurexray.publishing.report_sections import (
    adaptation_section,
    HEADLINE_TITLES,
    calibration_table,
    caveats,
    center_table,
    data_licence,
    is_synthetic,
    op_cell,
    SENSITIVITY_NOTE,
    flat_params,
    gap_text,
    gap_verdict,
    headline_table,
    keys_text,
    lesion_localisation,
    loc_title,
    operating_point_table,
    partition_table,
    source_note,
    THRESHOLD_RULE_TEXT,
    threshold_notes,
    union_keys,
    versus,
    weights_text,
)
from assurexray.core.schema import DATASET_CITATION
from assurexray.learning.calibration import threshold_caveat
from assurexray.data.splits import grouping_statement

logger = logging.getLogger(__name__)

__all__ = ["REFERENCES", "render_report_markdown", "render_report_html", "write_reports"]

REPORT_TITLE = "AssureXRay proof-of-concept report"
GRADCAM_REFERENCE = "Selvaraju R. R. et al., \"Grad-CAM\", ICCV 2017, doi:10.1109/ICCV.2017.74"
SANITY_REFERENCE = "Adebayo J. et al., \"Sanity Checks for Saliency Maps\", NeurIPS 2018, arXiv:1810.03292"
REFERENCES: tuple[str, ...] = (MODEL_CARD_REFERENCE, GRADCAM_REFERENCE, SANITY_REFERENCE)
PER_CLASS_TITLES = {"auc": "AUC", "ap": "AP", "sensitivity": "Sensitivity", "specificity": "Specificity",
                    "ppv": "PPV", "npv": "NPV", "f1": "F1"}
#: Where a markdown reader finds a figure: the PNGs are DVC outputs, not in git; report.html embeds them.
FIGURE_NOTE = "tracked by DVC, not git: `dvc pull` or `dvc repro` fetches it; `report.html` embeds every figure"
#: Where a markdown reader finds a chart the report draws: its sources are in git, report.html embeds it.
CHART_NOTE = "(in git); `report.html` embeds it"


def write_reports(data: ReportData, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write model_card.md, report.md and report.html into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    texts = {
        "model_card.md": render_model_card(data),
        "report.md": render_report_markdown(data),
        "report.html": render_report_html(data),
    }
    paths = {name: write_text(out / name, text) for name, text in texts.items()}
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths


def render_report_markdown(data: ReportData) -> str:
    """The proof-of-concept report (markdown), committed to git: it names each figure but links to none.

    The PNGs are DVC outputs (absent from a git checkout until ``dvc pull``), so a link would break for every
    reader of the repository; ``report.html`` beside it embeds them.
    """
    return to_markdown(_report_blocks(data))


def render_report_html(data: ReportData) -> str:
    """The same report as one self-contained HTML page (inline CSS, figures as base64 data URIs)."""
    return to_html(_report_blocks(data), title=REPORT_TITLE)


# -------------------------------------------------------------------------------------------- sections


def _report_blocks(d: ReportData) -> list[Any]:
    blocks: list[Any] = [
        Heading(1, REPORT_TITLE), Alert(DISCLAIMER), source_note(d),
        Heading(2, "Summary"), Bullets(_summary(d)),
        Heading(2, "Methods"), *_methods(d),
        Heading(2, "Results"),
        Para(f"Test-set point estimates with {fmt_level(ci_level(d))} bootstrap intervals in brackets."),
        Heading(3, "Headline metrics"), headline_table(d), Para(SENSITIVITY_NOTE),
        Heading(3, "Comparison and generalisation gap"), gap_text(d), _gap_method(d),
        Heading(3, "Calibration"),
        Para("Temperature scaling is fitted on validation; ECE is the expected calibration error on test."),
        calibration_table(d),
        Heading(3, "Malignant operating point"),
        Para("The threshold chosen on validation (rule under Methods), applied unchanged to test."),
        operating_point_table(d),
        *threshold_notes(d),
        _operating_point_gap(d),
        Heading(3, "Per centre (test)"),
        Para("Each test centre on its own (own bootstrap; macro averages over the classes it holds). Centres differ "
             "in source and class mix, so a pooled figure can hide a centre where the model fails."),
        *_center_results(d),
        *threshold_notes(d),
        *adaptation_section(d),
    ]
    for v in VARIANTS:
        blocks += [Heading(3, f"Per-class metrics: {VARIANT_TITLES[v]}"), _per_class_table(d, v),
                   Heading(4, "Confusion matrix (test counts)"), _confusion_table(d, v)]
        blocks += [Figure(cap, d.figures[v][f"{sub}/{name}"], f"{d.plots_name}/{v}/{sub}/{name}", FIGURE_NOTE)
                   for sub, name, cap in FIGURES if sub == "eval"]
    blocks += [Heading(3, "Localisation: lesion map, Grad-CAM and centred Gaussian"), *_localisation_detail(d)]
    blocks += [Heading(2, "Data audit"), *_audit(d)]
    blocks += [Heading(2, "Limitations"), Bullets(caveats(d))]
    citation = (f"Citation of BTXRD, the dataset the pipeline is built for (not used in this run): {DATASET_CITATION}"
                if is_synthetic(d) else f"Citation: {DATASET_CITATION}")
    blocks += [Heading(2, "Dataset licence and citation"),
               Bullets((f"Data licence: {data_licence(d)}.", citation,
                         f"Report structure and methods: {'; '.join(REFERENCES)}.")),
               Alert(DISCLAIMER)]
    return blocks


def _summary(d: ReportData) -> tuple[str, ...]:
    items = []
    for v in VARIANTS:
        e = d.evals[v]
        centers = "; ".join(f"centre {c}: {fmt_ci(lookup(b, 'headline', 'macro_auc'))} (n={fmt(b['n'])})"
                            for c, b in (e.get("by_center") or {}).items())
        caveat = threshold_caveat(e.get("operating_point"))  # an unreliable threshold's warning, beside its numbers
        items.append(f"{VARIANT_TITLES[v]}: macro AUC {fmt_ci(lookup(e, 'headline', 'macro_auc'))} on "
                     f"{fmt(e['n_test'])} test images ({centers}); Malignant sensitivity at the operating point "
                     "(threshold chosen on validation, not the argmax rule) "
                     f"{fmt_ci(lookup(e, 'operating_point', 'test_sensitivity'))}, specificity "
                     f"{fmt_ci(lookup(e, 'operating_point', 'test_specificity'))}." + (f" {caveat}" if caveat else ""))
    gap = lookup(d.compare, "headline", "macro_auc", "gap")
    items.append(f"Generalisation gap in macro AUC (stratified - centre): {fmt_diff(gap)}; {gap_verdict(gap)}."
                 if d.compare else unavailable("Generalisation gap", f"{d.metrics_name}/compare.json"))
    return tuple(items)


def _methods(d: ReportData) -> list[Any]:
    p, model, train = d.params, d.params["model"], d.params["train"]
    e, x = d.evals[VARIANTS[0]], p["explain"]
    boot = e["bootstrap"]
    centers = {v: lookup(d.splits[v], "centers") or {} for v in VARIANTS}
    return [
        Heading(3, "Data"),
        Para(f"Source `{p['data']['source']}`; images letterboxed to {fmt_param(p['prepare']['image_px'])} px "
             "squares. Groups (below) are split as a whole. Audit summary below."),
        Bullets(tuple(f"{VARIANT_TITLES[v]}: {grouping_statement(d.splits[v])}" for v in VARIANTS)),
        Heading(3, "Splits"),
        Bullets((
            f"{VARIANT_TITLES['stratified']}: train/validation/test stratified by class over groups.",
            f"{VARIANT_TITLES['center']} (external validation): train and validation on centre(s) "
            f"{keys_text(centers['center'].get('train'))}, test on centre(s) {keys_text(centers['center'].get('test'))}.",
        )),
        partition_table(d, ("train", "val", "test")),
        Heading(3, "Model"),
        Para(f"timm `{model['backbone']}`, weights `{model['pretrained']}` ({weights_text(model['pretrained'])}), "
             f"dropout {fmt_param(model.get('dropout'))}."),
        Heading(3, "Training"),
        Para(f"Settings (params `train`): {flat_params({k: v for k, v in train.items() if k != 'augment'})}. "
             f"Augmentation: {flat_params(train.get('augment', {}))}."),
        _training_table(d),
        *_training_curves(d),
        Heading(3, "Evaluation"),
        Para(f"Percentile bootstrap over {fmt(boot.get('resamples'))} resamples of the test set "
             f"({'case groups' if boot.get('cluster') else 'images'} resampled), {fmt_level(boot.get('ci_level'))} "
             f"intervals. Calibration: temperature scaling on validation, ECE over "
             f"{fmt(lookup(e, 'calibration', 'bins'))} bins. Malignant operating point, chosen on validation for a "
             f"target sensitivity of {fmt(lookup(e, 'operating_point', 'target_sensitivity'))}: {THRESHOLD_RULE_TEXT} "
             f"Params `evaluate`: {flat_params(p['evaluate'])}."),
        Heading(3, "Explainability"),
        Para(f"Class activation maps (method `{x.get('method')}`, explaining the {x.get('target')} class) "
             "scored against the lesion masks of annotated tumour test images: pointing game, share of heatmap "
             "energy inside the lesion, IoU and Dice at fixed thresholds and at a threshold chosen on "
             "validation. Baseline: a centred Gaussian map that knows nothing about the image. Sanity check: "
             "rank correlation between the trained model's maps and those of a randomised copy. "
             "A model with a lesion head (params `model.lesion_head`) also outputs a lesion map, its own estimate "
             "of where the tumour is, scored the same way at its own validation-chosen threshold and compared "
             "with Grad-CAM and the baseline by paired differences on the same case resamples. "
             f"Params `explain`: {flat_params(x)}."),
        Bullets((f"Grad-CAM: {GRADCAM_REFERENCE}.", f"Sanity check: {SANITY_REFERENCE}.")),
    ]


def _gap_method(d: ReportData) -> Para:
    method = lookup(d.compare, "gap_method")
    text = (f"Gap interval: {method}." if method else "Gap interval: from the two independent bootstrap "
            "distributions (method not recorded in compare.json).")
    paired = lookup(d.compare, "like_for_like", "paired")
    if paired and paired.get("method"):
        text += f" Paired gap interval: {paired['method']}."
    return Para(text)


def _center_results(d: ReportData) -> list[Any]:
    rows = []
    for v in VARIANTS:
        e = d.evals[v]
        op = e.get("operating_point")  # one threshold for every centre: its caveat goes with each
        for center, c in (e.get("by_center") or {}).items():
            counts = "/".join(fmt(c["counts"].get(k)) for k in d.class_names)
            rows.append((VARIANT_TITLES[v], center, fmt(c["n"]), counts, fmt_ci(lookup(c, "headline", "macro_auc")),
                         fmt_ci(lookup(c, "diagnostics", "tumour_vs_normal_auc")),
                         fmt_ci(lookup(c, "diagnostics", "benign_vs_malignant_auc")),
                         op_cell(lookup(c, "operating_point", "test_sensitivity"), op),
                         op_cell(lookup(c, "operating_point", "test_specificity"), op)))
        rows.append((VARIANT_TITLES[v], "all (pooled)", fmt(e["n_test"]),
                     "/".join(fmt((e.get("test_counts") or {}).get(k)) for k in d.class_names),
                     fmt_ci(lookup(e, "headline", "macro_auc")), fmt_ci(lookup(e, "diagnostics", "tumour_vs_normal_auc")),
                     fmt_ci(lookup(e, "diagnostics", "benign_vs_malignant_auc")),
                     op_cell(lookup(e, "operating_point", "test_sensitivity"), op),
                     op_cell(lookup(e, "operating_point", "test_specificity"), op)))
    return [Table(("Variant", "Centre", "Images", "/".join(d.class_names), "Macro AUC", "Tumour vs normal AUC",
                    "Benign vs malignant AUC", "Malignant sensitivity at the operating point",
                    "Malignant specificity at the operating point"),
                   tuple(rows))]


def _operating_point_gap(d: ReportData) -> Para:
    block = lookup(d.compare, "operating_point")
    if not block:
        return Para(unavailable("Operating-point gap", f"{d.metrics_name}/compare.json"))
    gaps = "; ".join(f"{HEADLINE_TITLES.get(m, m)} {fmt_diff(lookup(entry, 'gap'))}" for m, entry in block.items())
    unreliable = [VARIANT_TITLES[v] for v in VARIANTS if threshold_caveat(d.evals[v].get("operating_point"))]
    warning = (f" The threshold of {' and '.join(unreliable)} is UNRELIABLE (above), and so is this gap."
               if unreliable else "")
    return Para(f"Gap at the operating point (stratified - centre): {gaps}.{warning}")


def _per_class_table(d: ReportData, v: str) -> Table:
    per_class = d.evals[v]["per_class"]
    metrics = [m for m in union_keys(per_class.values()) if m != "support"]
    rows = tuple((c, *(fmt_ci(per_class[c].get(m)) for m in metrics), fmt(per_class[c].get("support")))
                 for c in per_class)
    return Table(("Class", *(PER_CLASS_TITLES.get(m, m) for m in metrics), "Support"), rows)


def _confusion_table(d: ReportData, v: str) -> Table:
    conf = d.evals[v]["confusion"]
    labels = conf.get("labels", [])
    rows = tuple((f"{a} (actual)", *(fmt(n) for n in counts)) for a, counts in zip(labels, conf.get("counts", [])))
    return Table(("Actual \\ predicted", *labels), rows)


def _training_table(d: ReportData) -> Any:
    rows = []
    for v in VARIANTS:
        t = d.trains[v]
        if t is None:
            missing = f"{d.metrics_name}/{v}/train/metrics.json"
            rows.append((VARIANT_TITLES[v], unavailable("training summary", missing),
                         "n/a", "n/a", "n/a"))
        else:
            rows.append((VARIANT_TITLES[v], fmt(t.get("epochs_run")), fmt(t.get("best_epoch")),
                         fmt(t.get("monitor")), fmt(t.get("best_score"))))
    return Table(("Variant", "Epochs run", "Best epoch (1 = first)", "Monitor", "Best validation score"), tuple(rows))



def _training_curves(d: ReportData) -> list[Block]:
    """Train and validation loss per epoch, one chart per variant (the curves `dvc plots show` draws)."""
    charts: list[Block] = []
    for v in VARIANTS:
        caption = f"Training and validation loss per epoch: {VARIANT_TITLES[v]}"
        sources = tuple(f"{d.metrics_name}/{v}/train/{rel}" for rel in LOSS_FILES.values())
        history = d.losses[v]
        best = lookup(d.trains[v], "best_epoch")  # counted from 1, as the curves
        title = f"{VARIANT_TITLES[v]}: train and validation loss"
        png = None if history is None else loss_curve_png(history, title=title, best_epoch=best)
        charts.append(Chart(caption, png, sources, CHART_NOTE))
    return charts

def _localisation_detail(d: ReportData) -> list[Any]:
    blocks: list[Any] = [Para("Scored on annotated tumour test images; the baseline is a centred Gaussian "
                              "that ignores the image, so a useful map must beat it.")]
    for v in VARIANTS:
        x = d.explains[v]
        blocks.append(Heading(4, VARIANT_TITLES[v]))
        if x is None:
            blocks.append(Para(unavailable("Localisation metrics", explain_name(d, v))))
        else:
            overall = [m for m in lookup(x, "model", "overall") or {} if m != "n"]
            rows = tuple((loc_title(m), fmt_ci(lookup(x, "model", "overall", m)),
                          fmt_ci(lookup(x, "baseline", "overall", m)),
                          versus(lookup(x, "model", "overall", m), lookup(x, "baseline", "overall", m))) for m in overall)
            per_class = tuple((c, loc_title(m), fmt_ci(lookup(block, m)),
                               fmt_ci(lookup(x, "baseline", "per_class", c, m)), fmt(lookup(block, "n")))
                              for c, block in (lookup(x, "model", "per_class") or {}).items()
                              for m in ("pointing_game", "iou@val"))
            sanity = lookup(x, "sanity") or {}
            blocks += [
                Para(f"Method `{x.get('method')}` on layer `{x.get('target_layer')}`{_layer_choice(x)}, "
                     f"target {x.get('target')}; {fmt(x.get('n_images'))} images scored, {fmt(x.get('n_skipped_no_mask'))} tumour images "
                     f"skipped for lack of a mask; validation-chosen threshold {fmt(x.get('val_threshold'))}."),
                Table(("Metric", "Model", "Baseline", "Comparison"), rows),
                Table(("Class", "Metric", "Model", "Baseline", "Images"), per_class),
                Para(f"Sanity check ({sanity.get('randomization', 'n/a')} randomisation): rank correlation "
                     "between the trained and randomised model's maps "
                     f"{fmt_diff(sanity.get('randomized_rank_correlation'))} "
                     f"over {fmt(sanity.get('n'))} images ({fmt(sanity.get('n_undefined'))} undefined). A value "
                     "near one would mean the map ignores the learned weights."),
                *lesion_localisation(x, explain_name(d, v)),
            ]
        blocks += [Figure(cap, d.figures[v][f"{sub}/{name}"], f"{d.plots_name}/{v}/{sub}/{name}", FIGURE_NOTE)
                   for sub, name, cap in FIGURES if sub == "gradcam"]
    return blocks


def _layer_choice(explain: dict) -> str:
    """How the Grad-CAM layer was picked: on validation (with each candidate's pointing game) or by default."""
    scores = explain.get("layer_search") or {}
    if not scores:
        return ""
    listed = ", ".join(f"`{name}` {fmt(value)}" for name, value in scores.items())
    return f" (chosen on validation by pointing game among {listed})"


def _audit(d: ReportData) -> list[Any]:
    a = d.audit
    if a is None:
        return [Para(unavailable("Data audit", f"{d.metrics_name}/audit.json"))]
    shares = a.get("class_share_pct") or {}
    counts = a.get("class_counts") or {}
    dup, ann, leak = a.get("duplicates") or {}, a.get("annotations") or {}, a.get("leakage") or {}
    return [
        Bullets((
            f"{fmt(a.get('n_images'))} images from {fmt(a.get('n_centers'))} centre(s); per class: "
            + ", ".join(f"{c} {fmt(counts.get(c))} ({fmt_pct(shares.get(c))})" for c in d.class_names) + ".",
            f"Duplicate pairs: exact {fmt(dup.get('exact_pairs'))}, near {fmt(dup.get('near_pairs'))}, forming "
            f"{fmt(dup.get('groups'))} groups; pairs across classes {fmt(dup.get('cross_class_pairs'))}, across "
            f"centres {fmt(dup.get('cross_center_pairs'))}. Each group is split as a whole.",
            f"Split groups: {fmt(lookup(a, 'groups', 'n_groups'))} ({fmt(lookup(a, 'groups', 'n_multi_image_groups'))} with "
            f"several images); images with a case key: {fmt(lookup(a, 'cases', 'n_images_with_case_id'))}, in "
            f"{fmt(lookup(a, 'cases', 'n_cases'))} cases.",
            f"Annotations: {fmt_pct(ann.get('tumour_annotated_pct'))} of tumour images have a lesion annotation; "
            f"{fmt(ann.get('tumour_without_annotation'))} do not.",
            f"Leakage probe: the image with the nearest id number has the same class for "
            f"{fmt_pct(leak.get('id_1nn_class_accuracy_pct'))} of images (majority-class share "
            f"{fmt_pct(leak.get('majority_class_pct'))}); ids are never features.",
        )),
        center_table(d),
        Para("Full audit: reports/audit.md."),
    ]
