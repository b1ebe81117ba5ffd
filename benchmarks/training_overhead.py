"""Training end-to-end throughput vs the pure forward+backward of the same model and batch (goal >= 0.90).

End to end = ``assurexray.learning.training.train_model`` (DataLoader, augmentation, transforms, optimiser, scheduler);
pure = the same backbone stepping AdamW on tensors already in memory. The ratio is what the input
pipeline and bookkeeping cost. Synthetic 128 px images; 20 steps (4 with --quick) give a ratio stable to about 0.02 on 2 cores.

Both sides are timed warm: pure excludes one untimed step, so end to end first makes one untimed 1-step run.
Without it the first training step (about 1.5x a later one on CPU: kernels chosen, allocator and thread pool
grown) lands only in end to end, and over a 10-step epoch it alone costs about 5 % of the ratio; in a real
epoch of hundreds of steps it is noise. Profiled on CPU (1 thread, lite0 @128 px, batch 32), fetching a batch
(memory map, augmentation, collate, channels-last copy) is about 1.5 % of a step's CPU time.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from assurexray.learning.model import create_model
from benchmarks import Figure, run_training

BACKBONE, SIZE, BATCH = "tf_efficientnet_lite0", 128, 32
TINY = ("test_efficientnet", 32, 4)  # tiny=True: backbone, px, batch (plumbing only)
CLASSES = ["Normal", "Benign", "Malignant"]
PARAMS = dict(
    dropout=0.2, class_weights="inverse_frequency",
    augment={"hflip": 0.5, "rotate_deg": 7, "scale": 0.1, "translate": 0.05, "brightness_contrast": 0.1},
)


def _pure_images_per_second(steps: int, backbone: str, size: int, batch: int) -> float:
    torch.manual_seed(0)
    model = create_model(backbone, num_classes=3, dropout=0.2, pretrained="none").train()
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)  # (B, 3, S, S)
    y = torch.arange(batch) % 3
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - started)


def _end_to_end_images_per_second(steps: int, backbone: str, size: int, batch: int) -> float:
    n_train, n_val = steps * batch, 3 * 4
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train + n_val, size, size), dtype=np.uint8)  # (N, S, S)
    labels = np.arange(n_train + n_val) % 3
    index = pd.DataFrame({"row": np.arange(n_train + n_val), "label_idx": labels,
                          "label": [CLASSES[k] for k in labels]})
    result = run_training(images, index.iloc[:n_train], index.iloc[n_train:], backbone=backbone, batch_size=batch,
                          **PARAMS)
    return result.images_per_second


def figures(quick: bool = False, *, tiny: bool = False) -> list[Figure]:
    backbone, size, batch = TINY if tiny else (BACKBONE, SIZE, BATCH)
    steps = 2 if tiny else 4 if quick else 20
    _end_to_end_images_per_second(1, backbone, size, batch)  # warm-up, as pure's untimed step (docstring)
    end_to_end = _end_to_end_images_per_second(steps, backbone, size, batch)
    pure = _pure_images_per_second(steps, backbone, size, batch)
    ratio = end_to_end / pure
    return [Figure("training end-to-end / pure fwd+bwd", ratio, "", ">= 0.90", ratio >= 0.90,
                   f"{end_to_end:.1f} vs {pure:.1f} img/s, {backbone} @{size} px, batch {batch}, {steps} steps, "
                   "each side after a warm-up step")]


if __name__ == "__main__":
    for figure in figures():
        print(figure)
