"""Self-supervised pretraining: it runs on the training partition only, resumes bit for bit after a kill, and
its weights are what the classifier starts from (tiny synthetic cache, the ``test_efficientnet`` model, CPU)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from assurexray.core.params import load_config
from assurexray.learning import pretraining, resume
from assurexray.learning.model import ModelConfig, create_model, load_checkpoint
from assurexray.learning.pretraining import (
    RECORD_FILE,
    WEIGHTS_FILE,
    PretrainConfig,
    classifier_start,
    load_pretrain_images,
    pretrain_backbone,
    write_pretrained,
)
from kills import Killed, dies_after_first_step
from test_stage_kill import stage_main

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["Normal", "Benign", "Malignant"]
S = 32
N_TRAIN, N_VAL = 12, 6
TINY = dict(enabled=True, epochs=3, image_px=24, batch_size=4, lr=1e-3)


@pytest.fixture
def project(tmp_path) -> Path:
    """A prepared cache (images.npy, index.csv, meta.json) and one split: rows 0-11 train, 12-17 val."""
    rng = np.random.default_rng(0)
    n = N_TRAIN + N_VAL
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, S, S), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 8:24, 8:24] += np.uint8(60 * label + 20)
    prepared, split = tmp_path / "data" / "prepared", tmp_path / "data" / "splits" / "stratified"
    prepared.mkdir(parents=True)
    split.mkdir(parents=True)
    np.save(prepared / "images.npy", images)
    index = pd.DataFrame({"row": np.arange(n), "image_id": [f"IMG{i:06d}.jpeg" for i in range(n)],
                          "label": [CLASSES[k] for k in labels], "label_idx": labels})
    index.to_csv(prepared / "index.csv", index=False)
    (prepared / "meta.json").write_text(json.dumps({"class_names": CLASSES, "n_images": n, "size": S}))
    index.iloc[:N_TRAIN].to_csv(split / "train.csv", index=False)
    index.iloc[N_TRAIN:].to_csv(split / "val.csv", index=False)
    start = tmp_path / "start.pth"  # stands in for the ImageNet weights (tests never download)
    torch.manual_seed(123)
    torch.save(create_model("test_efficientnet", num_classes=3, pretrained="none").state_dict(), start)
    return tmp_path


def _pretrain(root: Path, *, resume_dir=None, **overrides):
    data = load_pretrain_images(root / "data/prepared", root / "data/splits/stratified")
    return pretrain_backbone(data, PretrainConfig(**{**TINY, **overrides}), backbone="test_efficientnet",
                             start_weights=str(root / "start.pth"), clahe=False, intensity="none", seed=7,
                             device="cpu", resume_dir=resume_dir)


def _params(root: Path, **pretrain) -> Path:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["model"].update(backbone="test_efficientnet", pretrained=str(root / "start.pth"), lesion_head=False)
    params["train"].update(epochs=1, batch_size=6, device="cpu", monitor="macro_auc", seg_weight=0.0, patience=None)
    params["pretrain"].update(pretrain)
    path = root / "params-test.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def test_pretraining_reads_only_the_training_partition_plus_the_extra_folder(project):
    data = load_pretrain_images(project / "data/prepared", project / "data/splits/stratified")
    cache = np.load(project / "data/prepared/images.npy")
    assert np.array_equal(data.images, cache[:N_TRAIN])  # no validation row
    extra = project / "site"
    (extra / "sub").mkdir(parents=True)
    Image.fromarray(np.full((40, 20), 200, np.uint8)).save(extra / "a.png")
    Image.fromarray(np.full((30, 30), 90, np.uint8)).save(extra / "sub" / "b.jpg")
    (extra / "notes.txt").write_text("not an image")
    more = load_pretrain_images(project / "data/prepared", project / "data/splits/stratified", extra)
    assert more.sources == {"train_partition": N_TRAIN, "extra_images": 2, "extra_folder": str(extra)}
    assert more.images.shape == (N_TRAIN + 2, S, S) and np.array_equal(more.images[:N_TRAIN], data.images)
    tall = more.images[N_TRAIN]  # 40x20 letterboxed into 32x32: content 16 wide, zero padding either side
    assert tall[:, 8:24].min() == 200 and tall[:, :8].max() == 0


def test_a_run_killed_mid_epoch_resumes_to_the_bytes_of_an_uninterrupted_run(project, monkeypatch, caplog):
    reference = write_pretrained(project / "ref", _pretrain(project))
    resume_dir = project / "resume"
    with monkeypatch.context() as patch:
        patch.setattr(pretraining, "_pretrain_epoch", dies_after_first_step(pretraining._pretrain_epoch, kill_epoch=3))
        with pytest.raises(Killed):
            _pretrain(project, resume_dir=resume_dir)
    state = torch.load(resume_dir / resume.STATE_FILE, weights_only=True)
    assert state["epoch"] == 2
    with caplog.at_level(logging.INFO, logger="assurexray.learning.resume"):
        resumed = write_pretrained(project / "resumed", _pretrain(project, resume_dir=resume_dir))
    assert "resuming after epoch 2" in caplog.text
    for name in (WEIGHTS_FILE, RECORD_FILE):
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    record = json.loads((reference / RECORD_FILE).read_text())
    assert [row["epoch"] for row in record["history"]] == [1, 2, 3]
    other_seed = pretrain_backbone(
        load_pretrain_images(project / "data/prepared", project / "data/splits/stratified"),
        PretrainConfig(**TINY), backbone="test_efficientnet", start_weights=str(project / "start.pth"),
        clahe=False, intensity="none", seed=8)
    assert record["history"] != other_seed.record["history"]  # the seed reaches the views and the shuffle


def test_the_pretrained_weights_are_what_the_classifier_starts_from(project):
    out = write_pretrained(project / "pretrained", _pretrain(project))
    start = ModelConfig(backbone="test_efficientnet", pretrained=str(project / "start.pth"), dropout=0.1)
    config = classifier_start(out, start)
    assert config.pretrained == str(out / WEIGHTS_FILE) and config.dropout == 0.1
    classifier = create_model(config.backbone, num_classes=3, pretrained=config.pretrained)
    weights = load_file(str(out / WEIGHTS_FILE))
    state = classifier.state_dict()
    assert weights and all(torch.equal(state[k], v) for k, v in weights.items())
    assert set(state) - set(weights) == {"classifier.weight", "classifier.bias"}  # a fresh head only
    imagenet_like = create_model(start.backbone, num_classes=3, pretrained=start.pretrained).eval()
    x = torch.randn(2, 3, S, S, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(classifier.eval().forward_features(x), imagenet_like.forward_features(x))


def test_the_train_stage_starts_from_the_pretrained_backbone_and_records_it(project):
    params = _params(project, **TINY)
    out = project / "models/stratified/pretrained"
    common = ["--prepared", str(project / "data/prepared"), "--split", str(project / "data/splits/stratified")]
    assert stage_main("pretrain")([*common, "--out", str(out), "--resume", str(project / "r"), "--params", str(params)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [WEIGHTS_FILE, RECORD_FILE] and not (project / "r").exists()
    model_path = project / "model.pt"
    assert stage_main("train")([*common, "--model", str(model_path), "--live", str(project / "live"),
                            "--pretrained", str(out), "--params", str(params)]) == 0
    _, meta = load_checkpoint(model_path)
    assert meta["params"]["model"]["pretrained"] == str(out / WEIGHTS_FILE)


def test_the_disabled_stage_writes_only_a_record_and_the_classifier_keeps_its_weights(project):
    out = project / "pretrained"
    (out / "stale").mkdir(parents=True)  # a previous run's folder is replaced whole
    args = ["--prepared", str(project / "missing"), "--split", str(project / "missing"), "--out", str(out),
            "--params", str(_params(project, enabled=False))]
    assert stage_main("pretrain")(args) == 0  # no data read: disabled is a record, fast
    assert [p.name for p in out.iterdir()] == [RECORD_FILE]
    assert json.loads((out / RECORD_FILE).read_text())["enabled"] is False
    start = ModelConfig(backbone="test_efficientnet", pretrained="imagenet", dropout=0.2)
    assert classifier_start(out, start) is start


@pytest.mark.parametrize(("values", "error", "match"), [
    ({"method": "byol"}, ValueError, r"pretrain\.method: expected one of \['simclr'\], got 'byol'"),
    ({"epochs": 0}, ValueError, r"pretrain\.epochs: expected an integer >= 1, got 0"),
    ({"image_px": 8}, ValueError, r"pretrain\.image_px: expected an integer >= 16 \(pixels\), got 8"),
    ({"batch_size": 1}, ValueError, r"pretrain\.batch_size: expected an integer >= 2"),
    ({"lr": 0}, ValueError, r"pretrain\.lr: expected a number > 0, got 0"),
    ({"temperature": -0.1}, ValueError, r"pretrain\.temperature: expected a number > 0, got -0\.1"),
    ({"extra_images": ""}, ValueError, r"pretrain\.extra_images: expected null or a folder"),
    ({"enabled": "yes"}, TypeError, r"pretrain\.enabled: expected true or false, got 'yes'"),
])
def test_a_bad_pretrain_value_is_named(values, error, match):
    with pytest.raises(error, match=match):
        PretrainConfig(**values)


def test_an_unknown_pretrain_key_is_named_with_the_valid_keys(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"pretrain": {"enabled": False, "epoch": 3}}))
    with pytest.raises(ValueError, match=r"pretrain: unknown key\(s\) \['epoch'\]; valid keys are .*'epochs'"):
        load_config(path, "pretrain", PretrainConfig)


def test_weights_that_do_not_fit_the_classifier_are_refused_naming_the_file(project):
    out = write_pretrained(project / "pretrained", _pretrain(project, epochs=1))
    with pytest.raises(ValueError, match=r"pretrain\.json: the backbone was pretrained as 'test_efficientnet' but "
                                         r"model\.backbone is 'resnet18'"):
        classifier_start(out, ModelConfig(backbone="resnet18", pretrained="none", dropout=0.0))
    weights = out / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"backbone\.safetensors: sha256 \w+ differs .* Rerun the pretrain stage"):
        classifier_start(out, ModelConfig(backbone="test_efficientnet", pretrained="none", dropout=0.0))


def test_bad_pretraining_inputs_are_named(project):
    with pytest.raises(ValueError, match=r"pretrain\.batch_size=16 exceeds the 12 unlabelled images"):
        _pretrain(project, batch_size=16)
    with pytest.raises(FileNotFoundError, match=r"pretrain\.extra_images: folder '.*nowhere' not found"):
        load_pretrain_images(project / "data/prepared", project / "data/splits/stratified", project / "nowhere")
    (project / "empty").mkdir()
    with pytest.raises(ValueError, match=r"pretrain\.extra_images: no images .* under .*empty"):
        load_pretrain_images(project / "data/prepared", project / "data/splits/stratified", project / "empty")
    with pytest.raises(FileNotFoundError, match=r"pretrain\.json: not found; run the pretrain stage"):
        classifier_start(project / "nothing", ModelConfig(backbone="test_efficientnet", pretrained="none",
                                                          dropout=0.0))
