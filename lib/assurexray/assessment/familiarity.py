"""The input check: how unlike the training images an input is, on the classifier's own features.

Why: a classifier gives every input a class and, often, a confident probability, whatever it is shown; a model
trained on the synthetic sample scores real radiographs (and holiday photos) as readily as its own kind. The
check says when an input lies outside what the model saw, so its scores can be read for what they are worth.

The score (documented in docs/input-check.md): the classifier's own features ``f(x)``: the channel means
(global average pool) of the feature map of every backbone stage (timm ``forward_intermediates``; 512 numbers
for tf_efficientnet_lite0; an ensemble's members side by side), a Gaussian fitted on the TRAINING partition (one
mean per class, one covariance shared by the classes, Ledoit-Wolf shrinkage so it is invertible with fewer
images than features), and

    input_distance(x) = min_k sqrt((f(x) - mu_k)^T  Sigma^-1  (f(x) - mu_k))      (Mahalanobis, nearest class)

(Lee et al., NeurIPS 2018, who also pool every stage). Why every stage and not only the penultimate layer
(``forward_head(pre_logits=True)``): on the sample model the penultimate features let a flat grey image, a page
of text and a colour gradient through, and a fifth of the real BTXRD excerpt; the stage means caught all of
them (docs/input-check.md has the numbers). The threshold is the ``quantile`` (e.g. 0.99) of the VALIDATION
images' distances (an observed distance), so at most 1 % of validation images are flagged, by construction; an
input above it is ``unfamiliar``.
No mirror TTA: the features are the plain forward pass. Evaluate writes the fit beside operating_point.json as
``familiarity.npz`` (plain arrays, read without unpickling), bound to the model's SHA-256 as the operating point
is. The check is a warning, not a guard: a familiar input can still be misclassified. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from assurexray.core.atomic import atomic_path
from assurexray.learning.prediction import Predictor, default_operating_point_path

__all__ = [
    "FAMILIARITY_FILE",
    "SCORE_NAME",
    "UNFAMILIAR_WARNING",
    "Familiarity",
    "pooled_features",
    "fit_familiarity",
    "fit_input_check",
    "familiarity_block",
    "write_familiarity",
    "load_familiarity",
    "familiarity_path",
    "find_familiarity",
]

logger = logging.getLogger(__name__)

#: The file evaluate writes beside operating_point.json (metrics/<variant>/eval/).
FAMILIARITY_FILE = "familiarity.npz"
#: What ``input_distance`` is, as metrics.json and the file record it.
SCORE_NAME = "mahalanobis_nearest_class"
#: The words shown with an unfamiliar input (app warning, infer header).
UNFAMILIAR_WARNING = "unlike the images this model was trained on: its scores mean little here"
_FORMAT = 1  # version of the file's layout
_ARRAYS = ("means", "precision")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member dates: the same fit gives the same bytes (DVC sees no change)


@dataclass(frozen=True)
class Familiarity:
    """A Gaussian fitted on the training partition's features and the validation threshold on its distance."""

    means: np.ndarray  # (K, D) float64, one row per class present in training (``class_names`` order)
    precision: np.ndarray  # (D, D) float32, inverse of the shared, shrunk covariance
    threshold: float  # ``quantile`` of the validation images' distances: above it = unfamiliar
    quantile: float
    model_sha256: str  # the model (or ensemble identity) whose features these are
    class_names: tuple[str, ...]  # classes of ``means``' rows
    shrinkage: float  # Ledoit-Wolf shrinkage weight (0 = sample covariance, 1 = scaled identity)
    n_train: int
    n_val: int
    source: Path | None = None  # the file it was read from; None when fitted in memory

    @property
    def feature_dim(self) -> int:
        return int(self.means.shape[1])

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance ``(n,)`` of features ``(n, D)`` to the nearest class mean."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"features have shape {features.shape!r}; this input check expects (n, "
                             f"{self.feature_dim}) (the model's pooled features).")
        precision = self.precision.astype(np.float64)
        squared = [np.einsum("nd,de,ne->n", features - mean, precision, features - mean) for mean in self.means]
        return np.sqrt(np.maximum(np.min(squared, axis=0), 0.0))  # (n,): the nearest class

    def unfamiliar(self, distances: np.ndarray) -> np.ndarray:
        """``distance > threshold`` as a bool array."""
        return np.asarray(distances) > self.threshold


def pooled_features(predictor: Predictor, boxed: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Stage-pooled features ``(n, D)`` float32 of letterboxed uint8 images ``(n, S, S)``, preprocessed as
    :meth:`Predictor.logits` preprocesses them: the channel means of every backbone stage's feature map. An
    ensemble's members' features side by side (``D`` = their sum): each member has its own feature space, and an
    average of two spaces means nothing."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")
    for path, model in zip(predictor.model_paths, predictor.models):
        if not hasattr(model, "forward_intermediates") or getattr(model, "feature_info", None) is None:
            raise ValueError(f"{path}: the input check reads every stage of a timm backbone (forward_intermediates "
                             f"and feature_info); {type(model).__name__} has none. Use an EfficientNet/ResNet.")
    transform = predictor.transform
    device = next(predictor.models[0].parameters()).device
    out = []
    for start in range(0, len(boxed), batch_size):
        batch = torch.stack([transform(image=img)["image"] for img in boxed[start:start + batch_size]]).to(device)
        members = []
        with torch.inference_mode():
            for model in predictor.models:
                stages = model.forward_intermediates(batch, indices=len(model.feature_info),
                                                     intermediates_only=True)  # each (B, C_s, S/r_s, S/r_s)
                members += [stage.float().mean(dim=(2, 3)).cpu().numpy() for stage in stages]  # each (B, C_s)
        out.append(np.concatenate(members, axis=1))
    return np.concatenate(out, axis=0) if out else np.zeros((0, 0), dtype=np.float32)


def fit_familiarity(
    train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray, *,
    class_names: Sequence[str], quantile: float, model_sha256: str,
) -> Familiarity:
    """Class means and a shared Ledoit-Wolf covariance on the training features; the threshold at ``quantile``
    of the validation distances (never the training ones: those are too close, the model fitted them)."""
    x = np.asarray(train_features, dtype=np.float64)
    y = np.asarray(train_labels)
    if x.ndim != 2 or len(x) != len(y) or len(x) < 2:
        raise ValueError(f"input check: need (n, D) training features with one label each (n >= 2), got "
                         f"features {x.shape!r} and {len(y)} labels.")
    if not 0 < quantile < 1:
        raise ValueError(f"evaluate.input_check_quantile: expected a number in (0, 1), got {quantile!r}.")
    present = [k for k in range(len(class_names)) if (y == k).any()]
    means = np.stack([x[y == k].mean(axis=0) for k in present])  # (K, D)
    centred = x - means[np.searchsorted(present, y)]  # each image minus its own class mean
    lw = LedoitWolf(assume_centered=True).fit(centred)
    partial = Familiarity(means=means, precision=lw.precision_.astype(np.float32), threshold=math.inf,
                          quantile=float(quantile), model_sha256=model_sha256,
                          class_names=tuple(class_names[k] for k in present), shrinkage=float(lw.shrinkage_),
                          n_train=int(len(x)), n_val=int(len(val_features)))
    val = partial.distances(val_features)
    if val.size == 0:
        raise ValueError("input check: the validation partition is empty; the threshold is chosen on it.")
    threshold = float(np.quantile(val, quantile, method="higher"))  # an observed distance, not interpolated
    return replace(partial, threshold=threshold)


def fit_input_check(
    predictor: Predictor, *, train_images: np.ndarray, train_labels: np.ndarray, val_images: np.ndarray,
    test_images: np.ndarray, quantile: float, batch_size: int = 64,
) -> tuple[Familiarity, dict[str, Any]]:
    """Evaluate's part: fit on the training partition's images ``(n, S, S)``, threshold on validation, and the
    metrics.json block saying what share of the val and test images it flags."""
    features = {name: pooled_features(predictor, images, batch_size=batch_size)
                for name, images in (("train", train_images), ("val", val_images), ("test", test_images))}
    familiarity = fit_familiarity(features["train"], train_labels, features["val"], class_names=predictor.class_names,
                                  quantile=quantile, model_sha256=predictor.model_sha256)
    block = familiarity_block(familiarity, val_distances=familiarity.distances(features["val"]),
                              test_distances=familiarity.distances(features["test"]))
    logger.info("input check: threshold %.2f (%s quantile of val); flags %.1f%% of val, %.1f%% of test",
                familiarity.threshold, quantile, 100 * block["val_flagged"], 100 * block["test_flagged"])
    return familiarity, block


def familiarity_block(familiarity: Familiarity, *, val_distances: np.ndarray,
                      test_distances: np.ndarray) -> dict[str, Any]:
    """metrics.json's ``input_check`` block: the rule, the threshold and the share of val/test images flagged."""
    val, test = (familiarity.unfamiliar(d) for d in (val_distances, test_distances))
    return {"score": SCORE_NAME, "quantile": familiarity.quantile, "threshold": familiarity.threshold,
            "feature_dim": familiarity.feature_dim, "shrinkage": familiarity.shrinkage,
            "n_train": familiarity.n_train, "val_flagged": float(val.mean()) if val.size else None,
            "test_flagged": float(test.mean()) if test.size else None,
            "note": "val_flagged is at most 1 - quantile by construction (the threshold is chosen on val)"}


def write_familiarity(path: str | os.PathLike, familiarity: Familiarity) -> Path:
    """Write the fit as an ``.npz`` of plain arrays plus a JSON record (no pickle), atomically and byte-stable."""
    record = {"format": _FORMAT, "score": SCORE_NAME, "model_sha256": familiarity.model_sha256,
              "class_names": list(familiarity.class_names), "threshold": familiarity.threshold,
              "quantile": familiarity.quantile, "shrinkage": familiarity.shrinkage,
              "n_train": familiarity.n_train, "n_val": familiarity.n_val}
    arrays = {"means": familiarity.means.astype(np.float64), "precision": familiarity.precision.astype(np.float32),
              "record": np.array(json.dumps(record, allow_nan=False))}
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():  # np.savez stamps the current time into the zip: not byte-stable
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())
    return Path(path)


def load_familiarity(path: str | os.PathLike, *, model_sha256: str) -> Familiarity:
    """Read a :func:`write_familiarity` file and check it was fitted on the features of the model ``model_sha256``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input-check file not found; run the evaluate stage (dvc repro evaluate).")
    try:  # numpy refuses a pickle with a ValueError: nothing in the file runs
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):
            raise ValueError("a single .npy array, not the .npz evaluate writes")
        with loaded as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path}: not a readable input-check file ({type(err).__name__}: {err}); re-run the "
                         "evaluate stage.") from err
    missing = [k for k in (*_ARRAYS, "record") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing}; re-run the evaluate stage to rewrite it.")
    means, precision = arrays["means"], arrays["precision"]
    try:
        record = json.loads(str(arrays["record"]))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: its record is not JSON ({err}); re-run the evaluate stage.") from err
    if str(record.get("model_sha256", "")).lower() != model_sha256.lower():
        raise ValueError(
            f"{path}: model_sha256 {record.get('model_sha256')!r} does not match the model (sha256 "
            f"{model_sha256!r}); this input check was fitted on another model's features. Re-run the evaluate "
            "stage for this model or pass the matching --operating-point (the check lies beside it).")
    if means.ndim != 2 or precision.shape != (means.shape[1],) * 2:
        raise ValueError(f"{path}: means {means.shape!r} and precision {precision.shape!r} do not fit together; "
                         "re-run the evaluate stage.")
    threshold = record.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"{path}: threshold must be a finite number, got {threshold!r}; re-run the evaluate stage.")
    return Familiarity(means=means.astype(np.float64), precision=precision.astype(np.float32),
                       threshold=float(threshold), quantile=float(record.get("quantile", math.nan)),
                       model_sha256=str(record["model_sha256"]), class_names=tuple(record.get("class_names", ())),
                       shrinkage=float(record.get("shrinkage", math.nan)), n_train=int(record.get("n_train", 0)),
                       n_val=int(record.get("n_val", 0)), source=path)


def familiarity_path(operating_point_path: str | os.PathLike) -> Path:
    """Where evaluate put the input check of the operating point at ``operating_point_path``: beside it."""
    return Path(operating_point_path).parent / FAMILIARITY_FILE


def find_familiarity(predictor: Predictor) -> Familiarity | None:
    """The input check of ``predictor``: beside the operating point it was loaded with, else (one model) beside
    its variant's default operating point. None, with a log line, when there is none (no crash, no guess)."""
    if not all(hasattr(m, "forward_intermediates") for m in predictor.models):
        logger.warning("input check: needs the PyTorch checkpoint's feature maps, which this runtime does not give; "
                       "input_distance and input_unfamiliar are null.")
        return None
    source = predictor.operating_point.source
    if source is not None:
        path = familiarity_path(source)
    elif not predictor.is_ensemble:
        path = familiarity_path(default_operating_point_path(predictor.model_paths[0]))
    else:
        logger.warning("input check: none for an ensemble without --operating-point; input_distance and "
                       "input_unfamiliar are null.")
        return None
    if not path.is_file():
        logger.warning("input check: no %s (written by the evaluate stage); input_distance and input_unfamiliar "
                       "are null.", path)
        return None
    return load_familiarity(path, model_sha256=predictor.model_sha256)
