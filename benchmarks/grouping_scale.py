"""Duplicate grouping at the full release size (3,746 perceptual hashes): wall time (goal < 20 s)."""

from __future__ import annotations

import time

import numpy as np

from assurexray.data.groups import group_images
from benchmarks import Figure

N_RELEASE = 3746


def figures(quick: bool = False, *, tiny: bool = False) -> list[Figure]:
    n = 100 if tiny else N_RELEASE
    rng = np.random.default_rng(1)
    hashes = [int(h) for h in rng.integers(0, 2**63, n, dtype=np.uint64)]
    ids = [f"IMG{i:06d}" for i in range(n)]
    started = time.perf_counter()
    group_images(ids, hashes, [""] * n, max_distance=4)
    seconds = time.perf_counter() - started
    return [Figure(f"grouping {n:,} images (phash)", seconds, "s", "< 20 s", seconds < 20, "vectorised Hamming")]


if __name__ == "__main__":
    for figure in figures():
        print(figure)
