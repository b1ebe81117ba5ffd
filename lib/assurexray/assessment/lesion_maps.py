"""Lesion maps of a model with a lesion head, for a stack of prepared images, in the prepared geometry.

Unlike Grad-CAM the map does not depend on a target class (it estimates where a tumour is, whatever the
classifier says) and is a probability, so it is not min-max scaled: a map whose peak is 0.1 says "no
lesion found", and thresholds mean the same on every image. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from assurexray.assessment.cam import apply_transform
from assurexray.learning.lesion_head import has_lesion_head, lesion_probabilities

__all__ = ["compute_lesion_maps"]


def compute_lesion_maps(model: nn.Module, images: np.ndarray, *, transform: Callable[..., Any],
                        batch_size: int = 16, progress: bool = True) -> np.ndarray:
    """Lesion probability maps (N, S, S) float32 in [0, 1] of uint8 images (N, S, S)."""
    if not has_lesion_head(model):
        raise ValueError("compute_lesion_maps: the model has no lesion head; train with model.lesion_head: true.")
    size = int(images.shape[1]) if len(images) else 0
    out = np.zeros((len(images), size, size), dtype=np.float32)
    device = next(model.parameters()).device
    model.eval()
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="lesion maps", unit="batch", leave=False, disable=not progress):
        batch = torch.stack([apply_transform(transform, image, size) for image in images[start:start + batch_size]])
        _, maps = lesion_probabilities(model, batch.to(device))
        out[start:start + len(batch)] = maps.float().cpu().numpy()
    return out
