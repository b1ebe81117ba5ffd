"""Tests for assurexray.assessment.metrics: hand-computed values, sklearn agreement, vectorised bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from assurexray.assessment.metrics import (
    HEADLINE_METRICS,
    PER_CLASS_METRICS,
    binary_rates_with_ci,
    bootstrap_weights,
    indices_to_weights,
    percentile_ci,
    point_metrics,
    pr_curves,
    roc_curves,
    suite_with_ci,
    weighted_suite,
)

NAMES = ["Normal", "Benign", "Malignant"]


def _synthetic(n: int = 90, seed: int = 0, *, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n // 3)
    logits = rng.normal(size=(n, 3)) + 1.2 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if ties:  # rounding creates tied scores, the hard case for rank-based AUC and AP
        p = np.round(p, 1) + 1e-3
        p /= p.sum(axis=1, keepdims=True)
    return y, p


def _binary_probs(scores: list[float]) -> np.ndarray:
    """3-class probabilities whose Malignant column is ``scores`` (rest split evenly)."""
    s = np.asarray(scores)
    return np.column_stack([(1 - s) / 2, (1 - s) / 2, s])


def test_auc_of_four_samples_matches_the_hand_count_of_ordered_pairs():
    # Malignant scores: positives 0.8, 0.4; negatives 0.6, 0.2. Pairs (pos > neg): (0.8,0.6) (0.8,0.2) (0.4,0.2)
    # = 3 of 4 -> AUC 0.75. AP: ranks 0.8(+) 0.6(-) 0.4(+) 0.2(-): precision 1 at recall .5, 2/3 at recall 1.
    y = np.array([2, 0, 2, 1])
    p = _binary_probs([0.8, 0.6, 0.4, 0.2])
    m = point_metrics(y, p)
    assert m["auc"][2] == pytest.approx(0.75)
    assert m["ap"][2] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_tied_scores_count_half_a_pair_in_auc():
    y = np.array([2, 0])
    p = _binary_probs([0.5, 0.5])
    assert point_metrics(y, p)["auc"][2] == pytest.approx(0.5)


def test_per_class_rates_match_a_hand_built_confusion_matrix():
    # actual:    N N B B M M ; predicted: N B B B M N
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    p = np.full((6, 3), 0.1) + 0.7 * np.eye(3)[pred]
    m = point_metrics(y, p)
    np.testing.assert_array_equal(m["confusion"], [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    # Malignant: TP 1, FN 1, FP 0, TN 4 -> sens .5, spec 1, ppv 1, npv .8, f1 2/3
    assert m["sensitivity"][2] == pytest.approx(0.5)
    assert m["specificity"][2] == pytest.approx(1.0)
    assert m["ppv"][2] == pytest.approx(1.0)
    assert m["npv"][2] == pytest.approx(0.8)
    assert m["f1"][2] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    np.testing.assert_array_equal(m["support"], [2, 2, 2])


@pytest.mark.parametrize("ties", [False, True])
def test_point_metrics_agree_with_sklearn(ties):
    y, p = _synthetic(ties=ties)
    pred = p.argmax(axis=1)
    m = point_metrics(y, p)
    onehot = np.eye(3)[y]
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", labels=[0, 1, 2]))
    assert m["macro_ap"] == pytest.approx(average_precision_score(onehot, p, average="macro"))
    np.testing.assert_allclose(m["auc"], [roc_auc_score(onehot[:, c], p[:, c]) for c in range(3)])
    np.testing.assert_allclose(m["ap"], average_precision_score(onehot, p, average=None))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=[0, 1, 2]))
    np.testing.assert_allclose(m["sensitivity"], recall_score(y, pred, average=None, labels=[0, 1, 2]))
    np.testing.assert_allclose(m["ppv"], precision_score(y, pred, average=None, labels=[0, 1, 2]))
    np.testing.assert_array_equal(m["confusion"], confusion_matrix(y, pred, labels=[0, 1, 2]))


def test_vectorised_bootstrap_agrees_with_a_naive_sklearn_loop_on_the_same_indices():
    y, p = _synthetic(n=60)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, y.size, size=(8, y.size))
    reps = weighted_suite(y, p, indices_to_weights(idx, y.size))
    for b in range(idx.shape[0]):
        yb, pb = y[idx[b]], p[idx[b]]
        predb = pb.argmax(axis=1)
        assert reps["macro_auc"][b] == pytest.approx(roc_auc_score(yb, pb, multi_class="ovr", labels=[0, 1, 2]))
        assert reps["macro_ap"][b] == pytest.approx(average_precision_score(np.eye(3)[yb], pb))
        assert reps["accuracy"][b] == pytest.approx(accuracy_score(yb, predb))
        assert reps["balanced_accuracy"][b] == pytest.approx(balanced_accuracy_score(yb, predb))
        assert reps["macro_f1"][b] == pytest.approx(f1_score(yb, predb, average="macro", labels=[0, 1, 2]))


def test_a_resample_without_a_class_gives_nan_auc_and_is_counted_not_hidden():
    y = np.array([0, 1, 2, 0, 1, 2])
    p = np.full((6, 3), 0.2) + 0.4 * np.eye(3)[y]
    idx = np.array([[0, 1, 2, 3, 4, 5], [0, 0, 1, 1, 3, 4]])  # second resample has no Malignant
    w = indices_to_weights(idx, 6)
    reps = weighted_suite(y, p, w)
    assert np.isfinite(reps["macro_auc"][0]) and np.isnan(reps["macro_auc"][1])
    out = suite_with_ci(y, p, w, class_names=NAMES, ci_level=0.95)
    assert out["nan_resamples"]["macro_auc"] == 1
    assert out["headline"]["macro_auc"]["ci_low"] == pytest.approx(1.0)


def test_stratified_weights_keep_the_class_counts_in_every_resample():
    y = np.array([0] * 5 + [1] * 3 + [2] * 2)
    w = bootstrap_weights(y, resamples=50, seed=0)
    assert w.shape == (50, 10)
    np.testing.assert_array_equal(w @ np.eye(3)[y], np.tile([5, 3, 2], (50, 1)))


def test_cluster_resampling_keeps_each_group_together():
    y = np.array([0, 0, 1, 1, 1, 2, 2, 0])
    groups = np.array(["a", "a", "b", "b", "c", "d", "d", "e"])
    w = bootstrap_weights(y, resamples=200, seed=1, groups=groups)
    for g in np.unique(groups):
        members = w[:, groups == g]
        assert (members == members[:, :1]).all(), f"group {g} split across a resample"
    assert (w[:, groups == "a"] != w[:, groups == "e"]).any()  # groups are drawn independently


def test_the_same_seed_gives_the_same_resamples_and_another_seed_does_not():
    y, _ = _synthetic()
    a = bootstrap_weights(y, resamples=20, seed=7)
    np.testing.assert_array_equal(a, bootstrap_weights(y, resamples=20, seed=7))
    assert not np.array_equal(a, bootstrap_weights(y, resamples=20, seed=8))


def test_ci_brackets_the_point_estimate_for_every_metric():
    y, p = _synthetic(n=150, ties=False)
    w = bootstrap_weights(y, resamples=300, seed=0)
    out = suite_with_ci(y, p, w, class_names=NAMES, ci_level=0.95)
    values = list(out["headline"].values()) + [
        out["per_class"][c][m] for c in NAMES for m in PER_CLASS_METRICS
    ]
    assert set(out["headline"]) == set(HEADLINE_METRICS)
    for v in values:
        assert 0.0 <= v["ci_low"] <= v["value"] <= v["ci_high"] <= 1.0
    assert out["per_class"]["Malignant"]["support"] == 50
    assert out["headline"]["malignant_sensitivity_argmax"] == out["per_class"]["Malignant"]["sensitivity"]
    np.testing.assert_allclose(np.sum(out["confusion"]["normalized"], axis=1), 1.0)


def test_binary_rates_at_a_threshold_match_the_hand_count():
    positive = np.array([1, 1, 1, 0, 0], dtype=bool)
    flagged = np.array([1, 1, 0, 1, 0], dtype=bool)
    out = binary_rates_with_ci(positive, flagged, np.ones((3, 5)), ci_level=0.9)
    assert out["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert out["specificity"]["value"] == pytest.approx(0.5)
    # 3 positives: a Wilson interval, not the collapsed bootstrap (2/3, 2/3). Hand value: k=2, n=3, z=1.645.
    z, n, k = 1.6448536269514722, 3, 2
    centre = (k + z**2 / 2) / (n + z**2)
    half = z * np.sqrt(k * (n - k) / n + z**2 / 4) / (n + z**2)
    assert out["sensitivity"]["interval"] == "wilson" and out["sensitivity"]["n"] == 3
    assert (out["sensitivity"]["ci_low"], out["sensitivity"]["ci_high"]) == (
        pytest.approx(centre - half), pytest.approx(centre + half))


def test_a_proportion_with_all_of_few_positives_found_is_not_reported_as_certain():
    positive = np.array([1, 1, 1] + [0] * 30, dtype=bool)
    flagged = positive.copy()
    weights = bootstrap_weights(positive.astype(int), resamples=200, seed=0)
    out = binary_rates_with_ci(positive, flagged, weights, ci_level=0.95)
    assert out["sensitivity"]["value"] == 1.0
    assert out["sensitivity"]["ci_low"] < 0.6  # Wilson (0.44, 1.00), not bootstrap (1.00, 1.00)
    assert out["specificity"]["interval"] == "bootstrap" and out["specificity"]["n"] == 30


def test_curves_end_at_the_corners_and_skip_absent_classes():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6]])
    roc = roc_curves(y, p)
    assert roc[0]["fpr"][-1] == 1.0 and roc[0]["tpr"][-1] == 1.0
    assert roc[2]["fpr"].size == 0  # no Malignant image: no curve rather than a fake one
    pr = pr_curves(y, p)
    assert pr[1]["recall"][0] == 1.0 and pr[2]["recall"].size == 0


def test_percentile_ci_ignores_nan_replicates():
    low, high = percentile_ci(np.array([np.nan, 0.0, 1.0, np.nan]), 0.5)
    assert (low, high) == (0.25, 0.75)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: point_metrics(np.array([0, 1]), np.array([[2.0, -1.0], [0.5, 0.5]])), "apply softmax"),
        (lambda: point_metrics(np.array([0, 3]), np.full((2, 3), 1 / 3)), r"labels must lie in 0\.\.2"),
        (lambda: point_metrics(np.array([0.0, 1.0]), np.full((2, 3), 1 / 3)), "integer class indices"),
        (lambda: point_metrics(np.array([0, 1]), np.full((3, 3), 1 / 3)), r"shape \(2, K\)"),
        (lambda: bootstrap_weights(np.array([0, 1]), resamples=0, seed=0), "positive integer"),
        (lambda: bootstrap_weights(np.array([0, 1]), resamples=5, seed=0, groups=np.array(["a"])), "one group"),
        (lambda: percentile_ci(np.zeros(3), 95), "strictly between 0 and 1"),
        (lambda: suite_with_ci(np.array([0, 1]), np.full((2, 3), 1 / 3), np.ones((1, 2)),
                               class_names=["A", "B"], ci_level=0.95), "one name per column"),
        (lambda: suite_with_ci(np.array([0, 1]), np.full((2, 3), 1 / 3), np.ones((1, 2)),
                               class_names=["A", "B", "C"], ci_level=0.95), "positive_class 'Malignant'"),
    ],
)
def test_bad_inputs_raise_a_message_naming_the_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_macro_averages_run_over_the_classes_present_when_a_class_is_absent_from_the_test_set():
    # Centre-holdout test sets can lack a class (no Normal image outside centre 1 in BTXRD).
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    y = np.array([1, 1, 2, 2, 1, 2])
    probs = np.array([[0.1, 0.7, 0.2], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.3, 0.3, 0.4],
                      [0.1, 0.2, 0.7], [0.2, 0.6, 0.2]])
    suite = point_metrics(y, probs)
    auc = [roc_auc_score(y == c, probs[:, c]) for c in (1, 2)]
    ap = [average_precision_score(y == c, probs[:, c]) for c in (1, 2)]
    assert np.isnan(suite["auc"][0]) and suite["support"][0] == 0
    assert suite["macro_auc"] == pytest.approx(np.mean(auc))
    assert suite["macro_ap"] == pytest.approx(np.mean(ap))
    assert suite["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), labels=[1, 2], average="macro"))
