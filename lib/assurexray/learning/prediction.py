"""The one prediction engine: batch -> logits (optional mirror TTA) -> temperature -> probabilities -> decision.

evaluate (val/test from the prepared cache), ``assurexray infer`` (files) and the web app (uploads) all score
through a :class:`Predictor`, so "the same probabilities as evaluation" holds by construction, not by keeping
three copies in step. A predictor holds one checkpoint or a seed ensemble of several (probabilities averaged
image by image), the checkpoint's input contract (``meta``: size, normalisation, class order) and the
operating point evaluate fitted for it (``operating_point.json``: temperature, Malignant threshold, TTA).

Images of any size are letterboxed once (:meth:`Predictor.letterbox`); the prepared cache already is.
NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy.special import softmax
from tqdm import tqdm

from assurexray.learning.calibration import apply_temperature, threshold_caveat
from assurexray.data.imaging import Fitted, letterbox
from assurexray.learning.lesion_fusion import fuse_logits, tumour_presence
from assurexray.learning.lesion_head import has_lesion_head, lesion_probabilities
from assurexray.learning.model import file_sha256, load_checkpoint
from assurexray.core.project import MALIGNANT, NORMAL, Layout
from assurexray.learning.transforms import eval_transform

__all__ = [
    "PREPROCESSING_KEYS",
    "OperatingPoint",
    "Scores",
    "Predictor",
    "load_predictor",
    "load_operating_point",
    "operating_point_record",
    "default_operating_point_path",
    "sibling_operating_point_path",
    "flip_averaged_logits",
    "scores_from_probabilities",
    "malignant_flags",
    "ensemble_sha256",
]

logger = logging.getLogger(__name__)

#: Checkpoint ``meta`` keys that define the input contract: members of an ensemble must agree on all of them,
#: since one letterboxed, normalised batch is fed to every member.
PREPROCESSING_KEYS: tuple[str, ...] = ("input_size", "in_chans", "mean", "std", "clahe", "intensity", "letterbox_fill")


@dataclass(frozen=True)
class OperatingPoint:
    """Temperature and Malignant threshold; ``malignant_threshold`` None = no decision available."""

    temperature: float = 1.0
    malignant_threshold: float | None = None
    source: Path | None = None
    tta_flip: bool = False  # average with the mirror image, as evaluate did when it fitted the threshold
    target_sensitivity: float | None = None  # what the threshold was chosen for, on validation (for display)
    # How the threshold was chosen (assurexray.learning.calibration.choose_threshold); None: not recorded.
    val_positives: int | None = None  # validation Malignant images it was chosen on
    rule: str | None = None  # "sensitivity_lower_bound" (reliable) or "capped_point_estimate" (fallback)
    reliable: bool | None = None  # False: show :attr:`caveat` wherever the threshold is shown
    reason: str | None = None  # why it is unreliable and what the fallback did
    # evaluate.lesion_fusion: the Normal logit minus this weight times logit(max lesion probability); 0 = unfused
    lesion_fusion_weight: float = 0.0

    @property
    def caveat(self) -> str | None:
        """``UNRELIABLE Malignant threshold: <reason>.`` for a threshold marked unreliable, else None."""
        return threshold_caveat({"reliable": self.reliable, "reason": self.reason})


@dataclass(frozen=True)
class Scores:
    """Probabilities ``(B, K)`` of a batch, their argmax and the Malignant flags (None without a threshold)."""

    probs: np.ndarray
    class_names: tuple[str, ...]
    malignant_flag: np.ndarray | None

    @property
    def pred_idx(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def pred(self) -> list[str]:
        return [self.class_names[i] for i in self.pred_idx]


@dataclass(frozen=True)
class Predictor:
    """One checkpoint or a seed ensemble, its input contract and its operating point. Build with
    :func:`load_predictor`; :meth:`predict` scores a letterboxed batch, :meth:`predict_grays` decoded images."""

    models: tuple[torch.nn.Module, ...]
    meta: dict[str, Any]  # the (first) checkpoint's meta: every member shares its class order and preprocessing
    model_paths: tuple[Path, ...]
    member_sha256s: tuple[str, ...]
    operating_point: OperatingPoint = OperatingPoint()

    @property
    def model_sha256(self) -> str:
        """The file hash of a single checkpoint; for an ensemble :func:`ensemble_sha256` of its members."""
        return self.member_sha256s[0] if len(self.member_sha256s) == 1 else ensemble_sha256(self.member_sha256s)

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.meta["class_names"]]

    @property
    def input_size(self) -> int:
        return int(self.meta["input_size"])

    @property
    def is_ensemble(self) -> bool:
        return len(self.models) > 1

    @property
    def lesion_members(self) -> tuple[bool, ...]:
        """Per member: does it carry a lesion decoder (:mod:`assurexray.learning.lesion_head`)?"""
        return tuple(has_lesion_head(m) for m in self.models)

    @property
    def has_lesion_maps(self) -> bool:
        """True when every member has a lesion decoder: a map averaged over some members only would be a
        different model's estimate from the one the probabilities come from."""
        return all(self.lesion_members)

    @cached_property  # built once per predictor (a frozen dataclass still has an instance __dict__)
    def transform(self) -> Callable[..., dict[str, Any]]:
        """The checkpoint's albumentations eval preprocessing of one letterboxed uint8 (S, S) image."""
        return eval_transform(self.meta)

    def with_operating_point(self, operating_point: OperatingPoint) -> Predictor:
        return replace(self, operating_point=operating_point)

    def letterbox(self, grays: Sequence[np.ndarray | Fitted]) -> np.ndarray:
        """Decoded uint8 (H, W) images of any size -> ``(B, S, S)`` at the model's input size (the only letterbox).

        A :class:`assurexray.data.decoding.Fitted` item (a reduced decode) is letterboxed in its file's full-size
        geometry, as ``prepare`` letterboxes the cache.
        """
        boxed = []
        for item in grays:
            if isinstance(item, Fitted):
                boxed.append(letterbox(np.asarray(item.gray), self.input_size, original_size=item.original_size)[0])
            else:
                boxed.append(letterbox(np.asarray(item), self.input_size)[0])
        return np.stack(boxed)

    def logits(self, boxed: np.ndarray) -> np.ndarray:
        """Logits ``(B, K)`` of letterboxed uint8 images ``(B, S, S)``, before temperature.

        An ensemble's logits are the log of its members' mean probabilities (softmax at T = 1), so one
        temperature and one threshold apply to it just as to one model; a single model's are its own, unchanged.
        With a lesion-fusion weight in the operating point, the Normal logit is then lowered by the weight times
        the tumour-presence score of :meth:`lesion_maps` (:mod:`assurexray.learning.lesion_fusion`), as evaluate
        fitted it.
        """
        transform = self.transform
        device = next(self.models[0].parameters()).device
        batch = torch.stack([transform(image=img)["image"] for img in boxed]).to(device)  # (B, C, S, S)
        tta = self.operating_point.tta_flip
        with torch.inference_mode():
            member = [flip_averaged_logits(m, batch, tta_flip=tta) for m in self.models]  # each (B, K)
        if len(member) == 1:
            logits = member[0]
        else:
            logits = np.log(np.mean([softmax(z.astype(np.float64), axis=1) for z in member], axis=0))
        weight = self.operating_point.lesion_fusion_weight
        if not weight:
            return logits
        return fuse_logits(logits, self.tumour_presence(boxed), weight=weight, normal_index=self._normal_index())

    def tumour_presence(self, boxed: np.ndarray) -> np.ndarray:
        """``logit(max lesion probability)`` ``(B,)`` of letterboxed images: the score lesion fusion uses."""
        return tumour_presence(self.lesion_maps(boxed).reshape(len(boxed), -1).max(axis=1))

    def tumour_presence_of(self, images: np.ndarray, *, batch_size: int = 64, desc: str = "lesion presence",
                           progress: bool = True) -> np.ndarray:
        """:meth:`tumour_presence` of many letterboxed images ``(n, S, S)``, ``batch_size`` at a time."""
        starts = range(0, len(images), batch_size)
        out = [self.tumour_presence(images[s:s + batch_size]) for s in tqdm(starts, desc=desc, unit="batch",
                                                                             disable=not progress)]
        return np.concatenate(out, axis=0) if out else np.zeros(0)

    def _normal_index(self) -> int:
        if NORMAL not in self.class_names:
            raise ValueError(f"lesion fusion lowers the {NORMAL!r} logit, but the checkpoint's classes are "
                             f"{self.class_names!r}; evaluate with evaluate.lesion_fusion: none.")
        return self.class_names.index(NORMAL)

    def lesion_maps(self, boxed: np.ndarray) -> np.ndarray:
        """Lesion probability maps ``(B, S, S)`` float32 in [0, 1] of letterboxed uint8 images ``(B, S, S)``, in the
        prepared geometry; an ensemble's is the mean of its members' maps. No mirror TTA: the maps are scored as
        training validated them (the decoder's Dice), whatever the operating point says about the logits."""
        if not self.has_lesion_maps:
            raise ValueError(
                f"lesion maps: {[str(p) for p, has in zip(self.model_paths, self.lesion_members) if not has]} have "
                "no lesion decoder; use models trained with model.lesion_head: true.")
        transform = self.transform
        device = next(self.models[0].parameters()).device
        batch = torch.stack([transform(image=img)["image"] for img in boxed]).to(device)  # (B, C, S, S)
        maps = [lesion_probabilities(m, batch)[1].float().cpu().numpy() for m in self.models]  # each (B, S, S)
        return np.mean(maps, axis=0).astype(np.float32)

    def logits_of(self, images: np.ndarray, *, batch_size: int = 64, desc: str = "predict",
                  progress: bool = True) -> np.ndarray:
        """:meth:`logits` of many letterboxed images ``(n, S, S)``, ``batch_size`` at a time (evaluate's path)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")
        starts = range(0, len(images), batch_size)
        out = [self.logits(images[s:s + batch_size]) for s in tqdm(starts, desc=desc, unit="batch",
                                                                    disable=not progress)]
        return np.concatenate(out, axis=0)

    def scores(self, logits: np.ndarray) -> Scores:
        """Temperature-scaled probabilities and the Malignant decision of :meth:`logits` output."""
        op = self.operating_point
        return scores_from_probabilities(apply_temperature(logits, op.temperature), self.class_names,
                                         threshold=op.malignant_threshold)

    def predict(self, boxed: np.ndarray) -> Scores:
        """Scores of letterboxed uint8 images ``(B, S, S)``."""
        return self.scores(self.logits(boxed))

    def predict_grays(self, grays: Sequence[np.ndarray | Fitted]) -> tuple[np.ndarray, Scores]:
        """Letterbox decoded images once and score them; the letterboxed batch is returned for Grad-CAM."""
        boxed = self.letterbox(grays)
        return boxed, self.predict(boxed)


def load_predictor(
    model_paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    operating_point: str | os.PathLike | OperatingPoint | None = None,
    device: str | torch.device = "cpu",
) -> Predictor:
    """Load one checkpoint or an ensemble, with its operating point.

    ``operating_point``: an ``operating_point.json`` (checked to belong to these models by SHA-256), an
    :class:`OperatingPoint` (evaluate, before it has fitted one), or None: for one model the file beside it
    (:func:`sibling_operating_point_path`, written by ``assurexray adapt``), else the evaluate output of its
    variant in the project layout (:func:`default_operating_point_path`); when neither exists, or for an
    ensemble (whose operating point comes from evaluating the ensemble), a warning and no decision (T = 1).
    Members must share class order and preprocessing (``ValueError`` naming the file otherwise).
    """
    paths = [Path(model_paths)] if isinstance(model_paths, (str, os.PathLike)) else [Path(p) for p in model_paths]
    if not paths:
        raise ValueError("load_predictor: no model given; pass at least one checkpoint (--model FILE).")
    if len(set(paths)) != len(paths):
        raise ValueError(f"models {[str(p) for p in paths]!r}: a checkpoint is named twice; an ensemble's "
                         "members must be distinct files.")
    loaded = [load_checkpoint(p, device=device) for p in paths]
    meta = loaded[0][1]
    for path, (_, other) in zip(paths[1:], loaded[1:]):
        _check_member(path, other, first=paths[0], meta=meta)
    predictor = Predictor(models=tuple(m for m, _ in loaded), meta=meta, model_paths=tuple(paths),
                          member_sha256s=tuple(file_sha256(p) for p in paths))
    predictor = predictor.with_operating_point(_resolve_operating_point(operating_point, predictor))
    op = predictor.operating_point
    if op.lesion_fusion_weight and not predictor.has_lesion_maps:
        raise ValueError(f"{op.source}: lesion_fusion_weight {op.lesion_fusion_weight:g} needs every model's lesion "
                         "decoder, but these checkpoints lack one; use the operating point evaluated for them.")
    return predictor


def ensemble_sha256(member_sha256s: Sequence[str]) -> str:
    """The identity of an ensemble: SHA-256 of its members' hashes, sorted (member order does not matter)."""
    return hashlib.sha256("\n".join(sorted(s.lower() for s in member_sha256s)).encode("ascii")).hexdigest()


def flip_averaged_logits(model: torch.nn.Module, batch: torch.Tensor, *, tta_flip: bool) -> np.ndarray:
    """Logits ``(B, K)`` of a preprocessed batch ``(B, 3, S, S)``; with ``tta_flip`` averaged with its mirror."""
    logits = model(batch).float()
    if tta_flip:
        logits = (logits + model(torch.flip(batch, dims=(3,))).float()) / 2.0
    return logits.cpu().numpy()


def malignant_flags(probs: np.ndarray, class_names: Sequence[str], *, threshold: float | None) -> np.ndarray | None:
    """``P(Malignant) >= threshold`` as 0/1 ints ``(B,)``; None without a threshold or a Malignant class."""
    if threshold is None or MALIGNANT not in class_names:
        return None
    return (probs[:, list(class_names).index(MALIGNANT)] >= threshold).astype(int)


def scores_from_probabilities(probs: np.ndarray, class_names: Sequence[str], *, threshold: float | None) -> Scores:
    """:class:`Scores` of calibrated probabilities ``(B, K)`` at the Malignant ``threshold``."""
    return Scores(probs=probs, class_names=tuple(class_names),
                  malignant_flag=malignant_flags(probs, class_names, threshold=threshold))


def sibling_operating_point_path(model_path: str | os.PathLike) -> Path:
    """``site.operating_point.json`` beside ``site.pt``: where ``assurexray adapt`` writes the operating point an
    adapted checkpoint inherits (it is no evaluate output, so the project layout has no place for it)."""
    return Path(model_path).with_suffix(".operating_point.json")


def default_operating_point_path(model_path: str | os.PathLike) -> Path:
    """``<root>/metrics/<variant>/eval/operating_point.json`` for ``<root>/models/<variant>/model.pt``."""
    layout, variant = Layout.of_model(model_path)
    return layout.operating_point(variant)


def operating_point_record(
    *, temperature: float, malignant_threshold: float, target_sensitivity: float, val_sensitivity: float,
    model_sha256: str, val_positives: int | None = None, rule: str | None = None, reliable: bool | None = None,
    reason: str | None = None, tta_flip: bool | None = None, member_sha256s: Sequence[str] | None = None,
    lesion_fusion_weight: float | None = None,
) -> dict[str, Any]:
    """The ``operating_point.json`` evaluate writes and :func:`load_operating_point` reads (keys in file order).

    ``val_positives``, ``rule``, ``reliable`` and ``reason`` say how the threshold was chosen
    (:class:`assurexray.learning.calibration.ThresholdChoice`); written together when ``rule`` is given.
    ``tta_flip`` None (not recorded) reads back as False; ``member_sha256s`` only for an ensemble;
    ``lesion_fusion_weight`` only with ``evaluate.lesion_fusion: score`` (absent reads back as 0: unfused).
    """
    record: dict[str, Any] = {"temperature": temperature, "malignant_threshold": malignant_threshold,
                              "target_sensitivity": target_sensitivity, "val_sensitivity": val_sensitivity,
                              "model_sha256": model_sha256}
    if rule is not None:
        record.update(val_positives=val_positives, rule=rule, reliable=reliable, reason=reason)
    if tta_flip is not None:
        record["tta_flip"] = bool(tta_flip)
    if member_sha256s is not None:
        record["member_sha256s"] = list(member_sha256s)
    if lesion_fusion_weight is not None:
        record["lesion_fusion_weight"] = float(lesion_fusion_weight)
    return record


def load_operating_point(
    path: str | os.PathLike, *, model_sha256: str, class_names: Sequence[str]
) -> OperatingPoint:
    """Read an evaluate-stage ``operating_point.json`` and check it belongs to the model with ``model_sha256``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: operating point file not found; run `dvc repro evaluate` or fix the path.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); re-run the evaluate stage.") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}.")
    missing = [key for key in ("temperature", "malignant_threshold", "model_sha256") if key not in data]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; re-run the evaluate stage to rewrite it.")
    if str(data["model_sha256"]).lower() != model_sha256.lower():
        raise ValueError(
            f"{path}: model_sha256 {data['model_sha256']!r} does not match the model file (sha256 "
            f"{model_sha256!r}); this operating point was chosen for another model. Re-run the evaluate stage "
            "for this model or pass the matching --operating-point."
        )
    temperature = _number(data["temperature"], key="temperature", path=path)
    threshold = _number(data["malignant_threshold"], key="malignant_threshold", path=path)
    if not temperature > 0:
        raise ValueError(f"{path}: temperature must be > 0, got {temperature!r}; re-run the evaluate stage.")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{path}: malignant_threshold must lie in [0, 1], got {threshold!r}.")
    if MALIGNANT not in class_names:
        raise ValueError(
            f"{path}: a Malignant threshold needs a {MALIGNANT!r} class, but the checkpoint's classes are "
            f"{list(class_names)!r}."
        )
    target = data.get("target_sensitivity")
    fusion = _number(data.get("lesion_fusion_weight", 0.0), key="lesion_fusion_weight", path=path)
    if fusion < 0:
        raise ValueError(f"{path}: lesion_fusion_weight must be >= 0, got {fusion!r}; re-run the evaluate stage.")
    reliable, positives = data.get("reliable"), data.get("val_positives")
    if reliable is not None and not isinstance(reliable, bool):
        raise ValueError(f"{path}: reliable must be true or false, got {reliable!r}; re-run the evaluate stage.")
    return OperatingPoint(temperature=temperature, malignant_threshold=threshold, source=path,
                          tta_flip=bool(data.get("tta_flip", False)),
                          target_sensitivity=float(target) if isinstance(target, (int, float)) else None,
                          val_positives=positives if isinstance(positives, int) else None,
                          rule=data.get("rule"), reliable=reliable, reason=data.get("reason"),
                          lesion_fusion_weight=fusion)


# --- helpers ----------------------------------------------------------------------------------------------


def _resolve_operating_point(given: str | os.PathLike | OperatingPoint | None, predictor: Predictor) -> OperatingPoint:
    if isinstance(given, OperatingPoint):
        return given
    sha, classes = predictor.model_sha256, predictor.class_names
    if given is not None:
        return load_operating_point(given, model_sha256=sha, class_names=classes)
    if predictor.is_ensemble:
        logger.warning(
            "an ensemble of %d models has no default operating point: probabilities are uncalibrated "
            "(temperature 1) and the Malignant decision is null. Evaluate the ensemble (stages/evaluate.py with "
            "one --model per member) and pass its --operating-point.", len(predictor.models),
        )
        return OperatingPoint()
    sibling = sibling_operating_point_path(predictor.model_paths[0])
    if sibling.is_file():  # an adapted checkpoint's inherited operating point
        return load_operating_point(sibling, model_sha256=sha, class_names=classes)
    default = default_operating_point_path(predictor.model_paths[0])
    if default.is_file():
        return load_operating_point(default, model_sha256=sha, class_names=classes)
    logger.warning(
        "no operating point at %s: probabilities are uncalibrated (temperature 1) and the Malignant decision "
        "is null. Run the evaluate stage or pass --operating-point.", default,
    )
    return OperatingPoint()


def _check_member(path: Path, other: dict[str, Any], *, first: Path, meta: dict[str, Any]) -> None:
    """Refuse an ensemble member whose class order or input contract differs from the first member's."""
    if list(other["class_names"]) != list(meta["class_names"]):
        raise ValueError(
            f"{path}: class_names {list(other['class_names'])!r} differ from {first}'s "
            f"{list(meta['class_names'])!r}; an ensemble averages probabilities class by class, so its members "
            "must be trained with the same base.class_names."
        )
    differ = [k for k in PREPROCESSING_KEYS if other.get(k) != meta.get(k)]
    if differ:
        shown = ", ".join(f"{k} {other.get(k)!r} vs {meta.get(k)!r}" for k in differ)
        raise ValueError(
            f"{path}: preprocessing differs from {first}'s ({shown}); an ensemble feeds one batch to every "
            "member, so its members must be trained with the same input size, normalisation and augment settings."
        )


def _number(value: Any, *, key: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{path}: {key} must be a finite number, got {value!r}; re-run the evaluate stage.")
    return float(value)
