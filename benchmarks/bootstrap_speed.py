"""Benchmark: vectorised bootstrap of the whole metric suite vs a naive per-resample sklearn loop.

Run: python -m benchmarks --only bootstrap_speed, or .venv/bin/python -m benchmarks.bootstrap_speed [--n 600] [--resamples 1000] [--naive 50]
Prints seconds for the vectorised run and the per-resample speed-up over sklearn (timed on --naive resamples).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import (
    accuracy_score, average_precision_score, balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score,
)

from assurexray.assessment.metrics import bootstrap_weights, suite_with_ci
from benchmarks import Figure

NAMES = ["Normal", "Benign", "Malignant"]


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    return y, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _naive(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> None:
    """The suite with one sklearn call per metric per resample (what the vectorised code replaces)."""
    for row in idx:
        yb, pb = y[row], p[row]
        pred, onehot = pb.argmax(axis=1), np.eye(3)[yb]
        roc_auc_score(yb, pb, multi_class="ovr", labels=[0, 1, 2])
        average_precision_score(onehot, pb, average=None)
        [roc_auc_score(onehot[:, c], pb[:, c]) for c in range(3)]
        accuracy_score(yb, pred), balanced_accuracy_score(yb, pred)
        f1_score(yb, pred, average=None, labels=[0, 1, 2], zero_division=0)
        confusion_matrix(yb, pred, labels=[0, 1, 2])


def measure(n: int, resamples: int, naive: int) -> tuple[float, float]:
    """(vectorised s per resample, naive sklearn-loop s per resample)."""
    y, p = _data(n)
    start = time.perf_counter()
    weights = bootstrap_weights(y, resamples=resamples, seed=0)
    suite_with_ci(y, p, weights, class_names=NAMES, ci_level=0.95)
    vectorised = time.perf_counter() - start
    idx = np.random.default_rng(0).integers(0, n, size=(naive, n))
    start = time.perf_counter()
    _naive(y, p, idx)
    return vectorised / resamples, (time.perf_counter() - start) / naive


def figures(quick: bool = False, *, tiny: bool = False) -> list[Figure]:
    n, resamples, naive = (60, 20, 2) if tiny else (600, 200, 10) if quick else (600, 1000, 50)
    per_vec, per_naive = measure(n, resamples, naive)
    ratio = per_naive / per_vec
    return [Figure("bootstrap: vectorised vs sklearn loop", ratio, "x", ">= 20x", ratio >= 20,
                   f"{1000 * per_vec:.2f} vs {1000 * per_naive:.1f} ms/resample, n={n}, {resamples} resamples")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=600, help="test images")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (vectorised)")
    parser.add_argument("--naive", type=int, default=50, help="resamples timed with the naive sklearn loop")
    args = parser.parse_args(argv)
    per_vec, per_naive = measure(args.n, args.resamples, args.naive)
    print(f"vectorised: {per_vec * args.resamples:.3f} s for {args.resamples} resamples (n={args.n})")
    print(f"speed-up per resample: {per_naive / per_vec:.0f}x (goal >= 20x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
