"""The lesion map on synthetic lesions: a decoder trained on a few masks finds off-centre lesions that the
centred Gaussian misses, and explain scores it beside Grad-CAM with paired, case-clustered intervals."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from assurexray.assessment import explain as ex
from assurexray.assessment.lesion_maps import compute_lesion_maps
from assurexray.learning.lesion_head import WithLesionHead, lesion_loss
from assurexray.learning.model import create_model

CLASSES = ["Normal", "Benign", "Malignant"]
S = 48


def _lesions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images, each with a bright disc in a corner quadrant (never at the centre) and its mask."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 70, (n, S, S), dtype=np.uint8)
    masks = np.zeros_like(images)
    for i in range(n):
        cx, cy = (int(rng.choice([rng.integers(6, 14), rng.integers(34, 42)])) for _ in range(2))
        cv2.circle(images[i], (cx, cy), 5, int(rng.integers(150, 230)), -1)
        cv2.circle(masks[i], (cx, cy), 5, 1, -1)
    return images, masks


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.repeat(image[None].astype(np.float32) / 255.0, 3, axis=0))


@pytest.fixture(scope="module")
def lesion_model() -> torch.nn.Module:
    """test_efficientnet + lesion decoder, trained on 64 synthetic lesions for 60 steps (seeded, CPU)."""
    torch.manual_seed(0)
    model = create_model("test_efficientnet", num_classes=3, lesion_head=True)
    images, masks = _lesions(64, seed=1)
    x = torch.stack([_to_tensor(im) for im in images])
    y = torch.from_numpy(masks)
    wrapped = WithLesionHead(model).train()
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(60):
        batch = rng.choice(len(x), 16, replace=False)
        _, lesion = wrapped(x[batch])
        loss_sum, n = lesion_loss(lesion, y[batch])
        optimizer.zero_grad()
        (loss_sum / n).backward()
        optimizer.step()
    return model.eval()


def _inputs(root, images: np.ndarray, masks: np.ndarray) -> dict:
    n = len(images)
    labels = [CLASSES[1 + i % 2] for i in range(n)]  # tumours only: every image is annotated
    preds = [labels[i] if i % 3 else "Normal" for i in range(n)]  # every third called Normal
    parts = ["val" if i < n // 3 else "test" for i in range(n)]
    (root / "prepared").mkdir()
    np.save(root / "prepared" / "images.npy", images)
    np.save(root / "prepared" / "masks.npy", masks)
    index = pd.DataFrame({
        "row": range(n), "image_id": [f"IMG{i:06d}.jpeg" for i in range(n)], "label": labels,
        "label_idx": [CLASSES.index(c) for c in labels], "has_mask": 1, "scale": S / 100, "pad_x": 0, "pad_y": 0,
        "orig_width": 100, "orig_height": 100, "center": [1 + i % 2 for i in range(n)],
        "group": [f"C{i // 2}" for i in range(n)],  # two views per case
    })
    (root / "split").mkdir()
    for part in ("val", "test"):
        index[[p == part for p in parts]].to_csv(root / "split" / f"{part}.csv", index=False)
    probs = np.full((n, 3), 0.2)
    probs[np.arange(n), [CLASSES.index(p) for p in preds]] = 0.6
    index[["row", "image_id"]].assign(
        partition=parts, pred_idx=[CLASSES.index(p) for p in preds], pred=preds,
        **{f"prob_{c}": probs[:, j] for j, c in enumerate(CLASSES)},
    ).to_csv(root / "predictions.csv", index=False)
    return {"prepared_dir": root / "prepared", "split_dir": root / "split", "predictions_path": root / "predictions.csv"}


@pytest.fixture(scope="module")
def explained(lesion_model, tmp_path_factory):
    images, masks = _lesions(36, seed=2)  # images the decoder never saw
    paths = _inputs(tmp_path_factory.mktemp("lesion"), images, masks)
    config = ex.ExplainConfig(bootstrap_resamples=200, gallery_top_k=1, layer_search=0)
    result = ex.explain_variant(model=lesion_model, transform=_to_tensor, config=config, seed=3,
                                class_names=CLASSES, **paths)
    return result, images, masks


def test_the_lesion_map_finds_off_centre_lesions_that_the_centred_baseline_misses(explained):
    metrics = explained[0].metrics
    lesion, baseline = metrics["lesion_map"]["overall"], metrics["baseline"]["overall"]
    assert lesion["n"] == baseline["n"] == 24
    assert lesion["pointing_game"]["value"] >= 0.9 and baseline["pointing_game"]["value"] <= 0.2
    assert lesion["dice@val"]["value"] >= 0.5 and lesion["energy_inside"]["value"] > 0.3
    versus = metrics["comparisons"]["lesion_map_vs_baseline"]["overall"]
    assert versus["pointing_game"]["ci_low"] > 0.5  # a wide margin, paired on the same images
    assert metrics["lesion_val_threshold"] in ex.loc.THRESHOLD_GRID
    assert metrics["validation"]["lesion_pointing_game"] >= 0.9
    json.dumps(metrics, allow_nan=False)


def test_the_lesion_map_is_not_grad_cam_and_beats_it_on_the_same_resamples(explained):
    metrics = explained[0].metrics
    versus = metrics["comparisons"]["lesion_map_vs_gradcam"]["overall"]
    # an untrained classifier's Grad-CAM: replacing the lesion map by it would give a difference of exactly 0
    assert versus["dice@val"]["ci_low"] > 0.2
    gradcam = metrics["comparisons"]["gradcam_vs_baseline"]["overall"]["dice@val"]["value"]
    lesion = metrics["comparisons"]["lesion_map_vs_baseline"]["overall"]["dice@val"]["value"]
    assert lesion - gradcam == pytest.approx(versus["dice@val"]["value"])  # differences of one paired table


def test_a_constant_map_scores_nothing(explained, lesion_model, monkeypatch):
    """The localisation figures have teeth: a flat map in place of the lesion map misses every lesion."""
    result, images, masks = explained
    flat = np.full((len(masks), S, S), 0.5, np.float32)
    scores = ex.loc.score_batch(flat, masks, thresholds=(0.5,), tolerance_px=3, val_threshold=0.5)
    assert scores["pointing_game"].mean() < 0.2
    maps = compute_lesion_maps(lesion_model, images, transform=_to_tensor, batch_size=8, progress=False)
    scores = ex.loc.score_batch(maps, masks, thresholds=(0.5,), tolerance_px=3, val_threshold=0.5)
    assert scores["pointing_game"].mean() >= 0.9


def test_per_image_columns_and_breakdowns_score_every_tumour_on_its_true_lesion(explained):
    result = explained[0]
    table, metrics = result.per_image, result.metrics
    for column in ("lesion_pointing_game", "lesion_dice@val", "lesion_iou@val", "lesion_energy_inside",
                   "pointing_game", "baseline_pointing_game", "correct", "center", "group"):
        assert column in table.columns, column
    # tumours called Normal are scored too (on the true lesion), and reported apart
    assert set(table["pred"]) >= {"Normal"} and len(table) == 24
    outcome = metrics["lesion_map"]["by_outcome"]
    assert outcome["correct"]["n"] + outcome["incorrect"]["n"] == 24 and outcome["incorrect"]["n"] == 8
    assert set(metrics["lesion_map"]["per_center"]) == {"1", "2"}
    assert set(metrics["comparisons"]["lesion_map_vs_baseline"]["per_center"]) == {"1", "2"}
    assert set(metrics["model"]) == set(metrics["lesion_map"]) == {"overall", "per_class", "per_center", "by_outcome"}


def test_gallery_panels_carry_the_lesion_map(explained):
    panels = [p for group in explained[0].panels.values() for p in group]
    assert panels and all(p.lesion_map is not None and p.lesion_map.shape == (S, S) for p in panels)


def test_a_model_without_a_lesion_head_has_no_lesion_section(tmp_path):
    images, masks = _lesions(12, seed=4)
    paths = _inputs(tmp_path, images, masks)
    model = create_model("test_efficientnet", num_classes=3).eval()
    config = ex.ExplainConfig(bootstrap_resamples=20, gallery_top_k=1, layer_search=0)
    result = ex.explain_variant(model=model, transform=_to_tensor, config=config, seed=3, class_names=CLASSES,
                                **paths)
    assert result.metrics["lesion_map"] is None and set(result.metrics["comparisons"]) == {"gradcam_vs_baseline"}
    assert not any(c.startswith("lesion_") for c in result.per_image.columns)
