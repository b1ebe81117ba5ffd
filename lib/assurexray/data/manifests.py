"""The one validated reader of the prepared cache and the split manifests, for every stage after prepare.

``data/prepared`` holds ``images.npy``/``masks.npy`` (N, S, S) uint8, ``index.csv`` (row i describes image i) and
``meta.json``; ``data/splits/V/<partition>.csv`` are rows of index.csv. Split, train, evaluate and explain read
them here, so text columns stay text everywhere (an empty ``case_id`` is ``""``, a ``phash`` keeps its leading
zeros) and a stale or foreign file fails with one message naming it and the stage to re-run. Kept free of the
prepare stage's imports (assurexray.data.cache builds the cache) so these stages do not depend on decoding code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

__all__ = ["INDEX_COLUMNS", "TEXT_COLUMNS", "read_index", "read_meta", "open_images", "read_split"]

#: Columns of ``index.csv``, in order (split CSVs carry the same columns plus ``partition``, ``moved``).
INDEX_COLUMNS: tuple[str, ...] = (
    "row", "image_id", "label", "label_idx", "center", "case_id", "group", "view", "has_mask",
    "orig_width", "orig_height", "orig_mode", "scale", "pad_x", "pad_y", "phash", "dup_of",
)
#: Columns read back as text (an empty case_id/dup_of must stay "", a phash must keep leading zeros).
TEXT_COLUMNS: tuple[str, ...] = ("image_id", "label", "case_id", "group", "view", "orig_mode", "phash", "dup_of")


def read_index(path: str | os.PathLike) -> pd.DataFrame:
    """Read an index.csv (or a split CSV with its columns), keeping text columns as text."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: index not found; run `dvc repro prepare` first.")
    header = pd.read_csv(path, nrows=0).columns
    dtypes = {c: str for c in TEXT_COLUMNS if c in header}
    return pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values={})


def read_meta(prepared_dir: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of the prepared cache; it must name the ``class_names`` in order."""
    path = Path(prepared_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the prepare stage (dvc repro prepare).")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if "class_names" not in meta:
        raise ValueError(f"{path}: no 'class_names'; rerun the prepare stage.")
    return meta


def open_images(
    prepared_dir: str | os.PathLike, *, masks: bool | None = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """``images.npy`` and ``masks.npy`` memory-mapped read-only, both (N, S, S).

    ``masks``: True = required, None = read when present (else None), False = not read.
    """
    prepared_dir = Path(prepared_dir)
    images_path, masks_path = prepared_dir / "images.npy", prepared_dir / "masks.npy"
    for path in (images_path, masks_path) if masks else (images_path,):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run the prepare stage (dvc repro prepare).")
    images = np.load(images_path, mmap_mode="r")
    mask_array = None
    if masks or (masks is None and masks_path.is_file()):
        mask_array = np.load(masks_path, mmap_mode="r")
    if images.ndim != 3 or images.shape[1] != images.shape[2] or (
            mask_array is not None and mask_array.shape != images.shape):
        shapes = f"images.npy {images.shape}" + ("" if mask_array is None else f" and masks.npy {mask_array.shape}")
        raise ValueError(f"{prepared_dir}: {shapes} must share one (N, S, S) shape; re-run the prepare stage.")
    return images, mask_array


def read_split(
    split_dir: str | os.PathLike, partition: str, *, n_images: int, columns: Sequence[str] = ("row",)
) -> pd.DataFrame:
    """Rows of ``split_dir/<partition>.csv`` (text columns as text), checked: the file exists, holds
    ``columns`` and at least one row, and every ``row`` indexes the cache of ``n_images`` images."""
    path = Path(split_dir) / f"{partition}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the prepare and split stages (dvc repro split).")
    frame = read_index(path)
    missing = [c for c in dict.fromkeys(["row", *columns]) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}. Expected the "
                         "index.csv columns: re-run the split stage.")
    if frame.empty:
        raise ValueError(f"{path}: no rows; the {partition} partition must hold at least one image.")
    rows = frame["row"].to_numpy()
    bad = (rows < 0) | (rows >= n_images)
    if bad.any():
        raise ValueError(
            f"{path} line {int(np.argmax(bad)) + 2}: row {int(rows[bad][0])!r} is outside images.npy "
            f"(0..{n_images - 1}); the split does not belong to this prepared cache: re-run split after prepare."
        )
    return frame
