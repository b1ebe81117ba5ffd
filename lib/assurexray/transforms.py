"""The one preprocessing definition shared by training, evaluation and inference.

uint8 grayscale (S, S) -> optional CLAHE -> grey replicated to 3 channels -> Normalize(mean, std) ->
float tensor (3, S, S). Training adds augmentation in front of exactly these steps. At evaluation and
inference time the checkpoint's meta is the only source of settings (size, mean/std, CLAHE), so the model
always sees images prepared as during training.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from assurexray.imaging import letterbox

__all__ = [
    "AUGMENT_KEYS", "CLAHE_CLIP_LIMIT", "CLAHE_TILES", "eval_transform", "train_transform", "prepare_image",
]

logger = logging.getLogger(__name__)

#: Keys of params ``train.augment`` (meaning and units are commented in params.yaml).
AUGMENT_KEYS = ("hflip", "rotate_deg", "scale", "translate", "brightness_contrast", "clahe")
CLAHE_CLIP_LIMIT = 2.0  # contrast clip limit; fixed (albumentations would otherwise sample it per image)
CLAHE_TILES = (8, 8)  # CLAHE tile grid (rows, columns)
_META_KEYS = ("input_size", "mean", "std", "clahe")


def eval_transform(meta: Mapping[str, Any]) -> A.Compose:
    """Deterministic preprocessing of a uint8 (S, S) image into a float tensor (3, S, S)."""
    return A.Compose(_base_steps(meta), seed=0)


def train_transform(
    meta: Mapping[str, Any], augment: Mapping[str, Any] | None, *, seed: int = 0
) -> A.Compose:
    """:func:`eval_transform` with random augmentation in front; ``augment=None`` or zeros adds none.

    ``seed`` seeds the Compose's own RNG (albumentations ignores numpy/python global seeds).
    """
    steps = _augment_steps(meta, augment or {})
    return A.Compose(steps + _base_steps(meta), seed=seed)


def prepare_image(gray: np.ndarray, meta: Mapping[str, Any]) -> torch.Tensor:
    """Letterbox a uint8 grayscale image of any size to the model's input, then :func:`eval_transform`."""
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(
            f"prepare_image expects a uint8 grayscale (H, W) array, got dtype {gray.dtype} shape "
            f"{gray.shape}; decode with assurexray.imaging.decode_gray first."
        )
    _check_meta(meta)
    boxed, _ = letterbox(gray, int(meta["input_size"]))
    return eval_transform(meta)(image=boxed)["image"]


def _base_steps(meta: Mapping[str, Any]) -> list[A.BasicTransform]:
    _check_meta(meta)
    steps: list[A.BasicTransform] = []
    if meta["clahe"]:
        clip = (CLAHE_CLIP_LIMIT, CLAHE_CLIP_LIMIT)
        steps.append(A.CLAHE(clip_limit=clip, tile_grid_size=CLAHE_TILES, p=1.0))
    steps += [
        A.ToRGB(num_output_channels=3, p=1.0),  # (S, S) grey -> (S, S, 3): ImageNet stems expect 3 channels
        A.Normalize(mean=tuple(meta["mean"]), std=tuple(meta["std"]), max_pixel_value=255.0, p=1.0),
        ToTensorV2(p=1.0),  # (S, S, 3) -> (3, S, S)
    ]
    return steps


def _augment_steps(meta: Mapping[str, Any], augment: Mapping[str, Any]) -> list[A.BasicTransform]:
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    if unknown:
        raise ValueError(f"train.augment: unknown key(s) {unknown}; valid keys are {list(AUGMENT_KEYS)}.")
    if "clahe" in augment and bool(augment["clahe"]) != bool(meta["clahe"]):
        raise ValueError(
            f"train.augment.clahe={augment['clahe']!r} disagrees with meta['clahe']={meta['clahe']!r}; "
            "CLAHE must be the same at training and evaluation: build meta from the same params."
        )
    values = {k: float(augment.get(k) or 0.0) for k in AUGMENT_KEYS if k != "clahe"}
    bad = {k: v for k, v in values.items() if v < 0 or (k in {"hflip", "scale", "translate"} and v > 1)}
    if bad:
        raise ValueError(
            f"train.augment: values out of range {bad}; hflip, scale and translate are fractions in [0, 1], "
            "rotate_deg and brightness_contrast are >= 0."
        )
    steps: list[A.BasicTransform] = []
    if values["hflip"] > 0:
        steps.append(A.HorizontalFlip(p=values["hflip"]))
    if values["rotate_deg"] > 0 or values["scale"] > 0 or values["translate"] > 0:
        rot, scale, shift = values["rotate_deg"], values["scale"], values["translate"]
        steps.append(A.Affine(
            rotate=(-rot, rot), scale=(1 - scale, 1 + scale), translate_percent=(-shift, shift),
            border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0,  # fill 0 = the letterbox padding value
        ))
    if values["brightness_contrast"] > 0:
        limit = values["brightness_contrast"]
        steps.append(A.RandomBrightnessContrast(brightness_limit=limit, contrast_limit=limit, p=1.0))
    return steps


def _check_meta(meta: Mapping[str, Any]) -> None:
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise ValueError(
            f"preprocessing meta lacks key(s) {missing}; pass the checkpoint's meta "
            "(assurexray.model.load_checkpoint)."
        )
    if len(meta["mean"]) != 3 or len(meta["std"]) != 3:
        raise ValueError(f"meta mean/std must have 3 values, got {meta['mean']!r} and {meta['std']!r}.")
