"""The explain stage: Grad-CAM heatmaps of test images scored against the lesion masks, layer and threshold
chosen on validation only, with a centred-Gaussian baseline and a randomised-weights sanity check.

The heatmaps come from :mod:`assurexray.assessment.cam`; they live in the prepared geometry (S, S)
(``to_original_geometry`` maps them back onto the radiograph). NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from torch import nn

from assurexray.assessment import localization as loc
from assurexray.assessment.cam import (
    RANDOMIZATIONS,
    apply_transform,
    cam_method,
    compute_heatmaps,
    compute_heatmaps_per_layer,
    find_target_layer,
    layer_candidates,
    randomized_copy,
)
from assurexray.assessment.gallery import Panel, select_cases
from assurexray.assessment.lesion_maps import compute_lesion_maps
from assurexray.data.imaging import letterbox_geometry, to_original
from assurexray.data.manifests import open_images, read_split
from assurexray.learning.lesion_head import has_lesion_head

logger = logging.getLogger(__name__)

__all__ = ["ExplainConfig", "ExplainResult", "TARGETS", "LESION_CLASSES", "to_original_geometry", "explain_variant"]

TARGETS: tuple[str, ...] = ("predicted", "true")
LESION_CLASSES: tuple[str, ...] = ("Benign", "Malignant")


@dataclass(frozen=True)
class ExplainConfig:
    """The ``explain`` section of params.yaml (see the comments there for meanings and units)."""

    method: str = "gradcam"
    target_layer: str | None = None
    target: str = "predicted"
    batch_size: int = 16
    pointing_tolerance_px: float = 3
    thresholds: tuple[float, ...] = (0.3, 0.5, 0.7)
    baseline_sigma: float = 0.25
    gallery_top_k: int = 4
    bootstrap_resamples: int = 1000
    ci_level: float = 0.95
    randomization: str = "full"
    layer_search: int = 4

    def __post_init__(self) -> None:
        cam_method(self.method)
        if not isinstance(self.layer_search, int) or self.layer_search < 0:
            raise ValueError(f"explain.layer_search: expected an integer >= 0, got {self.layer_search!r}.")
        if self.target not in TARGETS:
            raise ValueError(f"explain.target: expected one of {list(TARGETS)}, got {self.target!r}.")
        if self.randomization not in RANDOMIZATIONS:
            raise ValueError(
                f"explain.randomization: expected one of {list(RANDOMIZATIONS)}, got {self.randomization!r}."
            )
        if not self.thresholds or not all(0 < t < 1 for t in self.thresholds):
            raise ValueError(f"explain.thresholds: need values strictly in (0, 1), got {self.thresholds!r}.")
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))


@dataclass(frozen=True)
class ExplainResult:
    """What the explain stage writes: metrics.json content, per_image.csv rows and gallery panels."""

    metrics: dict[str, Any]
    per_image: pd.DataFrame
    panels: dict[str, list[Panel]] = field(default_factory=dict)


def to_original_geometry(
    heatmap: np.ndarray, *, scale: float, pad_x: int, pad_y: int, orig_width: int, orig_height: int
) -> np.ndarray:
    """Map an (S, S) prepared-geometry array back onto the original radiograph (orig_height, orig_width).

    Crops the letterbox padding, then resizes (prepared = orig * scale + pad), through
    ``assurexray.data.imaging`` so the geometry has one definition; index.csv's values must agree with it.
    """
    size = heatmap.shape[0]
    geom = letterbox_geometry(orig_width, orig_height, size)
    if abs(geom.scale - scale) > 1e-4 * geom.scale or (geom.pad_x, geom.pad_y) != (pad_x, pad_y):
        raise ValueError(
            f"letterbox geometry mismatch for a {orig_width}x{orig_height} image at {size} px: index.csv says "
            f"scale={scale!r}, pad=({pad_x}, {pad_y}); imaging computes {geom}. Re-run the prepare stage."
        )
    return to_original(heatmap, geom, orig_width, orig_height)


def explain_variant(
    *,
    model: nn.Module,
    transform: Callable[..., Any],
    prepared_dir: str | Path,
    split_dir: str | Path,
    predictions_path: str | Path,
    config: ExplainConfig,
    seed: int,
    class_names: Sequence[str],
) -> ExplainResult:
    """Heatmaps, localisation metrics with bootstrap CIs, the randomisation check and gallery panels.

    Scored on every annotated tumour image of the test partition, whatever the classifier called it (the
    figures are also split by correctly and incorrectly classified); the IoU threshold of ``iou@val`` is
    chosen on the annotated tumour images of validation. Tumour images without a mask are skipped and
    counted (``n_skipped_no_mask``). A model with a lesion head is scored twice, its lesion map beside its
    Grad-CAM, and every map-vs-map comparison is a paired difference on the same case-group resamples.
    """
    images, masks, parts = _load_inputs(prepared_dir, split_dir, predictions_path, class_names)
    size = images.shape[1]
    target_col = "pred_idx" if config.target == "predicted" else "label_idx"
    input_shape = tuple(apply_transform(transform, images[0], size).shape)
    val, _ = _annotated(parts["val"], masks)
    test, n_skipped = _annotated(parts["test"], masks)
    if n_skipped:
        logger.warning("%d test tumour image(s) have no lesion mask: skipped and counted", n_skipped)
    val_masks, test_masks = masks[val["row"].to_numpy()], masks[test["row"].to_numpy()]
    val_images, val_targets = images[val["row"].to_numpy()], val[target_col].to_numpy()
    layer, layer_scores = _choose_layer(model, val_images, val_targets, val_masks, transform=transform,
                                        config=config, input_shape=input_shape)
    heatmaps = functools.partial(
        compute_heatmaps, transform=transform, method=config.method, target_layer=layer,
        batch_size=config.batch_size,
    )
    val_maps = heatmaps(model, val_images, val_targets)
    val_base_maps = _baselines(val, size, config.baseline_sigma)
    val_thr = _val_threshold(val_maps, val_masks, config)
    base_thr = _val_threshold(val_base_maps, val_masks, config)

    test_images, test_targets = images[test["row"].to_numpy()], test[target_col].to_numpy()
    model_maps = heatmaps(model, test_images, test_targets)
    random_model = randomized_copy(
        model, seed=seed, mode=config.randomization, target_layer=layer, input_shape=input_shape
    )
    random_maps = heatmaps(random_model, test_images, test_targets)
    base_maps = _baselines(test, size, config.baseline_sigma)
    lesion = has_lesion_head(model)
    if lesion:  # class-agnostic: the map says where a tumour is, whatever the predicted class
        lesion_maps = functools.partial(compute_lesion_maps, transform=transform, batch_size=config.batch_size)
        val_lesion = lesion_maps(model, val_images)
        lesion_thr = _val_threshold(val_lesion, val_masks, config)
        test_lesion = lesion_maps(model, test_images)

    per_image = test[["row", "image_id", "label", "pred", "center", "group"]].copy()
    per_image["correct"] = (test["label_idx"] == test["pred_idx"]).astype(int)
    per_image["target_class"] = [class_names[int(c)] for c in test_targets]
    per_image["target_kind"] = config.target
    per_image["prob"] = [float(test.at[i, f"prob_{c}"]) for i, c in enumerate(per_image["target_class"])]
    model_scores = _score_table(model_maps, test_masks, config, val_thr)
    base_scores = _score_table(base_maps, test_masks, config, base_thr).add_prefix("baseline_")
    tables = [per_image, model_scores, base_scores]
    if lesion:
        tables.append(_score_table(test_lesion, test_masks, config, lesion_thr).add_prefix("lesion_"))
    per_image = pd.concat(tables, axis=1)
    per_image["rank_correlation"] = [loc.rank_correlation(a, b) for a, b in zip(model_maps, random_maps)]

    boot = {"resamples": config.bootstrap_resamples, "seed": seed, "ci_level": config.ci_level}
    rho = per_image["rank_correlation"].to_numpy(dtype=np.float64)
    defined = ~np.isnan(rho)
    sanity = loc.bootstrap_summary({"rho": rho[defined]}, groups=per_image["group"].to_numpy()[defined], **boot)
    columns = list(model_scores.columns)
    validation = {"pointing_game": _mean_pointing_game(val_maps, val_masks, config),
                  "baseline_pointing_game": _mean_pointing_game(val_base_maps, val_masks, config),
                  "n": int(len(val))}
    comparisons = {"gradcam_vs_baseline": _paired_block(per_image, columns, "", "baseline_", boot)}
    if lesion:
        validation["lesion_pointing_game"] = _mean_pointing_game(val_lesion, val_masks, config)
        comparisons["lesion_map_vs_baseline"] = _paired_block(per_image, columns, "lesion_", "baseline_", boot)
        comparisons["lesion_map_vs_gradcam"] = _paired_block(per_image, columns, "lesion_", "", boot)
    metrics = {
        "method": config.method,
        "target": config.target,
        "target_layer": layer,
        "layer_search": layer_scores,
        "n_images": int(len(test)),
        "n_skipped_no_mask": n_skipped,
        "n_val_images": int(len(val)),
        "val_threshold": val_thr,
        # what chooses among explain settings (method, layer search): never the test partition's figures
        "validation": validation,
        "baseline_val_threshold": base_thr,
        "thresholds": list(config.thresholds),
        "intervals": "case-clustered bootstrap (whole case groups resampled); paired: every map is scored on "
                     "the same resamples",
        "model": _loc_block(per_image, columns, "", boot),
        "baseline": _loc_block(per_image, columns, "baseline_", boot),
        # the lesion head's map, scored like Grad-CAM (None for a model without a lesion head)
        "lesion_map": _loc_block(per_image, columns, "lesion_", boot) if lesion else None,
        "lesion_val_threshold": lesion_thr if lesion else None,
        "comparisons": comparisons,
        "sanity": {
            "randomized_rank_correlation": sanity["rho"],
            "randomization": config.randomization,
            "n": sanity["n"],
            "n_undefined": int(np.isnan(rho).sum()),  # a constant map has no ranks to correlate
        },
    }
    chosen = select_cases(parts["test"], class_names=class_names, top_k=config.gallery_top_k)
    panels = _gallery_panels(chosen, images, masks, class_names, heatmaps=heatmaps, model=model,
                             target_col=target_col, lesion_maps=lesion_maps if lesion else None)
    return ExplainResult(metrics=metrics, per_image=per_image, panels=panels)


_SPLIT_COLUMNS = ("row", "image_id", "label", "label_idx", "has_mask", "scale", "pad_x", "pad_y",
                  "orig_width", "orig_height", "center", "group")


def _load_inputs(
    prepared_dir: str | Path, split_dir: str | Path, predictions_path: str | Path, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, dict[str, pd.DataFrame]]:
    """The prepared cache (memory-mapped) and the val/test split rows joined with their predictions."""
    prepared_dir, split_dir, predictions_path = Path(prepared_dir), Path(split_dir), Path(predictions_path)
    images, masks = open_images(prepared_dir, masks=True)
    if not predictions_path.is_file():
        raise FileNotFoundError(f"{predictions_path}: not found; run the evaluate stage first (dvc repro).")
    preds = pd.read_csv(predictions_path, dtype={"image_id": str})
    pred_cols = ["row", "pred_idx", "pred", *[f"prob_{c}" for c in class_names]]
    _require(preds, ["partition", *pred_cols], predictions_path)
    parts: dict[str, pd.DataFrame] = {}
    for part in ("val", "test"):
        path = split_dir / f"{part}.csv"
        split = read_split(split_dir, part, n_images=images.shape[0], columns=_SPLIT_COLUMNS)
        ours = preds.loc[preds["partition"] == part, pred_cols]
        dup = ours.loc[ours["row"].duplicated(), "row"].tolist()
        if dup:
            raise ValueError(f"{predictions_path}: rows {dup[:5]} appear twice in partition {part!r}; re-run evaluate.")
        merged = split[list(_SPLIT_COLUMNS)].merge(ours, on="row", how="left")
        missing = merged.loc[merged["pred_idx"].isna(), "image_id"].tolist()
        if missing:
            raise ValueError(
                f"{predictions_path}: no {part!r} prediction for {len(missing)} image(s) of {path}, e.g. "
                f"{missing[:3]}; predictions are stale: re-run evaluate for this split."
            )
        parts[part] = merged.astype({"pred_idx": int, "label_idx": int, "has_mask": int})
    return images, masks, parts


def _require(df: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}. Re-run the producing stage.")


def _annotated(df: pd.DataFrame, masks: np.ndarray) -> tuple[pd.DataFrame, int]:
    """Tumour rows with a non-empty lesion mask, and how many tumour rows lack one."""
    tumour = df[df["label"].isin(LESION_CLASSES)]
    rows = tumour["row"].to_numpy()
    has = (tumour["has_mask"].to_numpy() == 1) & np.asarray(masks[rows]).reshape(len(rows), -1).any(axis=1)
    return tumour[has].reset_index(drop=True), int((~has).sum())


def _score_table(maps: np.ndarray, masks: np.ndarray, config: ExplainConfig, val_thr: float) -> pd.DataFrame:
    return pd.DataFrame(loc.score_batch(maps, masks, thresholds=config.thresholds,
                                        tolerance_px=config.pointing_tolerance_px, val_threshold=val_thr))


def _loc_block(per_image: pd.DataFrame, columns: list[str], prefix: str, boot: dict[str, Any]) -> dict[str, Any]:
    """One map's figures with cluster-bootstrap CIs: overall, per class, per centre, by classification outcome."""
    def summary(df: pd.DataFrame) -> dict[str, Any]:
        return loc.bootstrap_summary({c: df[prefix + c].to_numpy(dtype=np.float64) for c in columns},
                                     groups=df["group"].to_numpy(), **boot)

    return _breakdown(per_image, summary)


def _paired_block(per_image: pd.DataFrame, columns: list[str], first: str, second: str,
                  boot: dict[str, Any]) -> dict[str, Any]:
    """Map ``first`` minus map ``second``, image by image, with paired cluster-bootstrap CIs, broken down
    like :func:`_loc_block`."""
    def summary(df: pd.DataFrame) -> dict[str, Any]:
        return loc.paired_differences({c: df[first + c].to_numpy(dtype=np.float64) for c in columns},
                                      {c: df[second + c].to_numpy(dtype=np.float64) for c in columns},
                                      groups=df["group"].to_numpy(), **boot)

    return _breakdown(per_image, summary)


def _breakdown(per_image: pd.DataFrame, summary: Callable[[pd.DataFrame], dict[str, Any]]) -> dict[str, Any]:
    """``summary`` over all images, per tumour class, per centre and split by correctly / incorrectly classified
    (localisation is scored on the true lesion; the split shows how much misclassification it hides)."""
    return {
        "overall": summary(per_image),
        "per_class": {c: summary(per_image[per_image["label"] == c]) for c in LESION_CLASSES},
        "per_center": {str(c): summary(df) for c, df in per_image.groupby("center", sort=True)},
        "by_outcome": {"correct": summary(per_image[per_image["correct"] == 1]),
                       "incorrect": summary(per_image[per_image["correct"] == 0])},
    }


def _choose_layer(
    model: nn.Module, val_images: np.ndarray, val_targets: np.ndarray, val_masks: np.ndarray, *,
    transform: Callable[..., Any], config: ExplainConfig, input_shape: tuple[int, ...],
) -> tuple[str, dict[str, float]]:
    """The target layer: ``config.target_layer`` when set, else chosen on VALIDATION images only.

    The deepest conv/norm layer of a small-input CNN is often a 4x4 or 5x5 map that cannot point at a
    lesion, while a slightly earlier block can: among the last ``layer_search`` block-level layers the one
    with the best validation pointing game (then energy inside the mask; then the deeper one) is used,
    so the test partition never influences the choice. Returns the layer and the validation scores.
    """
    default = find_target_layer(model, name=config.target_layer, input_shape=input_shape)
    if config.target_layer is not None or config.layer_search == 0 or len(val_images) == 0:
        return default, {}
    names = layer_candidates(model, input_shape=input_shape, last=config.layer_search)
    names = list(dict.fromkeys([*names, default]))
    scores: dict[str, tuple[float, float, int]] = {}
    per_layer = compute_heatmaps_per_layer(model, val_images, val_targets, transform=transform, layers=names,
                                           method=config.method, batch_size=config.batch_size)
    for depth, name in enumerate(names):
        maps = per_layer[name]
        energy = [loc.energy_inside(m, k) for m, k in zip(maps, val_masks)]
        scores[name] = (_mean_pointing_game(maps, val_masks, config), float(np.mean(energy)), depth)
    best = max(scores, key=lambda n: scores[n])
    logger.info("target layer %s chosen on %d validation images (pointing game %s)", best, len(val_images),
                {n: round(v[0], 3) for n, v in scores.items()})
    return best, {n: v[0] for n, v in scores.items()}


def _mean_pointing_game(maps: np.ndarray, masks: np.ndarray, config: ExplainConfig) -> float | None:
    hits = [loc.pointing_game(m, k, tolerance_px=config.pointing_tolerance_px) for m, k in zip(maps, masks)]
    return float(np.mean(hits)) if hits else None


def _val_threshold(val_maps: np.ndarray, val_masks: np.ndarray, config: ExplainConfig) -> float:
    if len(val_maps):
        return loc.choose_threshold(val_maps, val_masks)
    fallback = float(np.median(config.thresholds))
    logger.warning("no annotated tumour image in validation: iou@val uses the median threshold %g", fallback)
    return fallback


def _baselines(df: pd.DataFrame, size: int, sigma: float) -> np.ndarray:
    out = np.zeros((len(df), size, size), dtype=np.float32)
    for i, r in enumerate(df.itertuples(index=False)):
        box = loc.content_box(scale=float(r.scale), pad_x=int(r.pad_x), pad_y=int(r.pad_y),
                              orig_width=int(r.orig_width), orig_height=int(r.orig_height), size=size)
        out[i] = loc.gaussian_baseline(box, size=size, sigma=sigma)
    return out


def _gallery_panels(
    chosen: dict[str, pd.DataFrame], images: np.ndarray, masks: np.ndarray, class_names: Sequence[str], *,
    heatmaps: Callable[..., np.ndarray], model: nn.Module, target_col: str,
    lesion_maps: Callable[..., np.ndarray] | None = None,
) -> dict[str, list[Panel]]:
    """Heatmaps (and lesion maps) for the gallery's selected test cases (computed once per image)."""
    frames = [df for df in chosen.values() if len(df)]
    if not frames:
        return {key: [] for key in chosen}
    unique = pd.concat(frames).drop_duplicates("row")
    maps = heatmaps(model, images[unique["row"].to_numpy()], unique[target_col].to_numpy(), progress=False)
    by_row = dict(zip(unique["row"].tolist(), maps))
    lesion_by_row = {}
    if lesion_maps is not None:
        lesion_by_row = dict(zip(unique["row"].tolist(),
                                 lesion_maps(model, images[unique["row"].to_numpy()], progress=False)))
    panels: dict[str, list[Panel]] = {}
    for key, df in chosen.items():
        panels[key] = []
        for r in df.to_dict("records"):
            mask = np.asarray(masks[r["row"]])
            panels[key].append(Panel(
                image_id=r["image_id"], image=np.asarray(images[r["row"]]), heatmap=by_row[r["row"]],
                mask=mask if r["has_mask"] == 1 and mask.any() else None, true_class=r["label"],
                pred_class=r["pred"], probs={c: float(r[f"prob_{c}"]) for c in class_names},
                lesion_map=lesion_by_row.get(r["row"]),
            ))
    return panels


