"""What the lesion map costs: training and inference time with the lesion head / without (goals <= 1.3 and <= 1.2).

Training: ``train_model`` one epoch at the default 160 px, batch 32, tf_efficientnet_lite0, once with
``model.lesion_head`` (decoder + BCE/Dice loss on masks) and once without, both warm (an untimed 1-step run each
first); the ratio of their images/s is the time ratio per epoch. Inference: a batch through the plain forward
vs ``lesion_probabilities`` (logits and the upsampled map in one pass), best of 5. Synthetic images; a third
of them carry a lesion mask, as in BTXRD's training partition.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from assurexray.learning.lesion_head import lesion_probabilities
from assurexray.learning.model import create_model
from benchmarks import Figure, best_of, run_training

BACKBONE, SIZE, BATCH = "tf_efficientnet_lite0", 160, 32
TINY = ("test_efficientnet", 32, 4)  # tiny=True: backbone, px, batch (plumbing only)


def _data(steps: int, size: int, batch: int):
    n_train, n_val = steps * batch, 12
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train + n_val, size, size), dtype=np.uint8)  # (N, S, S)
    masks = np.zeros_like(images)
    masks[::3, size // 4: size // 2, size // 4: size // 2] = 1
    labels = np.arange(n_train + n_val) % 3
    index = pd.DataFrame({"row": np.arange(n_train + n_val), "label_idx": labels})
    return images, masks, index.iloc[:n_train], index.iloc[n_train:]


def _train_images_per_second(steps: int, backbone: str, size: int, batch: int, *, lesion: bool) -> float:
    images, masks, train, val = _data(steps, size, batch)
    options = dict(backbone=backbone, batch_size=batch, masks=masks, lesion_head=lesion,
                   seg_weight=1.0 if lesion else 0.0)
    return run_training(images, train, val, **options).images_per_second


def _inference_seconds(backbone: str, size: int, batch: int, *, lesion: bool, repeats: int) -> float:
    torch.manual_seed(0)
    model = create_model(backbone, num_classes=3, pretrained="none", lesion_head=True).eval()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        call = (lambda: lesion_probabilities(model, x)) if lesion else (lambda: model(x))
        call()  # warm-up
        return best_of(call, repeats)


def figures(quick: bool = False, *, tiny: bool = False) -> list[Figure]:
    backbone, size, batch = TINY if tiny else (BACKBONE, SIZE, BATCH)
    steps = 2 if tiny else 3 if quick else 10
    for lesion in (False, True):  # warm both paths: the first steps of a process are slower (training_overhead)
        _train_images_per_second(1, backbone, size, batch, lesion=lesion)
    plain = _train_images_per_second(steps, backbone, size, batch, lesion=False)
    with_head = _train_images_per_second(steps, backbone, size, batch, lesion=True)
    repeats = 2 if tiny else 5
    infer_plain = _inference_seconds(backbone, size, batch, lesion=False, repeats=repeats)
    infer_head = _inference_seconds(backbone, size, batch, lesion=True, repeats=repeats)
    train_ratio, infer_ratio = plain / with_head, infer_head / infer_plain
    return [
        Figure("lesion head: training time per epoch / without", train_ratio, "x", "<= 1.3", train_ratio <= 1.3,
               f"{with_head:.1f} vs {plain:.1f} img/s, {backbone} @{size} px, batch {batch}, {steps} steps"),
        Figure("lesion head: inference time / without", infer_ratio, "x", "<= 1.2", infer_ratio <= 1.2,
               f"{infer_head * 1e3:.0f} vs {infer_plain * 1e3:.0f} ms per batch of {batch}, best of {repeats}"),
    ]


if __name__ == "__main__":
    for figure in figures():
        print(figure)
