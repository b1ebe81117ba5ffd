"""Training loop on a tiny fake prepared cache: determinism, DVCLive, early stopping, bad input, stage."""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.utils.data.distributed import DistributedSampler

from assurexray.learning.model import load_checkpoint
from assurexray.learning.batches import inverse_frequency_weights, train_sampler, warmup_cosine
from assurexray.learning.training import load_training_data, train_model
from training_options import train

CLASSES = ["Normal", "Benign", "Malignant"]
S = 32
N = 24


def _cache(n: int = N, *, constant_val: bool = False) -> tuple[np.ndarray, pd.DataFrame]:
    """n images whose centre square brightens with the class; rows 0..14 train, 15.. val."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, S, S), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 8:24, 8:24] += np.uint8(80 * label)
    if constant_val:
        images[15:] = 30  # every val image identical: predictions, hence balanced accuracy, never change
    index = pd.DataFrame({"row": np.arange(n), "image_id": [f"IMG{i:06d}.jpeg" for i in range(n)],
                          "label": [CLASSES[k] for k in labels], "label_idx": labels})
    return images, index


def _options(tmp_path, **overrides) -> dict:
    images, index = _cache()
    options = dict(
        images=images, train_index=index.iloc[:15], val_index=index.iloc[15:], class_names=CLASSES,
        backbone="test_efficientnet", pretrained="none", dropout=0.1, epochs=2, batch_size=8, lr=3e-3,
        weight_decay=1e-4, warmup_epochs=1, grad_clip=1.0, class_weights="inverse_frequency",
        monitor="macro_auc", patience=3, device="cpu", amp=False, channels_last=True, num_workers=0,
        augment={"hflip": 0.5, "rotate_deg": 7, "scale": 0.1, "translate": 0.05, "brightness_contrast": 0.2,
                 "clahe": False},
        seed=7, live_dir=tmp_path / "live",
    )
    return {**options, **overrides}


def test_two_cpu_runs_with_the_same_params_give_identical_weights_and_metrics(tmp_path):
    first = train(**_options(tmp_path))
    second = train(**_options(tmp_path, live_dir=tmp_path / "live2"))
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first.history == second.history and first.meta == second.meta
    summaries = [(tmp_path / name / "metrics.json").read_text() for name in ("live", "live2")]
    assert summaries[0] == summaries[1]
    other = train(**_options(tmp_path, seed=8, live_dir=None))
    assert not all(torch.equal(a[k], other.model.state_dict()[k]) for k in a)


def test_dvclive_writes_the_files_dvc_yaml_reads(tmp_path):
    result = train(**_options(tmp_path))
    live = tmp_path / "live"
    for name in ("train/loss", "val/loss", "val/macro_auc", "val/balanced_accuracy", "val/accuracy", "lr"):
        table = pd.read_csv(live / "plots" / "metrics" / f"{name}.tsv", sep="\t")
        assert list(table.columns) == ["step", name.split("/")[-1]] and table["step"].tolist() == [0, 1]
    val_loss = pd.read_csv(live / "plots" / "metrics" / "val" / "loss.tsv", sep="\t")["loss"].tolist()
    assert val_loss == [row["val_loss"] for row in result.history]
    summary = json.loads((live / "metrics.json").read_text())
    best = result.history[result.meta["best_epoch"] - 1]
    assert summary["best_epoch"] == result.meta["best_epoch"] and summary["monitor"] == "macro_auc"
    assert summary["best"]["macro_auc"] == best["val_macro_auc"] == result.meta["best_score"]
    assert not (live / "dvc.yaml").exists() and not list(tmp_path.glob(".live.*"))


def test_returned_model_holds_the_best_epoch_weights(tmp_path):
    result = train(**_options(tmp_path, epochs=3, monitor="loss", live_dir=None))
    images, index = _cache()
    val = index.iloc[15:]
    from assurexray.learning.transforms import eval_transform

    x = torch.stack([eval_transform(result.meta)(image=images[r])["image"] for r in val["row"]])
    y = torch.tensor(val["label_idx"].to_numpy())
    weight = inverse_frequency_weights(index.iloc[:15]["label_idx"].to_numpy(), 3)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(result.model(x), y, weight=weight).item()
    best = min(row["val_loss"] for row in result.history)
    assert loss == pytest.approx(best, rel=1e-4) and result.meta["best_score"] == best
    assert not result.model.training


def test_early_stopping_stops_after_patience_epochs_without_improvement(tmp_path):
    images, index = _cache(constant_val=True)
    result = train(**_options(tmp_path, images=images, epochs=10, patience=2,
                                    monitor="balanced_accuracy", live_dir=None))
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.meta["best_epoch"] == 1
    assert {row["val_balanced_accuracy"] for row in result.history} == {1 / 3}


@pytest.mark.parametrize("partition", ["train", "val"])
def test_a_class_absent_from_a_partition_is_named(tmp_path, partition):
    images, index = _cache()
    options = _options(tmp_path, live_dir=None)
    key = f"{partition}_index"
    options[key] = options[key][options[key]["label_idx"] != 2]
    message = rf"class 'Malignant' \(label_idx 2\) has no images in the {partition} partition"
    with pytest.raises(ValueError, match=message):
        train(**options)


def test_a_diverging_run_stops_naming_the_epoch_and_step_and_suggesting_a_lower_lr(tmp_path):
    options = _options(tmp_path, lr=1e30, warmup_epochs=0, grad_clip=None, dropout=0.0, augment=None)
    message = r"training loss is (nan|inf) at epoch 1, step \d+.*Lower train\.lr"
    with pytest.raises(FloatingPointError, match=message):
        train(**options)
    assert not (tmp_path / "live").exists() and not list(tmp_path.glob(".live.*"))  # no partial log


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"monitor": "auc"},
         r"train\.monitor: expected one of \['macro_auc', 'balanced_accuracy', 'loss', 'auc_dice'\], got 'auc'"),
        ({"class_weights": "balanced"}, r"train\.class_weights: expected one of .*got 'balanced'"),
        ({"device": "tpu"}, r"train\.device: expected one of \['cpu', 'cuda', 'auto'\], got 'tpu'"),
        ({"epochs": 0}, r"train\.epochs: expected an integer >= 1, got 0"),
        ({"patience": 0}, r"train\.patience: expected null or an integer >= 1, got 0"),
        ({"grad_clip": -1}, r"train\.grad_clip: expected null or a number > 0, got -1"),
        ({"dropout": 1.0}, r"model\.dropout: expected a number in \[0, 1\), got 1\.0"),
        ({"weight_decay": -0.1}, r"train\.weight_decay: expected a number >= 0, got -0\.1"),
    ],
)
def test_bad_training_options_are_named(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train(**_options(tmp_path, **override))


def test_rows_outside_the_cache_are_refused(tmp_path):
    options = _options(tmp_path)
    options["val_index"] = options["val_index"].assign(row=options["val_index"]["row"] + 100)
    with pytest.raises(ValueError, match=r"val split: row\(s\) \[115, .*outside images\.npy \(N=24\)"):
        train(**options)


def test_inverse_frequency_weights_are_n_over_k_times_class_count():
    weights = inverse_frequency_weights(np.array([0, 0, 0, 0, 1, 1, 2, 2]), 3)  # n=8, K=3, counts 4, 2, 2
    torch.testing.assert_close(weights, torch.tensor([8 / 12, 8 / 6, 8 / 6]))


def test_learning_rate_warms_up_linearly_then_follows_a_cosine():
    factor = warmup_cosine(2, 6)  # 2 warm-up steps, 4 cosine steps
    assert [factor(s) for s in range(7)] == pytest.approx([0.5, 1.0, 1.0, 0.5 + 0.5 * np.cos(np.pi / 4), 0.5,
                                                           0.5 - 0.5 * np.cos(np.pi / 4), 0.0])


def test_one_sampler_shards_the_same_shuffle_over_the_ranks():
    data = list(range(10))
    single = train_sampler(data, world_size=1, rank=0, seed=0)
    shards = [train_sampler(data, world_size=2, rank=r, seed=0) for r in (0, 1)]
    order = list(single)
    assert isinstance(single, DistributedSampler) and sorted(order) == data and order != data
    assert [list(s) for s in shards] == [order[0::2], order[1::2]]  # step k's global batch is the same images
    single.set_epoch(1)
    assert list(single) != order


def _prepared_dirs(tmp_path):
    images, index = _cache()
    prepared, split = tmp_path / "data" / "prepared", tmp_path / "data" / "splits" / "stratified"
    prepared.mkdir(parents=True)
    split.mkdir(parents=True)
    np.save(prepared / "images.npy", images)
    np.save(prepared / "masks.npy", np.zeros_like(images))
    index.to_csv(prepared / "index.csv", index=False)
    (prepared / "meta.json").write_text(json.dumps({"size": S, "class_names": CLASSES, "n_images": N}))
    index.iloc[:15].to_csv(split / "train.csv", index=False)
    index.iloc[15:].to_csv(split / "val.csv", index=False)
    return prepared, split


def test_load_training_data_reads_the_prepared_cache_memory_mapped(tmp_path):
    prepared, split = _prepared_dirs(tmp_path)
    data = load_training_data(prepared, split)
    assert isinstance(data.images, np.memmap) and data.images.shape == (N, S, S)
    assert data.class_names == CLASSES and data.train_index["row"].tolist() == list(range(15))
    (split / "val.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"val\.csv: not found; run the prepare and split stages"):
        load_training_data(prepared, split)


def test_train_stage_writes_a_loadable_checkpoint_and_metrics(tmp_path, repo_root, monkeypatch):
    prepared, split = _prepared_dirs(tmp_path)
    params = yaml.safe_load((repo_root / "params.yaml").read_text(encoding="utf-8"))
    params["model"].update(backbone="test_efficientnet", pretrained="none")
    params["train"].update(epochs=1, batch_size=8)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.syspath_prepend(str(repo_root / "stages"))
    sys.modules.pop("train", None)
    import train as stage

    model_path, live = tmp_path / "models" / "stratified" / "model.pt", tmp_path / "metrics" / "train"
    argv = ["--prepared", str(prepared), "--split", str(split), "--model", str(model_path),
            "--live", str(live), "--params", str(tmp_path / "params.yaml")]
    assert stage.main(argv) == 0
    model, meta = load_checkpoint(model_path)
    assert meta["class_names"] == CLASSES and meta["input_size"] == S
    assert meta["params"]["train"]["epochs"] == 1
    assert meta["best_epoch"] == 1 and (live / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    # what it was trained on: params data.source, the fingerprint of index.csv and the partition sizes
    assert meta["data"]["source"] == params["data"]["source"] and meta["data"]["split"] == "stratified"
    assert meta["data"]["index_sha256"] == hashlib.sha256((prepared / "index.csv").read_bytes()).hexdigest()
    assert (meta["data"]["n_images"], meta["data"]["n_train"], meta["data"]["n_val"]) == (N, 15, N - 15)
    params["train"]["epochz"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match=r"train: unknown key\(s\) \['epochz'\]"):
        stage.main(argv)


def test_a_git_repository_without_a_commit_gets_a_message_saying_to_commit(tmp_path, monkeypatch):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match=r"no commit yet; run `git add -A && git commit -m 'pipeline'`"):
        train(**_options(tmp_path, epochs=1))


def test_the_checkpoint_records_the_intensity_standardisation_it_was_trained_with(tmp_path):
    augment = {"hflip": 0.0, "rotate_deg": 0, "scale": 0.0, "translate": 0.0, "brightness_contrast": 0.0,
               "clahe": False, "intensity": "percentile", "gamma": 0.2, "jpeg_quality": 50}
    result = train(**_options(tmp_path, epochs=1, augment=augment))
    assert result.meta["intensity"] == "percentile"
    assert result.meta["params"]["train"]["augment"]["gamma"] == 0.2
