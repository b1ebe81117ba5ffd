"""What each training step is fed: rows of the memory-mapped cache, this rank's seeded shard of the epoch's
shuffle, RNGs reseeded per epoch (so a resumed run continues bit for bit), each partition's labels checked
against the cache, inverse-frequency class weights, and the per-step warm-up + cosine LR factor.

Split out of :mod:`assurexray.learning.training`, which owns the loop itself.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["ImageDataset", "train_sampler", "reseed_epoch", "local_batch_size", "seed_worker", "partition_labels",
           "inverse_frequency_weights", "warmup_cosine"]


class ImageDataset(Dataset):
    """Rows of the (memory-mapped) prepared cache, transformed on the fly."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray, transform,
                 masks: np.ndarray | None = None) -> None:
        self.images, self.rows, self.labels, self.transform = images, rows, labels, transform
        self.masks = masks  # given: items are (image, label, mask), the mask moved with the image

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        image = np.ascontiguousarray(self.images[self.rows[i]])  # (S, S) uint8, copied out of the mmap
        if self.masks is None:
            return self.transform(image=image)["image"], int(self.labels[i])
        out = self.transform(image=image, mask=np.ascontiguousarray(self.masks[self.rows[i]]))
        return out["image"], int(self.labels[i]), torch.as_tensor(np.asarray(out["mask"]) > 0, dtype=torch.uint8)


def train_sampler(dataset: Dataset, *, world_size: int, rank: int, seed: int) -> DistributedSampler:
    """This rank's shard of a seeded shuffle (the whole shuffle when ``world_size`` is 1).

    One sampler for 1 and N processes: rank r takes positions r, r+N, ... of the epoch's permutation, so
    step k's global batch is the same images whatever N is (when N divides the batch).
    """
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


def reseed_epoch(seed: int, rank: int, epoch: int, generator: torch.Generator, transform) -> None:
    """Reseed every RNG from (seed, rank, epoch): an epoch's randomness never depends on the ones before,
    which is what lets a resumed run continue bit for bit without saved generator states."""
    epoch_seed = int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])
    random.seed(epoch_seed)
    np.random.seed(epoch_seed)
    torch.manual_seed(epoch_seed)  # dropout (and CUDA)
    generator.manual_seed(epoch_seed)  # DataLoader worker seeds
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(epoch_seed)  # the albumentations Compose's own RNG (num_workers=0)


def local_batch_size(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ValueError(
            f"train.batch_size={batch_size} is the global batch and must divide evenly over the "
            f"{world_size} torchrun processes; use a multiple of {world_size} (e.g. "
            f"{world_size * max(1, batch_size // world_size)})."
        )
    return batch_size // world_size


def seed_worker(worker_id: int) -> None:
    # Each worker gets torch's per-worker seed (drawn from the loader's generator) for numpy, random and the
    # albumentations Compose, which keeps its own RNG and would otherwise repeat across workers and epochs.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def partition_labels(index: pd.DataFrame, partition: str, n_images: int, class_names: list[str]) -> np.ndarray:
    for column in ("row", "label_idx"):
        if column not in index.columns:
            raise ValueError(
                f"{partition} split: column {column!r} missing; columns are {list(index.columns)}."
            )
    if len(index) == 0:
        raise ValueError(f"{partition} split is empty; re-run the split stage with more data.")
    rows, labels = index["row"].to_numpy(), index["label_idx"].to_numpy()
    bad_rows = index.loc[(rows < 0) | (rows >= n_images), "row"].tolist()
    if bad_rows:
        raise ValueError(f"{partition} split: row(s) {bad_rows[:5]} outside images.npy (N={n_images}); "
                         "the split does not belong to this prepared cache: re-run split.")
    bad = sorted(set(labels.tolist()) - set(range(len(class_names))))
    if bad:
        raise ValueError(
            f"{partition} split: label_idx {bad} outside 0..{len(class_names) - 1} ({class_names})."
        )
    counts = np.bincount(labels, minlength=len(class_names))
    for k, name in enumerate(class_names):
        if counts[k] == 0:
            raise ValueError(
                f"class {name!r} (label_idx {k}) has no images in the {partition} partition; every class is "
                "needed to train and to compute the macro AUC. Use more data or another split."
            )
    return labels.astype(np.int64)


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse frequency, scaled so a balanced set gets weight 1 per class: n / (K * n_k)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(len(labels) / (num_classes * counts), dtype=torch.float32)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR factor per optimiser step: linear 1/w..1 over ``warmup_steps``, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
