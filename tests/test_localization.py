"""Localisation metrics on hand-made arrays (pure numpy, no torch)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.stats import spearmanr

from assurexray.assessment import localization as loc

S = 32


def _gaussian_peak(cy: float, cx: float, *, size: int = S, sigma: float = 2.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)


def _square_mask(y0: int, y1: int, x0: int, x1: int, *, size: int = S) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _letterboxed_polygon() -> tuple[np.ndarray, np.ndarray, dict]:
    """A triangle drawn on a 200x100 (w x h) radiograph, mapped through prepared = orig * scale + pad."""
    orig_w, orig_h = 200, 100
    scale = S / max(orig_w, orig_h)
    pad_x, pad_y = (S - round(orig_w * scale)) // 2, (S - round(orig_h * scale)) // 2
    polygon = np.array([[40.0, 20.0], [120.0, 30.0], [70.0, 80.0]])  # (x, y) in original px
    prepared = polygon * scale + np.array([pad_x, pad_y])
    mask = np.zeros((S, S), np.uint8)
    cv2.fillPoly(mask, [np.round(prepared).astype(np.int32)], 1)
    geometry = dict(scale=scale, pad_x=pad_x, pad_y=pad_y, orig_width=orig_w, orig_height=orig_h)
    return mask, prepared.mean(axis=0), geometry


def test_a_heatmap_peaked_inside_the_letterboxed_polygon_scores_a_pointing_hit():
    mask, (cx, cy), _ = _letterboxed_polygon()
    assert mask[int(round(cy)), int(round(cx))] == 1
    assert loc.pointing_game(_gaussian_peak(cy, cx), mask, tolerance_px=0)


def test_a_heatmap_peaked_in_the_padding_scores_a_miss():
    mask, _, geometry = _letterboxed_polygon()
    assert geometry["pad_y"] > 2
    assert not loc.pointing_game(_gaussian_peak(1, S // 2), mask, tolerance_px=3)


@pytest.mark.parametrize(("tolerance", "hit"), [(0, False), (2, False), (3, True), (4, True)])
def test_the_pointing_tolerance_is_a_euclidean_distance_in_pixels(tolerance, hit):
    mask = _square_mask(10, 20, 10, 20)  # last mask column is 19; the peak sits 3 px to its right
    assert loc.pointing_game(_gaussian_peak(15, 22), mask, tolerance_px=tolerance) is hit


def test_a_flat_heatmap_has_no_peak_and_scores_nothing():
    mask = _square_mask(0, 4, 0, 4)
    flat = np.zeros((S, S), np.float32)
    assert not loc.pointing_game(flat, mask, tolerance_px=5)
    assert loc.energy_inside(flat, mask) == 0.0
    assert loc.iou_dice(flat, mask, threshold=0.5) == (0.0, 0.0)


def test_energy_inside_is_the_share_of_heatmap_mass_in_the_mask():
    heatmap = np.ones((4, 4), np.float32)
    heatmap[0, 0] = 5.0  # total mass 20, of which 5 + 1 + 1 + 1 = 8 inside the top-left 2x2
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 1
    assert loc.energy_inside(heatmap, mask) == pytest.approx(8 / 20)


def test_iou_and_dice_of_a_thresholded_map_match_hand_counts():
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[0, :3] = [1.0, 0.6, 0.4]  # at 0.5 the region is {(0,0), (0,1)}
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 1:4] = 1  # {(0,1), (0,2), (0,3)}: intersection 1, union 4
    iou, dice = loc.iou_dice(heatmap, mask, threshold=0.5)
    assert iou == pytest.approx(1 / 4)
    assert dice == pytest.approx(2 * 1 / (2 + 3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_per_image_metric_lies_in_zero_one(seed):
    rng = np.random.default_rng(seed)
    heatmap = rng.random((S, S)).astype(np.float32)
    mask = (rng.random((S, S)) > 0.8).astype(np.uint8)
    scores = loc.localization_scores(heatmap, mask, thresholds=[0.3, 0.5, 0.7], tolerance_px=2)
    assert set(scores) == {"pointing_game", "energy_inside", "iou@0.3", "dice@0.3", "iou@0.5", "dice@0.5",
                           "iou@0.7", "dice@0.7"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_the_validation_threshold_maximises_mean_iou():
    mask = _square_mask(8, 16, 8, 16)
    heatmap = np.full((S, S), 0.2, np.float32)
    heatmap[8:16, 8:16] = 0.9  # any threshold in (0.2, 0.9] isolates the mask exactly
    assert loc.choose_threshold(heatmap[None], mask[None], grid=[0.1, 0.5, 0.95]) == 0.5
    assert loc.choose_threshold(heatmap[None], mask[None], grid=[0.1, 0.15]) == 0.1


def test_choosing_a_threshold_without_images_is_refused():
    with pytest.raises(ValueError, match="no images with a lesion mask"):
        loc.choose_threshold(np.zeros((0, S, S)), np.zeros((0, S, S)))


def test_the_baseline_is_centred_on_the_content_and_zero_on_the_padding():
    box = loc.content_box(scale=0.16, pad_x=0, pad_y=8, orig_width=200, orig_height=100, size=S)
    assert (box.y0, box.y1, box.x0, box.x1) == (8, 24, 0, 32)
    base = loc.gaussian_baseline(box, size=S, sigma=0.25)
    peak = np.unravel_index(np.argmax(base), base.shape)
    assert abs(peak[0] - 15.5) <= 0.5 and abs(peak[1] - 15.5) <= 0.5
    assert base.max() == pytest.approx(1.0)
    assert base[:8].sum() == 0 and base[24:].sum() == 0
    np.testing.assert_allclose(base, base[::-1, ::-1], atol=1e-6)  # symmetric about the centre


def test_a_non_positive_baseline_sigma_is_refused():
    box = loc.content_box(scale=1.0, pad_x=0, pad_y=0, orig_width=S, orig_height=S, size=S)
    with pytest.raises(ValueError, match="baseline_sigma must be > 0"):
        loc.gaussian_baseline(box, size=S, sigma=0.0)


def test_invalid_letterbox_geometry_is_refused():
    with pytest.raises(ValueError, match="must all be positive; re-run the prepare stage"):
        loc.content_box(scale=0.0, pad_x=0, pad_y=0, orig_width=10, orig_height=10, size=S)


def test_rank_correlation_matches_scipy_with_ties():
    rng = np.random.default_rng(3)
    a = np.round(rng.random((8, 8)), 1)  # many ties
    b = np.round(a + 0.3 * rng.random((8, 8)), 1)
    assert loc.rank_correlation(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic)
    assert loc.rank_correlation(a, a) == pytest.approx(1.0)
    assert loc.rank_correlation(a, -a) == pytest.approx(-1.0)


def test_rank_correlation_with_a_flat_map_is_zero_and_undefined_for_two_flat_maps():
    a = np.arange(16.0).reshape(4, 4)
    flat = np.zeros((4, 4))
    assert loc.rank_correlation(a, flat) == 0.0
    assert np.isnan(loc.rank_correlation(flat, flat))


def test_the_bootstrap_is_deterministic_for_a_seed_and_brackets_the_mean():
    values = {"hit": np.array([1, 0, 1, 1, 0, 1.0]), "energy": np.array([0.1, 0.5, 0.2, 0.9, 0.4, 0.3])}
    first = loc.bootstrap_summary(values, groups=None, resamples=200, seed=7)
    assert first == loc.bootstrap_summary(values, groups=None, resamples=200, seed=7)
    assert first != loc.bootstrap_summary(values, groups=None, resamples=200, seed=8)
    assert first["n"] == 6
    for key, column in values.items():
        ci = first[key]
        assert ci["value"] == pytest.approx(column.mean())
        assert 0.0 <= ci["ci_low"] <= ci["value"] <= ci["ci_high"] <= 1.0


def test_the_bootstrap_of_no_images_is_null_not_nan():
    out = loc.bootstrap_summary({"hit": np.array([])}, groups=None, resamples=10, seed=0)
    assert out == {"hit": {"value": None, "ci_low": None, "ci_high": None}, "n": 0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": {"x": np.array([np.nan, 1.0])}, "resamples": 10}, r"NaN values in \['x'\]"),
        ({"values": {"x": np.ones(3)}, "resamples": 0}, "bootstrap_resamples must be >= 1"),
        ({"values": {"x": np.ones(3)}, "resamples": 10, "ci_level": 1.5}, r"ci_level must be in \(0, 1\)"),
    ],
)
def test_bad_bootstrap_inputs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        loc.bootstrap_summary(seed=0, groups=None, **kwargs)


def test_the_localisation_bootstrap_resamples_case_groups_not_images():
    """Four views of each case, scored alike: the case-clustered interval is that of the cases alone (an
    image-level resample would be about half as wide, as if the views were independent evidence)."""
    rng = np.random.default_rng(0)
    cases = rng.integers(0, 2, 40).astype(float)  # one hit or miss per case
    views, groups = np.repeat(cases, 4), np.repeat(np.arange(40), 4)
    alone = loc.bootstrap_summary({"hit": cases}, groups=None, resamples=2000, seed=1)["hit"]
    clustered = loc.bootstrap_summary({"hit": views}, groups=groups, resamples=2000, seed=1)["hit"]
    images = loc.bootstrap_summary({"hit": views}, groups=None, resamples=2000, seed=1)["hit"]
    width = {name: ci["ci_high"] - ci["ci_low"] for name, ci in
             (("alone", alone), ("clustered", clustered), ("images", images))}
    assert clustered["ci_low"] == pytest.approx(alone["ci_low"]) and clustered["ci_high"] == pytest.approx(alone["ci_high"])
    assert width["clustered"] > 1.5 * width["images"]
    with pytest.raises(ValueError, match="3 group ids for 160 images"):
        loc.bootstrap_summary({"hit": views}, groups=groups[:3], resamples=10, seed=1)


def test_paired_differences_of_near_identical_maps_are_narrow_around_zero():
    """Two maps that disagree on two images of 120: paired on the same resamples the interval hugs 0; resampling
    each map on its own would give an interval as wide as each map's own."""
    rng = np.random.default_rng(2)
    first = rng.integers(0, 2, 120).astype(float)
    second = first.copy()
    second[:2] = 1 - second[:2]
    groups = np.repeat(np.arange(60), 2)
    diff = loc.paired_differences({"hit": first}, {"hit": second}, groups=groups, resamples=2000, seed=3)["hit"]
    own = loc.bootstrap_summary({"hit": first}, groups=groups, resamples=2000, seed=3)["hit"]
    assert diff["ci_low"] <= diff["value"] <= diff["ci_high"]
    assert diff["ci_high"] - diff["ci_low"] < 0.25 * (own["ci_high"] - own["ci_low"])
    assert diff["value"] == pytest.approx(first.mean() - second.mean())
    with pytest.raises(ValueError, match="pair the same images"):
        loc.paired_differences({"hit": first}, {"hit": second[:5]}, groups=None, resamples=10, seed=3)


def test_mismatched_heatmap_and_mask_shapes_are_refused():
    with pytest.raises(ValueError, match=r"must be 2-D arrays of the same \(S, S\) shape"):
        loc.energy_inside(np.ones((4, 4)), np.ones((4, 5)))


def test_a_negative_pointing_tolerance_is_refused():
    with pytest.raises(ValueError, match="pointing_tolerance_px must be >= 0, got -1"):
        loc.pointing_game(np.ones((4, 4)), np.ones((4, 4)), tolerance_px=-1)


def test_a_batch_of_maps_is_scored_column_by_column_including_the_validation_threshold():
    mask = _square_mask(8, 16, 8, 16)
    inside, outside = _gaussian_peak(12, 12), _gaussian_peak(28, 28)
    cols = loc.score_batch(np.stack([inside, outside]), np.stack([mask, mask]), thresholds=[0.5],
                           tolerance_px=1, val_threshold=0.5)
    assert list(cols) == ["pointing_game", "energy_inside", "iou@0.5", "dice@0.5", "iou@val", "dice@val"]
    assert cols["pointing_game"].tolist() == [1.0, 0.0]
    np.testing.assert_array_equal(cols["iou@val"], cols["iou@0.5"])
    assert cols["energy_inside"][0] > cols["energy_inside"][1]
