"""Auxiliary lesion head and weight EMA: training-only levers that leave a plain, mask-free classifier."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from assurexray.learning import batches, training
from assurexray.learning.lesion_head import WithLesionHead, lesion_loss
from assurexray.learning.model import load_checkpoint, save_checkpoint
from assurexray.learning.transforms import train_transform
from test_resume import _files, _Killed, _killing_train_epoch
from test_training import S, _cache, _options


def _masks() -> np.ndarray:
    """Lesion masks on the bright square of the tumour images of ``_cache`` (Normal images: empty)."""
    images, index = _cache()
    masks = np.zeros_like(images)
    for row, label in zip(index["row"], index["label_idx"]):
        if label > 0:
            masks[row, 8:24, 8:24] = 1
    return masks


def test_the_head_leaves_the_classifier_logits_unchanged():
    classifier = timm.create_model("test_efficientnet", num_classes=3).eval()
    wrapped = WithLesionHead(classifier).eval()
    x = torch.randn(2, 3, 64, 64)
    logits, lesion = wrapped(x)
    assert torch.allclose(logits, classifier(x), atol=1e-6)
    stride = classifier.feature_info[wrapped.levels[0]]["reduction"]
    assert lesion.shape == (2, 1, 64 // stride, 64 // stride)


def test_the_lesion_loss_counts_tumour_images_only_and_rewards_finding_the_lesion():
    masks = torch.zeros(3, 16, 16)
    masks[0, 4:8, 4:8] = 1  # one tumour image; two without lesion
    right = torch.full((3, 1, 4, 4), -8.0)
    right[0, 0, 1, 1] = 8.0  # the cell holding the lesion
    wrong = torch.full((3, 1, 4, 4), -8.0)
    wrong[0, 0, 3, 3] = 8.0
    loss_right, n = lesion_loss(right, masks)
    loss_wrong, _ = lesion_loss(wrong, masks)
    assert n == 1 and float(loss_right) < 0.05 < 1.0 < float(loss_wrong)
    none, zero = lesion_loss(wrong, torch.zeros(3, 16, 16))
    assert zero == 0 and float(none) == 0.0


def test_augmentation_moves_the_mask_with_the_image():
    image = np.zeros((S, S), np.uint8)
    image[2:10, 20:30] = 200
    mask = (image > 0).astype(np.uint8)
    meta = {"input_size": S, "mean": [0.5] * 3, "std": [0.5] * 3, "clahe": False}
    dataset = batches.ImageDataset(image[None], np.array([0]), np.array([1]),
                                     train_transform(meta, {"hflip": 1.0, "rotate_deg": 20, "translate": 0.1}, seed=3),
                                     masks=mask[None])
    x, _, moved = dataset[0]
    bright = x[0].numpy() > 0.5  # the normalised 200s
    assert moved.dtype == torch.uint8 and moved.sum() > 20
    overlap = (bright & (moved.numpy() > 0)).sum() / max(1, bright.sum())
    assert overlap > 0.85  # same geometry (nearest vs linear interpolation differ at the edge only)


def test_a_run_with_the_lesion_head_saves_a_plain_classifier_and_records_the_weight(tmp_path):
    masks = _masks()
    plain = training.train_model(**_options(tmp_path, live_dir=None, masks=masks))
    with_head = training.train_model(**_options(tmp_path, masks=masks, seg_weight=1.0))
    again = training.train_model(**_options(tmp_path, live_dir=None, masks=masks, seg_weight=1.0))
    a, b, c = (r.model.state_dict() for r in (with_head, again, plain))
    assert a.keys() == c.keys()  # no head in the saved model: inference needs no mask
    assert all(torch.equal(a[k], b[k]) for k in a)  # deterministic on CPU
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the lesion loss changed the encoder
    assert with_head.meta["params"]["train"]["seg_weight"] == 1.0
    assert plain.meta["params"]["train"]["seg_weight"] == 0.0
    assert all(row["train_seg_loss"] > 0 for row in with_head.history)
    assert "train_seg_loss" not in plain.history[0]
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "seg_loss.tsv").is_file()
    path = save_checkpoint(tmp_path / "m.pt", with_head.model, with_head.meta)
    model, meta = load_checkpoint(path)
    assert meta["params"]["train"]["seg_weight"] == 1.0 and model(torch.zeros(1, 3, S, S)).shape == (1, 3)


def test_the_lesion_head_needs_masks(tmp_path):
    with pytest.raises(ValueError, match="seg_weight > 0 needs the lesion masks"):
        training.train_model(**_options(tmp_path, live_dir=None, seg_weight=0.5))


@pytest.mark.parametrize("override, message", [
    ({"seg_weight": -1}, "train.seg_weight"), ({"ema_decay": 1.0}, "train.ema_decay"),
])
def test_bad_lever_values_are_named(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        training.train_model(**_options(tmp_path, live_dir=None, masks=_masks(), **override))


def test_ema_keeps_averaged_weights_and_is_recorded(tmp_path):
    raw = training.train_model(**_options(tmp_path, live_dir=None))
    ema = training.train_model(**_options(tmp_path, live_dir=None, ema_decay=0.5))
    again = training.train_model(**_options(tmp_path, live_dir=None, ema_decay=0.5))
    a, b, r = (x.model.state_dict() for x in (ema, again, raw))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], r[k]) for k in a)
    assert ema.meta["params"]["train"]["ema_decay"] == 0.5
    assert [row["val_loss"] for row in ema.history] != [row["val_loss"] for row in raw.history]


def test_a_killed_run_with_head_and_ema_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    settings = dict(epochs=3, patience=None, masks=_masks(), seg_weight=0.5, ema_decay=0.5)
    reference = training.train_model(**_options(tmp_path, live_dir=tmp_path / "ref_live",
                                                resume_dir=tmp_path / "ref_resume", **settings))
    with monkeypatch.context() as patch:
        patch.setattr(training, "_train_epoch", _killing_train_epoch(kill_epoch=3))
        with pytest.raises(_Killed):
            training.train_model(**_options(tmp_path, resume_dir=tmp_path / "resume", **settings))
    resumed = training.train_model(**_options(tmp_path, resume_dir=tmp_path / "resume", **settings))
    paths = [save_checkpoint(tmp_path / name, result.model, result.meta)
             for name, result in (("ref.pt", reference), ("resumed.pt", resumed))]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert _files(tmp_path / "live") == _files(tmp_path / "ref_live")


def test_the_train_stage_passes_the_levers_from_params_yaml_into_the_checkpoint(tmp_path, repo_root, monkeypatch):
    import sys

    import yaml

    from test_training import _prepared_dirs

    prepared, split = _prepared_dirs(tmp_path)
    np.save(prepared / "masks.npy", _masks())
    params = yaml.safe_load((repo_root / "params.yaml").read_text(encoding="utf-8"))
    assert params["train"]["seg_weight"] == 0 and params["train"]["ema_decay"] == 0  # off by default
    params["model"].update(backbone="test_efficientnet", pretrained="none")
    params["train"].update(epochs=1, batch_size=8, seg_weight=0.5, ema_decay=0.9)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.syspath_prepend(str(repo_root / "stages"))
    sys.modules.pop("train", None)
    import train as stage

    model_path, live = tmp_path / "model.pt", tmp_path / "live"
    assert stage.main(["--prepared", str(prepared), "--split", str(split), "--model", str(model_path),
                       "--live", str(live), "--params", str(tmp_path / "params.yaml")]) == 0
    _, meta = load_checkpoint(model_path)
    assert (meta["params"]["train"]["seg_weight"], meta["params"]["train"]["ema_decay"]) == (0.5, 0.9)
    assert (live / "plots" / "metrics" / "train" / "seg_loss.tsv").is_file()
