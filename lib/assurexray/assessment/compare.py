"""Compare the stratified and centre-holdout variants: side-by-side metrics and the generalisation gap.

The gap is ``stratified - center`` (positive = worse on the unseen centre). Two figures, each saying what its
interval covers:

- The headline gap compares each model on its own test set. Its interval treats the two test sets as
  independent (``se = sqrt(se_s**2 + se_c**2)`` from the two bootstrap distributions, a normal approximation);
  they are not when they share images (the stratified test holds centre-2/3 images that are in the centre test
  too: ``shared_test_images``), and their macro averages may run over different classes (``like_for_like``).
  The standard error of a metric is the bootstrap replicate standard deviation stored by evaluate (metrics.json
  ``bootstrap.standard_error``) or, where absent, recovered from the width of its percentile interval.
- The paired gap (``like_for_like.paired``, :func:`paired_gap`) scores both models on the same images, those the
  two test sets share, over the same classes, with one bootstrap whose every resample (whole case groups when
  evaluate clustered) scores both models: the like-for-like figure.

The markdown report is rendered from the comparison dict only (blocks and formats of ``assurexray.core.rendering``),
so every number in it is in compare.json.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from assurexray import DISCLAIMER
from assurexray.assessment.headline import load_variant_metrics
from assurexray.assessment.metrics import bootstrap_weights, ci_value, weighted_suite
from assurexray.core.project import VARIANT_TITLES, VARIANTS, Layout
from assurexray.core.rendering import Alert, Block, Heading, Para, Table, fmt, fmt_ci, fmt_level, to_markdown
from assurexray.learning.calibration import threshold_caveat

logger = logging.getLogger(__name__)

__all__ = ["VARIANTS", "load_variant", "load_test_predictions", "compare_variants", "paired_gap", "gap_ci",
           "render_report"]

GAP_METHOD = (
    "gap = stratified - center (positive: worse on the unseen centre), each model on its own test set; interval = "
    "gap +/- z * sqrt(se_s^2 + se_c^2), a normal approximation that treats the two test sets as independent "
    "bootstrap distributions, se = bootstrap replicate standard deviation (from the interval width where not "
    "stored). The sets are not independent where they share images, and macro averages may run over different "
    "classes, so read this interval as approximate and the paired gap as the like-for-like figure"
)
PAIRED_METHOD = (
    "both models scored on the same images (the test images the two test sets share) over the same classes; gap = "
    "stratified - center macro AUC on them; interval = percentile interval of the gap over one paired bootstrap: "
    "every resample draws the shared images ({unit}, stratified by class) once and scores both models on it"
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


def load_test_predictions(metrics_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The test rows of a variant's evaluate predictions.csv (``metrics/<variant>/eval``); None when absent."""
    root = Path(metrics_dir)
    path = Layout.of_metrics(root.parent).predictions(root.name)
    if not path.is_file():
        logger.info("%s not found: the paired like-for-like gap is left out", path)
        return None
    frame = pd.read_csv(path, dtype={"image_id": str, "partition": str, "label": str, "group": str,
                                     "center": str}, keep_default_na=False)
    missing = [c for c in ("image_id", "partition", "label", "label_idx", "group", "center") if c not in frame]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; re-run the evaluate stage (dvc repro evaluate).")
    return frame[frame["partition"] == "test"].reset_index(drop=True)


def compare_variants(
    stratified: dict[str, Any],
    center: dict[str, Any],
    *,
    stratified_explain: dict[str, Any] | None = None,
    center_explain: dict[str, Any] | None = None,
    stratified_predictions: pd.DataFrame | None = None,
    center_predictions: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The compare.json dict: headline metrics side by side with gap CIs, operating point, localisation, and
    with both variants' test predictions (:func:`load_test_predictions`) the paired like-for-like gap."""
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
    shared_images = None
    if stratified_predictions is not None and center_predictions is not None:
        shared_images = int(stratified_predictions["image_id"].isin(center_predictions["image_id"]).sum())
        like_for_like["paired"] = paired_gap(stratified_predictions, center_predictions, **_paired_settings(evals))
    else:
        like_for_like["paired"] = None
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
        "threshold_caveat": {v: threshold_caveat(evals[v]["operating_point"]) for v in VARIANTS},
        "shared_test_images": shared_images,
        "ci_level": ci_level,
        "gap_method": GAP_METHOD,
    }


def paired_gap(
    stratified: pd.DataFrame, center: pd.DataFrame, *, class_names: list[str], resamples: int, seed: int,
    ci_level: float, cluster: bool,
) -> dict[str, Any]:
    """The macro AUC gap (stratified - center) of both models on the test images both test sets hold.

    ``stratified``/``center``: test rows of each variant's predictions.csv. One weight matrix
    (:func:`assurexray.assessment.metrics.bootstrap_weights`, drawing whole ``group``s when ``cluster``) resamples the
    shared images, and both models are scored on every resample, so the interval reflects the paired difference.
    Macro AUC averages the classes present among the shared images, the same for both models. The images must
    agree on label and group in both files (one prepared index): a ``ValueError`` names the first that does not.
    """
    s, c = stratified.set_index("image_id"), center.set_index("image_id")
    ids = [i for i in c.index if i in s.index]  # centre test order
    method = PAIRED_METHOD.format(unit="whole case groups" if cluster else "single images")
    if not ids:
        return {"n_images": 0, "classes": [], "macro_auc": None, "gap": None, "method": method,
                "note": "the two test sets share no image, so no paired gap can be computed"}
    s, c = s.loc[ids], c.loc[ids]
    for column in ("label", "group"):
        differ = s[column].astype(str).to_numpy() != c[column].astype(str).to_numpy()
        if differ.any():
            i = int(np.argmax(differ))
            raise ValueError(
                f"test image {ids[i]!r}: {column} {s[column].iloc[i]!r} in the stratified predictions.csv but "
                f"{c[column].iloc[i]!r} in the centre's; both must come from one prepared index. Re-run split and "
                "evaluate for both variants (dvc repro evaluate).")
    y = c["label_idx"].to_numpy().astype(np.int64)
    columns = [f"prob_{name}" for name in class_names]
    probs = {"stratified": s[columns].to_numpy(np.float64), "center": c[columns].to_numpy(np.float64)}
    weights = bootstrap_weights(y, resamples=resamples, seed=seed,
                                groups=c["group"].to_numpy() if cluster else None)  # (B, n): one for both
    point = {v: weighted_suite(y, p, np.ones((1, y.size)))["macro_auc"][0] for v, p in probs.items()}
    reps = {v: weighted_suite(y, p, weights)["macro_auc"] for v, p in probs.items()}
    return {
        "n_images": len(ids), "n_groups": int(c["group"].nunique()),
        "centers": {str(k): int(n) for k, n in sorted(c["center"].astype(str).value_counts().items())},
        "classes": [class_names[k] for k in sorted(set(y.tolist()))],
        "macro_auc": {v: ci_value(point[v], reps[v], ci_level) for v in VARIANTS},
        "gap": ci_value(point["stratified"] - point["center"], reps["stratified"] - reps["center"], ci_level),
        "resamples": resamples, "cluster": cluster, "method": method,
    }


def _paired_settings(evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The bootstrap settings both evaluate runs used (they must agree) and their shared class order."""
    settings = {}
    for key, where in (("class_names", ("class_names",)), ("resamples", ("bootstrap", "resamples")),
                       ("seed", ("bootstrap", "seed")), ("ci_level", ("bootstrap", "ci_level")),
                       ("cluster", ("bootstrap", "cluster"))):
        found = {}
        for v in VARIANTS:
            node: Any = evals[v]
            for k in where:
                node = node.get(k) if isinstance(node, dict) else None
            found[v] = node
        if found["stratified"] is None or found["stratified"] != found["center"]:
            raise ValueError(
                f"{'.'.join(where)} differs or is missing between the variants' metrics.json: {found!r}; the paired "
                "gap resamples both models at once, so re-run evaluate for both with the same params.")
        settings[key] = list(found["stratified"]) if key == "class_names" else found["stratified"]
    return settings


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
    paired = (comparison.get("like_for_like") or {}).get("paired")
    blocks: list[Block] = [
        Alert(DISCLAIMER),
        Heading(1, "Stratified split vs centre hold-out"),
        Para(f"Test images: {VARIANT_TITLES['stratified']} {n['stratified']}, {VARIANT_TITLES['center']} "
             f"{n['center']}. Values are point estimates with {fmt_level(comparison['ci_level'])} bootstrap "
             "intervals in brackets."),
        Heading(2, "Headline metrics (test)"),
        Para("Each model on its own test set; the gap's interval treats the two test sets as independent "
             f"(method below){_shared_images(comparison)}."),
        _table(comparison["headline"], with_gap=True),
        *_like_for_like(comparison),
        *_paired_blocks(comparison),
        *_center_blocks(comparison),
        Heading(2, "Malignant operating point (threshold fitted on validation, applied to test)"),
        Para(f"Thresholds: {VARIANT_TITLES['stratified']} {fmt(comparison['threshold']['stratified'])}, "
             f"{VARIANT_TITLES['center']} {fmt(comparison['threshold']['center'])}."),
        *[Para(f"**{VARIANT_TITLES[v]}**: {caveat}")
          for v, caveat in (comparison.get("threshold_caveat") or {}).items() if caveat],
        _table(comparison["operating_point"], with_gap=True),
        Heading(2, "Localisation (Grad-CAM vs lesion masks)"),
        _table(comparison["localization"], with_gap=False) if comparison["localization"] else
        Para("Not available: the explain stage's metrics are absent for at least one variant."),
        Heading(2, "Method"),
        Para(f"Generalisation gap: {comparison['gap_method']}."),
        *([Para(f"Paired gap: {paired['method']}.")] if paired else []),
    ]
    return to_markdown(blocks)


def _shared_images(comparison: dict[str, Any]) -> str:
    n = comparison.get("shared_test_images")
    if n is None:
        return ""
    return (f"; they share {fmt(n)} test images, so they are not independent and the interval is approximate"
            if n else "; they share no image")


def _paired_blocks(comparison: dict[str, Any]) -> list[Block]:
    paired = (comparison.get("like_for_like") or {}).get("paired")
    heading = Heading(2, "Like-for-like gap: both models on the same test images (paired)")
    if paired is None:
        return [heading, Para("Not computed: a variant's eval/predictions.csv is absent.")]
    if not paired.get("n_images"):
        return [heading, Para(f"Not computed: {paired['note']}.")]
    centres = ", ".join(f"centre {c} {fmt(n)}" for c, n in paired["centers"].items())
    return [heading,
            Para(f"The {fmt(paired['n_images'])} test images both test sets hold ({fmt(paired['n_groups'])} case "
                 f"groups; {centres}), scored by both models; macro AUC over the classes present there "
                 f"({', '.join(paired['classes'])}), the same for both. The interval is a paired bootstrap: it covers "
                 "the difference between the models on images like these, not the stratified test set as a whole."),
            _table({"macro_auc (shared test images)": {**paired["macro_auc"], "gap": paired["gap"]}},
                   with_gap=True)]


def _like_for_like(comparison: dict[str, Any]) -> list[Block]:
    block = comparison.get("like_for_like") or {}
    if not block or block.get("same_classes"):
        return [Para("Both test sets hold the same classes, so their macro averages run over the same classes.")]
    classes = block["classes"]
    return [Para(f"The test sets hold different classes ({VARIANT_TITLES['stratified']}: "
                 f"{', '.join(classes['stratified'])}; {VARIANT_TITLES['center']}: {', '.join(classes['center'])}), "
                 "so the macro rows above average different class sets and their gaps do not compare like with "
                 f"like. Over the shared classes ({', '.join(block['shared'])}), still on different images:"),
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
