"""Grad-CAM gallery: the most confident true positives, false positives and false negatives per class.

Fixed output set (a DVC ``out`` must not change shape with the data): one ``<Class>_<outcome>.png`` per
class and outcome plus ``overview.png``; an empty category gets a figure that says "no cases".
Confidence is the probability of the *predicted* class, so FP and FN figures show the most confident
mistakes. Every figure carries the NOT FOR CLINICAL USE disclaimer.

Also the per-image overlay of ``assurexray infer --gradcam`` and the web app (:func:`render_overlay`,
:func:`render_original`): the heatmap mapped back onto the original radiograph under a disclaimer banner.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from assurexray import DISCLAIMER
from assurexray.core.atomic import atomic_dir, atomic_path
from assurexray.core.project import VARIANT_TITLES
from assurexray.data.imaging import letterbox_geometry

logger = logging.getLogger(__name__)

__all__ = ["OUTCOMES", "Panel", "gallery_keys", "gallery_files", "select_cases", "write_gallery",
           "render_overlay", "render_original", "write_overlay", "LESION_MAP_TITLE", "render_lesion_overlay",
           "write_lesion_overlay"]

OUTCOMES: tuple[str, ...] = ("tp", "fp", "fn")
_OUTCOME_TITLES = {"tp": "true positives", "fp": "false positives", "fn": "false negatives"}
_STAMP = "NOT FOR CLINICAL USE"  # on every figure and overlay
_OVERLAY_MAX_SIDE = 1024  # long side of Grad-CAM overlays at most, px (originals can be 4000+ px)
#: Decode size that loses nothing an overlay shows (a reduced JPEG decode of at least this letterbox).
OVERLAY_DECODE_SIZE = _OVERLAY_MAX_SIDE
_OVERLAY_MIN_SIDE = 256  # ... and at least, px, so the banner text stays readable on small inputs
_CMAP = "jet"  # Grad-CAM colour map of the overlays and their colour bar
#: Caption font size, pt: at the figures' 100 dpi about 12 px, readable at 100% zoom; captions are kept short
#: (image id, true -> predicted, probabilities by class initial) so three lines fit a panel's width.
_CAPTION_PT = 9
#: The title every lesion-map overlay carries, above its caption: no lesion map is drawn without it.
LESION_MAP_TITLE = "lesion map: model's estimate, research only, NOT FOR CLINICAL USE"
_GRADCAM_BAR = ("heatmap: low", "high (per-image max)")  # Grad-CAM is min-max scaled per image: relative
_LESION_BAR = ("lesion probability: 0", "1")  # the lesion map is a probability: absolute
_BOX_COLOUR = (255, 255, 255)  # the lesion box outline, white on the jet colours


@dataclass(frozen=True)
class Panel:
    """One gallery case in the prepared geometry: image (S, S) uint8, heatmap (S, S) in [0, 1], mask or None."""

    image_id: str
    image: np.ndarray
    heatmap: np.ndarray
    mask: np.ndarray | None
    true_class: str
    pred_class: str
    probs: dict[str, float]
    lesion_map: np.ndarray | None = None  # (S, S) lesion probability of a model with a lesion head


def gallery_keys(class_names: Sequence[str]) -> list[str]:
    """``<Class>_<outcome>`` for every class and outcome, in a fixed order."""
    return [f"{c}_{o}" for c in class_names for o in OUTCOMES]


def gallery_files(class_names: Sequence[str]) -> list[str]:
    """The fixed file names written by ``write_gallery``."""
    return [f"{k}.png" for k in gallery_keys(class_names)] + ["overview.png"]


def select_cases(
    predictions: pd.DataFrame, *, class_names: Sequence[str], top_k: int
) -> dict[str, pd.DataFrame]:
    """Top-``top_k`` rows per ``<Class>_<outcome>`` by confidence in the predicted class (ties: image_id).

    TP: true c, predicted c. FP: predicted c, true another class. FN: true c, predicted another class.
    """
    if top_k < 1:
        raise ValueError(f"explain.gallery_top_k must be >= 1, got {top_k!r}.")
    missing = [c for c in ("image_id", "label", "pred", *[f"prob_{c}" for c in class_names])
               if c not in predictions.columns]
    if missing:
        raise ValueError(f"select_cases: predictions lack column(s) {missing}; pass evaluate's predictions.csv rows.")
    probs = predictions[[f"prob_{c}" for c in class_names]].to_numpy(dtype=np.float64)
    known = {c: i for i, c in enumerate(class_names)}
    bad = sorted(set(predictions["pred"]) - set(known))
    if bad:
        raise ValueError(f"select_cases: predicted classes {bad} are not in class_names {list(class_names)}.")
    pred_pos = predictions["pred"].map(known).to_numpy(dtype=np.int64)
    ranked = predictions.assign(_confidence=probs[np.arange(len(predictions)), pred_pos])
    ranked = ranked.sort_values("image_id").sort_values("_confidence", ascending=False, kind="stable")
    out: dict[str, pd.DataFrame] = {}
    for c in class_names:
        true_c, pred_c = ranked["label"] == c, ranked["pred"] == c
        for outcome, keep in (("tp", true_c & pred_c), ("fp", pred_c & ~true_c), ("fn", true_c & ~pred_c)):
            out[f"{c}_{outcome}"] = ranked[keep].head(top_k).drop(columns="_confidence").reset_index(drop=True)
    return out


def write_gallery(
    figures_dir: str | os.PathLike,
    panels: Mapping[str, Sequence[Panel]],
    *,
    class_names: Sequence[str],
    dpi: int = 100,
    variant: str | None = None,
) -> list[Path]:
    """Write every ``<Class>_<outcome>.png`` and ``overview.png`` into ``figures_dir`` (replaced atomically).

    ``variant`` (the split key, e.g. ``center``) starts every title in words ("Centre hold-out: "), so a figure
    shown alone names its model.
    """
    prefix = f"{VARIANT_TITLES.get(variant, variant)}: " if variant else ""
    keys = gallery_keys(class_names)
    unknown = sorted(set(panels) - set(keys))
    if unknown:
        raise ValueError(f"write_gallery: unknown panel keys {unknown}; expected some of {keys}.")
    with atomic_dir(figures_dir) as tmp:
        for key in keys:
            cls, outcome = key.rsplit("_", 1)
            cases = list(panels.get(key, ()))
            if not cases:
                logger.info("gallery %s: no cases", key)
            fig = _category_figure(cases, title=f"{prefix}{cls}: {_OUTCOME_TITLES[outcome]} (most confident first)")
            fig.savefig(tmp / f"{key}.png", dpi=dpi)
        _overview_figure(panels, class_names, prefix=prefix).savefig(tmp / "overview.png", dpi=dpi)
    return [Path(figures_dir) / name for name in gallery_files(class_names)]


def _category_figure(cases: Sequence[Panel], *, title: str) -> Figure:
    """One column per case: the radiograph, the lesion map (models with a lesion head) and the Grad-CAM
    overlay, one above the other, with the radiologists' lesion outline on each."""
    n = max(1, len(cases))
    lesion = any(panel.lesion_map is not None for panel in cases)
    rows = 3 if lesion else 2
    fig = Figure(figsize=(max(6.5, 2.6 * n), 3.0 * rows), layout="constrained")
    fig.suptitle(f"{title}\n{_initials_key(cases)}{DISCLAIMER}", fontsize=10)
    if not cases:
        ax = fig.add_subplot(1, 1, 1)
        _empty(ax)
        return fig
    axes = fig.subplots(rows, n, squeeze=False)
    for j, panel in enumerate(cases):
        _draw(axes[0, j], panel, heat=None)
        if lesion:
            _draw(axes[1, j], panel, heat=panel.lesion_map, label="lesion map (model's estimate)")
        _draw(axes[-1, j], panel, heat=panel.heatmap, label="Grad-CAM")
        axes[0, j].set_title(_caption(panel), fontsize=_CAPTION_PT)
    if lesion:
        _colour_bar(fig, axes[1, :], label="lesion map: probability of lesion")
    _colour_bar(fig, axes[-1, :])
    return fig


def _overview_figure(panels: Mapping[str, Sequence[Panel]], class_names: Sequence[str], *, prefix: str = "") -> Figure:
    """Classes x outcomes grid of each category's most confident case (overlay)."""
    fig = Figure(figsize=(2.8 * len(OUTCOMES) + 0.8, 3.0 * len(class_names)), layout="constrained")
    shown = [cases[0] for cases in panels.values() if cases]
    fig.suptitle(f"{prefix}Grad-CAM overview: most confident case per class and outcome\n{_initials_key(shown)}"
                 f"{DISCLAIMER}", fontsize=10)
    axes = fig.subplots(len(class_names), len(OUTCOMES), squeeze=False)
    for i, cls in enumerate(class_names):
        for j, outcome in enumerate(OUTCOMES):
            ax, cases = axes[i, j], list(panels.get(f"{cls}_{outcome}", ()))
            if cases:
                _draw(ax, cases[0], heat=cases[0].heatmap)
                ax.set_title(f"{cls} {outcome.upper()}\n{_caption(cases[0])}", fontsize=_CAPTION_PT)
            else:
                _empty(ax, title=f"{cls} {outcome.upper()}")
    _colour_bar(fig, axes)
    return fig


def _colour_bar(fig: Figure, axes, *, label: str = "Grad-CAM (min-max scaled per image)") -> None:
    """The map's scale beside the overlays: Grad-CAM's is relative (each map is min-max scaled per image), the
    lesion map's an absolute probability."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap=_CMAP), ax=axes, shrink=0.8, fraction=0.05)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)


def _draw(ax, panel: Panel, *, heat: np.ndarray | None, label: str | None = None) -> None:
    ax.imshow(panel.image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if heat is not None:
        ax.imshow(heat, cmap=_CMAP, vmin=0.0, vmax=1.0, alpha=0.45, interpolation="bilinear")
    if label:
        ax.text(0.02, 0.98, label, transform=ax.transAxes, fontsize=6, color="white", va="top")
    if panel.mask is not None and np.any(panel.mask):
        ax.contour(np.asarray(panel.mask, dtype=np.float32), levels=[0.5], colors="lime", linewidths=1.0)
    ax.text(0.02, 0.02, _STAMP, transform=ax.transAxes, fontsize=5, color="yellow", va="bottom")
    ax.set_axis_off()


def _caption(panel: Panel) -> str:
    """Three short lines: image id, true -> predicted class, each class's probability by its initial (the
    figure's title gives the key), short enough for a panel's width at :data:`_CAPTION_PT`."""
    short = _short_names(list(panel.probs))
    probs = "  ".join(f"{short[c]} {p:.2f}" for c, p in panel.probs.items())
    return f"{panel.image_id}\ntrue {panel.true_class} \u2192 pred {panel.pred_class}\n{probs}"


def _short_names(class_names: Sequence[str]) -> dict[str, str]:
    """Each class by its initial where the initials are distinct (N, B, M), else by its full name."""
    initials = [c[:1].upper() for c in class_names]
    distinct = len(set(initials)) == len(initials)
    return {c: (i if distinct else c) for c, i in zip(class_names, initials)}


def _initials_key(cases: Sequence[Panel]) -> str:
    """``probabilities: N = Normal, ...`` (with a line break) for the title, or "" when nothing is abbreviated."""
    if not cases:
        return ""
    short = _short_names(list(cases[0].probs))
    if all(s == c for c, s in short.items()):
        return ""
    return "probabilities: " + ", ".join(f"{s} = {c}" for c, s in short.items()) + "\n"


def _empty(ax, *, title: str | None = None) -> None:
    ax.text(0.5, 0.5, "no cases", ha="center", va="center", fontsize=12, transform=ax.transAxes)
    if title:
        ax.set_title(title, fontsize=7)
    ax.set_axis_off()


# --- per-image overlays (assurexray infer --gradcam, the web app) ------------------------------------------


def write_overlay(path: Path, gray: np.ndarray, heat: np.ndarray, *, caption: str,
                  original_size: tuple[int, int] | None = None) -> Path:
    """Write :func:`render_overlay` as a PNG, atomically."""
    return _write_png(path, render_overlay(gray, heat, caption=caption, original_size=original_size))


def render_overlay(gray: np.ndarray, heat: np.ndarray, *, caption: str,
                   original_size: tuple[int, int] | None = None) -> np.ndarray:
    """Blend the (S, S) letterboxed heatmap onto the original radiograph, under a banner: the disclaimer,
    ``caption``, and a colour bar (the heatmap is min-max scaled per image, so its scale is relative).
    The long side is scaled into [256, 1024] px so text stays legible. Returns uint8 RGB (H, W, 3).
    ``original_size`` (width, height): the file's full size when ``gray`` is a reduced decode (at least
    :data:`OVERLAY_DECODE_SIZE` px is all the canvas shows); geometry and canvas follow it."""
    image, _ = _blend(gray, heat, original_size)
    return _under_banner(image, [caption], bar=_GRADCAM_BAR)


def write_lesion_overlay(path: Path, gray: np.ndarray, lesion_map: np.ndarray, *, caption: str,
                         box: tuple[int, int, int, int] | None = None,
                         original_size: tuple[int, int] | None = None) -> Path:
    """Write :func:`render_lesion_overlay` as a PNG, atomically."""
    return _write_png(path, render_lesion_overlay(gray, lesion_map, caption=caption, box=box,
                                                  original_size=original_size))


def render_lesion_overlay(gray: np.ndarray, lesion_map: np.ndarray, *, caption: str,
                          box: tuple[int, int, int, int] | None = None,
                          original_size: tuple[int, int] | None = None) -> np.ndarray:
    """:func:`render_overlay` for a lesion probability map (S, S): under the disclaimer always the title
    :data:`LESION_MAP_TITLE`, then ``caption`` (score, box), and an absolute colour bar (0 to 1, not rescaled per
    image); ``box`` (x0, y0, x1, y1 in original pixels, x1/y1 exclusive) is outlined on the radiograph."""
    from PIL import ImageDraw

    image, width = _blend(gray, lesion_map, original_size)
    if box is not None:
        k = image.size[0] / width  # display px per original px (the aspect is kept)
        x0, y0, x1, y1 = box
        outline = (round(x0 * k), round(y0 * k), max(round(x0 * k), round(x1 * k) - 1),
                   max(round(y0 * k), round(y1 * k) - 1))  # PIL includes the right/bottom edge
        ImageDraw.Draw(image).rectangle(outline, outline=_BOX_COLOUR, width=max(1, image.size[0] // 256))
    return _under_banner(image, [LESION_MAP_TITLE, caption], bar=_LESION_BAR, wrap=True)  # the title in full


def render_original(gray: np.ndarray, *, caption: str) -> np.ndarray:
    """The radiograph alone on the canvas :func:`render_overlay` draws (same size, same banner), so the two
    can be shown side by side at the same scale. Returns uint8 RGB (H, W, 3)."""
    height, width = gray.shape
    image = Image.fromarray(gray).resize(_display_size(width, height), Image.Resampling.BILINEAR).convert("RGB")
    return _under_banner(image, [caption], bar=None)


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return path


def _blend(gray: np.ndarray, heat: np.ndarray, original_size: tuple[int, int] | None) -> tuple[Image.Image, int]:
    """The (S, S) letterboxed ``heat`` (in [0, 1]) blended in colour onto the radiograph at display size, and the
    original width (the display's scale is ``image.size[0] / width``)."""
    from matplotlib import colormaps

    width, height = original_size or (gray.shape[1], gray.shape[0])
    geom = letterbox_geometry(width, height, heat.shape[0])
    crop = np.ascontiguousarray(heat[geom.pad_y:geom.pad_y + geom.new_h, geom.pad_x:geom.pad_x + geom.new_w],
                                dtype=np.float32)
    size = _display_size(width, height)
    base = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    heat_big = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR))
    colour = colormaps[_CMAP](np.clip(heat_big, 0.0, 1.0))[..., :3]  # (H, W, 3) RGB in [0, 1]
    blend = 0.6 * base[..., None] + 0.4 * colour
    return Image.fromarray(np.clip(np.rint(blend * 255), 0, 255).astype(np.uint8)), width


def _display_size(width: int, height: int) -> tuple[int, int]:
    long_side = min(_OVERLAY_MAX_SIDE, max(_OVERLAY_MIN_SIDE, width, height))
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _under_banner(image: Image.Image, captions: Sequence[str], *, bar: tuple[str, str] | None,
                  wrap: bool = False) -> np.ndarray:
    """``image`` under the banner: the disclaimer, the ``captions`` (one row each; with ``wrap`` word-wrapped
    where even the smallest font is too wide, else cut at the edge), then a colour bar between ``bar``'s low and
    high labels (None: a note that there is no heatmap), the font sized so the disclaimer fits the width.
    Without ``wrap`` the banner's height depends on the width only, so an original and its Grad-CAM overlay
    stay the same size side by side whatever their captions."""
    from matplotlib import colormaps
    from PIL import ImageDraw, ImageFont

    width = image.size[0]
    third = "original (no heatmap)" if bar is None else bar[0]
    font_px = max(8, width // 24)
    font = ImageFont.load_default(size=font_px)
    while font_px > 8 and max(font.getlength(line) for line in [_STAMP, *captions]) > width - 8:
        font_px -= 1  # shrink until the disclaimer fits the width
        font = ImageFont.load_default(size=font_px)
    lines = [_STAMP, *(row for caption in captions
                       for row in (_wrapped(caption, font, width - 8) if wrap else [caption]))]
    line_h = font_px + 4
    top = (len(lines) + 1) * line_h + 4
    canvas = Image.new("RGB", (width, image.size[1] + top), (0, 0, 0))
    canvas.paste(image, (0, top))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, 2 + i * line_h), line, fill=(255, 255, 0), font=font)
    y = 2 + len(lines) * line_h
    draw.text((4, y), third, fill=(255, 255, 0), font=font)
    if bar is not None:
        high = bar[1]
        left = 8 + int(font.getlength(third))
        right = width - 8 - int(font.getlength(high))
        if right - left > 8:
            ramp = colormaps[_CMAP](np.linspace(0.0, 1.0, right - left))[:, :3]  # (w, 3)
            strip = np.repeat((ramp * 255).astype(np.uint8)[None], max(2, font_px - 2), axis=0)
            canvas.paste(Image.fromarray(strip), (left, y + 2))
        draw.text((max(left, right) + 4, y), high, fill=(255, 255, 0), font=font)
    return np.asarray(canvas)


def _wrapped(text: str, font, width: int) -> list[str]:
    """``text`` as rows no wider than ``width`` px (greedy, at spaces; a single long word keeps its row)."""
    rows: list[str] = []
    for word in text.split(" "):
        if rows and font.getlength(f"{rows[-1]} {word}") <= width:
            rows[-1] = f"{rows[-1]} {word}"
        else:
            rows.append(word)
    return rows or [""]
