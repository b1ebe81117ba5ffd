"""Evaluate a trained checkpoint: predict val and test, calibrate on val, measure on test, write outputs.

Everything fitted (temperature, Malignant threshold) is fitted on validation and only applied to test.
Test metrics use the temperature-scaled probabilities written to predictions.csv, so the file and the
numbers always agree. Outputs follow docs/ARCHITECTURE.md (metrics.json, predictions.csv,
operating_point.json, DVC plot files roc/pr/confusion.json, static PNGs). NOT FOR CLINICAL USE.
Over 400 lines on purpose: prediction, calibration on validation, test metrics with their bootstrap, the per-
centre blocks and the figures all fill one evaluation record.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # object API: no pyplot state, no display backend needed

from assurexray import DISCLAIMER
from assurexray.core.atomic import atomic_dir, atomic_path, write_json
from assurexray.learning.calibration import (
    apply_temperature,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    reliability_data,
)
from assurexray.data.manifests import open_images, read_split
from assurexray.assessment.metrics import (
    binary_auc_with_ci,
    binary_rates_with_ci,
    bootstrap_weights,
    pr_curves,
    roc_curves,
    suite_with_ci,
)
from assurexray.assessment.site_adaptation import adapt_centers, adapted_metrics, unseen_centers
from assurexray.assessment.fusion_effect import fusion_effect
from assurexray.learning.adaptation import ADAPT_METHODS
from assurexray.learning.lesion_fusion import FUSION_MODES, choose_fusion_weight, fuse_logits
from assurexray.assessment.familiarity import FAMILIARITY_FILE, Familiarity, fit_input_check, write_familiarity
from assurexray.learning.model import resolve_device
from assurexray.learning.prediction import (
    OperatingPoint,
    Predictor,
    load_predictor,
    malignant_flags,
    operating_point_record,
)
from assurexray.core.project import MALIGNANT, NORMAL

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluateConfig",
    "Evaluation",
    "evaluate_checkpoint",
    "evaluate_logits",
    "load_partition",
    "predict_logits",
    "write_evaluation",
    "POSITIVE_CLASS",
]

POSITIVE_CLASS = MALIGNANT  # the class of the operating point (assurexray.core.project states it once)
SPLIT_COLUMNS: tuple[str, ...] = ("row", "image_id", "label", "label_idx", "group", "center")


@dataclass(frozen=True)
class EvaluateConfig:
    """The ``evaluate`` section of params.yaml (meanings and units are commented there); every key required.

    The stage passes it whole to :func:`evaluate_checkpoint`, which hands it on to :func:`evaluate_logits`: a new
    setting is one field here and its use, nothing in between.
    """

    bootstrap_resamples: int
    bootstrap_cluster: bool
    ci_level: float
    calibration_bins: int
    malignant_target_sensitivity: float
    bootstrap_seed: int
    batch_size: int
    tta_flip: bool
    adapt: str = "none"  # none | bn: unseen centres also scored after BatchNorm adaptation (assessment.site_adaptation)
    input_check_quantile: float | None = None  # input check threshold (assessment.familiarity); None: no check
    lesion_fusion: str = "none"  # none | score: the lesion map's tumour presence in Normal-vs-tumour (learning.lesion_fusion)

    def __post_init__(self) -> None:
        def integer(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def fraction(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1

        checks = [
            ("bootstrap_resamples", integer(self.bootstrap_resamples) and self.bootstrap_resamples >= 1,
             "an integer >= 1"),
            ("bootstrap_cluster", isinstance(self.bootstrap_cluster, bool), "true or false"),
            ("ci_level", fraction(self.ci_level), "a number in (0, 1)"),
            ("calibration_bins", integer(self.calibration_bins) and self.calibration_bins >= 1, "an integer >= 1"),
            ("malignant_target_sensitivity", fraction(self.malignant_target_sensitivity)
             or self.malignant_target_sensitivity == 1, "a number in (0, 1]"),
            ("bootstrap_seed", integer(self.bootstrap_seed), "an integer"),
            ("batch_size", integer(self.batch_size) and self.batch_size >= 1, "an integer >= 1"),
            ("tta_flip", isinstance(self.tta_flip, bool), "true or false"),
            ("adapt", self.adapt in ADAPT_METHODS, f"one of {list(ADAPT_METHODS)}"),
            ("input_check_quantile", self.input_check_quantile is None or fraction(self.input_check_quantile),
             "a number in (0, 1) or null"),
            ("lesion_fusion", self.lesion_fusion in FUSION_MODES, f"one of {list(FUSION_MODES)}"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"evaluate.{name}: expected {expected}, got {getattr(self, name)!r}.")


@dataclass(frozen=True)
class Evaluation:
    """Everything evaluate writes; JSON-ready dicts/lists plus the predictions table."""

    metrics: dict[str, Any]
    predictions: pd.DataFrame
    operating_point: dict[str, Any]
    roc: list[dict[str, Any]]
    pr: list[dict[str, Any]]
    confusion: list[dict[str, str]]
    reliability: dict[str, dict[str, list]]
    input_check: Familiarity | None = None  # written as familiarity.npz beside operating_point.json


def evaluate_checkpoint(
    config: EvaluateConfig,
    *,
    prepared: str | os.PathLike,
    split_dir: str | os.PathLike,
    model_path: str | os.PathLike | Sequence[str | os.PathLike],
    device: str = "cpu",
) -> Evaluation:
    """Load ``model_path`` (one checkpoint, or several: a seed ensemble), predict the val and test partitions of
    ``split_dir`` through :class:`assurexray.learning.prediction.Predictor` (the engine infer and the app use) and
    evaluate them.

    ``config.tta_flip`` averages the logits of each image and its mirror image (val and test alike, so the
    temperature and threshold are fitted on what is scored); operating_point.json records it so inference does
    the same.
    An ensemble's operating_point.json carries ``model_sha256`` = the ensemble's identity and its
    ``member_sha256s``, so ``assurexray infer --model A --model B --operating-point ...`` can check it.
    ``device``: cpu, cuda, cuda:N or auto (:func:`assurexray.learning.model.resolve_device`); the pipeline passes
    ``train.device``, so evaluation runs where training did.
    """
    paths = [model_path] if isinstance(model_path, (str, os.PathLike)) else list(model_path)
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found; run `dvc repro train` first.")
    predictor = load_predictor(paths, operating_point=OperatingPoint(tta_flip=config.tta_flip),
                               device=resolve_device(device))
    if config.lesion_fusion == "score" and not predictor.has_lesion_maps:
        raise ValueError(f"evaluate.lesion_fusion: score needs a lesion decoder in every model, and "
                         f"{[str(p) for p in paths]} lack one; train with model.lesion_head: true or set "
                         "evaluate.lesion_fusion: none.")
    frames, logits, presence, partition_images = {}, {}, {}, {}
    for partition in ("val", "test"):
        frames[partition], images = load_partition(prepared, split_dir, partition)
        partition_images[partition] = images  # the input check's val/test distances
        if images.shape[1:] != (predictor.input_size, predictor.input_size):
            raise ValueError(
                f"{prepared}: cached images are {images.shape[1:]!r} px but the checkpoint expects "
                f"input_size {predictor.input_size!r}; re-run prepare and train with the same size."
            )
        logits[partition] = predict_logits(predictor, images, batch_size=config.batch_size, desc=partition)
        if config.lesion_fusion == "score":
            presence[partition] = predictor.tumour_presence_of(images, batch_size=config.batch_size,
                                                               desc=f"lesion presence {partition}")
    fusion = None
    unfused = logits
    if config.lesion_fusion == "score":  # the weight is chosen on validation; test only receives it
        normal = predictor.class_names.index(NORMAL)
        fusion = choose_fusion_weight(_labels(frames["val"], predictor.class_names, "val", logits["val"]),
                                      logits["val"], presence["val"], normal_index=normal)
        logger.info("lesion fusion: %s", fusion.reason)
        logits = {k: fuse_logits(v, presence[k], weight=fusion.weight, normal_index=normal) for k, v in logits.items()}
    evaluation = evaluate_logits(
        config, val_frame=frames["val"], val_logits=logits["val"], test_frame=frames["test"],
        test_logits=logits["test"], class_names=predictor.class_names, model_sha256=predictor.model_sha256,
    )
    evaluation.operating_point.update(operating_point_record(
        **evaluation.operating_point, tta_flip=config.tta_flip,
        member_sha256s=predictor.member_sha256s if predictor.is_ensemble else None,
        lesion_fusion_weight=None if fusion is None else fusion.weight,
    ))
    if fusion is not None:
        evaluation.metrics["lesion_fusion"] = _fusion_block(config, fusion, frames, unfused, logits,
                                                            predictor.class_names)
        predictor = predictor.with_operating_point(OperatingPoint(tta_flip=config.tta_flip,
                                                                  lesion_fusion_weight=fusion.weight))
    evaluation.metrics["tta_flip"] = config.tta_flip
    if config.input_check_quantile is not None:  # how unlike the training images an input is (infer, app)
        train_frame, train_images = load_partition(prepared, split_dir, "train")
        input_check, evaluation.metrics["input_check"] = fit_input_check(
            predictor, train_images=train_images, train_labels=train_frame["label_idx"].to_numpy(),
            val_images=partition_images["val"], test_images=partition_images["test"],
            quantile=config.input_check_quantile, batch_size=config.batch_size)
        evaluation = dataclasses.replace(evaluation, input_check=input_check)
    if predictor.is_ensemble:
        evaluation.metrics["ensemble_size"] = len(predictor.models)
    if config.adapt == "bn":  # unseen centres again, after BatchNorm adaptation on their own test pixels
        test, (_, test_images) = frames["test"], load_partition(prepared, split_dir, "test")
        adapted = adapt_centers(predictor, test_images, test["center"].to_numpy(), batch_size=config.batch_size,
                                adapt=unseen_centers(split_dir, test["center"]))  # no label passed
        op = evaluation.operating_point
        evaluation.metrics["adapted"] = adapted_metrics(
            config, adapted=adapted, test_frame=test, test_logits=logits["test"], temperature=op["temperature"],
            score=functools.partial(_by_center, config=config, class_names=predictor.class_names,
                                    threshold=op["malignant_threshold"]))
    return evaluation


def _fusion_block(config: EvaluateConfig, fusion: Any, frames: dict[str, pd.DataFrame],
                  unfused: dict[str, np.ndarray], fused: dict[str, np.ndarray], class_names: list[str]) -> dict:
    """metrics.json's ``lesion_fusion``: the choice and the test effect, each model calibrated on its own val."""
    y_val = _labels(frames["val"], class_names, "val", unfused["val"])
    t_plain, t_fused = fit_temperature(unfused["val"], y_val), fit_temperature(fused["val"], y_val)
    return fusion_effect(config, choice=fusion, test_frame=frames["test"],
                         y_test=_labels(frames["test"], class_names, "test", unfused["test"]),
                         p_plain=apply_temperature(unfused["test"], t_plain),
                         p_fused=apply_temperature(fused["test"], t_fused), class_names=class_names)


def load_partition(
    prepared: str | os.PathLike, split_dir: str | os.PathLike, partition: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows of ``split_dir/<partition>.csv`` and their cached images ``(n, S, S)`` uint8."""
    cache, _ = open_images(prepared, masks=False)
    frame = read_split(split_dir, partition, n_images=cache.shape[0], columns=SPLIT_COLUMNS)
    return frame, np.ascontiguousarray(cache[frame["row"].to_numpy()])


def predict_logits(predictor: Predictor, images: np.ndarray, *, batch_size: int = 64,
                   desc: str = "predict") -> np.ndarray:
    """Logits ``(n, K)`` of cached (already letterboxed) uint8 images ``(n, S, S)``, before temperature."""
    if batch_size < 1:
        raise ValueError(f"evaluate.batch_size must be >= 1, got {batch_size!r}.")
    return predictor.logits_of(images, batch_size=batch_size, desc=f"evaluate {desc}")


def evaluate_logits(
    config: EvaluateConfig,
    *,
    val_frame: pd.DataFrame,
    val_logits: np.ndarray,
    test_frame: pd.DataFrame,
    test_logits: np.ndarray,
    class_names: list[str],
    model_sha256: str,
) -> Evaluation:
    """Calibrate and pick the operating point on val; the metric suite with bootstrap CIs on test.

    The Malignant threshold follows :func:`assurexray.learning.calibration.choose_threshold` (target
    ``config.malignant_target_sensitivity``, bound at ``config.ci_level``): never above the argmax, and marked
    unreliable, with its reason, when validation holds too few Malignant images. metrics.json's
    ``operating_point`` block and operating_point.json both record the rule, ``reliable`` and ``reason``.
    """
    if POSITIVE_CLASS not in class_names:
        raise ValueError(f"class_names {class_names!r} lack {POSITIVE_CLASS!r}; the operating point needs it.")
    pos = class_names.index(POSITIVE_CLASS)
    y_val = _labels(val_frame, class_names, "val", val_logits)
    y_test = _labels(test_frame, class_names, "test", test_logits)
    temperature = fit_temperature(val_logits, y_val)
    p_val, p_test = apply_temperature(val_logits, temperature), apply_temperature(test_logits, temperature)
    choice = choose_threshold(y_val == pos, p_val[:, pos], n_classes=len(class_names),
                              target_sensitivity=config.malignant_target_sensitivity, confidence=config.ci_level,
                              positive_name=POSITIVE_CLASS)
    threshold, val_sens = choice.threshold, choice.val_sensitivity
    logger.info("temperature %.4f; Malignant threshold %.4f (val sensitivity %.3f, rule %s)", temperature, threshold,
                val_sens, choice.rule)

    start = time.perf_counter()
    groups = test_frame["group"].to_numpy() if config.bootstrap_cluster else None
    weights = bootstrap_weights(y_test, resamples=config.bootstrap_resamples, seed=config.bootstrap_seed,
                                groups=groups)
    suite = suite_with_ci(y_test, p_test, weights, class_names=class_names, ci_level=config.ci_level,
                          positive_class=POSITIVE_CLASS)
    rates = binary_rates_with_ci(y_test == pos, p_test[:, pos] >= threshold, weights, ci_level=config.ci_level)
    by_center = _by_center(test_frame, y_test, p_test, config, class_names=class_names, threshold=threshold)
    # Timing goes to the log, not to metrics.json: same params + data must give byte-identical metrics.
    logger.info("bootstrap: %d resamples of the whole suite in %.3f s", config.bootstrap_resamples,
                time.perf_counter() - start)
    raw_test, bins = apply_temperature(test_logits, 1.0), config.calibration_bins
    calibration = {"temperature": temperature, "ece_before": expected_calibration_error(y_test, raw_test, bins=bins),
                   "ece_after": expected_calibration_error(y_test, p_test, bins=bins), "bins": bins}
    reliability = {"before": reliability_data(y_test, raw_test, bins=bins),
                   "after": reliability_data(y_test, p_test, bins=bins)}
    op_block = {"class": POSITIVE_CLASS, "threshold": threshold,
                "target_sensitivity": config.malignant_target_sensitivity, "val_sensitivity": val_sens,
                "val_positives": choice.val_positives, "reliable": choice.reliable,
                "min_val_positives": choice.min_val_positives, "rule": choice.rule, "reason": choice.reason,
                "fitted_threshold": choice.fitted_threshold, "argmax_cap": choice.argmax_cap,
                "val_sensitivity_lower_bound": choice.val_sensitivity_lower_bound,
                "test_sensitivity": rates["sensitivity"], "test_specificity": rates["specificity"]}
    if not choice.reliable:
        logger.warning("the Malignant threshold is unreliable: %s", choice.reason)
    metrics = {
        "n_test": int(y_test.size), "n_val": int(y_val.size), "class_names": list(class_names),
        "test_counts": {c: int((y_test == i).sum()) for i, c in enumerate(class_names)},
        "headline": suite["headline"], "per_class": suite["per_class"], "confusion": suite["confusion"],
        "diagnostics": _binary_questions(y_test, p_test, weights, class_names=class_names, ci_level=config.ci_level),
        "by_center": by_center,
        "calibration": calibration, "operating_point": op_block,
        "bootstrap": {"resamples": config.bootstrap_resamples, "ci_level": config.ci_level,
                      "cluster": config.bootstrap_cluster, "stratified": True, "seed": config.bootstrap_seed,
                      "standard_error": suite["standard_error"], "nan_resamples": suite["nan_resamples"]},
    }
    predictions = pd.concat([
        _prediction_rows(val_frame, p_val, "val", class_names, threshold),
        _prediction_rows(test_frame, p_test, "test", class_names, threshold),
    ], ignore_index=True)
    operating_point = operating_point_record(temperature=temperature, malignant_threshold=threshold,
                                             target_sensitivity=config.malignant_target_sensitivity,
                                             val_sensitivity=val_sens, model_sha256=model_sha256,
                                             val_positives=choice.val_positives,
                                             rule=choice.rule, reliable=choice.reliable, reason=choice.reason)
    roc = [{"class": name, "fpr": float(x), "tpr": float(t)}
           for name, c in zip(class_names, roc_curves(y_test, p_test)) for x, t in zip(c["fpr"], c["tpr"])]
    pr = [{"class": name, "recall": float(r), "precision": float(p)}
          for name, c in zip(class_names, pr_curves(y_test, p_test)) for r, p in zip(c["recall"], c["precision"])]
    confusion = [{"actual": class_names[a], "predicted": class_names[b]}
                 for a, b in zip(y_test, p_test.argmax(axis=1))]
    return Evaluation(metrics, predictions, operating_point, roc, pr, confusion, reliability)


def _binary_questions(y: np.ndarray, p: np.ndarray, weights: np.ndarray, *, class_names: list[str],
                      ci_level: float) -> dict[str, Any]:
    """Two questions the 3-class AUC hides: is there a tumour at all, and is a tumour malignant?

    ``tumour_vs_normal_auc`` scores P(Benign) + P(Malignant) on every image; ``benign_vs_malignant_auc`` scores
    P(Malignant | tumour) on tumour images only (its bootstrap reuses the test weights restricted to them).
    """
    normal, benign, malignant = (class_names.index(c) for c in ("Normal", "Benign", POSITIVE_CLASS))
    out: dict[str, Any] = {}
    tumour = y != normal
    if 0 < tumour.sum() < y.size:
        out["tumour_vs_normal_auc"] = binary_auc_with_ci(tumour, 1.0 - p[:, normal], weights, ci_level=ci_level)
    is_mal = y[tumour] == malignant
    if 0 < is_mal.sum() < is_mal.size:
        share = p[tumour, malignant] / np.maximum(p[tumour, benign] + p[tumour, malignant], 1e-12)
        out["benign_vs_malignant_auc"] = binary_auc_with_ci(is_mal, share, weights[:, tumour], ci_level=ci_level)
    return out


def _by_center(frame: pd.DataFrame, y: np.ndarray, p: np.ndarray, config: EvaluateConfig, *, class_names: list[str],
               threshold: float) -> dict[str, Any]:
    """The metric suite on each centre of the test set separately (centres differ in source and class mix).

    Each centre gets its own bootstrap (same seed), so its interval reflects its own size. Macro averages cover
    the classes present in that centre (``classes_present``).
    """
    pos = class_names.index(POSITIVE_CLASS)
    out: dict[str, Any] = {}
    centers = frame["center"].to_numpy()
    for center in sorted(pd.unique(centers).tolist()):
        mask = centers == center
        yc, pc = y[mask], p[mask]
        groups = frame["group"].to_numpy()[mask] if config.bootstrap_cluster else None
        w = bootstrap_weights(yc, resamples=config.bootstrap_resamples, seed=config.bootstrap_seed, groups=groups)
        suite = suite_with_ci(yc, pc, w, class_names=class_names, ci_level=config.ci_level,
                              positive_class=POSITIVE_CLASS)
        rates = binary_rates_with_ci(yc == pos, pc[:, pos] >= threshold, w, ci_level=config.ci_level)
        counts = {c: int((yc == i).sum()) for i, c in enumerate(class_names)}
        out[str(center)] = {
            "n": int(mask.sum()), "counts": counts, "classes_present": [c for c in class_names if counts[c]],
            "headline": suite["headline"],
            "per_class_auc": {c: suite["per_class"][c]["auc"] for c in class_names},
            "operating_point": {"test_sensitivity": rates["sensitivity"], "test_specificity": rates["specificity"]},
            "diagnostics": _binary_questions(yc, pc, w, class_names=class_names, ci_level=config.ci_level),
            "standard_error": suite["standard_error"],
        }
    return out


def write_evaluation(evaluation: Evaluation, *, out_dir: str | os.PathLike, figures_dir: str | os.PathLike,
                     variant: str | None = None) -> None:
    """Write the metrics/plot files into ``out_dir`` and the PNGs into ``figures_dir/eval`` (all atomic).

    ``variant`` (the split, e.g. ``center``) is named in every figure title, so a PNG shown alone says whose it is.
    """
    out = Path(out_dir)
    write_json(out / "metrics.json", evaluation.metrics)
    write_json(out / "operating_point.json", evaluation.operating_point)
    if evaluation.input_check is not None:
        write_familiarity(out / FAMILIARITY_FILE, evaluation.input_check)
    write_json(out / "roc.json", {"roc": evaluation.roc})
    write_json(out / "pr.json", {"pr": evaluation.pr})
    write_json(out / "confusion.json", evaluation.confusion)
    with atomic_path(out / "predictions.csv") as tmp:
        evaluation.predictions.to_csv(tmp, index=False)
    with atomic_dir(Path(figures_dir) / "eval") as tmp_dir:
        _plot_curves(evaluation, tmp_dir / "roc.png", kind="roc", variant=variant)
        _plot_curves(evaluation, tmp_dir / "pr.png", kind="pr", variant=variant)
        _plot_confusion(evaluation.metrics, tmp_dir / "confusion.png", variant=variant)
        _plot_reliability(evaluation, tmp_dir / "reliability.png", variant=variant)


def _labels(frame: pd.DataFrame, class_names: list[str], partition: str, logits: np.ndarray) -> np.ndarray:
    """Checked label indices of a split frame: in range, agreeing with the label name, one row per logit row."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape != (len(frame), len(class_names)):
        raise ValueError(
            f"{partition}: logits have shape {logits.shape!r}, expected ({len(frame)}, {len(class_names)})."
        )
    y = frame["label_idx"].to_numpy()
    names = np.asarray(class_names, dtype=object)
    bad = (y < 0) | (y >= len(class_names))
    bad[~bad] = names[y[~bad]] != frame["label"].to_numpy()[~bad]
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{partition}.csv row {i}: label {frame['label'].iloc[i]!r} / label_idx {int(y[i])!r} disagree with the "
            f"checkpoint's class order {class_names!r}; re-run split and train with the same base.class_names."
        )
    return y.astype(np.int64)


def _prediction_rows(frame: pd.DataFrame, probs: np.ndarray, partition: str, class_names: list[str],
                     threshold: float) -> pd.DataFrame:
    pred = probs.argmax(axis=1)
    rows = pd.DataFrame({"row": frame["row"].to_numpy(), "image_id": frame["image_id"].to_numpy(),
                         "partition": partition, "label": frame["label"].to_numpy(),
                         "label_idx": frame["label_idx"].to_numpy()})
    for c, name in enumerate(class_names):
        rows[f"prob_{name}"] = probs[:, c]
    rows["pred_idx"] = pred
    rows["pred"] = np.asarray(class_names, dtype=object)[pred]
    rows["malignant_flag"] = malignant_flags(probs, class_names, threshold=threshold)  # as infer decides
    rows["group"] = frame["group"].to_numpy()
    rows["center"] = frame["center"].to_numpy()
    return rows


def _figure(ncols: int = 1) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(5.5 * ncols, 5.2))
    axes = fig.subplots(1, ncols, squeeze=False)
    fig.text(0.5, 0.985, DISCLAIMER, ha="center", va="top", fontsize=8, color="firebrick", wrap=True)
    return fig, axes[0]


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110, metadata={"Software": None})


def _titled(title: str, variant: str | None) -> str:
    """``center: <title>``: the variant first, so a figure shown alone says which model it describes."""
    return title if not variant else f"{variant}: {title}"


def _plot_curves(evaluation: Evaluation, path: Path, *, kind: str, variant: str | None = None) -> None:
    """Per-class one-vs-rest ROC (AUC in legend) or PR (AP in legend) on test."""
    m = evaluation.metrics
    records, x, y, stat = ((evaluation.roc, "fpr", "tpr", "auc") if kind == "roc"
                           else (evaluation.pr, "recall", "precision", "ap"))
    fig, (ax,) = _figure()
    for name in m["class_names"]:
        pts = [r for r in records if r["class"] == name]
        value = m["per_class"][name][stat]["value"]
        label = f"{name} ({stat.upper()} {value:.3f})" if value is not None else f"{name} (undefined)"
        style = "default" if kind == "roc" else "steps-post"
        ax.plot([r[x] for r in pts], [r[y] for r in pts], label=label, drawstyle=style)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlabel=x.upper() if kind == "roc" else "Recall", ylabel=y.upper() if kind == "roc" else "Precision",
           xlim=(0, 1), ylim=(0, 1.02),
           title=_titled(f"{'ROC' if kind == 'roc' else 'Precision-recall'} (one-vs-rest, test)", variant))
    ax.legend(loc="lower right" if kind == "roc" else "lower left")
    _save(fig, path)


def _plot_confusion(metrics: dict[str, Any], path: Path, *, variant: str | None = None) -> None:
    """Counts and row-normalised shares (each row = one actual class sums to 1), large cell text."""
    conf = metrics["confusion"]
    fig, axes = _figure(2)
    for ax, key, fmt, what in zip(axes, ("counts", "normalized"), ("{:d}", "{:.2f}"),
                                  ("counts", "share of each actual class")):
        data = np.asarray(conf[key])
        ax.imshow(data, cmap="Blues", vmin=0)
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=14,
                    color="white" if v > data.max() / 2 else "black")
        ticks = range(len(conf["labels"]))
        ax.set(xticks=ticks, yticks=ticks, xlabel="Predicted (argmax)", ylabel="Actual",
               title=_titled(f"Confusion ({what}, test)", variant))
        ax.set_xticklabels(conf["labels"], fontsize=11)
        ax.set_yticklabels(conf["labels"], fontsize=11)
    _save(fig, path)


def _plot_reliability(evaluation: Evaluation, path: Path, *, variant: str | None = None) -> None:
    """Reliability before/after temperature scaling; each calibrated point is labelled with its image count
    (a point over 3 images says little), and the bins' counts are drawn as bars below."""
    cal = evaluation.metrics["calibration"]
    fig, (ax,) = _figure()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    for key, label in (("before", f"before (ECE {cal['ece_before']:.3f})"),
                       ("after", f"after T={cal['temperature']:.2f} (ECE {cal['ece_after']:.3f})")):
        data = evaluation.reliability[key]
        pts = [(c, a, n) for c, a, n in zip(data["confidence"], data["accuracy"], data["count"]) if c is not None]
        ax.plot([c for c, _, _ in pts], [a for _, a, _ in pts], marker="o", label=label)
        if key == "after":
            for c, a, n in pts:
                ax.annotate(f"n={n}", (c, a), textcoords="offset points", xytext=(4, -10), fontsize=7)
    after = evaluation.reliability["after"]
    edges, counts = np.asarray(after["edges"]), np.asarray(after["count"], dtype=float)
    if counts.sum() > 0:  # bin counts as a histogram along the bottom (at most a fifth of the height)
        ax.bar(edges[:-1], 0.2 * counts / counts.max(), width=np.diff(edges), align="edge", alpha=0.2,
               color="tab:orange", label="images per bin (after; scaled)")
    ax.set(xlabel="Confidence (top label)", ylabel="Accuracy", xlim=(0, 1), ylim=(0, 1),
           title=_titled("Reliability (test, temperature fitted on val)", variant))
    ax.legend(loc="upper left")
    _save(fig, path)
