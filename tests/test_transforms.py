"""The one preprocessing definition: eval output, train == eval without augmentation, letterboxing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from assurexray.learning.transforms import AUGMENT_KEYS, eval_transform, prepare_image, standardise_intensity, train_transform

S = 32
NO_AUGMENT = {"hflip": 0.0, "rotate_deg": 0, "scale": 0.0, "translate": 0.0, "brightness_contrast": 0.0}
FULL_AUGMENT = {"hflip": 0.5, "rotate_deg": 7, "scale": 0.1, "translate": 0.05, "brightness_contrast": 0.2}


def _meta(*, clahe: bool = False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> dict:
    return {"input_size": S, "mean": list(mean), "std": list(std), "clahe": clahe, "letterbox_fill": 0}


def _images(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (S, S), dtype=np.uint8) for _ in range(n)]


def test_eval_transform_gives_a_float_3_channel_tensor_normalised_by_meta():
    image = np.zeros((S, S), dtype=np.uint8)
    image[0, 0], image[0, 1] = 255, 51
    meta = _meta(mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.2))
    out = eval_transform(meta)(image=image)["image"]
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (3, S, S)
    mean, std = torch.tensor(meta["mean"]), torch.tensor(meta["std"])
    torch.testing.assert_close(out[:, 1, 1], (0.0 - mean) / std)  # black
    torch.testing.assert_close(out[:, 0, 0], (1.0 - mean) / std)  # white
    torch.testing.assert_close(out[:, 0, 1], (0.2 - mean) / std)  # 51 / 255 = 0.2


def test_eval_transform_replicates_grey_into_identical_channels():
    out = eval_transform(_meta())(image=_images(1)[0])["image"]
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


@pytest.mark.parametrize("clahe", [False, True])
@pytest.mark.parametrize("augment", [None, {}, NO_AUGMENT], ids=["none", "empty", "zeros"])
def test_train_transform_without_augmentation_equals_eval_transform(clahe, augment):
    meta = _meta(clahe=clahe)
    train, evaluate = train_transform(meta, augment, seed=3), eval_transform(meta)
    for image in _images():
        assert torch.equal(train(image=image)["image"], evaluate(image=image)["image"])


def test_train_transform_with_certain_flip_equals_flipped_eval_output():
    meta = _meta()
    flip = train_transform(meta, {**NO_AUGMENT, "hflip": 1.0})
    for image in _images():
        assert torch.equal(flip(image=image)["image"], eval_transform(meta)(image=image)["image"].flip(-1))


def test_train_transform_augments_reproducibly_from_its_seed():
    meta, image = _meta(), _images(1)[0]
    first = [train_transform(meta, FULL_AUGMENT, seed=7)(image=image)["image"] for _ in range(2)]
    other = train_transform(meta, FULL_AUGMENT, seed=8)(image=image)["image"]
    plain = eval_transform(meta)(image=image)["image"]
    assert first[0].shape == (3, S, S)
    assert torch.equal(first[0], first[1])
    assert not torch.equal(first[0], plain)
    assert not torch.equal(first[0], other)


def test_clahe_changes_the_image_deterministically():
    image = (np.add.outer(np.arange(S), np.arange(S)) * 2).astype(np.uint8)  # a smooth low-contrast ramp
    with_clahe = [eval_transform(_meta(clahe=True))(image=image)["image"] for _ in range(2)]
    assert torch.equal(with_clahe[0], with_clahe[1])
    assert not torch.equal(with_clahe[0], eval_transform(_meta())(image=image)["image"])


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ({"hflipp": 0.5}, r"unknown key\(s\) \['hflipp'\]"),
        ({"clahe": True}, r"augment.clahe=True disagrees with meta\['clahe'\]=False"),
        ({"hflip": 1.5}, r"values out of range \{'hflip': 1.5\}"),
        ({"rotate_deg": -3}, r"values out of range \{'rotate_deg': -3\}"),
    ],
)
def test_train_transform_rejects_bad_augment_params(augment, message):
    with pytest.raises(ValueError, match=message):
        train_transform(_meta(), augment)


def test_augment_keys_match_params_yaml(repo_root):
    import yaml

    params = yaml.safe_load((repo_root / "params.yaml").read_text(encoding="utf-8"))
    assert sorted(params["train"]["augment"]) == sorted(AUGMENT_KEYS)


def test_prepare_image_letterboxes_any_size_with_zero_padding():
    meta = _meta()
    wide = np.full((10, 40), 255, dtype=np.uint8)  # 40 x 10 -> 32 x 8 content, 12 px padding above/below
    out = prepare_image(wide, meta)
    assert out.shape == (3, S, S)
    torch.testing.assert_close(out[:, 0, :], torch.full((3, S), -1.0))  # padding = black = (0 - .5) / .5
    torch.testing.assert_close(out[:, S // 2, :], torch.full((3, S), 1.0))  # content = white
    assert torch.equal(prepare_image(np.zeros((S, S), np.uint8) + 255, meta)[:, S // 2], out[:, S // 2])


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32)], ids=["rgb", "float"]
)
def test_prepare_image_rejects_non_uint8_grey(bad):
    with pytest.raises(ValueError, match=r"expects a uint8 grayscale \(H, W\) array"):
        prepare_image(bad, _meta())


def test_transforms_refuse_meta_without_the_input_contract():
    with pytest.raises(ValueError, match=r"meta lacks key\(s\) \['mean', 'std'\]"):
        eval_transform({"input_size": S, "clahe": False})


# --- hospital-shift levers: intensity standardisation and appearance augmentation ----------------------------

APPEARANCE = {"gamma": 0.3, "blur_sharpen": 0.5, "noise": 0.05, "downscale": 0.5, "jpeg_quality": 40}


def _radiograph() -> np.ndarray:
    """A letterboxed image: a dim ramp (values 40..103) framed by zero padding."""
    image = np.zeros((S, S), dtype=np.uint8)
    image[4:28, :] = (40 + np.arange(S) * 2)[None, :].astype(np.uint8)
    return image


@pytest.mark.parametrize("mode", ["equalize", "percentile"])
def test_intensity_standardisation_stretches_the_radiograph_and_keeps_the_padding_black(mode):
    image = _radiograph()
    out = standardise_intensity(image, mode)
    body = image > 0
    assert (out[~body] == 0).all()  # padding stays the padding value
    assert out[body].min() <= 5 and out[body].max() >= 250  # a dim 40..103 ramp now spans the range
    assert (np.diff(out[10].astype(int)) >= 0).all()  # monotone: bone stays brighter than soft tissue
    # A brighter or darker copy of the same radiograph standardises to (nearly) the same image.
    brighter = np.where(body, np.clip(image.astype(int) + 60, 0, 255), 0).astype(np.uint8)
    assert np.abs(standardise_intensity(brighter, mode).astype(int) - out.astype(int)).max() <= 2


def test_intensity_standardisation_is_applied_identically_at_train_and_eval_from_the_meta():
    meta = _meta() | {"intensity": "percentile"}
    image = _radiograph()
    evaluated = eval_transform(meta)(image=image)["image"]
    trained = train_transform(meta, NO_AUGMENT | {"intensity": "percentile"}, seed=0)(image=image)["image"]
    torch.testing.assert_close(evaluated, trained)
    plain = eval_transform(_meta())(image=image)["image"]
    assert not torch.allclose(evaluated, plain)  # the meta switch reaches the model input
    prepared = prepare_image(image, meta)  # the infer / app path
    torch.testing.assert_close(prepared, evaluated)


def test_training_refuses_an_intensity_mode_that_disagrees_with_the_checkpoint_meta():
    with pytest.raises(ValueError, match=r"train\.augment\.intensity='equalize' disagrees with meta\['intensity'\]"):
        train_transform(_meta(), NO_AUGMENT | {"intensity": "equalize"})
    with pytest.raises(ValueError, match=r"intensity: expected one of \['none', 'equalize', 'percentile'\]"):
        standardise_intensity(_radiograph(), "zscore")


def test_appearance_augmentation_changes_pixels_is_seeded_and_is_off_at_zero():
    image = _images(1)[0]
    a = train_transform(_meta(), NO_AUGMENT | APPEARANCE, seed=3)
    b = train_transform(_meta(), NO_AUGMENT | APPEARANCE, seed=3)
    outs_a = [a(image=image)["image"] for _ in range(6)]
    outs_b = [b(image=image)["image"] for _ in range(6)]
    for x, y in zip(outs_a, outs_b):
        torch.testing.assert_close(x, y)  # same seed, same sequence
    plain = eval_transform(_meta())(image=image)["image"]
    assert any(not torch.allclose(x, plain) for x in outs_a)
    off = train_transform(_meta(), NO_AUGMENT | {k: 0 for k in APPEARANCE}, seed=3)
    torch.testing.assert_close(off(image=image)["image"], plain)


@pytest.mark.parametrize(("key", "value"), [("gamma", 1.5), ("noise", -0.1), ("jpeg_quality", 120), ("downscale", 2)])
def test_out_of_range_appearance_strengths_are_refused(key, value):
    with pytest.raises(ValueError, match=rf"train\.augment: values out of range \{{'{key}'"):
        train_transform(_meta(), NO_AUGMENT | {key: value})
