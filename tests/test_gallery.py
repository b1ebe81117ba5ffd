"""Gallery case selection and the fixed set of figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

from assurexray.assessment import gallery

CLASSES = ["Normal", "Benign", "Malignant"]


def _predictions(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    """(image_id, label, pred, confidence in pred); the rest of the mass split over the other classes."""
    records = []
    for image_id, label, pred, conf in rows:
        probs = {f"prob_{c}": (conf if c == pred else (1 - conf) / 2) for c in CLASSES}
        records.append({"image_id": image_id, "label": label, "pred": pred, **probs})
    return pd.DataFrame(records)


def _panel(image_id: str = "IMG1", *, with_mask: bool = True) -> gallery.Panel:
    image = np.zeros((32, 32), np.uint8)
    image[8:24, 8:24] = 200
    mask = np.zeros((32, 32), np.uint8)
    mask[10:20, 10:20] = 1
    heatmap = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    return gallery.Panel(image_id=image_id, image=image, heatmap=heatmap, mask=mask if with_mask else None,
                         true_class="Malignant", pred_class="Benign",
                         probs={"Normal": 0.1, "Benign": 0.6, "Malignant": 0.3})


def test_cases_are_split_into_tp_fp_fn_and_ranked_by_confidence_in_the_prediction():
    preds = _predictions([
        ("a", "Malignant", "Malignant", 0.6), ("b", "Malignant", "Malignant", 0.9),
        ("c", "Benign", "Malignant", 0.7), ("d", "Malignant", "Benign", 0.8), ("e", "Malignant", "Normal", 0.95),
        ("f", "Normal", "Normal", 0.5),
    ])
    chosen = gallery.select_cases(preds, class_names=CLASSES, top_k=4)
    assert set(chosen) == set(gallery.gallery_keys(CLASSES))
    assert list(chosen["Malignant_tp"]["image_id"]) == ["b", "a"]
    assert list(chosen["Malignant_fp"]["image_id"]) == ["c"]
    assert list(chosen["Malignant_fn"]["image_id"]) == ["e", "d"]
    assert list(chosen["Benign_fp"]["image_id"]) == ["d"]
    assert list(chosen["Normal_tp"]["image_id"]) == ["f"]
    assert chosen["Benign_tp"].empty


def test_top_k_is_honoured_and_ties_break_by_image_id():
    preds = _predictions([(i, "Normal", "Normal", 0.7) for i in ("z", "y", "x")])
    assert list(gallery.select_cases(preds, class_names=CLASSES, top_k=2)["Normal_tp"]["image_id"]) == ["x", "y"]


@pytest.mark.parametrize(
    ("preds", "top_k", "message"),
    [
        (_predictions([("a", "Normal", "Normal", 0.5)]), 0, "gallery_top_k must be >= 1, got 0"),
        (_predictions([("a", "Normal", "Normal", 0.5)]).drop(columns="prob_Benign"), 2,
         r"lack column\(s\) \['prob_Benign'\]"),
        (_predictions([("a", "Normal", "Normal", 0.5)]).assign(pred="Cyst"), 2,
         r"predicted classes \['Cyst'\] are not in class_names"),
    ],
)
def test_bad_selection_inputs_are_refused(preds, top_k, message):
    with pytest.raises(ValueError, match=message):
        gallery.select_cases(preds, class_names=CLASSES, top_k=top_k)


def test_the_gallery_always_writes_the_fixed_file_set_and_replaces_the_directory(tmp_path):
    out = tmp_path / "gradcam"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old")
    panels = {"Malignant_fn": [_panel("IMG1"), _panel("IMG2", with_mask=False)]}  # every other category empty
    written = gallery.write_gallery(out, panels, class_names=CLASSES)
    expected = sorted(gallery.gallery_files(CLASSES))
    assert sorted(p.name for p in out.iterdir()) == expected
    assert sorted(p.name for p in written) == expected
    assert len(expected) == 3 * 3 + 1
    for name in ("Malignant_fn.png", "Benign_tp.png", "overview.png"):
        pixels = mpimg.imread(out / name)
        assert pixels.ndim == 3 and pixels.shape[0] > 100


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(match=Text)]


def test_every_figure_carries_the_disclaimer_and_empty_ones_say_no_cases():
    full = gallery._category_figure([_panel()], title="Malignant: false negatives")
    empty = gallery._category_figure([], title="Benign: true positives")
    overview = gallery._overview_figure({"Malignant_fn": [_panel()]}, CLASSES)
    for fig in (full, empty, overview):
        assert any("NOT FOR CLINICAL USE" in t for t in _texts(fig))
    assert "no cases" in _texts(empty)
    assert _texts(overview).count("no cases") == 8


def test_a_panel_caption_names_true_and_predicted_class_and_all_probabilities():
    caption = gallery._caption(_panel("IMG000046.jpeg"))
    assert "IMG000046.jpeg" in caption and "true Malignant" in caption and "pred Benign" in caption
    assert all(f"{c} {p:.2f}" in caption for c, p in {"N": 0.1, "B": 0.6, "M": 0.3}.items())
    fig = gallery._category_figure([_panel()], title="Malignant: false negatives")
    assert "probabilities: N = Normal, B = Benign, M = Malignant" in fig._suptitle.get_text()  # the key


def test_classes_sharing_an_initial_keep_their_full_names():
    assert gallery._short_names(["Normal", "Benign", "Malignant"]) == {"Normal": "N", "Benign": "B", "Malignant": "M"}
    assert gallery._short_names(["Benign", "Bone cyst"]) == {"Benign": "Benign", "Bone cyst": "Bone cyst"}


@pytest.mark.parametrize("figure", ["category", "overview"])
def test_captions_are_at_least_9_pt_and_fit_their_panel_so_they_read_at_100_percent_zoom(figure):
    cases = [_panel(f"IMG{k:06d}.jpeg") for k in range(3)]
    fig = (gallery._category_figure(cases, title="Malignant: false negatives") if figure == "category" else
           gallery._overview_figure({f"{c}_{o}": cases for c in CLASSES for o in gallery.OUTCOMES}, CLASSES))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(100)  # as write_gallery saves them: 1 pt = 100/72 px on screen at 100% zoom
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    titled = [ax for ax in _image_axes(fig) if ax.get_title()]
    assert titled
    for ax in titled:
        title = ax.title
        assert title.get_fontsize() >= 9
        # each caption no wider than its panel plus the gap to the next one (no overlap with a neighbour's)
        assert title.get_window_extent(renderer).width <= ax.get_window_extent(renderer).width * 1.25, ax.get_title()


def test_the_annotation_contour_is_drawn_only_where_a_mask_exists():
    with_mask = gallery._category_figure([_panel()], title="t")
    without = gallery._category_figure([_panel(with_mask=False)], title="t")
    assert all(ax.collections for ax in _image_axes(with_mask))
    assert not any(ax.collections for ax in _image_axes(without))


def _image_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_overlays_carry_a_colour_bar_and_every_title_names_the_variant(tmp_path, monkeypatch):
    saved = {}
    monkeypatch.setattr(gallery.Figure, "savefig", lambda fig, path, **_: saved.__setitem__(Path(path).name, fig))
    gallery.write_gallery(tmp_path / "g", {"Malignant_fn": [_panel()]}, class_names=CLASSES, variant="center")
    assert sorted(saved) == sorted(gallery.gallery_files(CLASSES))
    for name, fig in saved.items():
        assert fig._suptitle.get_text().startswith("Centre hold-out: "), name  # the variant in words
    bars = [ax for ax in saved["Malignant_fn.png"].axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and bars[0].get_ylabel() == "Grad-CAM (min-max scaled per image)"
    assert any(ax.get_label() == "<colorbar>" for ax in saved["overview.png"].axes)


def test_unknown_panel_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown panel keys \['Cyst_tp'\]"):
        gallery.write_gallery(tmp_path / "g", {"Cyst_tp": [_panel()]}, class_names=CLASSES)
