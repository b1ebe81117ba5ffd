"""Site adaptation without labels: re-estimate a model's BatchNorm statistics on a site's radiographs (AdaBN).

A network normalises every layer with feature statistics (BatchNorm running mean and variance) collected on
its training hospital. Another hospital's detector, display curve or compression shifts those statistics;
AdaBN (Li et al. 2016, https://arxiv.org/abs/1603.04779) re-estimates them on the new site's images, with no
label and no gradient, and keeps every learned weight. What changes: the ``running_mean``, ``running_var``
and ``num_batches_tracked`` buffers of every BatchNorm layer (the lesion decoder's too), nothing else.

Estimation, as "precise BN" (Wu & Johnson 2021, https://arxiv.org/abs/2105.07576): statistics reset,
``momentum=None`` (a cumulative average over batches, which are split to equal sizes +-1 so every image weighs
the same), BatchNorm layers in train mode and everything else in eval mode (dropout and drop-path off), no
gradient, preprocessing exactly as at inference (the checkpoint's letterbox and ``eval_transform``).

Known risk: the statistics also absorb the site's class mix. A site whose radiographs are mostly tumours (BTXRD's
centre 3 has few normals) moves them towards tumour features, which can hurt; evaluate measures it per centre
(:mod:`assurexray.assessment.site_adaptation`). Files and checkpoints (``assurexray adapt``) are handled by
:mod:`assurexray.serving.adapt`. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from assurexray.learning.lesion_head import forward_with_lesion, has_lesion_head

__all__ = ["ADAPT_METHODS", "MIN_IMAGES", "BATCH_SIZE", "batchnorm_layers", "adapt_batchnorm", "bn_stats_sha256",
           "images_sha256", "adaptation_record", "check_image_count"]

logger = logging.getLogger(__name__)

#: ``evaluate.adapt`` values: ``none`` (no adaptation) or ``bn`` (this module).
ADAPT_METHODS: tuple[str, ...] = ("none", "bn")
#: Fewest images adaptation accepts. The last layers of a 160 px EfficientNet see a 5 x 5 map per image, so a
#: handful of radiographs give each channel's mean and variance from a few hundred strongly correlated values:
#: noise that would replace statistics estimated on thousands of training images. 32 = one training batch
#: (params.yaml train.batch_size); more is better. Fixed before any result (reports/adaptation-bn/preregistration.md).
MIN_IMAGES = 32
#: Images per estimation batch. Train-mode BatchNorm normalises each batch with its own statistics, so the
#: batch size changes the estimate slightly: one fixed value for the CLI and evaluate, recorded with the result.
BATCH_SIZE = 64


def batchnorm_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """(name, layer) of every BatchNorm layer of ``model`` (timm's BatchNormAct2d included) that tracks statistics."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def adapt_batchnorm(
    model: nn.Module,
    images: np.ndarray,
    transform: Callable[..., dict[str, Any]],
    *,
    batch_size: int = BATCH_SIZE,
    min_images: int = MIN_IMAGES,
    source: str = "images",
) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are re-estimated on letterboxed uint8 ``images`` (N, S, S).

    ``transform`` is the checkpoint's eval preprocessing (``Predictor.transform``). ``model`` is not changed. A
    model with a lesion decoder is run through :func:`~assurexray.learning.lesion_head.forward_with_lesion`, one
    pass that reaches the backbone, the classifier's last BatchNorm and the decoder's own BatchNorm; a layer the
    pass did not reach would be left at mean 0 / variance 1, so that is an error. ``source`` names the images in
    errors (a folder, a centre).
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{source}: expected letterboxed uint8 images (N, S, S), got dtype {images.dtype} shape "
                         f"{images.shape}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"adaptation batch_size must be an integer >= 2 (train-mode BatchNorm needs more than one "
                         f"image per batch), got {batch_size!r}.")
    check_image_count(len(images), min_images, source)
    adapted = copy.deepcopy(model).eval()
    layers = batchnorm_layers(adapted)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer: there are no statistics to adapt.")
    momenta = {}
    for name, bn in layers:
        momenta[name] = bn.momentum
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: every batch weighs the same, whatever came before
        bn.train()
    device = next(adapted.parameters()).device
    lesion = has_lesion_head(adapted)
    batches = np.array_split(np.arange(len(images)), math.ceil(len(images) / batch_size))  # sizes differ by <= 1
    with torch.no_grad():
        for index in batches:
            batch = torch.stack([transform(image=img)["image"] for img in images[index]]).to(device)  # (B, C, S, S)
            if lesion:
                forward_with_lesion(adapted, batch)
            else:
                adapted(batch)
    missed = [name for name, bn in layers if int(bn.num_batches_tracked) != len(batches)]
    if missed:
        raise RuntimeError(f"BatchNorm layer(s) {missed[:5]} were not reached by the forward pass, so their statistics "
                           "could not be re-estimated; adaptation does not support this architecture.")
    for name, bn in layers:
        bn.momentum = momenta[name]
    logger.info("%s: BatchNorm statistics of %d layers re-estimated on %d images (%d batches)", source, len(layers),
                len(images), len(batches))
    return adapted.eval()


def bn_stats_sha256(models: nn.Module | Sequence[nn.Module]) -> str:
    """SHA-256 of the BatchNorm buffers of one model or several, in name order: equal hashes = equal statistics."""
    digest = hashlib.sha256()
    for model in [models] if isinstance(models, nn.Module) else models:
        for name, bn in batchnorm_layers(model):
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                tensor = getattr(bn, key).detach().to("cpu").contiguous()
                digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
                digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def images_sha256(images: np.ndarray) -> str:
    """SHA-256 of an image stack's shape and pixels (the images evaluate adapted on, in the order used)."""
    images = np.ascontiguousarray(images)
    return hashlib.sha256(f"{images.dtype}:{images.shape}\n".encode() + images.tobytes()).hexdigest()


def adaptation_record(
    *, n_images: int, images_sha256: str, source_model_sha256: str, date: str, batch_size: int = BATCH_SIZE
) -> dict[str, Any]:
    """The checkpoint's ``meta["adaptation"]`` (JSON-plain): what was adapted, on what (``images_sha256``: a
    fingerprint of the images in the order used), from which model file, and when (``date``: ISO date, UTC)."""
    return {"method": "bn", "n_images": int(n_images), "images_sha256": images_sha256, "batch_size": int(batch_size),
            "date": date, "source_model_sha256": source_model_sha256, "labels_read": False}


def check_image_count(
    n: int, min_images: int, source: str, *, fix: str = "Adapt on more of the site's images."
) -> None:
    """Refuse fewer than ``min_images`` images: ``ValueError`` naming ``source``, the count, the minimum and ``fix``."""
    if isinstance(min_images, bool) or not isinstance(min_images, int) or min_images < 2:
        raise ValueError(f"min_images must be an integer >= 2, got {min_images!r}.")
    if n < min_images:
        raise ValueError(f"{source}: {n} image(s) found; BatchNorm adaptation needs at least {min_images}: the "
                         f"statistics of fewer images are mostly noise. {fix}")
