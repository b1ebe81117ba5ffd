"""The lesion map (a decoder kept in the checkpoint) and weight EMA: training, checkpoint formats, bad options."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from assurexray.learning import batches, training
from assurexray.learning.lesion_head import (
    WithLesionHead,
    attach_lesion_head,
    dice_at,
    has_lesion_head,
    lesion_loss,
    lesion_probabilities,
)
from assurexray.learning.model import create_model, load_checkpoint, save_checkpoint
from assurexray.learning.transforms import train_transform
from kills import Killed, dies_after_first_step
from test_resume import _files
from test_training import S, _cache, _options
from training_options import train


def _masks() -> np.ndarray:
    """Lesion masks on the bright square of the tumour images of ``_cache`` (Normal images: empty)."""
    images, index = _cache()
    masks = np.zeros_like(images)
    for row, label in zip(index["row"], index["label_idx"]):
        if label > 0:
            masks[row, 8:24, 8:24] = 1
    return masks


def test_the_decoder_leaves_the_classifier_logits_unchanged_and_maps_at_stride_4():
    classifier = timm.create_model("test_efficientnet", num_classes=3).eval()
    names = set(classifier.state_dict())
    model = attach_lesion_head(timm.create_model("test_efficientnet", num_classes=3)).eval()
    model.load_state_dict({**model.state_dict(), **classifier.state_dict()})
    x = torch.randn(2, 3, 64, 64)
    logits, lesion = WithLesionHead(model)(x)
    assert torch.allclose(logits, classifier(x), atol=1e-6) and torch.allclose(model(x), classifier(x), atol=1e-6)
    assert lesion.shape == (2, 1, 16, 16)  # stride 4
    _, maps = lesion_probabilities(model, x)
    assert maps.shape == (2, 64, 64) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    # the classifier's parameter names (Grad-CAM layers, old checkpoints) are untouched; the decoder is extra
    assert names < set(model.state_dict()) and all(
        k.startswith("lesion_decoder.") for k in set(model.state_dict()) - names)


def test_a_backbone_without_stride_4_features_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="model.lesion_head: true"):
        attach_lesion_head(torch.nn.Linear(3, 3))


def test_dice_at_a_threshold_is_hand_computable():
    probs = torch.zeros(3, 4, 4)
    probs[0, :2, :2] = 0.9  # 4 pixels predicted
    probs[1, 0, 0] = 0.9
    masks = torch.zeros(3, 4, 4)
    masks[0, :2, :] = 1  # 8 pixels true, 4 shared: 2 * 4 / 12
    masks[1, 3, 3] = 1  # disjoint
    assert dice_at(probs, masks, threshold=0.5).tolist() == pytest.approx([8 / 12, 0.0, 1.0])


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


def test_a_run_with_the_lesion_head_keeps_the_decoder_in_a_format_2_checkpoint(tmp_path):
    masks = _masks()
    plain = train(**_options(tmp_path, live_dir=None, masks=masks))
    with_head = train(**_options(tmp_path, masks=masks, lesion_head=True, seg_weight=1.0, monitor="auc_dice"))
    again = train(**_options(tmp_path, live_dir=None, masks=masks, lesion_head=True, seg_weight=1.0,
                             monitor="auc_dice"))
    a, b, c = (r.model.state_dict() for r in (with_head, again, plain))
    assert set(a) - set(c) and all(k.startswith("lesion_decoder.") for k in set(a) - set(c))
    assert all(torch.equal(a[k], b[k]) for k in a)  # deterministic on CPU
    assert not all(torch.equal(a[k], c[k]) for k in c)  # the lesion loss changed the encoder
    assert with_head.meta["params"]["train"]["seg_weight"] == 1.0
    assert with_head.meta["params"]["model"]["lesion_head"] is True
    assert "lesion_head" not in plain.meta["params"]["model"] and "lesion_head" not in plain.meta
    assert all(row["train_seg_loss"] > 0 for row in with_head.history)
    assert all(0 <= row["val_lesion_dice"] <= 1 for row in with_head.history)
    assert all(row["val_auc_dice"] == pytest.approx(row["val_macro_auc"] + row["val_lesion_dice"])
               for row in with_head.history)
    assert "train_seg_loss" not in plain.history[0] and "val_lesion_dice" not in plain.history[0]
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "seg_loss.tsv").is_file()
    assert (tmp_path / "live" / "plots" / "metrics" / "val" / "lesion_dice.tsv").is_file()

    path = save_checkpoint(tmp_path / "m.pt", with_head.model, with_head.meta)
    model, meta = load_checkpoint(path)
    assert meta["format_version"] == 2 and meta["lesion_head"] is True and has_lesion_head(model)
    loaded = model.state_dict()
    assert loaded.keys() == a.keys() and all(torch.equal(loaded[k], a[k]) for k in a)
    x = torch.zeros(1, 3, S, S)
    assert model(x).shape == (1, 3) and lesion_probabilities(model, x)[1].shape == (1, S, S)

    plain_path = save_checkpoint(tmp_path / "plain.pt", plain.model, plain.meta)
    old, old_meta = load_checkpoint(plain_path)  # the format every checkpoint before the lesion map had
    assert old_meta["format_version"] == 1 and not has_lesion_head(old)
    assert torch.allclose(old(x), plain.model(x), atol=1e-5)


def test_a_checkpoint_whose_meta_hides_its_decoder_is_refused(tmp_path):
    model = create_model("test_efficientnet", num_classes=3, lesion_head=True)
    meta = {**train(**_options(tmp_path, live_dir=None, epochs=1)).meta}  # a format-1 meta
    with pytest.raises(ValueError, match="do not describe the model"):
        save_checkpoint(tmp_path / "m.pt", model, meta)


def test_an_unknown_checkpoint_format_is_refused_with_the_fix(tmp_path):
    result = train(**_options(tmp_path, live_dir=None, epochs=1))
    path = save_checkpoint(tmp_path / "m.pt", result.model, result.meta)
    blob = torch.load(path, weights_only=True)
    blob["meta"]["format_version"] = 3
    torch.save(blob, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=r"format_version 3 is not one of \[1, 2\]"):
        load_checkpoint(tmp_path / "future.pt")


@pytest.mark.parametrize("override, message", [
    ({"lesion_head": True, "seg_weight": 0.5}, "model.lesion_head: true needs the lesion masks"),
    ({"lesion_head": True, "seg_weight": 0.0}, "set train.seg_weight > 0"),
    ({"seg_weight": 0.5}, "model.lesion_head is false"),
    ({"monitor": "auc_dice"}, "auc_dice adds the validation lesion Dice"),
])
def test_inconsistent_lesion_options_are_refused_with_the_fix(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train(**_options(tmp_path, live_dir=None, **override))


@pytest.mark.parametrize("override, message", [
    ({"seg_weight": -1}, "train.seg_weight"), ({"ema_decay": 1.0}, "train.ema_decay"),
])
def test_bad_lever_values_are_named(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train(**_options(tmp_path, live_dir=None, masks=_masks(), lesion_head=True, **override))


def test_ema_keeps_averaged_weights_and_is_recorded(tmp_path):
    raw = train(**_options(tmp_path, live_dir=None))
    ema = train(**_options(tmp_path, live_dir=None, ema_decay=0.5))
    again = train(**_options(tmp_path, live_dir=None, ema_decay=0.5))
    a, b, r = (x.model.state_dict() for x in (ema, again, raw))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], r[k]) for k in a)
    assert ema.meta["params"]["train"]["ema_decay"] == 0.5
    assert [row["val_loss"] for row in ema.history] != [row["val_loss"] for row in raw.history]


def test_a_killed_run_with_head_and_ema_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    settings = dict(epochs=3, patience=None, masks=_masks(), lesion_head=True, seg_weight=0.5, ema_decay=0.5)
    reference = train(**_options(tmp_path, live_dir=tmp_path / "ref_live",
                                                resume_dir=tmp_path / "ref_resume", **settings))
    with monkeypatch.context() as patch:
        patch.setattr(training, "_train_epoch", dies_after_first_step(training._train_epoch, kill_epoch=3))
        with pytest.raises(Killed):
            train(**_options(tmp_path, resume_dir=tmp_path / "resume", **settings))
    resumed = train(**_options(tmp_path, resume_dir=tmp_path / "resume", **settings))
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
    assert params["train"]["ema_decay"] == 0  # off by default
    params["model"].update(backbone="test_efficientnet", pretrained="none", lesion_head=True)
    params["train"].update(epochs=1, batch_size=8, seg_weight=0.5, ema_decay=0.9)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.syspath_prepend(str(repo_root / "stages"))
    sys.modules.pop("train", None)
    import train as stage

    model_path, live = tmp_path / "model.pt", tmp_path / "live"
    assert stage.main(["--prepared", str(prepared), "--split", str(split), "--model", str(model_path),
                       "--live", str(live), "--params", str(tmp_path / "params.yaml")]) == 0
    model, meta = load_checkpoint(model_path)
    assert (meta["params"]["train"]["seg_weight"], meta["params"]["train"]["ema_decay"]) == (0.5, 0.9)
    assert meta["lesion_head"] is True and has_lesion_head(model)
    assert (live / "plots" / "metrics" / "train" / "seg_loss.tsv").is_file()
