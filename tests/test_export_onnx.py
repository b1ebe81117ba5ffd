"""`assurexray export --format onnx` and `infer --runtime onnx`: the recorded contract, parity with PyTorch, errors.

Parity tolerance (docs/export.md): ONNX Runtime logits within LOGIT_ATOL = 1e-4 (absolute) of PyTorch's, and
infer's probabilities within 1e-5, on a checkpoint trained here with CLAHE and the percentile intensity
standardisation switched on (so a preprocessing step the export forgot to record would show).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import import_or_skip
from test_benchmarks import problems
from test_infer import CLASSES, LESION, lesion_image, read_rows, save_image, tiny_checkpoint, write_op
from training_options import train

from assurexray.learning.model import file_sha256, load_checkpoint, save_checkpoint
from assurexray.learning.prediction import PREPROCESSING_KEYS, OperatingPoint, load_predictor
from assurexray.serving import cli
from assurexray.serving import export as export_lib
from assurexray.serving.export import LOGIT_ATOL, export_onnx
from assurexray.serving.infer import run_inference
from assurexray.serving.onnx_runtime import load_onnx_predictor

#: infer's probabilities: ONNX Runtime vs PyTorch, absolute (softmax of logits within LOGIT_ATOL, then T).
PROB_ATOL = 1e-5
S = 32


@pytest.fixture(autouse=True)
def _onnx_packages() -> None:
    for name in ("onnx", "onnxscript", "onnxruntime"):  # requirements.txt installs them
        import_or_skip(name, f"{name} is not installed (pip install -r requirements.txt)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A test_efficientnet trained 2 epochs on 15 tiny images (class = brightness of a centre square), with CLAHE
    and the percentile intensity standardisation: its batch norms hold real statistics, not the initial ones."""
    rng = np.random.default_rng(0)
    labels = np.arange(24) % 3
    images = rng.integers(0, 60, (24, S, S), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 8:24, 8:24] += np.uint8(80 * label)
    index = pd.DataFrame({"row": np.arange(24), "image_id": [f"IMG{i:06d}.jpeg" for i in range(24)],
                          "label": [CLASSES[k] for k in labels], "label_idx": labels})
    result = train(
        images=images, train_index=index.iloc[:15], val_index=index.iloc[15:], class_names=CLASSES,
        backbone="test_efficientnet", pretrained="none", dropout=0.0, epochs=2, batch_size=8, lr=3e-3,
        weight_decay=1e-4, warmup_epochs=1, grad_clip=1.0, class_weights="inverse_frequency", monitor="loss",
        patience=3, device="cpu", amp=False, channels_last=False, num_workers=0, seed=7,
        augment={"hflip": 0.0, "rotate_deg": 0, "scale": 0.0, "translate": 0.0, "brightness_contrast": 0.0,
                 "clahe": True, "intensity": "percentile"},
    )
    path = tmp_path_factory.mktemp("trained") / "models" / "trained" / "model.pt"
    return save_checkpoint(path, result.model, result.meta)


@pytest.fixture(scope="module")
def trained_onnx(trained) -> Path:
    return export_onnx(trained, trained.with_suffix(".onnx")).path


@pytest.fixture(scope="module")
def lesion_pair(tmp_path_factory) -> tuple[Path, Path]:
    """The hand-set lesion model of test_infer (its map follows brightness) and its export, via the CLI."""
    model = tiny_checkpoint(tmp_path_factory.mktemp("lesion") / "models" / "head" / "model.pt", lesion_bias=-5.0,
                            input_size=64)
    out = model.with_suffix(".onnx")
    assert cli.main(["export", "--format", "onnx", "--model", str(model), "-o", str(out)]) == 0
    return model, out


def images(folder: Path) -> list[Path]:
    """Three radiograph-like files of different sizes and aspect ratios (so letterboxing differs)."""
    rng = np.random.default_rng(1)
    shapes = [(48, 32), (40, 70), (64, 64)]
    return [save_image(folder / f"img{i}.png", rng.integers(0, 256, shape, dtype=np.uint8))
            for i, shape in enumerate(shapes)]


def test_the_export_records_the_checkpoints_input_contract_in_its_metadata(trained, trained_onnx):
    import onnx

    model = onnx.load(trained_onnx)
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    _, meta = load_checkpoint(trained)
    assert props["assurexray.clahe"] is True and props["assurexray.intensity"] == "percentile"
    for key in PREPROCESSING_KEYS:
        assert props[f"assurexray.{key}"] == meta.get(key), key
    assert props["assurexray.class_names"] == CLASSES
    assert props["assurexray.source_sha256"] == file_sha256(trained)
    assert props["assurexray.lesion_head"] is False
    assert "NOT FOR CLINICAL USE" in props["assurexray.disclaimer"]
    assert [o.name for o in model.graph.output] == ["logits"]
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    assert image.name == "image" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, S, S]


@pytest.mark.parametrize("n", [1, 3])
def test_onnx_runtime_preprocesses_like_pytorch_and_its_logits_match_within_the_tolerance(trained, trained_onnx,
                                                                                         tmp_path, n):
    from assurexray.data.decoding import read_gray

    torch_side = load_predictor(trained, operating_point=OperatingPoint())
    onnx_side = load_onnx_predictor(trained_onnx, operating_point=OperatingPoint())
    boxed = torch_side.letterbox([read_gray(p) for p in images(tmp_path)[:n]])  # (n, S, S); dynamic batch
    for image in boxed:  # the transform rebuilt from the ONNX metadata is the checkpoint's, CLAHE and all
        np.testing.assert_array_equal(onnx_side.transform(image=image)["image"].numpy(),
                                      torch_side.transform(image=image)["image"].numpy())
    want, got = torch_side.logits(boxed), onnx_side.logits(boxed)
    assert got.shape == want.shape == (n, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=LOGIT_ATOL)
    assert np.abs(want).max() > 10 * LOGIT_ATOL  # the logits are not all ~0, so the comparison means something


def test_infer_gives_the_same_rows_on_both_runtimes_with_the_operating_point_applied(trained, trained_onnx, tmp_path,
                                                                                     capsys):
    op = write_op(tmp_path / "op.json", trained, temperature=2.0, threshold=0.2, record={"tta_flip": True})
    images(tmp_path / "in")
    rows = {}
    for runtime, model in (("torch", trained), ("onnx", trained_onnx)):
        out = tmp_path / f"{runtime}.jsonl"
        assert cli.main(["infer", str(tmp_path / "in"), "--model", str(model), "--operating-point", str(op),
                         "--output", str(out), "--runtime", runtime]) == 0
        rows[runtime] = read_rows(out)
    for want, got in zip(rows["torch"], rows["onnx"], strict=True):
        probs = [f"prob_{c}" for c in CLASSES]
        np.testing.assert_allclose([got[p] for p in probs], [want[p] for p in probs], rtol=0, atol=PROB_ATOL)
        assert {k: v for k, v in got.items() if k not in probs} == {k: v for k, v in want.items() if k not in probs}
        assert got["malignant_threshold"] == 0.2 and got["model_sha256"] == file_sha256(trained)
    assert len(rows["onnx"]) == 3


def test_a_default_operating_point_beside_models_variant_applies_to_an_export_there(trained, trained_onnx, tmp_path):
    placed = tmp_path / "models" / "v" / "model.onnx"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(trained_onnx.read_bytes())
    op = write_op(tmp_path / "metrics" / "v" / "eval" / "operating_point.json", trained, threshold=0.25)
    result = run_inference(images(tmp_path / "in")[:1], model_path=placed, runtime="onnx")
    assert result.operating_point.source == op and result.operating_point.malignant_threshold == 0.25
    assert result.predictions[0].malignant_flag in (0, 1)


def test_the_lesion_map_export_gives_the_same_box_and_score_and_draws_overlays(lesion_pair, tmp_path, capsys):
    import onnx

    model, exported = lesion_pair
    assert [o.name for o in onnx.load(exported).graph.output] == ["logits", "lesion_logits"]
    image = lesion_image(tmp_path / "knee.png")
    want = run_inference([image], model_path=model).predictions[0].lesion
    maps = tmp_path / "maps"
    out = tmp_path / "out.jsonl"
    assert cli.main(["infer", str(image), "--model", str(exported), "--runtime", "onnx", "--lesion-map", str(maps),
                     "--output", str(out)]) == 0
    (row,) = read_rows(out)
    assert row["lesion_box"] == list(want.box) and np.abs(np.subtract(row["lesion_box"], LESION)).max() <= 10
    assert row["lesion_score"] == pytest.approx(want.score, abs=1e-4)
    assert (maps / "knee_lesion.png").is_file() and row["lesion_overlay"] == str(maps / "knee_lesion.png")


def test_export_prints_the_disclaimer_and_what_it_wrote(lesion_pair, capsys, tmp_path):
    model, _ = lesion_pair
    out = tmp_path / "again.onnx"
    assert cli.main(["export", "--model", str(model), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("NOT FOR CLINICAL USE")
    assert f"wrote {out}: ONNX" in printed and "outputs logits, lesion_logits" in printed
    assert f"assurexray infer --runtime onnx --model {out}" in printed


def test_an_export_that_disagrees_with_pytorch_is_refused_and_nothing_is_written(trained, tmp_path, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")
    monkeypatch.setattr(export_lib, "LOGIT_ATOL", -1.0)  # any difference, even 0, now fails the check
    with pytest.raises(ValueError, match=r"logits differ from PyTorch's by .* nothing was written"):
        export_onnx(trained, out)
    assert out.read_bytes() == b"previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def _bare_onnx(trained_onnx: Path, folder: Path) -> Path:
    """The export with its AssureXRay metadata removed, as any other exporter would write it."""
    import onnx

    model = onnx.load(trained_onnx)
    del model.metadata_props[:]
    path = folder / "bare.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_metadata", r"bare\.onnx: an ONNX model without AssureXRay metadata .* `assurexray export --format onnx"),
        ("checkpoint_on_onnx", r"model\.pt: a PyTorch checkpoint, but --runtime is onnx; export it first"),
        ("onnx_on_torch", r"model\.onnx: an ONNX model, but --runtime is torch \(the default\); pass --runtime onnx"),
        ("gradcam", r"--gradcam needs --runtime torch"),
        ("ensemble", r"--runtime onnx scores one exported model, got 2 --model files"),
        ("gpu", r"--device 'cuda': --runtime onnx runs on ONNX Runtime's CPU provider"),
        ("other_models_operating_point", r"op\.json: model_sha256 '0+' does not match the model file"),
        ("corrupt", r"broken\.onnx: ONNX Runtime cannot load it"),
    ],
)
def test_bad_runtime_and_model_combinations_are_usage_errors_naming_the_file_and_the_fix(
        trained, trained_onnx, tmp_path, capsys, case, message):
    image = str(save_image(tmp_path / "a.png"))
    args = {
        "no_metadata": ["--runtime", "onnx", "--model", str(_bare_onnx(trained_onnx, tmp_path))],
        "checkpoint_on_onnx": ["--runtime", "onnx", "--model", str(trained)],
        "onnx_on_torch": ["--model", str(trained_onnx)],
        "gradcam": ["--runtime", "onnx", "--model", str(trained_onnx), "--gradcam", str(tmp_path / "cams")],
        "ensemble": ["--runtime", "onnx", "--model", str(trained_onnx), "--model", str(trained_onnx)],
        "gpu": ["--runtime", "onnx", "--model", str(trained_onnx), "--device", "cuda"],
        "other_models_operating_point": [
            "--runtime", "onnx", "--model", str(trained_onnx), "--operating-point",
            str(write_op(tmp_path / "op.json", trained, sha="0" * 64))],
        "corrupt": ["--runtime", "onnx", "--model", str(_write(tmp_path / "broken.onnx", b"\x08garbage"))],
    }[case]
    assert cli.main(["infer", image, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("assurexray infer: error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


@pytest.mark.parametrize("command", ["infer", "export"])
def test_a_missing_onnxruntime_is_a_usage_error_saying_how_to_install_it(trained, trained_onnx, tmp_path, capsys,
                                                                        monkeypatch, command):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails as if not installed
    argv = (["infer", str(save_image(tmp_path / "a.png")), "--runtime", "onnx", "--model", str(trained_onnx)]
            if command == "infer" else ["export", "--model", str(trained), "-o", str(tmp_path / "m.onnx")])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"assurexray {command}: error: assurexray {command}" in err
    assert "needs the onnxruntime package, which is not installed: pip install onnxruntime" in err
    assert not (tmp_path / "m.onnx").exists()


def test_export_to_a_file_not_named_onnx_is_refused_before_any_work(trained, tmp_path, capsys):
    assert cli.main(["export", "--model", str(trained), "-o", str(tmp_path / "model.pt")]) == 2
    assert "-o '" in capsys.readouterr().err and not (tmp_path / "model.pt").exists()
    with pytest.raises(ValueError, match=r"an ONNX export is written to a \.onnx file; name it e\.g\. 'model\.onnx'"):
        export_onnx(trained, tmp_path / "model.pt")


def test_the_onnx_speed_benchmark_runs_tiny_and_returns_well_formed_figures():
    from benchmarks import onnx_speed

    found = onnx_speed.figures(quick=True, tiny=True)
    assert found and all(problems(f) == [] for f in found), found
    assert all(f.value is not None and f.value > 0 for f in found), found


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
