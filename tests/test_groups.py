"""Duplicate and case grouping: hand-made hashes with known distances, phash behaviour, scale."""

from __future__ import annotations

import numpy as np
import pytest

from assurexray.data.groups import PAIR_COLUMNS, group_images, hamming_matrix, perceptual_hash

IDS = ["a", "b", "c", "d", "e"]


def test_hamming_matrix_counts_differing_bits():
    hashes = [0, 1, 3, 2**64 - 1]
    expected = [[0, 1, 2, 64], [1, 0, 1, 63], [2, 1, 0, 62], [64, 63, 62, 0]]
    out = hamming_matrix(hashes)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_hamming_matrix_rejects_hashes_outside_64_bits():
    with pytest.raises(ValueError, match=r"hashes must be integers in \[0, 2\*\*64\)"):
        hamming_matrix([-1, 2])


def test_group_images_joins_exact_and_near_duplicates_but_not_distant_images():
    # a == b (distance 0); c is 3 bits from a; d is 5 bits from a and 2 from c; e is far from all.
    hashes = [0, 0, 0b111, 0b11111, 2**64 - 1]
    result = group_images(IDS, hashes, [""] * 5, max_distance=3)
    assert result.group == ["a", "a", "a", "a", "e"]  # d joins through c (chained near duplicates)
    assert result.dup_of == ["", "a", "a", "c", ""]
    pairs = result.pairs
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    assert pairs[["image_id_a", "image_id_b"]].values.tolist() == [["a", "b"], ["a", "c"], ["b", "c"], ["c", "d"]]
    assert pairs["distance"].tolist() == [0, 3, 3, 2]
    assert pairs["kind"].tolist() == ["exact", "near", "near", "near"]


def test_group_images_with_distance_zero_keeps_only_exact_copies():
    result = group_images(IDS, [0, 0, 1, 3, 7], [""] * 5, max_distance=0)
    assert result.group == ["a", "a", "c", "d", "e"]
    assert result.pairs["kind"].tolist() == ["exact"]


def test_group_images_joins_views_of_one_case_without_calling_them_duplicates():
    hashes = [0, 2**64 - 1, 0xFFFF, 0xFFFF0000, 0xFF00FF00FF]
    result = group_images(IDS, hashes, ["", "P2", "P1", "P2", "P1"], max_distance=2)
    assert result.group == ["a", "b", "c", "b", "c"]
    assert result.dup_of == [""] * 5
    assert result.pairs.empty and list(result.pairs.columns) == list(PAIR_COLUMNS)


def test_group_images_calls_identical_bytes_exact_whatever_the_hash():
    hashes = [0, 2**64 - 1, 0b1]
    result = group_images(["x", "y", "z"], hashes, ["", "", ""], max_distance=1, digests=["d1", "d1", "d2"])
    assert result.group == ["x", "x", "x"]
    assert result.pairs.values.tolist() == [["x", "y", 64, "exact"], ["x", "z", 1, "near"]]


def test_group_key_is_the_first_image_of_the_group_whatever_the_join_order():
    # e joins d by case first, then c joins e by hash: the key is still the earliest member, c.
    result = group_images(IDS, [2**64 - 1, 0xF0F0, 0, 0xFF00, 0], ["", "", "", "K", "K"], max_distance=0)
    assert result.group == ["a", "b", "c", "c", "c"]


@pytest.mark.parametrize("distance", [-1, 65, 2.5, True])
def test_group_images_rejects_a_distance_outside_the_hash(distance):
    with pytest.raises(ValueError, match=r"near_duplicate_distance must be an integer in \[0, 64\]"):
        group_images(IDS, [0] * 5, [""] * 5, max_distance=distance)


def test_group_images_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match=r"one entry per image; got lengths 5, 4, 5"):
        group_images(IDS, [0] * 4, [""] * 5, max_distance=1)


def test_perceptual_hash_is_stable_under_noise_and_separates_different_images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    image = (128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0)).astype(np.uint8)
    noisy = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    other = (128 + 100 * np.sin(yy / 5.0 + 1.0)).astype(np.uint8)
    h, h_noisy, h_other = perceptual_hash(image), perceptual_hash(noisy), perceptual_hash(other)
    assert 0 <= h < 2**64
    assert perceptual_hash(image.copy()) == h
    distances = hamming_matrix([h, h_noisy, h_other])
    assert distances[0, 1] <= 4 < distances[0, 2]


def test_perceptual_hash_rejects_colour_arrays():
    with pytest.raises(ValueError, match=r"expects a 2-D grayscale array, got shape \(4, 4, 3\)"):
        perceptual_hash(np.zeros((4, 4, 3), dtype=np.uint8))


def test_group_images_scales_to_the_full_release_size():
    rng = np.random.default_rng(1)
    n = 3746
    hashes = [int(h) for h in rng.integers(0, 2**63, n, dtype=np.uint64)]
    hashes[100] = hashes[7]  # one planted exact duplicate
    ids = [f"IMG{i:06d}" for i in range(n)]
    result = group_images(ids, hashes, [""] * n, max_distance=4)  # its speed: `python -m benchmarks` (grouping)
    assert result.group[100] == "IMG000007" and result.dup_of[100] == "IMG000007"
    assert len(set(result.group)) == n - 1
