"""How fast training can read the prepared cache: random batches from the memory-mapped images.npy.

Prints images/s for shuffled batch reads (what the DataLoader does each step) and the ratio to the training
throughput quoted in the brief (~34 img/s for efficientnet_b0 at 128 px on 2 CPU cores): the cache must never
be the bottleneck (target: thousands of images/s, a ratio far above 1).

    python benchmarks/cache_read_speed.py [data/prepared] [--batches 200] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from assurexray.cache import load_cache

TRAINING_IMAGES_PER_SECOND = 34.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prepared", nargs="?", default="data/prepared")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    cache = load_cache(args.prepared, mmap=True)
    n = cache.images.shape[0]
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    checksum = 0
    for _ in range(args.batches):
        rows = np.sort(rng.choice(n, size=min(args.batch_size, n), replace=False))
        batch = np.asarray(cache.images[rows])  # (B, S, S) uint8, copied out of the memory map
        mask = np.asarray(cache.masks[rows])
        checksum += int(batch[:, 0, 0].sum()) + int(mask[:, 0, 0].sum())
    seconds = time.perf_counter() - started
    images_per_second = args.batches * min(args.batch_size, n) / seconds
    print(f"cache: {n} images of {cache.images.shape[1]} px; {args.batches} random batches of {args.batch_size}")
    print(f"read speed: {images_per_second:,.0f} images/s (checksum {checksum})")
    print(f"ratio to training throughput ({TRAINING_IMAGES_PER_SECOND:g} img/s): "
          f"{images_per_second / TRAINING_IMAGES_PER_SECOND:,.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
