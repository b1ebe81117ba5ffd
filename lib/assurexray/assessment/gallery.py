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
from assurexray.data.imaging import letterbox_geometry

logger = logging.getLogger(__name__)

__all__ = ["OUTCOMES", "Panel", "gallery_keys", "gallery_files", "select_cases", "write_gallery",
           "render_overlay", "render_original", "write_overlay"]

OUTCOMES: tuple[str, ...] = ("tp", "fp", "fn")
_OUTCOME_TITLES = {"tp": "true positives", "fp": "false positives", "fn": "false negatives"}
_STAMP = "NOT FOR CLINICAL USE"  # on every figure and overlay
_OVERLAY_MAX_SIDE = 1024  # long side of Grad-CAM overlays at most, px (originals can be 4000+ px)
#: Decode size that loses nothing an overlay shows (a reduced JPEG decode of at least this letterbox).
OVERLAY_DECODE_SIZE = _OVERLAY_MAX_SIDE
_OVERLAY_MIN_SIDE = 256  # ... and at least, px, so the banner text stays readable on small inputs
_CMAP = "jet"  # Grad-CAM colour map of the overlays and their colour bar


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

    ``variant`` (the split, e.g. ``center``) starts every title, so a figure shown alone names its model.
    """
    prefix = f"{variant}: " if variant else ""
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
    """One column per case: the radiograph (top) and the heatmap overlay (bottom), contour on both."""
    n = max(1, len(cases))
    fig = Figure(figsize=(max(6.5, 2.6 * n), 6.0), layout="constrained")
    fig.suptitle(f"{title}\n{DISCLAIMER}", fontsize=9)
    if not cases:
        ax = fig.add_subplot(1, 1, 1)
        _empty(ax)
        return fig
    axes = fig.subplots(2, n, squeeze=False)
    for j, panel in enumerate(cases):
        _draw(axes[0, j], panel, overlay=False)
        _draw(axes[1, j], panel, overlay=True)
        axes[0, j].set_title(_caption(panel), fontsize=7)
    _colour_bar(fig, axes[1, :])
    return fig


def _overview_figure(panels: Mapping[str, Sequence[Panel]], class_names: Sequence[str], *, prefix: str = "") -> Figure:
    """Classes x outcomes grid of each category's most confident case (overlay)."""
    fig = Figure(figsize=(2.8 * len(OUTCOMES) + 0.8, 3.0 * len(class_names)), layout="constrained")
    fig.suptitle(f"{prefix}Grad-CAM overview: most confident case per class and outcome\n{DISCLAIMER}", fontsize=9)
    axes = fig.subplots(len(class_names), len(OUTCOMES), squeeze=False)
    for i, cls in enumerate(class_names):
        for j, outcome in enumerate(OUTCOMES):
            ax, cases = axes[i, j], list(panels.get(f"{cls}_{outcome}", ()))
            if cases:
                _draw(ax, cases[0], overlay=True)
                ax.set_title(f"{cls} {outcome.upper()}\n{_caption(cases[0])}", fontsize=7)
            else:
                _empty(ax, title=f"{cls} {outcome.upper()}")
    _colour_bar(fig, axes)
    return fig


def _colour_bar(fig: Figure, axes) -> None:
    """The heatmap's scale beside the overlays: relative, because each map is min-max scaled per image."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap=_CMAP), ax=axes, shrink=0.8, fraction=0.05)
    bar.set_label("Grad-CAM (min-max scaled per image)", fontsize=7)
    bar.ax.tick_params(labelsize=6)


def _draw(ax, panel: Panel, *, overlay: bool) -> None:
    ax.imshow(panel.image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if overlay:
        ax.imshow(panel.heatmap, cmap=_CMAP, vmin=0.0, vmax=1.0, alpha=0.45, interpolation="bilinear")
    if panel.mask is not None and np.any(panel.mask):
        ax.contour(np.asarray(panel.mask, dtype=np.float32), levels=[0.5], colors="lime", linewidths=1.0)
    ax.text(0.02, 0.02, _STAMP, transform=ax.transAxes, fontsize=5, color="yellow", va="bottom")
    ax.set_axis_off()


def _caption(panel: Panel) -> str:
    probs = ", ".join(f"{c} {p:.2f}" for c, p in panel.probs.items())
    return f"{panel.image_id}\ntrue {panel.true_class} | pred {panel.pred_class}\n{probs}"


def _empty(ax, *, title: str | None = None) -> None:
    ax.text(0.5, 0.5, "no cases", ha="center", va="center", fontsize=12, transform=ax.transAxes)
    if title:
        ax.set_title(title, fontsize=7)
    ax.set_axis_off()


# --- per-image overlays (assurexray infer --gradcam, the web app) ------------------------------------------


def write_overlay(path: Path, gray: np.ndarray, heat: np.ndarray, *, caption: str,
                  original_size: tuple[int, int] | None = None) -> Path:
    """Write :func:`render_overlay` as a PNG, atomically."""
    canvas = Image.fromarray(render_overlay(gray, heat, caption=caption, original_size=original_size))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def render_overlay(gray: np.ndarray, heat: np.ndarray, *, caption: str,
                   original_size: tuple[int, int] | None = None) -> np.ndarray:
    """Blend the (S, S) letterboxed heatmap onto the original radiograph, under a banner: the disclaimer,
    ``caption``, and a colour bar (the heatmap is min-max scaled per image, so its scale is relative).
    The long side is scaled into [256, 1024] px so text stays legible. Returns uint8 RGB (H, W, 3).
    ``original_size`` (width, height): the file's full size when ``gray`` is a reduced decode (at least
    :data:`OVERLAY_DECODE_SIZE` px is all the canvas shows); geometry and canvas follow it."""
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
    image = Image.fromarray(np.clip(np.rint(blend * 255), 0, 255).astype(np.uint8))
    return _under_banner(image, caption, colour_bar=True)


def render_original(gray: np.ndarray, *, caption: str) -> np.ndarray:
    """The radiograph alone on the canvas :func:`render_overlay` draws (same size, same banner), so the two
    can be shown side by side at the same scale. Returns uint8 RGB (H, W, 3)."""
    height, width = gray.shape
    image = Image.fromarray(gray).resize(_display_size(width, height), Image.Resampling.BILINEAR).convert("RGB")
    return _under_banner(image, caption, colour_bar=False)


def _display_size(width: int, height: int) -> tuple[int, int]:
    long_side = min(_OVERLAY_MAX_SIDE, max(_OVERLAY_MIN_SIDE, width, height))
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _under_banner(image: Image.Image, caption: str, *, colour_bar: bool) -> np.ndarray:
    """``image`` under three banner rows: the disclaimer, ``caption``, then the colour bar (or a note saying
    there is no heatmap), sized so the disclaimer fits the width."""
    from matplotlib import colormaps
    from PIL import ImageDraw, ImageFont

    width = image.size[0]
    third = "heatmap: low" if colour_bar else "original (no heatmap)"
    lines = [_STAMP, caption, third]
    font_px = max(8, width // 24)
    font = ImageFont.load_default(size=font_px)
    while font_px > 8 and max(font.getlength(line) for line in lines[:2]) > width - 8:
        font_px -= 1  # shrink until the disclaimer fits the width
        font = ImageFont.load_default(size=font_px)
    line_h = font_px + 4
    top = 3 * line_h + 4
    canvas = Image.new("RGB", (width, image.size[1] + top), (0, 0, 0))
    canvas.paste(image, (0, top))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines[:2]):
        draw.text((4, 2 + i * line_h), line, fill=(255, 255, 0), font=font)
    y = 2 + 2 * line_h
    draw.text((4, y), third, fill=(255, 255, 0), font=font)
    if colour_bar:
        high = "high (per-image max)"
        left = 8 + int(font.getlength(third))
        right = width - 8 - int(font.getlength(high))
        if right - left > 8:
            ramp = colormaps[_CMAP](np.linspace(0.0, 1.0, right - left))[:, :3]  # (w, 3)
            strip = np.repeat((ramp * 255).astype(np.uint8)[None], max(2, font_px - 2), axis=0)
            canvas.paste(Image.fromarray(strip), (left, y + 2))
        draw.text((max(left, right) + 4, y), high, fill=(255, 255, 0), font=font)
    return np.asarray(canvas)
