"""Group images that must never straddle a split: exact/near duplicates and views of one case.

BTXRD holds re-exported copies of some radiographs and several views per case; an image in train with its
twin in test inflates every metric. Grouping is union-find over perceptual-hash pairs and case ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

__all__ = ["GroupResult", "perceptual_hash", "hamming_matrix", "group_images", "PAIR_COLUMNS"]

logger = logging.getLogger(__name__)

PAIR_COLUMNS: tuple[str, ...] = ("image_id_a", "image_id_b", "distance", "kind")
HASH_BITS = 64
# Rows of the pairwise distance matrix computed at once: 512 x 3746 x 8 bytes = 15 MB of XORs.
_BLOCK_ROWS = 512


@dataclass(frozen=True)
class GroupResult:
    """Per image: ``group`` (first image_id of its group) and ``dup_of`` (first earlier duplicate or "")."""

    group: list[str]
    dup_of: list[str]
    pairs: pd.DataFrame  # PAIR_COLUMNS; one row per duplicate pair (a before b in input order)


def perceptual_hash(gray: np.ndarray) -> int:
    """64-bit DCT perceptual hash (imagehash.phash) of a uint8 (H, W) image, as an int."""
    if gray.ndim != 2:
        raise ValueError(f"perceptual_hash expects a 2-D grayscale array, got shape {gray.shape}.")
    bits = imagehash.phash(Image.fromarray(np.ascontiguousarray(gray)), hash_size=8).hash.flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming_matrix(hashes: Sequence[int] | np.ndarray) -> np.ndarray:
    """(N, N) uint8 Hamming distances between 64-bit hashes (vectorised XOR + popcount)."""
    values = _as_uint64(hashes)
    out = np.empty((len(values), len(values)), dtype=np.uint8)
    for start, block in _distance_blocks(values):
        out[start:start + len(block)] = block
    return out


def group_images(
    image_ids: Sequence[str],
    hashes: Sequence[int] | np.ndarray,
    case_ids: Sequence[str],
    *,
    max_distance: int,
    digests: Sequence[str] | None = None,
) -> GroupResult:
    """Union-find over duplicate pairs (hash distance <= ``max_distance``, or identical file ``digests``)
    and shared non-empty ``case_ids``. Group key = first image_id of the group in input order (stable).
    """
    n = len(image_ids)
    if len(hashes) != n or len(case_ids) != n or (digests is not None and len(digests) != n):
        raise ValueError(
            f"image_ids, hashes, case_ids (and digests) must have one entry per image; got lengths "
            f"{n}, {len(hashes)}, {len(case_ids)}" + ("" if digests is None else f", {len(digests)}") + "."
        )
    if isinstance(max_distance, bool) or not isinstance(max_distance, (int, np.integer)) or not (
        0 <= max_distance <= HASH_BITS
    ):
        raise ValueError(
            f"near_duplicate_distance must be an integer in [0, {HASH_BITS}] (bits of the hash), "
            f"got {max_distance!r}. Fix prepare.near_duplicate_distance in params.yaml."
        )
    values = _as_uint64(hashes)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:  # the smaller index stays the root, so the key is the first member
            parent[max(ri, rj)] = min(ri, rj)

    a_list, b_list, d_list = [], [], []
    for start, block in _distance_blocks(values):
        rows, cols = np.nonzero(block <= max_distance)
        rows = rows + start
        keep = cols > rows
        a_list.append(rows[keep])
        b_list.append(cols[keep])
        d_list.append(block[rows[keep] - start, cols[keep]])
    a = np.concatenate(a_list) if a_list else np.empty(0, dtype=np.int64)
    b = np.concatenate(b_list) if b_list else np.empty(0, dtype=np.int64)
    dist = np.concatenate(d_list).astype(np.int64) if d_list else np.empty(0, dtype=np.int64)

    if digests is not None:  # identical bytes are exact duplicates whatever the hash says
        known = {(int(i), int(j)) for i, j in zip(a, b)}
        first: dict[str, list[int]] = {}
        for i, digest in enumerate(digests):
            first.setdefault(str(digest), []).append(i)
        extra = [(i, j) for members in first.values() for k, i in enumerate(members) for j in members[k + 1:]
                 if (i, j) not in known]
        if extra:
            ea, eb = np.array(extra, dtype=np.int64).T
            a, b = np.concatenate([a, ea]), np.concatenate([b, eb])
            dist = np.concatenate([dist, np.bitwise_count(values[ea] ^ values[eb]).astype(np.int64)])
    same_bytes = np.zeros(len(a), dtype=bool)
    if digests is not None and len(a):
        same_bytes = np.array([digests[i] == digests[j] for i, j in zip(a, b)], dtype=bool)
    order = np.lexsort((b, a))
    a, b, dist, same_bytes = a[order], b[order], dist[order], same_bytes[order]

    dup_of = [""] * n
    for i, j in zip(a.tolist(), b.tolist()):
        union(i, j)
        if not dup_of[j]:
            dup_of[j] = image_ids[i]  # pairs are sorted by a: the first (earliest) duplicate wins
    by_case: dict[str, int] = {}
    for i, case in enumerate(case_ids):
        case = "" if case is None else str(case)
        if case:
            if case in by_case:
                union(by_case[case], i)
            else:
                by_case[case] = i
    group = [image_ids[find(i)] for i in range(n)]
    pairs = pd.DataFrame({
        "image_id_a": [image_ids[i] for i in a.tolist()],
        "image_id_b": [image_ids[j] for j in b.tolist()],
        "distance": dist,
        "kind": np.where((dist == 0) | same_bytes, "exact", "near").astype(str),
    }, columns=list(PAIR_COLUMNS))
    logger.info("grouping: %d images, %d duplicate pairs (%d exact), %d groups",
                n, len(pairs), int((pairs["kind"] == "exact").sum()), len(set(group)))
    return GroupResult(group=group, dup_of=dup_of, pairs=pairs)


def _as_uint64(hashes: Sequence[int] | np.ndarray) -> np.ndarray:
    try:
        values = np.array([int(h) for h in hashes], dtype=np.uint64)
    except (OverflowError, ValueError, TypeError) as err:
        raise ValueError(f"hashes must be integers in [0, 2**64), ({err}).") from err
    return values


def _distance_blocks(values: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start row, (rows, N) uint8 distances) so memory stays bounded for large N."""
    for start in range(0, len(values), _BLOCK_ROWS):
        block = values[start:start + _BLOCK_ROWS, None] ^ values[None, :]
        yield start, np.bitwise_count(block).astype(np.uint8)
