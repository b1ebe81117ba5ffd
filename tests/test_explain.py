"""Grad-CAM computation, target-layer discovery, randomisation and the explain orchestration (tiny timm models)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image

from assurexray.assessment import cam
from assurexray.assessment import explain as ex
from assurexray.assessment.gallery import gallery_files, gallery_keys

CLASSES = ["Normal", "Benign", "Malignant"]
S = 32


def _model(name: str = "test_efficientnet", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=3, pretrained=False).eval()


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """Stand-in for eval_transform: uint8 (S, S) gray -> float (3, S, S)."""
    return torch.from_numpy(np.repeat(image[None].astype(np.float32) / 255.0, 3, axis=0))


def _images(n: int = 3, size: int = S, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, size, size), dtype=np.uint8)
    for i in range(n):  # a bright blob per image gives the CNN something to respond to
        cv2.circle(images[i], (int(rng.integers(8, size - 8)), int(rng.integers(8, size - 8))), 5, 230, -1)
    return images


@pytest.mark.parametrize(
    ("name", "expected"), [("test_efficientnet", "bn2"), ("test_resnet", "layer4"), ("resnet10t", "layer4")]
)
def test_the_target_layer_is_found_automatically_for_efficientnet_and_resnet_models(name, expected):
    assert cam.find_target_layer(_model(name), input_shape=(3, 64, 64)) == expected


def test_a_wrong_target_layer_name_lists_the_valid_candidates():
    with pytest.raises(ValueError, match=r"'layer9' is not a module .* valid candidates .*'layer4'"):
        cam.find_target_layer(_model("test_resnet"), name="layer9", input_shape=(3, 64, 64))


def test_a_layer_without_a_spatial_map_is_not_a_valid_target():
    with pytest.raises(ValueError, match=r"'fc' is not a module .* producing a 4-D feature map"):
        cam.find_target_layer(_model("test_resnet"), name="fc", input_shape=(3, 64, 64))


def test_an_explicit_valid_target_layer_is_honoured():
    assert cam.find_target_layer(_model("test_resnet"), name="layer3", input_shape=(3, 64, 64)) == "layer3"


def test_an_unknown_cam_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown CAM method 'gradcam3'; valid methods are \[.*'gradcam'"):
        cam.cam_method("gradcam3")


@pytest.mark.parametrize("method", sorted(cam.CAM_METHODS))
def test_every_cam_method_gives_per_image_min_max_scaled_maps_in_the_prepared_geometry(method):
    # bn1 (24 channels) keeps ScoreCAM's one forward pass per channel cheap
    maps = cam.compute_heatmaps(_model(), _images(2), [1, 2], transform=_to_tensor, method=method,
                               target_layer="bn1", progress=False)
    assert maps.shape == (2, S, S) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    for m in maps:
        assert m.max() == pytest.approx(1.0) or m.max() == 0.0


def test_heatmaps_are_deterministic_and_independent_of_the_batch_size():
    model, images = _model(), _images(3)
    a = cam.compute_heatmaps(model, images, [0, 1, 2], transform=_to_tensor, batch_size=1, progress=False)
    b = cam.compute_heatmaps(model, images, [0, 1, 2], transform=_to_tensor, batch_size=3, progress=False)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(
        a, cam.compute_heatmaps(model, images, [0, 1, 2], transform=_to_tensor, batch_size=1, progress=False)
    )


def test_computing_heatmaps_leaves_the_callers_model_untouched():
    model = _model("test_resnet").train()
    for p in model.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cam.compute_heatmaps(model, _images(2), [0, 1], transform=_to_tensor, progress=False)
    assert model.training
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("mode", cam.RANDOMIZATIONS)
def test_the_randomised_model_is_seeded_leaves_the_original_alone_and_changes_the_maps(mode):
    model, images = _model("test_resnet"), _images(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = cam.randomized_copy(model, seed=5, mode=mode, input_shape=(3, S, S))
    second = cam.randomized_copy(model, seed=5, mode=mode, input_shape=(3, S, S))
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(first.fc.weight, model.fc.weight)
    trained = cam.compute_heatmaps(model, images, [1] * 4, transform=_to_tensor, progress=False)
    randomised = cam.compute_heatmaps(first, images, [1] * 4, transform=_to_tensor, progress=False)
    rho = [ex.loc.rank_correlation(a, b) for a, b in zip(trained, randomised)]
    assert np.nanmean(rho) < 0.9


def test_cascading_randomisation_keeps_the_layers_below_the_target():
    model = _model("test_resnet")
    cascaded = cam.randomized_copy(model, seed=1, mode="cascading", input_shape=(3, S, S))
    assert torch.equal(cascaded.layer1[0].conv1.weight, model.layer1[0].conv1.weight)
    assert not torch.equal(cascaded.layer4[0].conv1.weight, model.layer4[0].conv1.weight)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_classes": [0, 3]}, r"indices must lie in \[0, 3\), got \[0, 3\]"),
        ({"target_classes": [0]}, r"need one class per image \(2\)"),
        ({"batch_size": 0}, "explain.batch_size must be >= 1, got 0"),
        ({"images": np.zeros((2, 8, 9), np.uint8)}, r"expected \(N, S, S\) prepared images"),
        ({"transform": lambda im: torch.zeros(3, 16, 16)}, r"expected a \(C, 32, 32\) tensor .* got \(3, 16, 16\)"),
    ],
)
def test_bad_heatmap_inputs_are_refused_with_the_fix(kwargs, message):
    args = {"images": _images(2), "target_classes": [0, 1], "transform": _to_tensor, "batch_size": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        cam.compute_heatmaps(_model(), args.pop("images"), args.pop("target_classes"), progress=False, **args)


def test_an_unknown_randomisation_mode_is_refused():
    with pytest.raises(ValueError, match=r"explain.randomization: expected one of \['full', 'cascading'\]"):
        cam.randomized_copy(_model(), seed=0, mode="partial")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "label"}, r"explain.target: expected one of \['predicted', 'true'\], got 'label'"),
        ({"thresholds": (0.5, 1.2)}, r"explain.thresholds: need values strictly in \(0, 1\)"),
        ({"method": "cam"}, "unknown CAM method 'cam'"),
        ({"randomization": "x"}, "explain.randomization: expected one of"),
    ],
)
def test_invalid_explain_params_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ex.ExplainConfig(**kwargs)


def test_a_heatmap_maps_back_onto_the_original_radiograph_geometry():
    orig_w, orig_h, size = 200, 100, 32
    scale = size / orig_w
    pad_x, pad_y = 0, (size - round(orig_h * scale)) // 2
    original = np.zeros((orig_h, orig_w), np.float32)
    original[25:75, 50:150] = 1.0  # a box in the middle of the radiograph
    prepared = np.zeros((size, size), np.float32)
    prepared[pad_y:pad_y + 16, :] = cv2.resize(original, (32, 16), interpolation=cv2.INTER_AREA)
    back = ex.to_original_geometry(prepared, scale=scale, pad_x=pad_x, pad_y=pad_y, orig_width=orig_w,
                                   orig_height=orig_h)
    assert back.shape == (orig_h, orig_w)
    inter = np.logical_and(back > 0.5, original > 0.5).sum()
    assert inter / np.logical_or(back > 0.5, original > 0.5).sum() > 0.85


def test_geometry_that_disagrees_with_the_letterbox_contract_is_refused():
    with pytest.raises(ValueError, match=r"letterbox geometry mismatch .* Re-run the prepare stage"):
        ex.to_original_geometry(np.zeros((32, 32), np.float32), scale=0.16, pad_x=3, pad_y=8, orig_width=200,
                                orig_height=100)


def _write_inputs(root: Path, *, size: int = S) -> dict[str, Path]:
    """A prepared cache, a split and predictions: val 2 Benign + 1 Normal; test 2 Benign, 2 Malignant
    (one without a mask), 2 Normal."""
    labels = ["Benign", "Benign", "Normal", "Benign", "Benign", "Malignant", "Malignant", "Normal", "Normal"]
    parts = ["val"] * 3 + ["test"] * 6
    preds = ["Benign", "Malignant", "Normal", "Benign", "Normal", "Malignant", "Benign", "Normal", "Malignant"]
    n = len(labels)
    images = _images(n, size)
    masks = np.zeros_like(images)
    has_mask = [1, 1, 0, 1, 1, 1, 0, 0, 0]
    for i in np.flatnonzero(has_mask):
        cv2.circle(masks[i], (size // 2, size // 2), 6, 1, -1)
    (root / "prepared").mkdir()
    np.save(root / "prepared" / "images.npy", images)
    np.save(root / "prepared" / "masks.npy", masks)
    index = pd.DataFrame({
        "row": range(n), "image_id": [f"IMG{i:06d}.jpeg" for i in range(n)], "label": labels,
        "label_idx": [CLASSES.index(c) for c in labels], "has_mask": has_mask, "scale": size / 100,
        "pad_x": 0, "pad_y": 0, "orig_width": 100, "orig_height": 100,
        "center": [1, 1, 1, 1, 2, 2, 1, 2, 1], "group": [f"G{i // 2}" for i in range(n)],
    })
    (root / "split").mkdir()
    for part in ("train", "val", "test"):
        index[[p == part for p in parts]].to_csv(root / "split" / f"{part}.csv", index=False)
    probs = np.full((n, 3), 0.1)
    probs[np.arange(n), [CLASSES.index(p) for p in preds]] = np.linspace(0.5, 0.8, n)
    predictions = index[["row", "image_id", "label", "label_idx"]].assign(
        partition=parts, **{f"prob_{c}": probs[:, j] for j, c in enumerate(CLASSES)},
        pred_idx=[CLASSES.index(p) for p in preds], pred=preds)
    predictions[[p != "train" for p in parts]].to_csv(root / "predictions.csv", index=False)
    return {"prepared_dir": root / "prepared", "split_dir": root / "split",
            "predictions_path": root / "predictions.csv"}


def _run(paths: dict[str, Path], **config) -> ex.ExplainResult:
    config.setdefault("layer_search", 0)  # the automatic last conv/norm layer unless a test asks for the search
    cfg = ex.ExplainConfig(bootstrap_resamples=50, gallery_top_k=2, **config)
    return ex.explain_variant(model=_model(), transform=_to_tensor, config=cfg, seed=3, class_names=CLASSES, **paths)


@pytest.fixture(scope="module")
def explained(tmp_path_factory) -> tuple[dict[str, Path], ex.ExplainResult]:
    paths = _write_inputs(tmp_path_factory.mktemp("explain"))
    return paths, _run(paths)


def test_explain_scores_annotated_test_tumours_and_counts_the_unannotated(explained):
    result = explained[1]
    m = result.metrics
    assert (m["n_images"], m["n_skipped_no_mask"], m["n_val_images"]) == (3, 1, 2)
    assert m["method"] == "gradcam" and m["target"] == "predicted" and m["target_layer"] == "blocks.4.0.bn1"
    loc_keys = {"pointing_game", "energy_inside", "iou@0.3", "dice@0.3", "iou@0.5", "dice@0.5", "iou@0.7",
                "dice@0.7", "iou@val", "dice@val", "n"}
    for block in ("model", "baseline"):
        assert set(m[block]["overall"]) == loc_keys
        assert m[block]["overall"]["n"] == 3
        assert {c: m[block]["per_class"][c]["n"] for c in ("Benign", "Malignant")} == {"Benign": 2, "Malignant": 1}
        for key in loc_keys - {"n"}:
            ci = m[block]["overall"][key]
            assert 0.0 <= ci["ci_low"] <= ci["value"] <= ci["ci_high"] <= 1.0
    assert m["val_threshold"] in ex.loc.THRESHOLD_GRID
    # validation scores (what chooses explain settings) are of the validation tumours only
    assert m["validation"]["n"] == 2 and 0.0 <= m["validation"]["pointing_game"] <= 1.0
    assert 0.0 <= m["validation"]["baseline_pointing_game"] <= 1.0
    assert m["sanity"]["n"] + m["sanity"]["n_undefined"] == 3
    json.dumps(m, allow_nan=False)  # the metrics file must be valid DVC JSON
    table = result.per_image
    assert list(table["image_id"]) == ["IMG000003.jpeg", "IMG000004.jpeg", "IMG000005.jpeg"]
    assert list(table["target_class"]) == ["Benign", "Normal", "Malignant"]
    assert set(table["target_kind"]) == {"predicted"}
    assert {"baseline_pointing_game", "baseline_iou@val", "rank_correlation", "prob"} <= set(table.columns)
    assert set(result.panels) == set(gallery_keys(CLASSES))
    assert [p.image_id for p in result.panels["Malignant_fp"]] == ["IMG000008.jpeg"]
    assert [p.image_id for p in result.panels["Benign_fn"]] == ["IMG000004.jpeg"]
    assert result.panels["Benign_tp"][0].mask is not None and result.panels["Malignant_fp"][0].mask is None
    for panels in result.panels.values():
        for panel in panels:
            assert panel.heatmap.shape == (S, S) and 0.0 <= panel.heatmap.min() <= panel.heatmap.max() <= 1.0


@pytest.mark.parametrize(("name", "expected"), [
    ("resnet10t", ["layer1", "layer2", "layer3", "layer4"]),
    ("tf_efficientnet_lite0", ["blocks.5", "blocks", "conv_head", "bn2"]),
])
def test_layer_candidates_are_the_last_block_level_layers_each_output_once(name, expected):
    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    assert cam.layer_candidates(model, input_shape=(3, 64, 64), last=4) == expected
    assert cam.layer_candidates(model, input_shape=(3, 64, 64), last=0) == []


@pytest.mark.parametrize("name", ["test_efficientnet", "tf_efficientnet_lite0", "resnet10t"])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_one_pass_over_all_candidate_layers_gives_each_layers_own_heatmaps(name, method):
    """The layer search hooks every candidate at once; each map must be the one a pass of its own gives."""
    model = _model(name)
    images, targets = _images(4, size=64), [0, 1, 2, 1]
    layers = [*cam.layer_candidates(model, input_shape=(3, 64, 64), last=4),
              cam.find_target_layer(model, input_shape=(3, 64, 64))]
    together = cam.compute_heatmaps_per_layer(model, images, targets, transform=_to_tensor, layers=layers,
                                             method=method, batch_size=3)
    assert list(together) == list(dict.fromkeys(layers)) and len(together) >= 4
    for layer, maps in together.items():
        alone = cam.compute_heatmaps(model, images, targets, transform=_to_tensor, method=method, target_layer=layer,
                                    batch_size=3, progress=False)
        np.testing.assert_allclose(maps, alone, atol=1e-5, err_msg=layer)
    distinct = list(together.values())
    assert not np.allclose(distinct[0], distinct[-1])  # the layers' maps differ: the comparison has teeth


def test_with_layer_search_the_layer_with_the_best_validation_pointing_game_is_used_and_recorded(explained):
    paths = explained[0]
    result = _run(paths, layer_search=3)
    scores = result.metrics["layer_search"]
    candidates = cam.layer_candidates(_model(), input_shape=(3, S, S), last=3)
    assert set(candidates) <= set(scores) and len(scores) in (3, 4)  # + the automatic default layer
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores[result.metrics["target_layer"]] == max(scores.values())
    # the chosen layer's search score is the validation pointing game of the maps explain then uses
    assert result.metrics["validation"]["pointing_game"] == pytest.approx(scores[result.metrics["target_layer"]])
    assert _run(paths, layer_search=0).metrics["layer_search"] == {}
    pinned = _run(paths, layer_search=3, target_layer=candidates[0]).metrics
    assert pinned["target_layer"] == candidates[0] and pinned["layer_search"] == {}


def test_a_negative_layer_search_is_refused():
    with pytest.raises(ValueError, match=r"explain.layer_search: expected an integer >= 0, got -1"):
        ex.ExplainConfig(layer_search=-1)


def test_the_true_class_can_be_explained_instead_of_the_prediction(tmp_path):
    result = _run(_write_inputs(tmp_path), target="true")
    assert list(result.per_image["target_class"]) == list(result.per_image["label"])
    assert result.metrics["target"] == "true"


def test_explain_is_deterministic_for_a_seed(explained):
    paths, result = explained
    again = _run(paths)
    assert again.metrics == result.metrics
    pd.testing.assert_frame_equal(again.per_image, result.per_image)


def test_missing_inputs_name_the_stage_to_run(tmp_path):
    paths = _write_inputs(tmp_path)
    paths["predictions_path"].unlink()
    with pytest.raises(FileNotFoundError, match="predictions.csv: not found; run the evaluate stage first"):
        _run(paths)


def test_stale_predictions_missing_a_split_row_are_refused(tmp_path):
    paths = _write_inputs(tmp_path)
    preds = pd.read_csv(paths["predictions_path"])
    preds[preds["row"] != 4].to_csv(paths["predictions_path"], index=False)
    with pytest.raises(ValueError, match=r"no 'test' prediction for 1 image\(s\) .* re-run evaluate"):
        _run(paths)


def test_duplicated_prediction_rows_are_refused(tmp_path):
    paths = _write_inputs(tmp_path)
    preds = pd.read_csv(paths["predictions_path"])
    pd.concat([preds, preds.iloc[[5]]]).to_csv(paths["predictions_path"], index=False)
    with pytest.raises(ValueError, match=r"rows \[5\] appear twice in partition 'test'"):
        _run(paths)


def test_a_split_without_geometry_columns_is_refused(tmp_path):
    paths = _write_inputs(tmp_path)
    pd.read_csv(paths["split_dir"] / "val.csv").drop(columns="pad_x").to_csv(paths["split_dir"] / "val.csv")
    with pytest.raises(ValueError, match=r"val.csv: missing column\(s\) \['pad_x'\]"):
        _run(paths)


def _letterbox(gray: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    h, w = gray.shape
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    out = np.zeros((size, size), np.uint8)
    out[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = cv2.resize(gray, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return out, scale, pad_x, pad_y


def test_heatmaps_of_real_btxrd_radiographs_are_in_range_and_score_against_their_polygons(btxrd_mini):
    ids = sorted(p.stem for p in (btxrd_mini / "Annotations").glob("*.json"))[:2]
    images, masks = [], []
    for image_id in ids:
        gray = np.asarray(Image.open(btxrd_mini / "images" / f"{image_id}.jpeg").convert("L"))
        prepared, scale, pad_x, pad_y = _letterbox(gray, 64)
        mask = np.zeros((64, 64), np.uint8)
        shapes = json.loads((btxrd_mini / "Annotations" / f"{image_id}.json").read_text())["shapes"]
        for shape in shapes:
            if shape["shape_type"] == "polygon":
                pts = np.asarray(shape["points"]) * scale + [pad_x, pad_y]
                cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
        images.append(prepared)
        masks.append(mask)
    maps = cam.compute_heatmaps(_model(), np.stack(images), [1, 2], transform=_to_tensor, progress=False)
    assert maps.shape == (2, 64, 64)
    assert 0.0 <= maps.min() and maps.max() <= 1.0
    for heatmap, mask in zip(maps, masks):
        assert mask.any()
        scores = ex.loc.localization_scores(heatmap, mask, thresholds=[0.5], tolerance_px=3)
        assert all(0.0 <= v <= 1.0 for v in scores.values())


def _stage_main(repo_root: Path):
    spec = importlib.util.spec_from_file_location("explain_stage", repo_root / "stages" / "explain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_the_explain_stage_writes_metrics_per_image_table_and_gallery(tmp_path, repo_root):
    from assurexray.learning import model as model_lib
    main = _stage_main(repo_root)

    paths = _write_inputs(tmp_path)
    meta = {"backbone": "test_efficientnet", "num_classes": 3, "class_names": CLASSES, "dropout": 0.0,
            "input_size": S, "in_chans": 3, "mean": [0.5] * 3, "std": [0.25] * 3, "clahe": False,
            "letterbox_fill": 0, "params": {}, "best_epoch": 0, "monitor": "macro_auc", "best_score": 0.5,
            "seed": 0, "format_version": 1}
    model_lib.save_checkpoint(tmp_path / "model.pt", _model(), meta)
    params = tmp_path / "params.yaml"
    params.write_text("base:\n  seed: 1\n  class_names: [Normal, Benign, Malignant]\ntrain:\n  device: auto\nexplain:\n  bootstrap_resamples: 20\n  gallery_top_k: 1\n")
    out, figures = tmp_path / "metrics" / "explain", tmp_path / "plots" / "gradcam"
    argv = ["--prepared", str(paths["prepared_dir"]), "--split", str(paths["split_dir"]),
            "--model", str(tmp_path / "model.pt"), "--predictions", str(paths["predictions_path"]),
            "--out", str(tmp_path / "cuda"), "--figures", str(tmp_path / "cuda-figures"), "--params"]
    if not torch.cuda.is_available():  # explain runs where train.device says: CUDA on a CPU machine is refused
        cuda = tmp_path / "cuda.yaml"
        cuda.write_text(params.read_text().replace("device: auto", "device: cuda"))
        with pytest.raises(ValueError, match=r"train\.device='cuda': CUDA is not available"):
            main([*argv, str(cuda)])
    rc = main(["--prepared", str(paths["prepared_dir"]), "--split", str(paths["split_dir"]),
               "--model", str(tmp_path / "model.pt"), "--predictions", str(paths["predictions_path"]),
               "--out", str(out), "--figures", str(figures), "--params", str(params)])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 3 and metrics["n_skipped_no_mask"] == 1
    assert len(pd.read_csv(out / "per_image.csv")) == 3
    assert sorted(p.name for p in figures.iterdir()) == sorted(gallery_files(CLASSES))


def test_the_explain_stage_rejects_unknown_params_keys(tmp_path, repo_root):
    main = _stage_main(repo_root)

    params = tmp_path / "params.yaml"
    params.write_text("base:\n  seed: 1\nexplain:\n  methd: gradcam\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['methd'\]"):
        main(["--prepared", "p", "--split", "s", "--model", "m", "--predictions", "x", "--out", "o",
              "--figures", "f", "--params", str(params)])


def test_the_layer_and_threshold_are_chosen_on_validation_only(tmp_path):
    """Scramble only the test partition (images and masks): every choice explain makes must stay put."""
    paths = _write_inputs(tmp_path)
    base = _run(paths, layer_search=3).metrics
    images = np.load(paths["prepared_dir"] / "images.npy")
    masks = np.load(paths["prepared_dir"] / "masks.npy")
    test_rows = pd.read_csv(paths["split_dir"] / "test.csv")["row"].to_numpy()
    rng = np.random.default_rng(0)
    images[test_rows] = rng.integers(0, 256, size=images[test_rows].shape, dtype=np.uint8)
    masks[test_rows] = np.roll(masks[test_rows], shift=S // 3, axis=2)
    np.save(paths["prepared_dir"] / "images.npy", images)
    np.save(paths["prepared_dir"] / "masks.npy", masks)
    moved = _run(paths, layer_search=3).metrics
    assert moved["target_layer"] == base["target_layer"]
    assert moved["layer_search"] == base["layer_search"]
    assert moved["val_threshold"] == base["val_threshold"]
    assert moved["baseline_val_threshold"] == base["baseline_val_threshold"]
    assert moved["validation"] == base["validation"]
