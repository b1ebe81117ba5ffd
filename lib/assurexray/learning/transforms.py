"""The one preprocessing definition shared by training, evaluation and inference.

uint8 grayscale (S, S) -> optional intensity standardisation -> optional CLAHE -> grey replicated to 3
channels -> Normalize(mean, std) -> float tensor (3, S, S). Training adds augmentation in front of exactly these
steps. At evaluation and inference time the checkpoint's meta is the only source of settings (size, mean/std,
intensity, CLAHE), so the model always sees images prepared as during training.

Hospital shift (other detectors, display curves, web re-compression) is what the centre holdout measures; the
appearance augmentations (gamma, blur/sharpen, noise, downscale, JPEG) and the intensity standardisation are
the levers against it, each off by default and switched on by evidence (see params.yaml and the README).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from assurexray.data.imaging import letterbox
from assurexray.core.params import config_from_mapping

__all__ = [
    "AugmentConfig", "AUGMENT_KEYS", "CLAHE_CLIP_LIMIT", "CLAHE_TILES", "INTENSITY_MODES", "eval_transform", "train_transform",
    "prepare_image", "standardise_intensity",
]

logger = logging.getLogger(__name__)

#: Values of ``train.augment.intensity``: none, per-image histogram equalisation, or a 1-99 percentile stretch,
#: both computed over the radiograph only (letterbox padding, value 0, excluded and kept at 0).
INTENSITY_MODES = ("none", "equalize", "percentile")
CLAHE_CLIP_LIMIT = 2.0  # contrast clip limit; fixed (albumentations would otherwise sample it per image)
CLAHE_TILES = (8, 8)  # CLAHE tile grid (rows, columns)
_META_KEYS = ("input_size", "mean", "std", "clahe")
_PERCENTILES = (1.0, 99.0)  # the percentile stretch maps these to 0 and 255


@dataclass(frozen=True)
class AugmentConfig:
    """The ``train.augment`` block of params.yaml (meanings and units are commented there); defaults are off.

    Values are kept as written (``7`` stays an int), so the checkpoint records exactly what params.yaml says.
    """

    hflip: float = 0.0
    rotate_deg: float = 0.0
    scale: float = 0.0
    translate: float = 0.0
    brightness_contrast: float = 0.0
    clahe: bool = False
    intensity: str = "none"
    gamma: float = 0.0
    blur_sharpen: float = 0.0
    noise: float = 0.0
    downscale: float = 0.0
    jpeg_quality: int = 0

    def __post_init__(self) -> None:
        if self.intensity is None:  # `intensity: null` = the default
            object.__setattr__(self, "intensity", "none")
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"train.augment.intensity: expected one of {list(INTENSITY_MODES)}, "
                             f"got {self.intensity!r}.")
        if not isinstance(self.clahe, bool):
            raise TypeError(f"train.augment.clahe: expected true or false, got {self.clahe!r}.")
        values = _augment_values(self)
        not_numbers = {k: v for k, v in values.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
        if not_numbers:
            raise TypeError(f"train.augment: expected numbers, got {not_numbers}.")
        fractions = {"hflip", "scale", "translate", "blur_sharpen", "noise", "gamma", "downscale"}
        bad = {k: v for k, v in values.items() if v < 0 or (k in fractions and v > 1)
               or (k == "jpeg_quality" and v > 100)}
        if bad:
            raise ValueError(
                f"train.augment: values out of range {bad}; hflip, scale, translate, gamma, blur_sharpen, noise and "
                "downscale are fractions in [0, 1], jpeg_quality is a JPEG quality in [0, 100] (0 = off), "
                "rotate_deg and brightness_contrast are >= 0."
            )


#: Keys of params ``train.augment`` (meaning and units are commented in params.yaml).
AUGMENT_KEYS = tuple(f.name for f in dataclasses.fields(AugmentConfig))


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
            f"{gray.shape}; decode with assurexray.data.imaging.decode_gray first."
        )
    _check_meta(meta)
    boxed, _ = letterbox(gray, int(meta["input_size"]))
    return eval_transform(meta)(image=boxed)["image"]


def standardise_intensity(gray: np.ndarray, mode: str) -> np.ndarray:
    """Per-image intensity standardisation of a uint8 (S, S) letterboxed radiograph (padding 0 stays 0).

    ``equalize``: histogram equalisation over the non-zero pixels; ``percentile``: linear stretch of their 1st-99th
    percentiles to 0-255. Both make a dark centre-3 JPEG and a bright centre-1 PACS export look alike.
    """
    if mode == "none":
        return gray
    if mode not in INTENSITY_MODES:
        raise ValueError(f"train.augment.intensity: expected one of {list(INTENSITY_MODES)}, got {mode!r}.")
    body = gray > 0
    if body.sum() < 2:
        return gray
    values = gray[body]
    out = np.zeros_like(gray)
    if mode == "equalize":
        hist = np.bincount(values, minlength=256)
        cdf = np.cumsum(hist).astype(np.float64)
        lo = cdf[hist > 0][0]
        lut = np.clip(np.round((cdf - lo) / max(cdf[-1] - lo, 1.0) * 254.0) + 1.0, 1, 255).astype(np.uint8)
    else:
        lo, hi = np.percentile(values, _PERCENTILES)
        scale = 254.0 / max(hi - lo, 1.0)
        lut = np.clip(np.round((np.arange(256) - lo) * scale) + 1.0, 1, 255).astype(np.uint8)
    out[body] = lut[values]  # the radiograph maps into 1..255, so 0 still marks only the padding
    return out


class _StandardiseIntensity(A.ImageOnlyTransform):
    """albumentations wrapper of :func:`standardise_intensity` (deterministic, p=1)."""

    def __init__(self, mode: str) -> None:
        super().__init__(p=1.0)
        self.mode = mode

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return standardise_intensity(img, self.mode)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("mode",)


def _base_steps(meta: Mapping[str, Any]) -> list[A.BasicTransform]:
    _check_meta(meta)
    steps: list[A.BasicTransform] = []
    intensity = meta.get("intensity", "none")  # checkpoints from before this option standardised nothing
    if intensity != "none":
        if intensity not in INTENSITY_MODES:
            raise ValueError(f"checkpoint meta intensity {intensity!r} is not one of {list(INTENSITY_MODES)}.")
        steps.append(_StandardiseIntensity(intensity))
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
    config = augment_config(augment)
    if "clahe" in augment and bool(augment["clahe"]) != bool(meta["clahe"]):
        raise ValueError(
            f"train.augment.clahe={augment['clahe']!r} disagrees with meta['clahe']={meta['clahe']!r}; "
            "CLAHE must be the same at training and evaluation: build meta from the same params."
        )
    if config.intensity != meta.get("intensity", "none"):
        raise ValueError(
            f"train.augment.intensity={augment.get('intensity')!r} disagrees with meta['intensity']="
            f"{meta.get('intensity', 'none')!r}; build meta from the same params."
        )
    values = {k: float(v) for k, v in _augment_values(config).items()}
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
    steps += _appearance_steps(values)
    return steps


def augment_config(augment: Mapping[str, Any] | AugmentConfig | None) -> AugmentConfig:
    """``augment`` (a ``train.augment`` mapping; ``None`` = all off) checked as an :class:`AugmentConfig`."""
    if isinstance(augment, AugmentConfig):
        return augment
    augment = dict(augment or {})
    for key, value in augment.items():  # null = the default (off), as before
        if value is None and key in AUGMENT_KEYS:
            augment[key] = getattr(AugmentConfig, key)
    return config_from_mapping(AugmentConfig, augment, where="train.augment")


def _augment_values(config: AugmentConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in ("clahe", "intensity")}


def _appearance_steps(values: Mapping[str, float]) -> list[A.BasicTransform]:
    """Hospital-shift augmentation: detector curve (gamma), focus (blur/sharpen), noise, resolution, JPEG."""
    steps: list[A.BasicTransform] = []
    if values["gamma"] > 0:  # gamma in [1 - g, 1 + g]; albumentations takes it in percent
        g = values["gamma"]
        steps.append(A.RandomGamma(gamma_limit=(100 * (1 - g), 100 * (1 + g)), p=0.5))
    if values["blur_sharpen"] > 0:
        steps.append(A.OneOf([A.GaussianBlur(sigma_limit=(0.3, 1.2), p=1.0),
                              A.Sharpen(alpha=(0.1, 0.4), lightness=(0.9, 1.1), p=1.0)], p=values["blur_sharpen"]))
    if values["noise"] > 0:  # Gaussian noise with std up to this fraction of the 0-255 range
        steps.append(A.GaussNoise(std_range=(0.0, values["noise"]), p=0.5))
    if values["downscale"] > 0:  # down- then up-sample by a factor in [downscale, 1]: a lower-resolution source
        steps.append(A.Downscale(scale_range=(values["downscale"], 1.0), p=0.3))
    if values["jpeg_quality"] > 0:  # re-compress with a quality in [jpeg_quality, 100] (web-collected centres)
        steps.append(A.ImageCompression(quality_range=(int(values["jpeg_quality"]), 100), p=0.5))
    return steps


def _check_meta(meta: Mapping[str, Any]) -> None:
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise ValueError(
            f"preprocessing meta lacks key(s) {missing}; pass the checkpoint's meta "
            "(assurexray.learning.model.load_checkpoint)."
        )
    if len(meta["mean"]) != 3 or len(meta["std"]) != 3:
        raise ValueError(f"meta mean/std must have 3 values, got {meta['mean']!r} and {meta['std']!r}.")
