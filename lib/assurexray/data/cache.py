"""The prepared cache: every radiograph decoded once, letterboxed, with its lesion mask and duplicate group.

Training then reads memory-mapped uint8 arrays (thousands of images/s) instead of decoding multi-megapixel
JPEGs each epoch. Row i of ``index.csv`` describes ``images.npy[i]`` and ``masks.npy[i]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from assurexray.core.atomic import atomic_dir
from assurexray.data.annotations import read_labelme
from assurexray.data.btxrd import Release, sheet_modified
from assurexray.data.groups import PAIR_COLUMNS, group_images, perceptual_hash
from assurexray.data.imaging import decode_for_letterbox, letterbox, polygons_to_letterbox, rasterize_polygons
from assurexray.data.manifests import INDEX_COLUMNS, read_index  # re-exported: the one reader
from assurexray.core.schema import CLASS_NAMES

__all__ = ["INDEX_COLUMNS", "PrepareConfig", "PreparedCache", "build_cache", "load_cache", "read_index"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class PreparedCache:
    """A loaded cache: ``images``/``masks`` (N, S, S) uint8 (memory-mapped by default), ``index``, ``meta``."""

    root: Path
    images: np.ndarray
    masks: np.ndarray
    index: pd.DataFrame
    meta: dict[str, Any]


@dataclass(frozen=True)
class PrepareConfig:
    """The ``prepare`` section of params.yaml, passed whole to :func:`build_cache`."""

    image_px: int  # side of the square cached images, px (not "size": dvc's run cache ignores keys so named)
    near_duplicate_distance: int  # max perceptual-hash Hamming distance grouped as near duplicates
    workers: int | None  # decoding processes; None = all cores

    def __post_init__(self) -> None:
        _check_int(self.image_px, "image_px", low=8)
        _check_int(self.near_duplicate_distance, "near_duplicate_distance", low=0)
        if self.workers is not None:
            _check_int(self.workers, "workers", low=1)


def build_cache(
    release: Release,
    out_dir: str | os.PathLike,
    config: PrepareConfig,
    *,
    class_names: Sequence[str] = CLASS_NAMES,
) -> Path:
    """Decode, letterbox, rasterise and group every image of ``release``; write the cache atomically.

    ``config`` is the ``prepare`` section (checked when built): cached image side, near-duplicate distance,
    decoding processes.
    """
    size, workers = config.image_px, config.workers
    class_names = list(class_names)
    table = release.table
    unknown = sorted(set(table["label"]) - set(class_names))
    if unknown:
        raise ValueError(f"labels {unknown} are not in class_names {class_names}; fix base.class_names.")
    n = len(table)
    if n == 0:
        raise ValueError(f"{release.metadata_path}: the sheet has no image rows; nothing to prepare.")

    tasks = [
        (image_id, path, None if release.annotations.get(image_id) is None else str(release.annotations[image_id]),
         size)
        for image_id, path in zip(table["image_id"], table["path"])
    ]
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
        masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
        records = []
        for i, result in enumerate(tqdm(_run(tasks, workers), total=n, desc="prepare", unit="img")):
            image, mask, record = result
            images[i] = image
            masks[i] = mask
            records.append(record)
        images.flush()
        masks.flush()
        del images, masks

        info = pd.DataFrame(records)
        grouping = group_images(
            list(table["image_id"]), [int(h, 16) for h in info["phash"]], list(table["case_id"]),
            max_distance=config.near_duplicate_distance, digests=list(info["sha256"]),
        )
        index = pd.DataFrame({
            "row": np.arange(n),
            "image_id": table["image_id"].to_numpy(),
            "label": table["label"].to_numpy(),
            "label_idx": [class_names.index(label) for label in table["label"]],
            "center": table["center"].to_numpy(),
            "case_id": table["case_id"].to_numpy(),
            "group": grouping.group,
            "view": table["view"].to_numpy(),
            **{c: info[c].to_numpy() for c in ("has_mask", "orig_width", "orig_height", "orig_mode", "scale",
                                               "pad_x", "pad_y", "phash")},
            "dup_of": grouping.dup_of,
        }, columns=list(INDEX_COLUMNS))
        index.to_csv(tmp / "index.csv", index=False)
        grouping.pairs.to_csv(tmp / "duplicate_pairs.csv", index=False)
        tumour = index["label"] != "Normal"
        empty = index.loc[tumour & (index["has_mask"] == 0), "image_id"].tolist()
        if empty:
            logger.warning("%d tumour image(s) have an empty lesion mask (e.g. %s)", len(empty), empty[:5])
        stretched = index.loc[info["stretched"].to_numpy(), "image_id"].tolist()
        if stretched:
            logger.warning("%d image(s) have another aspect ratio than their annotation (squashed copy?); "
                           "lesion shapes were scaled per axis (e.g. %s)", len(stretched), stretched[:5])
        rescaled = index.loc[info["rescaled"].to_numpy() & ~info["stretched"].to_numpy(), "image_id"].tolist()
        if rescaled:
            logger.warning("%d image(s) have another size than their annotation, same aspect (a resized copy?); "
                           "lesion shapes were scaled to the image (e.g. %s)", len(rescaled), rescaled[:5])
        clipped = index.loc[info["clipped"].to_numpy() > 0, "image_id"].tolist()
        if clipped:
            logger.warning("%d annotation point(s) of %d image(s) lay just outside the image (<= 2 px / 2 %%) and "
                           "were moved onto its border (e.g. %s)", int(info["clipped"].sum()), len(clipped),
                           clipped[:5])
        meta = {
            "size": size,
            "class_names": class_names,
            "n_images": n,
            "source": release.metadata_path.name if release.metadata_path else "",
            # the data's own date (the sheet's document properties), for the checkpoint's provenance record
            "sheet_modified": sheet_modified(release.metadata_path) if release.metadata_path else None,
            "format_version": FORMAT_VERSION,
            "near_duplicate_distance": config.near_duplicate_distance,
            "class_counts": {c: int((index["label"] == c).sum()) for c in class_names},
            "n_with_mask": int(index["has_mask"].sum()),
            "n_stretched_annotations": len(stretched),
            "n_rescaled_annotations": len(rescaled),
            "n_clipped_annotation_points": int(info["clipped"].sum()),
            "n_annotations": len(release.annotations),
            "n_nested_annotations_ignored": release.n_nested_annotations,
            "case_source": release.case_source,
            "n_with_case_id": int((index["case_id"] != "").sum()),
            "n_groups": int(index["group"].nunique()),
            "n_duplicate_pairs": len(grouping.pairs),
            "n_exact_duplicate_pairs": int((grouping.pairs["kind"] == "exact").sum()),
            "centers": sorted(int(c) for c in index["center"].unique()),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("prepared %d images at %d px into %s (%d groups, %d duplicate pairs)",
                n, size, out_dir, meta["n_groups"], meta["n_duplicate_pairs"])
    return out_dir


def load_cache(path: str | os.PathLike, *, mmap: bool = True) -> PreparedCache:
    """Open a prepared cache; ``mmap=True`` maps the arrays read-only instead of loading them."""
    root = Path(path)
    for name in ("images.npy", "masks.npy", "index.csv", "meta.json"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name}: missing from the prepared cache; run `dvc repro prepare`.")
    mode = "r" if mmap else None
    images = np.load(root / "images.npy", mmap_mode=mode)
    masks = np.load(root / "masks.npy", mmap_mode=mode)
    index = read_index(root / "index.csv")
    meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    n, size = len(index), meta.get("size")
    expected = (n, size, size)
    if images.shape != expected or masks.shape != expected:
        raise ValueError(
            f"{root}: images {images.shape} / masks {masks.shape} do not match index.csv rows and meta size "
            f"{expected}; the cache is inconsistent, rerun `dvc repro prepare`."
        )
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise ValueError(f"{root / 'index.csv'}: missing columns {missing}; rerun `dvc repro prepare`.")
    return PreparedCache(root=root, images=images, masks=masks, index=index, meta=meta)


def _run(tasks: list[tuple], workers: int | None) -> Iterable[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Process tasks in order, in a Pool unless one worker (or one task) makes that pointless."""
    n_workers = min(workers or os.cpu_count() or 1, len(tasks))
    if n_workers <= 1:
        yield from map(_process_one, tasks)
        return
    chunksize = max(1, min(16, len(tasks) // (n_workers * 8)))
    with multiprocessing.get_context().Pool(n_workers) as pool:
        yield from pool.imap(_process_one, tasks, chunksize=chunksize)


def _process_one(task: tuple[str, str, str | None, int]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Decode one image; letterbox it and its lesion mask in the same geometry; hash it."""
    image_id, path, annotation_path, size = task
    data = Path(path).read_bytes()
    # JPEG originals are decoded in draft mode at >= the letterbox size; the geometry is the full file's.
    gray, mode, (width, height) = decode_for_letterbox(path, size)
    image, geom = letterbox(gray, size, original_size=(width, height))
    mask = np.zeros((size, size), dtype=np.uint8)
    stretched, rescaled, clipped = False, False, 0
    if annotation_path is not None:
        ann = read_labelme(annotation_path, image_size=(width, height))
        mask = rasterize_polygons(polygons_to_letterbox(ann.polygons, geom), size, size)
        stretched, rescaled, clipped = ann.stretched, ann.rescaled, ann.n_clipped
    record = {
        "has_mask": int(mask.any()),
        "orig_width": width,
        "orig_height": height,
        "orig_mode": mode,
        "scale": geom.scale,
        "pad_x": geom.pad_x,
        "pad_y": geom.pad_y,
        "phash": f"{perceptual_hash(gray):016x}",
        "sha256": hashlib.sha256(data).hexdigest(),
        "stretched": stretched,
        "rescaled": rescaled,
        "clipped": clipped,
    }
    return image, mask, record


def _check_int(value: Any, name: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(
            f"prepare.{name} must be an integer >= {low}, got {value!r}. Fix it in params.yaml."
        )
    return int(value)
