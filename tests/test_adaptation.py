"""Site adaptation (AdaBN): assurexray.learning.adaptation, `assurexray adapt` (serving.adapt) and evaluate's adapted
rows (assessment.site_adaptation). Tiny timm models and 32 px images; no training."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from assurexray.assessment.evaluation import EvaluateConfig, evaluate_checkpoint
from assurexray.learning import adaptation
from assurexray.learning.adaptation import adapt_batchnorm, batchnorm_layers, bn_stats_sha256
from assurexray.learning.model import checkpoint_format, create_model, file_sha256, load_checkpoint, save_checkpoint
from assurexray.learning.transforms import eval_transform
from assurexray.serving import cli
from assurexray.serving.adapt import adapt_checkpoint
from assurexray.serving.infer import run_inference

NAMES = ["Normal", "Benign", "Malignant"]
META = {"backbone": "test_efficientnet", "num_classes": 3, "class_names": NAMES, "dropout": 0.0, "input_size": 32,
        "in_chans": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "clahe": False, "letterbox_fill": 0,
        "params": {}, "best_epoch": 0, "monitor": "macro_auc", "best_score": 0.5, "seed": 0}
STATS = ("running_mean", "running_var", "num_batches_tracked")
DAY = dt.date(2026, 12, 7)


def _model(*, lesion: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("test_efficientnet", num_classes=3, dropout=0.0, lesion_head=lesion).eval()


def _checkpoint(path: Path, *, lesion: bool = False) -> Path:
    meta = {**META, "format_version": checkpoint_format(lesion_head=lesion)}
    meta.update({"lesion_head": True} if lesion else {})
    return save_checkpoint(path, _model(lesion=lesion), meta)


def _images(n: int, seed: int = 0, *, offset: int = 0) -> np.ndarray:
    """(n, 32, 32) uint8; ``offset`` brightens them (another site's exposure)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 120, size=(n, 32, 32)) + offset, 0, 255).astype(np.uint8)


def _folder(root: Path, n: int, *, size=(40, 36)) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(60, 255, size=size[::-1], dtype=np.uint8)).save(root / f"site_{i:03d}.png")
    return root


# --- adapt_batchnorm --------------------------------------------------------------------------------------


@pytest.mark.parametrize("lesion", [False, True], ids=["classifier", "with-lesion-decoder"])
def test_adaptation_changes_only_batchnorm_statistics_and_every_one_of_them(lesion):
    model = _model(lesion=lesion)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = adapt_batchnorm(model, _images(40, offset=100), eval_transform(META), batch_size=16, min_images=32)
    after = adapted.state_dict()
    assert set(after) == set(before)
    stats = {f"{name}.{key}" for name, _ in batchnorm_layers(model) for key in STATS}
    for key, tensor in after.items():
        if key in stats:
            assert not torch.equal(tensor, before[key]), f"{key} was not re-estimated"
        else:
            assert torch.equal(tensor, before[key]), f"{key} is not a BatchNorm statistic but changed"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the given model is untouched
    if lesion:  # the decoder's own BatchNorm is reached through forward_with_lesion
        assert any(name.startswith("lesion_decoder.") for name, _ in batchnorm_layers(adapted))
    assert not adapted.training and not any(m.training for m in adapted.modules())


def test_statistics_are_the_average_of_equal_batches_not_a_momentum_blend():
    """bn1 sees conv_stem's output, which no BatchNorm precedes: its adapted mean must be the mean over the two
    batches (20 + 20 images) of each batch's channel mean; momentum 0.1 from mean 0 would give far less."""
    model, images = _model(), _images(40, offset=60)
    transform = eval_transform(META)
    adapted = adapt_batchnorm(model, images, transform, batch_size=25, min_images=32)  # 40 -> two batches of 20
    batch = torch.stack([transform(image=img)["image"] for img in images])
    with torch.no_grad():
        stem = model.conv_stem(batch)  # (40, C, 16, 16)
    halves = stem[:20], stem[20:]
    mean = torch.stack([h.mean(dim=(0, 2, 3)) for h in halves]).mean(dim=0)
    var = torch.stack([h.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for h in halves]).mean(dim=0)
    torch.testing.assert_close(adapted.bn1.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(adapted.bn1.running_var, var, rtol=1e-4, atol=1e-5)
    assert int(adapted.bn1.num_batches_tracked) == 2
    assert adapted.bn1.momentum == model.bn1.momentum  # restored for whoever fine-tunes the copy


def test_adaptation_moves_the_predictions_of_shifted_images():
    model, images = _model(), _images(40, offset=120)
    adapted = adapt_batchnorm(model, images, eval_transform(META), min_images=32)
    batch = torch.stack([eval_transform(META)(image=img)["image"] for img in images])
    with torch.no_grad():
        assert not torch.allclose(model(batch), adapted(batch))


@pytest.mark.parametrize(("images", "options", "match"), [
    (_images(31), {}, r"centre 2: 31 image\(s\) found; BatchNorm adaptation needs at least 32"),
    (_images(40).astype(np.float32), {}, r"expected letterboxed uint8 images \(N, S, S\), got dtype float32"),
    (_images(40), {"batch_size": 1}, r"batch_size must be an integer >= 2"),
    (_images(40), {"min_images": 1}, r"min_images must be an integer >= 2, got 1"),
])
def test_bad_adaptation_inputs_are_refused_by_name(images, options, match):
    with pytest.raises(ValueError, match=match):
        adapt_batchnorm(_model(), images, eval_transform(META), source="centre 2", **options)


# --- assurexray adapt -------------------------------------------------------------------------------------


def test_adapt_writes_a_checkpoint_that_records_the_adaptation_and_infer_uses(tmp_path, caplog):
    source = _checkpoint(tmp_path / "models" / "m.pt", lesion=True)
    site = _folder(tmp_path / "site", 34)
    record = adapt_checkpoint(source, site, tmp_path / "out" / "site.pt", min_images=32, date=DAY)
    model, meta = load_checkpoint(tmp_path / "out" / "site.pt")
    assert meta["adaptation"] == record
    assert {k: record[k] for k in ("method", "n_images", "date", "source_model_sha256", "labels_read")} == {
        "method": "bn", "n_images": 34, "date": "2026-12-07", "source_model_sha256": file_sha256(source),
        "labels_read": False}
    assert {k: v for k, v in meta.items() if k != "adaptation"} == load_checkpoint(source)[1]
    assert bn_stats_sha256(model) != bn_stats_sha256(load_checkpoint(source)[0])
    # The same pictures in another folder fingerprint alike; one changed pixel does not.
    copy = _folder(tmp_path / "copy", 34)
    assert adapt_checkpoint(source, copy, tmp_path / "copy.pt", min_images=32, date=DAY)["images_sha256"] == \
        record["images_sha256"]
    Image.fromarray(np.zeros((36, 40), np.uint8)).save(copy / "site_000.png")
    assert adapt_checkpoint(source, copy, tmp_path / "copy.pt", min_images=32, date=DAY)["images_sha256"] != \
        record["images_sha256"]
    # infer scores with it like any model (no operating point of its own: a warning, no decision).
    files = sorted(site.glob("*.png"))[:3]
    plain = run_inference(files, model_path=source)
    site_result = run_inference(files, model_path=tmp_path / "out" / "site.pt")
    assert all(p.ok for p in site_result.predictions)
    assert [p.probs for p in site_result.predictions] != [p.probs for p in plain.predictions]


def test_adapting_an_adapted_model_keeps_the_earlier_record(tmp_path):
    source = _checkpoint(tmp_path / "m.pt")
    site = _folder(tmp_path / "site", 32)
    first = adapt_checkpoint(source, site, tmp_path / "a.pt", date=DAY)
    second = adapt_checkpoint(tmp_path / "a.pt", site, tmp_path / "b.pt", date=DAY)
    assert second["previous"] == first and second["source_model_sha256"] == file_sha256(tmp_path / "a.pt")


def _bad_folder(kind: str, root: Path) -> Path:
    folder = _folder(root / "site", 3 if kind == "too few" else 33)
    if kind == "unreadable":
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    elif kind == "unsupported":
        (folder / "scan.heic").write_bytes(b"\x00" * 64)
    elif kind == "degenerate":
        Image.fromarray(np.zeros((4, 200), np.uint8)).save(folder / "sliver.png")
    return folder


@pytest.mark.parametrize(("kind", "match"), [
    ("too few", r"3 image\(s\) found; BatchNorm adaptation needs at least 32.*lower --min-images"),
    ("unreadable", r"1 of 34 image\(s\) could not be read: \S*broken\.png: not a readable image"),
    ("unsupported", r"1 input\(s\) cannot be used: \S*scan\.heic: unsupported image type '\.heic'"),
    ("degenerate", r"could not be read: \S*sliver\.png: degenerate image 200x4 px"),
])
def test_adapt_refuses_a_folder_of_too_few_or_unreadable_images_and_writes_nothing(tmp_path, capsys, kind, match):
    source = _checkpoint(tmp_path / "m.pt")
    folder = _bad_folder(kind, tmp_path)
    out = tmp_path / "site.pt"
    assert cli.main(["adapt", "--model", str(source), "--images", str(folder), "-o", str(out)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("assurexray adapt: ")
    assert re.search(match, err), err
    assert not out.exists()


def test_adapt_refuses_to_overwrite_its_source_and_the_cli_reports_success(tmp_path, capsys):
    source = _checkpoint(tmp_path / "m.pt")
    site = _folder(tmp_path / "site", 32)
    with pytest.raises(ValueError, match=r"would overwrite the model it is adapted from"):
        adapt_checkpoint(source, site, tmp_path / "." / "m.pt")
    assert cli.main(["adapt", "--model", str(source), "--images", str(site), "-o", str(tmp_path / "s.pt")]) == 0
    assert "re-estimated on 32 image(s)" in capsys.readouterr().out
    assert (cli._DEFAULT_MIN_IMAGES, cli._DEFAULT_ADAPT_BATCH) == (adaptation.MIN_IMAGES, adaptation.BATCH_SIZE)


# --- evaluate.adapt ---------------------------------------------------------------------------------------

EVAL = {"bootstrap_resamples": 30, "bootstrap_cluster": False, "ci_level": 0.95, "calibration_bins": 5,
        "malignant_target_sensitivity": 0.8, "bootstrap_seed": 0, "batch_size": 16, "tta_flip": False}
#: train and val from centre 1; test: centre 2 (36 images, adapted), centre 3 (10, too few) and centre 1 (seen).
CENTRES = {"train": [1] * 6, "val": [1] * 15, "test": [2] * 36 + [3] * 10 + [1] * 6}


def _rows(partition: str, start: int, labels: np.ndarray) -> pd.DataFrame:
    n = labels.size
    return pd.DataFrame({"row": np.arange(start, start + n), "image_id": [f"I{partition}{i}" for i in range(n)],
                         "label": np.asarray(NAMES, dtype=object)[labels], "label_idx": labels,
                         "group": [f"{partition}{i}" for i in range(n)], "center": CENTRES[partition]})


@pytest.fixture(scope="module")
def centre_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("centres")
    start, images = 0, []
    (root / "split").mkdir()
    for partition, centres in CENTRES.items():
        labels = np.tile([0, 1, 2], len(centres))[:len(centres)]
        rows = _rows(partition, start, labels)
        block = _images(len(centres), seed=start, offset=80 if partition == "test" else 0)
        block[:, 8:24, 8:24] += (40 * labels).astype(np.uint8)[:, None, None]  # brightness carries the class
        images.append(block)
        rows.to_csv(root / "split" / f"{partition}.csv", index=False)
        start += len(centres)
    (root / "prepared").mkdir()
    np.save(root / "prepared" / "images.npy", np.concatenate(images))
    _checkpoint(root / "model.pt")
    return root


def _evaluate(root: Path, split: str = "split", **overrides):
    return evaluate_checkpoint(EvaluateConfig(**{**EVAL, **overrides}), prepared=root / "prepared",
                               split_dir=root / split, model_path=root / "model.pt").metrics


def test_evaluate_adds_adapted_rows_for_unseen_centres_and_changes_no_other_key(centre_run):
    plain, adapted = _evaluate(centre_run), _evaluate(centre_run, adapt="bn")
    assert "adapted" not in plain
    assert {k: v for k, v in adapted.items() if k != "adapted"} == plain
    block = adapted["adapted"]
    assert (block["method"], block["transductive"], block["labels_read"]) == ("bn", True, False)
    assert sorted(block["by_center"]) == ["2", "3"]  # centre 1 gave training images: not unseen
    two = block["by_center"]["2"]
    assert set(two) == set(plain["by_center"]["2"]) | {"delta_macro_auc", "adaptation"}
    assert two["n"] == plain["by_center"]["2"]["n"] == two["adaptation"]["n_images"] == 36
    assert two["headline"] != plain["by_center"]["2"]["headline"]  # the statistics moved, so did the scores
    delta = two["delta_macro_auc"]
    assert delta["ci_low"] <= delta["value"] <= delta["ci_high"]
    assert delta["value"] == pytest.approx(two["headline"]["macro_auc"]["value"]
                                           - plain["by_center"]["2"]["headline"]["macro_auc"]["value"])
    assert block["by_center"]["3"] == {"skipped": "10 test image(s); adaptation needs at least 32",
                                       "adaptation": block["by_center"]["3"]["adaptation"]}
    json.dumps(adapted, allow_nan=False)


def test_adapted_statistics_and_predictions_do_not_move_when_test_labels_are_scrambled(centre_run, tmp_path):
    """The adaptation reads pixels only: shuffling test labels must leave the adapted BatchNorm statistics and
    logits bit-identical, while the scores (which do read labels) change, so the shuffle took effect."""
    scrambled = tmp_path / "scrambled"
    scrambled.mkdir()
    for partition in ("train", "val"):
        (scrambled / f"{partition}.csv").write_bytes((centre_run / "split" / f"{partition}.csv").read_bytes())
    test = pd.read_csv(centre_run / "split" / "test.csv")
    order = np.random.default_rng(3).permutation(len(test))
    test[["label", "label_idx"]] = test[["label", "label_idx"]].to_numpy()[order]
    test.to_csv(scrambled / "test.csv", index=False)
    before = _evaluate(centre_run, adapt="bn")["adapted"]["by_center"]["2"]
    after = _evaluate(centre_run, split=str(scrambled), adapt="bn")["adapted"]["by_center"]["2"]
    assert after["counts"] != before["counts"] or after["headline"] != before["headline"]
    for key in ("images_sha256", "bn_stats_sha256", "logits_sha256"):
        assert after["adaptation"][key] == before["adaptation"][key], key


def test_a_split_without_unseen_centres_says_why_nothing_was_adapted(centre_run, tmp_path):
    seen = tmp_path / "stratified"
    seen.mkdir()
    test = pd.read_csv(centre_run / "split" / "test.csv")
    for partition in ("train", "val"):  # every test centre also gives training images, as in a stratified split
        frame = pd.read_csv(centre_run / "split" / f"{partition}.csv")
        frame["center"] = np.resize(sorted(test["center"].unique()), len(frame))
        frame.to_csv(seen / f"{partition}.csv", index=False)
    test.to_csv(seen / "test.csv", index=False)
    block = _evaluate(centre_run, split=str(seen), adapt="bn")["adapted"]
    assert block["by_center"] == {} and "no test centre is unseen" in block["reason"]


def test_an_unknown_adapt_setting_is_refused_by_name():
    with pytest.raises(ValueError, match=r"evaluate\.adapt: expected one of \['none', 'bn'\], got 'adabn'"):
        EvaluateConfig(**{**EVAL, "adapt": "adabn"})
    assert EvaluateConfig(**EVAL).adapt == "none"  # unset in an older params.yaml: no adaptation


def test_the_adapted_model_inherits_the_source_operating_point_and_infer_uses_it(tmp_path, capsys):
    """adapt writes site.operating_point.json bound to the adapted file: same temperature, threshold and fusion
    weight, a record of where they came from; infer then calibrates and decides as for the source. Another
    model's file is refused, and a source without one says so."""
    from assurexray.learning.prediction import load_predictor, operating_point_record
    from assurexray.serving.adapt import inherit_operating_point

    project = tmp_path / "project"
    source = _checkpoint(project / "models" / "center" / "model.pt")
    site = _folder(tmp_path / "site", 32)
    assert cli.main(["adapt", "--model", str(source), "--images", str(site), "-o", str(tmp_path / "plain.pt")]) == 0
    assert "has no operating point" in capsys.readouterr().out and not (tmp_path / "plain.operating_point.json").exists()
    op_file = project / "metrics" / "center" / "eval" / "operating_point.json"
    op_file.parent.mkdir(parents=True)
    op_file.write_text(json.dumps(operating_point_record(
        temperature=1.7, malignant_threshold=0.31, target_sensitivity=0.9, val_sensitivity=0.92,
        model_sha256=file_sha256(source), val_positives=40, rule="sensitivity_lower_bound", reliable=True,
        reason=None, tta_flip=False)))
    out = tmp_path / "site.pt"
    assert cli.main(["adapt", "--model", str(source), "--images", str(site), "-o", str(out)]) == 0
    assert "site.operating_point.json" in capsys.readouterr().out
    inherited = json.loads((tmp_path / "site.operating_point.json").read_text())
    assert inherited["model_sha256"] == file_sha256(out) != file_sha256(source)
    assert (inherited["temperature"], inherited["malignant_threshold"]) == (1.7, 0.31)
    assert inherited["inherited"]["source_model_sha256"] == file_sha256(source)
    op = load_predictor(out).operating_point  # found beside the model, checked against its hash
    assert (op.temperature, op.malignant_threshold) == (1.7, 0.31)
    result = run_inference([site], model_path=out, max_pixels=None)
    assert result.operating_point.temperature == 1.7
    assert all(p.malignant_flag is not None for p in result.predictions)  # a decision, as for the source
    other = _checkpoint(tmp_path / "other.pt", lesion=True)
    with pytest.raises(ValueError, match="model_sha256 .* does not match"):
        inherit_operating_point(other, out, operating_point=op_file)
