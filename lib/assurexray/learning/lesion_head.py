"""Auxiliary lesion-segmentation head: a training-only decoder that makes the encoder look at the tumour.

Every tumour image in BTXRD carries the radiologists' lesion polygon (rasterised by prepare into
``masks.npy``). A small FPN-style decoder on three of the backbone's feature maps (timm
``forward_intermediates``) predicts the lesion at stride 8, with BCE + Dice on tumour images only.
The head is dropped when the checkpoint is written: evaluation, inference, Grad-CAM and the app load
the plain classifier, so the model needs no mask at inference and nothing downstream changes. What
the head buys is a shared encoder trained to find the lesion (hospital shift, Grad-CAM localisation).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["WithLesionHead", "lesion_loss", "DECODER_CHANNELS", "FEATURE_LEVELS"]

DECODER_CHANNELS = 64  # width of the decoder (small: it must not slow CPU training much)
FEATURE_LEVELS = 3  # the last three stages of the backbone (strides 8, 16, 32 for EfficientNets)


class WithLesionHead(nn.Module):
    """``classifier`` (a timm model) plus a lesion decoder; ``forward`` returns (logits, lesion logits).

    One module, so DistributedDataParallel synchronises the head's gradients with the classifier's.
    ``lesion logits`` are (B, 1, S/8, S/8) for EfficientNets (the finest of the used feature maps).
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        if not hasattr(classifier, "forward_intermediates"):
            raise ValueError(
                f"train.seg_weight > 0 needs a timm backbone with forward_intermediates(); "
                f"{type(classifier).__name__} has none. Set train.seg_weight: 0 or use an EfficientNet/ResNet."
            )
        self.classifier = classifier
        channels = [info["num_chs"] for info in classifier.feature_info][-FEATURE_LEVELS:]
        self.levels = [len(classifier.feature_info) - FEATURE_LEVELS + k for k in range(FEATURE_LEVELS)]
        self.lateral = nn.ModuleList(nn.Conv2d(c, DECODER_CHANNELS, 1) for c in channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(DECODER_CHANNELS, DECODER_CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(DECODER_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Conv2d(DECODER_CHANNELS, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        final, feats = self.classifier.forward_intermediates(x, indices=self.levels)
        logits = self.classifier.forward_head(final)
        top = None
        for lateral, feat in zip(reversed(self.lateral), reversed(feats)):  # coarse to fine, FPN-style sums
            y = lateral(feat)
            top = y if top is None else y + F.interpolate(top, size=y.shape[-2:], mode="nearest")
        return logits, self.fuse(top)


def lesion_loss(lesion_logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, int]:
    """BCE + soft Dice on the images whose (augmented) mask is non-empty; returns (loss sum, images).

    ``masks`` are (B, S, S) in {0, 1} (or 0/255); they are area-averaged down to the head's resolution,
    so the targets are the lesion's share of each cell. Images without lesion (Normal, or a tumour whose
    polygon is missing) add nothing: the head learns where a tumour is, not whether there is one, which
    stays the classifier's job. The sum (not the mean) lets the caller average over all ranks' images.
    """
    target = (masks.float() > 0).float().unsqueeze(1)
    target = F.adaptive_avg_pool2d(target, lesion_logits.shape[-2:])
    has_lesion = target.flatten(1).amax(dim=1) > 0
    n = int(has_lesion.sum())
    logits = lesion_logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(dim=1)
    prob = torch.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    dice = 1 - (2 * (prob * flat).sum(1) + 1) / (prob.sum(1) + flat.sum(1) + 1)
    per_image = (bce + dice) * has_lesion.float()  # zeros keep the graph (DDP needs every parameter used)
    return per_image.sum(), n
