"""Decoding every PIL mode to 8-bit gray, letterbox geometry and its exact inverse, polygon rasters."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from assurexray.data.imaging import (
    Letterbox,
    box_to_original,
    decode_for_letterbox,
    decode_gray,
    decode_gray_array,
    decode_gray_with_mode,
    letterbox,
    letterbox_geometry,
    polygons_to_letterbox,
    rasterize_polygons,
    to_original,
)

RAMP = np.tile(np.arange(0, 240, 8, dtype=np.uint8), (20, 1))  # (20, 30): columns 0, 8, ..., 232


def make(mode: str) -> Image.Image:
    """RAMP in ``mode``; values chosen so the expected gray is known."""
    if mode == "L":
        return Image.fromarray(RAMP)
    if mode in {"RGB", "RGBA", "CMYK"}:
        return Image.fromarray(RAMP).convert("RGB").convert(mode)
    if mode == "P":  # 30 gray levels fit an adaptive palette exactly
        return Image.fromarray(RAMP).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    if mode == "LA":
        return Image.fromarray(RAMP).convert("LA")
    if mode == "I;16":
        return Image.fromarray(RAMP.astype(np.uint16) * 100 + 1000)  # range 1000..24200
    if mode == "I":
        return Image.fromarray(RAMP.astype(np.int32) * 1000 - 50000)
    if mode == "F":
        return Image.fromarray(RAMP.astype(np.float32) / 232.0)
    if mode == "1":
        return Image.fromarray(RAMP >= 128)
    raise KeyError(mode)


@pytest.mark.parametrize("mode, suffix", [
    ("L", ".png"), ("RGB", ".png"), ("RGBA", ".png"), ("P", ".png"), ("LA", ".png"), ("I;16", ".png"),
    ("I", ".tif"), ("F", ".tif"), ("CMYK", ".tif"), ("1", ".png"),
])
def test_decode_gray_turns_every_mode_into_uint8_gray(tmp_path, mode, suffix):
    path = tmp_path / f"img{suffix}"
    make(mode).save(path)
    gray, file_mode = decode_gray_with_mode(path)
    assert file_mode == mode
    assert gray.dtype == np.uint8 and gray.shape == RAMP.shape
    if mode == "1":
        np.testing.assert_array_equal(gray, np.where(RAMP >= 128, 255, 0))
    elif mode in {"I;16", "I", "F"}:  # min-max stretched: the ramp spans 0..255 exactly
        np.testing.assert_array_equal(gray, np.round(RAMP.astype(float) * 255 / 232).astype(np.uint8))
    else:
        np.testing.assert_allclose(gray.astype(int), RAMP.astype(int), atol=2)


def test_decode_gray_applies_exif_orientation(tmp_path):
    im = Image.fromarray(RAMP)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    gray = decode_gray(tmp_path / "rot.jpg")
    assert gray.shape == (30, 20)
    assert gray[0].mean() < gray[-1].mean()  # the ramp now runs top (dark) to bottom (bright)


def test_decode_gray_composites_transparency_on_black(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:, :2, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    gray = decode_gray(tmp_path / "a.png")
    assert gray[:, :2].min() == 200 and gray[:, 2:].max() == 0


@pytest.mark.parametrize("content", [b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 20])
def test_decode_gray_reports_a_corrupt_file_by_name(tmp_path, content):
    (tmp_path / "bad.jpeg").write_bytes(content)
    with pytest.raises(ValueError, match=r"bad.jpeg: (not a readable|unreadable or corrupt) image"):
        decode_gray(tmp_path / "bad.jpeg")


def test_decode_gray_reports_a_truncated_jpeg(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"t.jpg: unreadable or corrupt image"):
        decode_gray(tmp_path / "t.jpg")


def test_decode_gray_refuses_decompression_bombs(tmp_path, monkeypatch):
    Image.fromarray(RAMP).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"big.png: image too large to decode safely"):
        decode_gray(tmp_path / "big.png")


def test_decode_gray_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.png: image file not found"):
        decode_gray(tmp_path / "nope.png")


@pytest.mark.parametrize("array, expected", [
    (np.array([[0, 10], [20, 40]], dtype=np.uint16), [[0, 64], [128, 255]]),
    (np.array([[-1.0, 0.0], [1.0, 1.0]]), [[0, 128], [255, 255]]),
    (np.array([[7, 7], [7, 7]], dtype=np.int32), [[0, 0], [0, 0]]),
    (np.array([[True, False]]), [[255, 0]]),
    (np.array([[[255, 255, 255], [0, 0, 0]]], dtype=np.uint8), [[255, 0]]),
    (np.array([[[5], [9]]], dtype=np.uint8), [[5, 9]]),
])
def test_decode_gray_array_maps_any_dtype_to_uint8(array, expected):
    out = decode_gray_array(array)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 2, 2)), r"expected a 2-D image or H x W x 1/3/4 array, got shape \(2, 2, 2\)"),
    (np.array([[1.0, np.nan]]), r"NaN or infinite"),
    (np.array([["a", "b"]]), r"expected a numeric pixel array, got dtype <U1"),
])
def test_decode_gray_array_rejects_unusable_arrays(array, message):
    with pytest.raises(ValueError, match=message):
        decode_gray_array(array)


@pytest.mark.parametrize("width, height, size, expected", [
    (200, 100, 64, Letterbox(scale=0.32, pad_x=0, pad_y=16, new_w=64, new_h=32, size=64)),
    (100, 200, 64, Letterbox(scale=0.32, pad_x=16, pad_y=0, new_w=32, new_h=64, size=64)),
    (50, 50, 100, Letterbox(scale=2.0, pad_x=0, pad_y=0, new_w=100, new_h=100, size=100)),
    (1000, 3, 10, Letterbox(scale=0.01, pad_x=0, pad_y=4, new_w=10, new_h=1, size=10)),
])
def test_letterbox_geometry_keeps_aspect_and_centres(width, height, size, expected):
    assert letterbox_geometry(width, height, size) == expected


@pytest.mark.parametrize("args, message", [((0, 10, 8), r"width and height must be >= 1"),
                                           ((10, 10, 0), r"letterbox size must be >= 1 px, got 0")])
def test_letterbox_geometry_rejects_empty_sizes(args, message):
    with pytest.raises(ValueError, match=message):
        letterbox_geometry(*args)


def test_letterbox_places_content_in_the_middle_with_zero_padding():
    gray = np.full((50, 100), 200, dtype=np.uint8)
    out, geom = letterbox(gray, 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert (geom.pad_y, geom.new_h) == (16, 32)
    assert out[:16].max() == 0 and out[48:].max() == 0 and out[16:48].min() == 200


def test_a_point_maps_to_letterbox_and_back():
    gray = np.zeros((300, 200), dtype=np.uint8)
    gray[150:153, 40:43] = 255  # a 3 px dot centred at (x=41, y=151)
    out, geom = letterbox(gray, 100)
    (x,), (y,) = polygons_to_letterbox([np.array([[41.0, 151.0]])], geom)[0].T
    ys, xs = np.nonzero(out)
    assert abs(xs.mean() - x) < 1 and abs(ys.mean() - y) < 1
    back = to_original(out.astype(np.float32), geom, 200, 300)
    yb, xb = np.unravel_index(np.argmax(back), back.shape)
    assert abs(xb - 41) <= 2 and abs(yb - 151) <= 2


def test_a_mask_rasterised_in_letterbox_maps_back_onto_the_original_mask():
    width, height = 300, 180
    polygon = np.array([[60.0, 40.0], [200.0, 50.0], [180.0, 150.0], [80.0, 130.0]])
    truth = rasterize_polygons([polygon], width, height)
    geom = letterbox_geometry(width, height, 128)  # 1 prepared px = 2.3 original px
    small = rasterize_polygons(polygons_to_letterbox([polygon], geom), 128, 128)
    back = to_original(small, geom, width, height)
    assert back.shape == (height, width) and back.dtype == np.uint8 and set(np.unique(back)) == {0, 1}
    iou = (back & truth).sum() / (back | truth).sum()
    assert iou > 0.95


def test_to_original_keeps_dtypes_and_rejects_mismatched_sizes():
    geom = letterbox_geometry(40, 20, 16)
    assert to_original(np.ones((16, 16), dtype=bool), geom, 40, 20).dtype == np.bool_
    heat = to_original(np.full((16, 16, 1), 0.5, dtype=np.float16), geom, 40, 20)
    assert heat.shape == (20, 40, 1) and heat.dtype == np.float16 and np.allclose(heat, 0.5)
    with pytest.raises(ValueError, match=r"array shape \(8, 8\) does not match the letterbox size 16"):
        to_original(np.zeros((8, 8)), geom, 40, 20)


# 300 x 200 at 32 px: scale 32/300, content 32 x round(21.33) = 21 rows, pad_y (32 - 21) // 2 = 5, pad_x 0.
# Per axis a content column spans 300/32 = 9.375 original columns and a content row 200/21 = 9.524 rows.
# Portrait 200 x 300 is the same turned: content 21 columns from pad_x 5, 32 rows.
BOXES = {
    "inside": ((300, 200), (8, 10, 16, 20), (75, 47, 150, 143)),  # x 8*9.375, 16*9.375; y floor(5*9.524)=47.6->47,
    #                                                               ceil(15*9.524)=142.9->143
    "whole content": ((300, 200), (0, 5, 32, 26), (0, 0, 300, 200)),
    "one pixel": ((300, 200), (31, 25, 32, 26), (290, 190, 300, 200)),  # floor(290.6), floor(190.5)
    "reaching into the padding": ((300, 200), (4, 2, 6, 7), (37, 0, 57, 20)),  # y: (2-5) clipped to 0; ceil(19.05)
    "portrait": ((200, 300), (5, 8, 10, 16), (0, 75, 48, 150)),  # x: 0, ceil(5 * 9.524) = 48
    "wholly in the padding": ((300, 200), (0, 0, 32, 5), None),
}


@pytest.mark.parametrize("size,box,expected", BOXES.values(), ids=BOXES.keys())
def test_a_letterboxed_box_maps_to_the_original_pixels_it_covers(size, box, expected):
    width, height = size
    assert box_to_original(box, letterbox_geometry(width, height, 32), width, height) == expected


def test_a_box_maps_to_the_area_to_original_maps_it_to():
    """The box of a block mask after :func:`to_original` is the mapped box: one geometry for boxes and arrays."""
    geom = letterbox_geometry(300, 200, 32)
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[10:20, 8:16] = 1
    rows, cols = np.nonzero(to_original(mask, geom, 300, 200))
    inner = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    outer = box_to_original((8, 10, 16, 20), geom, 300, 200)
    # nearest-neighbour keeps original pixels whose centre falls in the box: at most one pixel inside each edge
    assert all(abs(a - b) <= 1 for a, b in zip(inner, outer)) and outer[0] <= inner[0] and outer[2] >= inner[2]


def test_an_empty_box_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"box \(4, 4, 4, 8\): expected x0 < x1 and y0 < y1"):
        box_to_original((4, 4, 4, 8), letterbox_geometry(300, 200, 32), 300, 200)


def test_rasterize_polygons_fills_pixel_centres_inclusively_and_unions():
    square = np.array([[2.0, 2.0], [5.0, 2.0], [5.0, 5.0], [2.0, 5.0]])
    mask = rasterize_polygons([square], 10, 8)
    assert mask.shape == (8, 10) and mask.sum() == 16 and mask[2:6, 2:6].all()
    other = square + [3.0, 0.0]
    assert rasterize_polygons([square, other], 10, 8).sum() == 28  # 16 + 16 - 4 overlapping pixels
    assert rasterize_polygons([], 10, 8).sum() == 0


def test_rasterize_polygons_marks_a_lesion_smaller_than_a_pixel():
    tiny = np.array([[3.1, 3.1], [3.3, 3.1], [3.2, 3.3]])
    assert rasterize_polygons([tiny], 8, 8).sum() >= 1


# --- JPEG draft (DCT-domain) decoding for prepare ------------------------------------------------------------


def _smooth_jpeg(path: Path, width: int, height: int, *, orientation: int | None = None) -> Path:
    yy, xx = np.mgrid[0:height, 0:width]
    array = (127 + 100 * np.sin(xx / 37.0) * np.cos(yy / 23.0)).astype(np.uint8)
    im = Image.fromarray(array)
    exif = im.getexif()
    if orientation:
        exif[0x0112] = orientation
    im.save(path, format="JPEG", quality=92, exif=exif)
    return path


@pytest.mark.parametrize(("width", "height", "orientation", "decoded"), [
    (400, 300, None, (75, 100)),  # 1/4 scale: 100x75 >= the 64x48 content
    (400, 300, 6, (100, 75)),  # EXIF-rotated: geometry of the displayed 300x400 image
    (60, 50, None, (50, 60)),  # smaller than 2x the letterbox: no draft, full decode
])
def test_draft_decoding_stays_at_least_the_letterbox_size_and_matches_a_full_decode(tmp_path, width, height,
                                                                                   orientation, decoded):
    path = _smooth_jpeg(tmp_path / "x.jpg", width, height, orientation=orientation)
    gray, mode, original = decode_for_letterbox(path, 64)
    full = decode_gray(path)
    assert mode == "L" and original == (full.shape[1], full.shape[0]) and gray.shape == decoded
    boxed, geom = letterbox(gray, 64, original_size=original)
    reference, ref_geom = letterbox(full, 64)
    assert geom == ref_geom  # the geometry (and so every mask / heatmap mapping) is the full file's
    # Never decoded below the letterbox content (unless the file itself is smaller: then it is upscaled).
    assert gray.shape[0] >= min(geom.new_h, full.shape[0]) and gray.shape[1] >= min(geom.new_w, full.shape[1])
    assert np.abs(boxed.astype(int) - reference).mean() < 1.0  # DCT-domain scaling: sub-grey-level on average


def test_draft_decoding_matches_a_full_decode_on_every_btxrd_mini_original(btxrd_mini):
    for path in sorted((btxrd_mini / "images").iterdir()):
        gray, _, original = decode_for_letterbox(path, 160)
        boxed, geom = letterbox(gray, 160, original_size=original)
        reference, ref_geom = letterbox(decode_gray(path), 160)
        assert geom == ref_geom, path.name
        assert np.abs(boxed.astype(int) - reference).mean() < 2.0, path.name
