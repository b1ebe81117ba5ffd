"""The lesion map: a small FPN decoder on the backbone's features, trained on the radiologists' polygons and
kept in the checkpoint, so every model that has it can say where it thinks the tumour is.

Why a decoder and not Grad-CAM: saliency maps fail localisation checks on radiographs (Arun et al. 2021;
Saporta et al. 2022); ours pointed at unseen-centre tumours less often than a fixed centred blob. A decoder
trained on pixels answers "where is the lesion" directly.

Design: four feature maps of the timm backbone (strides 4, 8, 16, 32 via ``forward_intermediates``) are
projected to :data:`DECODER_CHANNELS` channels, summed top-down (FPN), and a 3x3 conv + 1x1 conv give one
logit per cell at stride 4 (40 x 40 at 160 px). Stride 4 because BTXRD lesions are a few percent of the image
(an 8 px cell at stride 8 and 160 px is already a fifth of a small lesion's width), and stride 2 costs four
times the decoder's compute on 2 CPU cores for cells finer than the polygons' own precision at 160 px. The
decoder is ours rather than segmentation-models-pytorch's: smp builds its own encoder (a second copy of the
backbone) while this one shares the classifier's, so the lesion map and the class come from one network.

The decoder is a submodule of the timm model (``model.lesion_decoder``): the classifier's parameter names,
Grad-CAM layers and ``forward`` (logits only) stay exactly as without it, and a checkpoint without a decoder
loads as before. :func:`forward_with_lesion` gives (logits, lesion logits); :func:`lesion_probabilities` the
map at the input's resolution. NOT FOR CLINICAL USE: the map is a model's estimate.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LesionDecoder", "WithLesionHead", "attach_lesion_head", "has_lesion_head", "forward_with_lesion",
           "lesion_probabilities", "lesion_loss", "dice_at", "DECODER_CHANNELS", "FEATURE_STRIDES", "LESION_THRESHOLD"]

#: Lesion probability at which a pixel counts as lesion wherever no threshold was chosen on validation: the
#: keep-best criterion's validation Dice and infer's bounding box (fixed before any run, not tuned).
LESION_THRESHOLD = 0.5
DECODER_CHANNELS = 32  # width of the decoder: small, so CPU training stays within 1.3x of the plain classifier
FEATURE_STRIDES = (4, 8, 16, 32)  # the backbone feature maps the decoder reads; the map comes out at stride 4


class LesionDecoder(nn.Module):
    """FPN-style decoder: (B, C_k, S/r_k, S/r_k) features -> (B, 1, S/4, S/4) lesion logits."""

    def __init__(self, channels: list[int], levels: list[int]) -> None:
        super().__init__()
        self.levels = list(levels)  # feature_info indices given to forward_intermediates (not a tensor)
        self.lateral = nn.ModuleList(nn.Conv2d(c, DECODER_CHANNELS, 1) for c in channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(DECODER_CHANNELS, DECODER_CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(DECODER_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Conv2d(DECODER_CHANNELS, 1, 1),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        top = None
        for lateral, feat in zip(reversed(self.lateral), reversed(features)):  # coarse to fine, summed
            y = lateral(feat)
            top = y if top is None else y + F.interpolate(top, size=y.shape[-2:], mode="nearest")
        return self.fuse(top)


def attach_lesion_head(model: nn.Module) -> nn.Module:
    """Add a fresh :class:`LesionDecoder` to the timm ``model`` (in place) and return it."""
    info = getattr(model, "feature_info", None)
    if not hasattr(model, "forward_intermediates") or info is None:
        raise ValueError(
            f"model.lesion_head: true needs a timm backbone with forward_intermediates() and feature_info; "
            f"{type(model).__name__} has none. Set model.lesion_head: false or use an EfficientNet/ResNet.")
    reductions = [int(f["reduction"]) for f in info]
    missing = [s for s in FEATURE_STRIDES if s not in reductions]
    if missing:
        raise ValueError(
            f"model.lesion_head: true reads the backbone's feature maps at strides {list(FEATURE_STRIDES)}; "
            f"{type(model).__name__} has strides {reductions}. Use an EfficientNet/ResNet backbone.")
    levels = [max(i for i, r in enumerate(reductions) if r == s) for s in FEATURE_STRIDES]  # last map per stride
    channels = [int(info[i]["num_chs"]) for i in levels]
    model.add_module("lesion_decoder", LesionDecoder(channels, levels))
    return model


def has_lesion_head(model: nn.Module) -> bool:
    """True when ``model`` (or the model inside a DDP / training wrapper) carries a lesion decoder."""
    model = getattr(model, "module", model)
    model = getattr(model, "classifier", model) if isinstance(model, WithLesionHead) else model
    return isinstance(getattr(model, "lesion_decoder", None), LesionDecoder)


def forward_with_lesion(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class logits (B, K), lesion logits (B, 1, S/4, S/4)) of a model with a lesion decoder, in one pass."""
    decoder = model.lesion_decoder
    final, feats = model.forward_intermediates(x, indices=decoder.levels)
    return model.forward_head(final), decoder(feats)


class WithLesionHead(nn.Module):
    """Training wrapper whose ``forward`` returns (logits, lesion logits): one module, so DDP synchronises the
    decoder's gradients with the classifier's."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        if not has_lesion_head(classifier):
            raise ValueError("WithLesionHead needs a model with a lesion decoder (attach_lesion_head).")
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return forward_with_lesion(self.classifier, x)


@torch.no_grad()
def lesion_probabilities(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class logits (B, K), lesion probability maps (B, H, W) at the input's resolution, in [0, 1])."""
    logits, lesion = forward_with_lesion(model, x)
    lesion = F.interpolate(lesion.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits, torch.sigmoid(lesion[:, 0])


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


def dice_at(probabilities: torch.Tensor, masks: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """Per-image Dice (B,) of ``probabilities >= threshold`` against ``masks`` (both (B, H, W)); an image with
    an empty mask and an empty prediction scores 1, an empty one against a lesion 0."""
    pred = (probabilities >= threshold).flatten(1).float()
    truth = (masks > 0).flatten(1).float()
    overlap = (pred * truth).sum(1)
    total = pred.sum(1) + truth.sum(1)
    return torch.where(total > 0, 2 * overlap / total.clamp(min=1), torch.ones_like(total))
