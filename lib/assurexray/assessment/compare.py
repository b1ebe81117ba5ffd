"""Compare the stratified and centre-holdout variants: side-by-side metrics and the generalisation gap.

The gap is ``stratified - center`` (positive = worse on the unseen centre). The two test sets are
independent, so the gap's standard error is ``sqrt(se_s**2 + se_c**2)`` from the two bootstrap
distributions, and its interval a normal approximation around the observed gap. The standard error of a
metric is the bootstrap replicate standard deviation stored by evaluate (metrics.json
``bootstrap.standard_error``) or, where absent, recovered from the width of its percentile interval.
The markdown report is rendered from the comparison dict only (blocks and formats of ``assurexray.core.rendering``),
so every number in it is in compare.json.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from scipy.stats import norm

from assurexray import DISCLAIMER
from assurexray.assessment.headline import load_variant_metrics
from assurexray.core.project import VARIANT_TITLES, VARIANTS
from assurexray.core.rendering import Alert, Block, Heading, Para, Table, fmt, fmt_ci, fmt_level, to_markdown

logger = logging.getLogger(__name__)

__all__ = ["VARIANTS", "load_variant", "compare_variants", "gap_ci", "render_report"]

GAP_METHOD = (
    "gap = stratified - center (positive: worse on the unseen centre); interval = gap +/- z * sqrt(se_s^2 + se_c^2), "
    "a normal approximation from the two independent bootstrap distributions, se = bootstrap replicate "
    "standard deviation (from the interval width where not stored)"
)
_OPERATING_POINT_METRICS = ("test_sensitivity", "test_specificity")


def load_variant(metrics_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Eval metrics (required) and explain metrics (None if absent) of one variant folder (``metrics/<variant>``).

    Read by :func:`assurexray.assessment.headline.load_variant_metrics`, so the comparison and the headline read
    the same files with the same errors.
    """
    metrics = load_variant_metrics(metrics_dir)
    if metrics["explain"] is None:
        logger.info("%s has no explain/metrics.json: localisation is left out of the comparison", metrics_dir)
    return metrics["eval"], metrics["explain"]


def compare_variants(
    stratified: dict[str, Any],
    center: dict[str, Any],
    *,
    stratified_explain: dict[str, Any] | None = None,
    center_explain: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The compare.json dict: headline metrics side by side with gap CIs, operating point, localisation."""
    evals = {"stratified": stratified, "center": center}
    levels = {v: evals[v].get("bootstrap", {}).get("ci_level") for v in VARIANTS}
    if levels["stratified"] != levels["center"] or levels["stratified"] is None:
        raise ValueError(
            f"bootstrap.ci_level differs or is missing between variants: {levels!r}; re-run evaluate for both "
            "with the same evaluate.ci_level."
        )
    ci_level = float(levels["stratified"])
    headline = {}
    for name in stratified["headline"]:
        if name not in center["headline"]:
            raise ValueError(f"center metrics.json lacks headline metric {name!r}; re-run evaluate for both variants.")
        s, c = stratified["headline"][name], center["headline"][name]
        headline[name] = {"stratified": s, "center": c,
                          "gap": gap_ci(s, c, ci_level=ci_level, se_a=_stored_se(stratified, name),
                                        se_b=_stored_se(center, name))}
    operating_point = {}
    for name in _OPERATING_POINT_METRICS:
        s, c = stratified["operating_point"][name], center["operating_point"][name]
        operating_point[name] = {"stratified": s, "center": c, "gap": gap_ci(s, c, ci_level=ci_level)}
    localization: dict[str, Any] = {}
    if stratified_explain is not None and center_explain is not None:
        s_loc, c_loc = stratified_explain["model"]["overall"], center_explain["model"]["overall"]
        for name, value in s_loc.items():
            if isinstance(value, dict) and isinstance(c_loc.get(name), dict):
                localization[name] = {"stratified": value, "center": c_loc[name]}
    classes = {v: [c for c, e in evals[v].get("per_class", {}).items() if e.get("support", 0) > 0] for v in VARIANTS}
    shared = [c for c in classes["stratified"] if c in classes["center"]]
    like_for_like: dict[str, Any] = {"classes": classes, "shared": shared,
                                     "same_classes": classes["stratified"] == classes["center"]}
    if not like_for_like["same_classes"]:
        # Macro AUC over different class sets compares unlike things: recompute both over the shared classes.
        s_auc, c_auc = (_shared_macro_auc(evals[v], shared, ci_level) for v in VARIANTS)
        like_for_like["macro_auc_shared"] = {"stratified": s_auc, "center": c_auc,
                                             "gap": gap_ci(s_auc, c_auc, ci_level=ci_level)}
        logger.warning("test class sets differ (%s); the gap is also computed over the shared classes %s",
                       classes, shared)
    return {
        "headline": headline,
        "like_for_like": like_for_like,
        "by_center": {v: {c: {"n": b["n"], "counts": b["counts"], "macro_auc": b["headline"]["macro_auc"]}
                          for c, b in (evals[v].get("by_center") or {}).items()} for v in VARIANTS},
        "localization": localization,
        "operating_point": operating_point,
        "n_test": {v: evals[v]["n_test"] for v in VARIANTS},
        "threshold": {v: evals[v]["operating_point"]["threshold"] for v in VARIANTS},
        "ci_level": ci_level,
        "gap_method": GAP_METHOD,
    }


def _shared_macro_auc(metrics: dict[str, Any], shared: list[str], ci_level: float) -> dict[str, float | None]:
    """Mean one-vs-rest AUC over ``shared`` classes; its interval averages the per-class intervals' bounds.

    Averaging the bounds assumes the per-class AUCs move together (perfect correlation), which makes the interval
    conservative (too wide rather than too narrow).
    """
    entries = [metrics["per_class"][c]["auc"] for c in shared]
    if not entries or any(e.get("value") is None for e in entries):
        return {"value": None, "ci_low": None, "ci_high": None}
    value = sum(e["value"] for e in entries) / len(entries)
    if any(e.get("ci_low") is None or e.get("ci_high") is None for e in entries):
        return {"value": value, "ci_low": None, "ci_high": None}
    return {"value": value, "ci_low": sum(e["ci_low"] for e in entries) / len(entries),
            "ci_high": sum(e["ci_high"] for e in entries) / len(entries)}


def gap_ci(
    a: dict[str, float | None],
    b: dict[str, float | None],
    *,
    ci_level: float,
    se_a: float | None = None,
    se_b: float | None = None,
) -> dict[str, float | None]:
    """CI value of ``a - b`` for two independent estimates (normal approximation; None when undefined)."""
    z = float(norm.ppf(0.5 + ci_level / 2.0))
    se_a = se_a if se_a is not None else _se_from_interval(a, z)
    se_b = se_b if se_b is not None else _se_from_interval(b, z)
    if a["value"] is None or b["value"] is None:
        return {"value": None, "ci_low": None, "ci_high": None}
    gap = a["value"] - b["value"]
    if se_a is None or se_b is None:
        return {"value": gap, "ci_low": None, "ci_high": None}
    half = z * math.sqrt(se_a**2 + se_b**2)
    return {"value": gap, "ci_low": gap - half, "ci_high": gap + half}


def render_report(comparison: dict[str, Any]) -> str:
    """Markdown report of a :func:`compare_variants` dict (every number comes from that dict)."""
    n = comparison["n_test"]
    blocks: list[Block] = [
        Alert(DISCLAIMER),
        Heading(1, "Stratified split vs centre hold-out"),
        Para(f"Test images: {VARIANT_TITLES['stratified']} {n['stratified']}, {VARIANT_TITLES['center']} "
             f"{n['center']}. Values are point estimates with {fmt_level(comparison['ci_level'])} bootstrap "
             "intervals in brackets."),
        Heading(2, "Headline metrics (test)"),
        _table(comparison["headline"], with_gap=True),
        *_like_for_like(comparison),
        *_center_blocks(comparison),
        Heading(2, "Malignant operating point (threshold fitted on validation, applied to test)"),
        Para(f"Thresholds: {VARIANT_TITLES['stratified']} {fmt(comparison['threshold']['stratified'])}, "
             f"{VARIANT_TITLES['center']} {fmt(comparison['threshold']['center'])}."),
        _table(comparison["operating_point"], with_gap=True),
        Heading(2, "Localisation (Grad-CAM vs lesion masks)"),
        _table(comparison["localization"], with_gap=False) if comparison["localization"] else
        Para("Not available: the explain stage's metrics are absent for at least one variant."),
        Heading(2, "Method"),
        Para(f"Generalisation gap: {comparison['gap_method']}."),
    ]
    return to_markdown(blocks)


def _like_for_like(comparison: dict[str, Any]) -> list[Block]:
    block = comparison.get("like_for_like") or {}
    if not block or block.get("same_classes"):
        return [Para("Both test sets hold the same classes, so the gap compares like with like.")]
    classes = block["classes"]
    return [Para(f"The test sets hold different classes ({VARIANT_TITLES['stratified']}: "
                 f"{', '.join(classes['stratified'])}; {VARIANT_TITLES['center']}: {', '.join(classes['center'])}), "
                 "so macro averages differ in what they average. Over the shared classes "
                 f"({', '.join(block['shared'])}):"),
            _table({"macro_auc (shared classes)": block["macro_auc_shared"]}, with_gap=True)]


def _center_blocks(comparison: dict[str, Any]) -> list[Block]:
    rows = [(v, c, b) for v in VARIANTS for c, b in (comparison.get("by_center") or {}).get(v, {}).items()]
    if not rows:
        return []
    return [Heading(2, "Per test centre"),
            Table(("Variant", "Centre", "Images", "Classes (counts)", "Macro AUC"),
                  tuple((VARIANT_TITLES[v], str(c), fmt(b["n"]), ", ".join(f"{k} {n}" for k, n in b["counts"].items()),
                         fmt_ci(b["macro_auc"])) for v, c, b in rows))]


def _table(block: dict[str, dict[str, Any]], *, with_gap: bool) -> Table:
    head = ("Metric", VARIANT_TITLES["stratified"], VARIANT_TITLES["center"])
    head += ("Gap (stratified - centre)",) if with_gap else ()
    return Table(head, tuple((name, fmt_ci(entry["stratified"]), fmt_ci(entry["center"]),
                              *([fmt_ci(entry["gap"])] if with_gap else []))
                             for name, entry in block.items()))


def _stored_se(metrics: dict[str, Any], name: str) -> float | None:
    return metrics.get("bootstrap", {}).get("standard_error", {}).get(name)


def _se_from_interval(value: dict[str, float | None], z: float) -> float | None:
    if value["ci_low"] is None or value["ci_high"] is None:
        return None
    return (value["ci_high"] - value["ci_low"]) / (2.0 * z)
