"""Grad-CAM heatmaps for a trained classifier, and their localisation against the lesion masks.

Heatmaps live in the prepared geometry (S, S) and are min-max scaled per image to [0, 1]
(``to_original_geometry`` maps them back onto the radiograph). The model handed in is never changed:
CAM hooks, ``eval()``, ``zero_grad()`` and weight randomisation all act on a deep copy.
NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from albumentations.core.composition import BaseCompose
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from tqdm import tqdm

from assurexray.assessment import localization as loc
from assurexray.assessment.gallery import Panel, select_cases
from assurexray.data.imaging import letterbox_geometry, to_original
from assurexray.data.manifests import open_images, read_split

logger = logging.getLogger(__name__)

__all__ = [
    "CAM_METHODS",
    "RANDOMIZATIONS",
    "ExplainConfig",
    "ExplainResult",
    "cam_method",
    "find_target_layer",
    "compute_heatmaps",
    "compute_heatmaps_per_layer",
    "randomized_copy",
    "to_original_geometry",
    "explain_variant",
]

#: CAM methods by their params.yaml name (``explain.method``).
CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "gradcamelementwise": GradCAMElementWise,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": ScoreCAM,
}
#: Adebayo et al. 2018 model randomisation: ``full`` re-initialises every layer; ``cascading`` the top of the
#: network, from the target layer to the classifier (the first step of their cascade that moves Grad-CAM).
RANDOMIZATIONS: tuple[str, ...] = ("full", "cascading")
TARGETS: tuple[str, ...] = ("predicted", "true")
LESION_CLASSES: tuple[str, ...] = ("Benign", "Malignant")

# A module qualifies as a target layer when it is (or contains) one of these and outputs a (B, C, H, W) map.
_CONV_OR_NORM = (nn.Conv2d, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_CANDIDATES_SHOWN = 20


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


def cam_method(name: str) -> type[BaseCAM]:
    """The CAM class registered under ``name``."""
    if name not in CAM_METHODS:
        raise ValueError(f"explain.method: unknown CAM method {name!r}; valid methods are {sorted(CAM_METHODS)}.")
    return CAM_METHODS[name]


def find_target_layer(
    model: nn.Module, *, name: str | None = None, input_shape: tuple[int, int, int] = (3, 64, 64)
) -> str:
    """Name of the CAM target layer: ``name`` if valid, else the last conv/norm block with a 4-D map.

    Found by probing a copy of the model with forward hooks on a zero input: the last module to finish
    whose output is (B, C, H, W) with H, W > 1 (so the 1x1 global pool is excluded). Containers finish
    after their children, hence ``layer4`` for ResNets and ``bn2`` for EfficientNets.
    """
    candidates, _ = _probe(model, input_shape)
    return _resolve_layer(candidates, name, model)


def compute_heatmaps(
    model: nn.Module,
    images: np.ndarray,
    target_classes: Sequence[int],
    *,
    transform: Callable[..., Any],
    method: str = "gradcam",
    target_layer: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """CAM heatmaps (N, S, S) float32 in [0, 1] of uint8 images (N, S, S) for the given class indices.

    ``transform`` maps one uint8 (S, S) image to a (C, S, S) tensor: a plain callable or an
    albumentations Compose (``assurexray.learning.transforms.eval_transform(meta)``, the one preprocessing).
    """
    maps = _heatmaps(model, images, target_classes, transform=transform, method=method, layers=[target_layer],
                     batch_size=batch_size, progress=progress)
    return maps[:, 0]


def compute_heatmaps_per_layer(
    model: nn.Module,
    images: np.ndarray,
    target_classes: Sequence[int],
    *,
    transform: Callable[..., Any],
    layers: Sequence[str],
    method: str = "gradcam",
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """:func:`compute_heatmaps` for each of ``layers``, from one forward and one backward pass per batch.

    pytorch-grad-cam hooks every layer at once (``compute_cam_per_layer``); its mean over layers is replaced
    by keeping each layer's map, so each equals that layer's own :func:`compute_heatmaps` (float rounding
    of the shared backward aside). The explain stage's layer search costs about one CAM pass, not one per
    candidate.
    """
    names = list(dict.fromkeys(layers))
    maps = _heatmaps(model, images, target_classes, transform=transform, method=method, layers=names,
                     batch_size=batch_size, progress=False)
    return {name: maps[:, i] for i, name in enumerate(names)}


def _heatmaps(
    model: nn.Module, images: np.ndarray, target_classes: Sequence[int], *, transform: Callable[..., Any],
    method: str, layers: Sequence[str | None], batch_size: int, progress: bool,
) -> np.ndarray:
    """Heatmaps (N, L, S, S) of ``layers`` (None = the automatic layer), one CAM pass per batch."""
    cam_cls = cam_method(method)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images: expected (N, S, S) prepared images, got shape {images.shape}.")
    targets = np.asarray(target_classes, dtype=np.int64)
    if targets.shape != (images.shape[0],):
        raise ValueError(f"target_classes: need one class per image ({images.shape[0]}), got {targets.shape}.")
    if batch_size < 1:
        raise ValueError(f"explain.batch_size must be >= 1, got {batch_size!r}.")
    if not layers:
        raise ValueError("layers: name at least one target layer.")
    n, size = images.shape[0], images.shape[1]
    out = np.zeros((n, len(layers), size, size), dtype=np.float32)
    if n == 0:
        return out
    clone = _cam_copy(model)
    sample = _apply(transform, images[0], size)
    candidates, n_outputs = _probe(clone, tuple(sample.shape))
    names = [_resolve_layer(candidates, name, model) for name in layers]
    if targets.min() < 0 or targets.max() >= n_outputs:
        raise ValueError(f"target_classes: indices must lie in [0, {n_outputs}), got {sorted(set(targets.tolist()))}.")
    modules = [clone.get_submodule(name) for name in names]
    # Gradients are needed only from the logits back to the target layers' outputs: letting just the last
    # parameterised module inside each layer require grad makes the backward stop at the earliest of them
    # (a container layer such as `blocks` would otherwise pull it through the whole backbone).
    clone.requires_grad_(False)
    for layer in modules:
        _last_with_parameters(layer, fallback=clone).requires_grad_(True)
    cam = cam_cls(model=clone, target_layers=modules)
    if len(modules) > 1:
        cam.aggregate_multi_layers = functools.partial(_each_layer, cam)  # keep every layer's map, not their mean
    device = _device_of(clone)  # inputs follow the model (CPU, or the GPU explain/infer loaded it on)
    cam.batch_size = batch_size  # read by ScoreCAM for its masked forward passes
    with _hooks_released(cam), torch.enable_grad():
        for start in tqdm(range(0, n, batch_size), desc=f"{method} heatmaps", disable=not progress):
            stop = min(start + batch_size, n)
            batch = torch.stack([_apply(transform, img, size) for img in images[start:stop]])  # (B, C, S, S)
            maps = cam(input_tensor=batch.to(device), targets=[ClassifierOutputTarget(int(c)) for c in targets[start:stop]])
            maps = maps[:, None] if maps.ndim == 3 else maps  # one layer: (B, S, S); several: (B, L, S, S)
            out[start:stop] = np.stack([_minmax(maps[:, i]) for i in range(len(modules))], axis=1)
    return out


def _last_with_parameters(layer: nn.Module, *, fallback: nn.Module) -> nn.Module:
    """The last module (registration order, which timm keeps in forward order) holding parameters of its own:
    its output feeds the layer's output, so that output requires grad. ``fallback`` when there is none."""
    owners = [m for m in layer.modules() if any(True for _ in m.parameters(recurse=False))]
    return owners[-1] if owners else fallback


def _each_layer(cam: BaseCAM, cam_per_layer: list[np.ndarray]) -> np.ndarray:
    """(B, L, S, S): each layer's map scaled as pytorch-grad-cam scales the one map of a single layer."""
    pairs = cam.activations_and_grads
    if cam.uses_gradients and (
        len(pairs.activations) != len(cam_per_layer) or len(pairs.gradients) != len(cam_per_layer)
        or any(a.shape != g.shape for a, g in zip(pairs.activations, pairs.gradients))
    ):
        raise RuntimeError(
            f"Grad-CAM over {len(cam_per_layer)} layers at once got {len(pairs.activations)} activations and "
            f"{len(pairs.gradients)} gradients that do not pair up; compute the layers one at a time "
            "(compute_heatmaps)."
        )
    return np.stack([scale_cam_image(np.maximum(maps[:, 0], 0)) for maps in cam_per_layer], axis=1)


def randomized_copy(
    model: nn.Module,
    *,
    seed: int,
    mode: str = "full",
    target_layer: str | None = None,
    input_shape: tuple[int, int, int] = (3, 64, 64),
) -> nn.Module:
    """A copy of ``model`` with re-initialised weights (Adebayo et al. 2018 model-randomisation test).

    ``full`` resets every layer; ``cascading`` resets the target layer and every module run after it.
    Uses a forked torch RNG seeded with ``seed``, so the caller's RNG state is untouched.
    """
    if mode not in RANDOMIZATIONS:
        raise ValueError(f"explain.randomization: expected one of {list(RANDOMIZATIONS)}, got {mode!r}.")
    clone = copy.deepcopy(model).eval()
    names = [n for n, _ in clone.named_modules()]
    if mode == "cascading":
        layer = find_target_layer(clone, name=target_layer, input_shape=input_shape)
        order = _call_order(clone, input_shape)
        names = order[order.index(layer) :]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module_name in names:
            module = clone.get_submodule(module_name)
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
            else:
                for p in own:
                    nn.init.normal_(p, std=0.02)
    return clone


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

    Scored on every annotated tumour image of the test partition; the IoU threshold of ``iou@val`` is
    chosen on the annotated tumour images of validation. Tumour images without a mask are skipped and
    counted (``n_skipped_no_mask``).
    """
    images, masks, parts = _load_inputs(prepared_dir, split_dir, predictions_path, class_names)
    size = images.shape[1]
    target_col = "pred_idx" if config.target == "predicted" else "label_idx"
    input_shape = tuple(_apply(transform, images[0], size).shape)
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
    val_thr = _val_threshold(val_maps, val_masks, config)
    base_thr = _val_threshold(_baselines(val, size, config.baseline_sigma), val_masks, config)

    test_images, test_targets = images[test["row"].to_numpy()], test[target_col].to_numpy()
    model_maps = heatmaps(model, test_images, test_targets)
    random_model = randomized_copy(
        model, seed=seed, mode=config.randomization, target_layer=layer, input_shape=input_shape
    )
    random_maps = heatmaps(random_model, test_images, test_targets)
    base_maps = _baselines(test, size, config.baseline_sigma)

    per_image = test[["row", "image_id", "label", "pred"]].copy()
    per_image["target_class"] = [class_names[int(c)] for c in test_targets]
    per_image["target_kind"] = config.target
    per_image["prob"] = [float(test.at[i, f"prob_{c}"]) for i, c in enumerate(per_image["target_class"])]
    model_scores = _score_table(model_maps, test_masks, config, val_thr)
    base_scores = _score_table(base_maps, test_masks, config, base_thr).add_prefix("baseline_")
    per_image = pd.concat([per_image, model_scores, base_scores], axis=1)
    per_image["rank_correlation"] = [loc.rank_correlation(a, b) for a, b in zip(model_maps, random_maps)]

    boot = {"resamples": config.bootstrap_resamples, "seed": seed, "ci_level": config.ci_level}
    rho = per_image["rank_correlation"].to_numpy(dtype=np.float64)
    sanity = loc.bootstrap_summary({"rho": rho[~np.isnan(rho)]}, **boot)
    metrics = {
        "method": config.method,
        "target": config.target,
        "target_layer": layer,
        "layer_search": layer_scores,
        "n_images": int(len(test)),
        "n_skipped_no_mask": n_skipped,
        "n_val_images": int(len(val)),
        "val_threshold": val_thr,
        "baseline_val_threshold": base_thr,
        "thresholds": list(config.thresholds),
        "model": _loc_block(per_image, list(model_scores.columns), "", boot),
        "baseline": _loc_block(per_image, list(model_scores.columns), "baseline_", boot),
        "sanity": {
            "randomized_rank_correlation": sanity["rho"],
            "randomization": config.randomization,
            "n": sanity["n"],
            "n_undefined": int(np.isnan(rho).sum()),  # a constant map has no ranks to correlate
        },
    }
    chosen = select_cases(parts["test"], class_names=class_names, top_k=config.gallery_top_k)
    panels = _gallery_panels(chosen, images, masks, class_names, heatmaps=heatmaps, model=model,
                             target_col=target_col)
    return ExplainResult(metrics=metrics, per_image=per_image, panels=panels)


_SPLIT_COLUMNS = ("row", "image_id", "label", "label_idx", "has_mask", "scale", "pad_x", "pad_y",
                  "orig_width", "orig_height")


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
    def summary(df: pd.DataFrame) -> dict[str, Any]:
        return loc.bootstrap_summary({c: df[prefix + c].to_numpy(dtype=np.float64) for c in columns}, **boot)

    return {"overall": summary(per_image),
            "per_class": {c: summary(per_image[per_image["label"] == c]) for c in LESION_CLASSES}}


def layer_candidates(model: nn.Module, *, input_shape: tuple[int, int, int], last: int) -> list[str]:
    """The ``last`` block-level target layers (names at most two levels deep), in forward order.

    A container whose output is its last child's tensor is the same layer twice: only the child is kept.
    """
    candidates, _ = _probe(model, input_shape, distinct_outputs=True)
    shallow = [name for name in candidates if name.count(".") <= 1]
    return shallow[-last:] if last > 0 else []


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
        hits = [loc.pointing_game(m, k, tolerance_px=config.pointing_tolerance_px) for m, k in zip(maps, val_masks)]
        energy = [loc.energy_inside(m, k) for m, k in zip(maps, val_masks)]
        scores[name] = (float(np.mean(hits)), float(np.mean(energy)), depth)
    best = max(scores, key=lambda n: scores[n])
    logger.info("target layer %s chosen on %d validation images (pointing game %s)", best, len(val_images),
                {n: round(v[0], 3) for n, v in scores.items()})
    return best, {n: v[0] for n, v in scores.items()}


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
) -> dict[str, list[Panel]]:
    """Heatmaps for the gallery's selected test cases (computed once per image)."""
    frames = [df for df in chosen.values() if len(df)]
    if not frames:
        return {key: [] for key in chosen}
    unique = pd.concat(frames).drop_duplicates("row")
    maps = heatmaps(model, images[unique["row"].to_numpy()], unique[target_col].to_numpy(), progress=False)
    by_row = dict(zip(unique["row"].tolist(), maps))
    panels: dict[str, list[Panel]] = {}
    for key, df in chosen.items():
        panels[key] = []
        for r in df.to_dict("records"):
            mask = np.asarray(masks[r["row"]])
            panels[key].append(Panel(
                image_id=r["image_id"], image=np.asarray(images[r["row"]]), heatmap=by_row[r["row"]],
                mask=mask if r["has_mask"] == 1 and mask.any() else None, true_class=r["label"],
                pred_class=r["pred"], probs={c: float(r[f"prob_{c}"]) for c in class_names},
            ))
    return panels


def _probe(
    model: nn.Module, input_shape: tuple[int, ...], *, distinct_outputs: bool = False
) -> tuple[list[str], int]:
    """Candidate target layers (forward-finish order) and the number of model outputs, from a copy.

    With ``distinct_outputs`` a tensor returned again by a later-finishing module (a container passing on
    its last child's output, or an in-place residual add/activation) is listed once, under the outer name.
    """
    clone = copy.deepcopy(model).eval()
    finished: list[str] = []
    slot: dict[int, tuple[int, torch.Tensor]] = {}  # id -> (position, tensor); holding it keeps ids unique

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[-2:]) > 1:
                if distinct_outputs and id(output) in slot:
                    finished[slot[id(output)][0]] = name
                    return
                slot[id(output)] = (len(finished), output)
                finished.append(name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in clone.named_modules()
               if n and any(isinstance(x, _CONV_OR_NORM) for x in m.modules())]
    try:
        with torch.no_grad():
            logits = clone(torch.zeros(1, *input_shape, device=_device_of(clone)))
    finally:
        for h in handles:
            h.remove()
    last = list(dict.fromkeys(reversed(finished)))[::-1]  # each name at its last finish
    return last, int(logits.shape[-1])


def _resolve_layer(candidates: list[str], name: str | None, model: nn.Module) -> str:
    if not candidates:
        raise ValueError(
            f"{type(model).__name__}: no conv/norm module produces a 4-D feature map; Grad-CAM needs a CNN."
        )
    if name is None:
        return candidates[-1]
    if name not in candidates:
        shown = candidates[-_CANDIDATES_SHOWN:]
        raise ValueError(
            f"explain.target_layer: {name!r} is not a module of {type(model).__name__} producing a 4-D "
            f"feature map; valid candidates (last {len(shown)} of {len(candidates)}, in forward order): "
            f"{shown}. Use one of them, or null for automatic."
        )
    return name


def _call_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Module names in the order their forward starts (an eval-mode, no-grad probe; hooks removed)."""
    started: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, n=n: started.append(n))
               for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=_device_of(model)))
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(started))


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a parameter-free module)."""
    return next(model.parameters(), torch.empty(0)).device


def _cam_copy(model: nn.Module) -> nn.Module:
    """A private eval-mode copy: CAM's hooks, eval(), zero_grad() and requires_grad changes land here."""
    return copy.deepcopy(model).eval()


@contextlib.contextmanager
def _hooks_released(cam: BaseCAM) -> Iterator[BaseCAM]:
    """Release the CAM's hooks on exit. pytorch_grad_cam's own ``__exit__`` also does this but swallows
    IndexError (it prints and returns True), which would leave heatmaps silently unfilled."""
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()


def _apply(transform: Callable[..., Any], image: np.ndarray, size: int) -> torch.Tensor:
    image = np.ascontiguousarray(image)
    out = transform(image=image)["image"] if isinstance(transform, BaseCompose) else transform(image)
    tensor = torch.as_tensor(out, dtype=torch.float32)
    if tensor.ndim != 3 or tuple(tensor.shape[1:]) != (size, size):
        raise ValueError(
            f"transform: expected a (C, {size}, {size}) tensor for a ({size}, {size}) image, got "
            f"{tuple(tensor.shape)}; heatmaps must stay in the prepared geometry (use eval_transform(meta))."
        )
    return tensor


def _minmax(maps: np.ndarray) -> np.ndarray:
    """Scale each map to [0, 1]; a constant map becomes all zeros."""
    maps = np.asarray(maps, dtype=np.float32)
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)
