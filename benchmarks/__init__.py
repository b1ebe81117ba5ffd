"""Speed checks that print ratios (never timed tests): ``python -m benchmarks [--quick]`` runs them all.

Each module exposes ``figures(quick: bool = False, *, tiny: bool = False) -> list[Figure]``; ``__main__`` prints
the table with the goals and writes ``metrics/bench.json`` (not a DVC metric: timings depend on the machine);
``benchmarks.readme`` copies that table into docs/speed.md. ``tiny=True`` runs the same code on the smallest
inputs (synthetic files, a tiny model) in seconds: it checks the plumbing (tests/test_benchmarks.py), its numbers
mean nothing and docs/speed.md never quotes them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

__all__ = ["Figure", "best_of", "format_table", "synthetic_originals", "run_training"]


@dataclass(frozen=True)
class Figure:
    """One measured figure and its goal; ``ok`` None = informational (no goal)."""

    name: str
    value: float | None
    unit: str
    goal: str
    ok: bool | None
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls, s: on a shared machine the minimum is the least-disturbed run."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def format_table(figures: Sequence[Figure]) -> str:
    """A markdown table: figure, value, goal, met?, detail (what docs/speed.md quotes)."""
    rows = ["| figure | value | goal | met | detail |", "|---|---|---|---|---|"]
    for f in figures:
        value = "n/a" if f.value is None else f"{f.value:,.3g} {f.unit}".strip()
        met = {True: "yes", False: "**no**", None: "-"}[f.ok]
        rows.append(f"| {f.name} | {value} | {f.goal or '-'} | {met} | {f.detail} |")
    return "\n".join(rows)


def synthetic_originals(folder: Path, n: int, *, width: int = 640, height: int = 480) -> list[Path]:
    """``n`` grey JPEGs (a bright blob on noise) standing in for originals where tiny runs need files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    paths = []
    for i in range(n):
        blob = 150 * np.exp(-(((xx - width * (0.3 + 0.1 * i)) / 80) ** 2 + ((yy - height / 2) / 120) ** 2))
        pixels = np.clip(rng.normal(60, 20, (height, width)) + blob, 0, 255).astype(np.uint8)
        path = folder / f"IMG{i + 1:06d}.jpeg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


#: The train settings every benchmark starts from (plain, deterministic, no augmentation); each overrides a few.
_TRAIN_DEFAULTS = dict(epochs=1, batch_size=32, lr=1e-3, weight_decay=1e-4, warmup_epochs=0, grad_clip=1.0,
                       class_weights="none", monitor="loss", patience=None, device="cpu", amp=False,
                       channels_last=True, num_workers=0, augment=None, seg_weight=0.0, ema_decay=0.0)


def run_training(images: np.ndarray, train_index, val_index, *, backbone: str, masks: np.ndarray | None = None,
                 lesion_head: bool = False, dropout: float = 0.0, seed: int = 0, **train):
    """``train_model`` on in-memory arrays with :data:`_TRAIN_DEFAULTS` overridden by ``train`` (params names)."""
    from assurexray.core.params import BaseConfig
    from assurexray.learning.model import ModelConfig
    from assurexray.learning.train_config import TrainConfig
    from assurexray.learning.training import TrainingData, train_model

    classes = ("Normal", "Benign", "Malignant")
    return train_model(
        TrainingData(images, masks, train_index, val_index, list(classes)),
        model_config=ModelConfig(backbone=backbone, pretrained="none", dropout=dropout, lesion_head=lesion_head),
        train=TrainConfig(**{**_TRAIN_DEFAULTS, **train}), base=BaseConfig(seed=seed, class_names=classes))
