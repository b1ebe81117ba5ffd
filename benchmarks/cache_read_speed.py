"""How fast training can read the prepared cache: random batches from the memory-mapped images.npy.

Prints images/s for shuffled batch reads (what the DataLoader does each step) and the ratio to the training
throughput quoted in the brief (~34 img/s for efficientnet_b0 at 128 px on 2 CPU cores): the cache must never
be the bottleneck (target: thousands of images/s, a ratio far above 1).

    python -m benchmarks.cache_read_speed [data/prepared] [--batches 200] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from assurexray.data.cache import load_cache
from benchmarks import Figure

TRAINING_IMAGES_PER_SECOND = 34.0


def measure(prepared: str, batches: int, batch_size: int) -> tuple[float, int]:
    """(images/s of shuffled batch reads from the memory map, cache size)."""
    cache = load_cache(prepared, mmap=True)
    n = cache.images.shape[0]
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(batches):
        rows = np.sort(rng.choice(n, size=min(batch_size, n), replace=False))
        np.asarray(cache.images[rows]).sum()  # (B, S, S) uint8, copied out of the memory map
        np.asarray(cache.masks[rows]).sum()
    return batches * min(batch_size, n) / (time.perf_counter() - started), n


def figures(quick: bool = False, *, tiny: bool = False, prepared: str = "data/prepared") -> list[Figure]:
    if not (Path(prepared) / "images.npy").is_file():
        return [Figure("cache read / training throughput", None, "x", ">= 10x", None,
                       f"skipped: no {prepared} here (dvc repro prepare or dvc pull)")]
    speed, n = measure(prepared, 5 if tiny else 50 if quick else 200, 32)
    ratio = speed / TRAINING_IMAGES_PER_SECOND
    return [Figure("cache read / training throughput", ratio, "x", ">= 10x", ratio >= 10,
                   f"{speed:,.0f} img/s from {n} cached images vs {TRAINING_IMAGES_PER_SECOND:g} img/s training")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prepared", nargs="?", default="data/prepared")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    speed, n = measure(args.prepared, args.batches, args.batch_size)
    print(f"read speed: {speed:,.0f} images/s from {n} images; "
          f"ratio to training ({TRAINING_IMAGES_PER_SECOND:g} img/s): {speed / TRAINING_IMAGES_PER_SECOND:,.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
