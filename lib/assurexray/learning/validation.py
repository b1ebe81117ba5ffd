"""One validation pass: each rank scores its shard, rank 0 reassembles it in order and computes the scores
that keep-best and early stopping read (loss, macro AUC, balanced accuracy, and with a lesion head the
lesion Dice on the annotated tumour images and ``auc_dice``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from torch import nn

from assurexray.learning.lesion_head import LESION_THRESHOLD, dice_at, lesion_probabilities

__all__ = ["Shard", "predict_shard", "reassemble", "val_scores"]



@dataclass(frozen=True)
class Shard:
    """One rank's validation predictions: logits (n, K), labels (n,), lesion Dice (n,) (NaN: no lesion)."""

    logits: np.ndarray
    labels: np.ndarray
    dice: np.ndarray


@torch.no_grad()
def predict_shard(model: nn.Module, loader, *, device: torch.device, memory_format,
                  amp_dtype: torch.dtype | None, lesion: bool) -> Shard:
    """Logits and labels of this rank's validation shard; with ``lesion`` the loader yields masks too and
    each image with a non-empty mask gets the Dice of its lesion map at :data:`LESION_THRESHOLD`."""
    model.eval()
    logits, labels, dice = [], [], []
    for batch in loader:
        x = batch[0].to(device, memory_format=memory_format)  # (B, 3, S, S)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if lesion:
                out, maps = lesion_probabilities(model, x)
            else:
                out, maps = model(x), None
        logits.append(out.float().cpu().numpy())
        labels.append(batch[1].numpy())
        if maps is None:
            dice.append(np.full(len(x), np.nan))
        else:
            masks = batch[2]
            score = dice_at(maps.float().cpu(), masks, threshold=LESION_THRESHOLD).numpy()
            dice.append(np.where(masks.flatten(1).any(1).numpy(), score, np.nan))
    if not logits:  # fewer val images than ranks: this shard is empty
        return Shard(np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0))
    return Shard(np.concatenate(logits), np.concatenate(labels), np.concatenate(dice))


def reassemble(shards: list[tuple[np.ndarray, Shard]], n: int, num_classes: int) -> Shard:
    """Put each rank's (positions, shard) back into validation order."""
    logits, labels, dice = np.zeros((n, num_classes), np.float32), np.zeros(n, np.int64), np.full(n, np.nan)
    for positions, shard in shards:
        if len(positions):
            logits[positions], labels[positions], dice[positions] = shard.logits, shard.labels, shard.dice
    return Shard(logits, labels, dice)


def val_scores(shard: Shard, weight: torch.Tensor | None, num_classes: int, *, epoch: int,
               lesion: bool) -> dict[str, float]:
    """Validation loss (class-weighted CE over the whole set), the monitored metrics and, with ``lesion``,
    the mean lesion Dice over annotated images and ``auc_dice`` (macro AUC + that Dice)."""
    x, t = torch.from_numpy(shard.logits), torch.from_numpy(shard.labels)
    loss = float(nn.functional.cross_entropy(x, t, weight=weight))
    p = torch.softmax(x, dim=1).numpy()
    if not (math.isfinite(loss) and np.isfinite(p).all()):
        raise FloatingPointError(
            f"validation loss is {loss} after epoch {epoch}; the model diverged. Lower train.lr or set "
            "train.grad_clip."
        )
    pred = p.argmax(axis=1)
    scores = {
        "loss": loss,
        "macro_auc": float(roc_auc_score(shard.labels, p, multi_class="ovr", average="macro",
                                         labels=list(range(num_classes)))),
        "balanced_accuracy": float(balanced_accuracy_score(shard.labels, pred)),
        "accuracy": float(accuracy_score(shard.labels, pred)),
    }
    if lesion:
        annotated = shard.dice[~np.isnan(shard.dice)]
        scores["lesion_dice"] = float(annotated.mean()) if len(annotated) else 0.0
        scores["auc_dice"] = scores["macro_auc"] + scores["lesion_dice"]
    return scores
