"""What a model was trained on: computed by the train stage, stored in the checkpoint as ``meta["data"]``, and
shown beside every prediction (``assurexray infer`` table and output files, the web demo).

The record is a plain JSON-able dict and depends only on the data, never on the clock, so the same params and
data still give a byte-identical ``model.pt``:

- ``source``: ``data.source`` of params.yaml (``sample`` = the built-in synthetic dataset, ``btxrd`` = the real
  release); ``synthetic`` is True for the sample;
- ``index_sha256``: SHA-256 of ``data/prepared/index.csv`` (one row per prepared image: id, label, centre,
  group, geometry and perceptual hash), so two models with the same fingerprint saw the same prepared data;
  ``sha256sum data/prepared/index.csv`` checks it by hand;
- ``n_images`` (prepared), ``n_train``/``n_val`` and ``train_counts`` per class, ``split`` (the variant);
- ``data_date``: the last-modified date the dataset sheet (``dataset.xlsx``) records in its own document
  properties, copied by prepare into ``meta.json`` as ``sheet_modified``. It travels with the data (the same
  sheet gives the same date on every machine, unlike a file's mtime or a training timestamp); the synthetic
  sample writes a fixed date so its bytes reproduce. None when the sheet records none.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "SYNTHETIC_SOURCES",
    "SOURCE_LABELS",
    "training_data_info",
    "trained_on",
    "training_data_fingerprint",
    "training_data_sentence",
]

#: ``data.source`` values whose images are generated, not radiographs of patients.
SYNTHETIC_SOURCES: frozenset[str] = frozenset({"sample"})
#: Short, space-free label per source, used in table cells and the ``trained_on`` output column.
SOURCE_LABELS = {"sample": "synthetic-sample", "btxrd": "btxrd"}
_SOURCE_TITLES = {
    "sample": "the built-in SYNTHETIC sample (generated images, not real radiographs)",
    "btxrd": "BTXRD radiographs",
}
_UNKNOWN = "unknown"
_DATE_BASIS = "last-modified date recorded in the dataset sheet's properties (dataset.xlsx), copied by prepare"


def training_data_info(
    prepared_dir: str | os.PathLike, split_dir: str | os.PathLike, *, source: str
) -> dict[str, Any]:
    """The ``meta["data"]`` record of a model trained on ``prepared_dir`` with the partitions of ``split_dir``."""
    prepared, split = Path(prepared_dir), Path(split_dir)
    index, meta_path = prepared / "index.csv", prepared / "meta.json"
    for path in (index, meta_path, split / "train.csv", split / "val.csv"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run the prepare and split stages (dvc repro split).")
    if not isinstance(source, str) or not source:
        raise ValueError(f"data.source must be a non-empty string such as 'sample' or 'btxrd', got {source!r}.")
    prepared_meta = json.loads(meta_path.read_text(encoding="utf-8"))
    partitions = {}
    for name in ("train", "val"):
        frame = pd.read_csv(split / f"{name}.csv", usecols=["label"], dtype={"label": str}, keep_default_na=False)
        partitions[name] = frame["label"]
    class_names = list(prepared_meta.get("class_names") or sorted(set(partitions["train"])))
    date = prepared_meta.get("sheet_modified")
    return {
        "source": source,
        "synthetic": source in SYNTHETIC_SOURCES,
        "index_sha256": hashlib.sha256(index.read_bytes()).hexdigest(),
        "n_images": int(prepared_meta.get("n_images", 0)),
        "split": split.name,
        "n_train": int(partitions["train"].size),
        "n_val": int(partitions["val"].size),
        "train_counts": {c: int((partitions["train"] == c).sum()) for c in class_names},
        "centers": prepared_meta.get("centers"),
        "data_date": date if isinstance(date, str) and date else None,
        "data_date_basis": _DATE_BASIS,
    }


def trained_on(meta: Mapping[str, Any]) -> str:
    """Space-free label of a checkpoint's training data: ``synthetic-sample``, ``btxrd`` or ``unknown``."""
    data = meta.get("data")
    if not isinstance(data, Mapping) or not data.get("source"):
        return _UNKNOWN
    source = str(data["source"])
    label = SOURCE_LABELS.get(source, source)
    return label if not data.get("synthetic") or "synthetic" in label else f"synthetic-{label}"


def training_data_fingerprint(meta: Mapping[str, Any]) -> str | None:
    """SHA-256 of the prepared index.csv the checkpoint was trained on; None for a checkpoint without the record."""
    data = meta.get("data")
    value = data.get("index_sha256") if isinstance(data, Mapping) else None
    return str(value) if value else None


def training_data_sentence(meta: Mapping[str, Any]) -> str:
    """One sentence for a reader: source, images, split, fingerprint and date (or that none is recorded)."""
    data = meta.get("data")
    if not isinstance(data, Mapping) or not data.get("source"):
        return ("Training data unknown: this checkpoint records no data provenance (trained before it was "
                "recorded); retrain it (`dvc repro train`) to record it.")
    source = str(data["source"])
    title = _SOURCE_TITLES.get(source, f"data source {source!r}")
    if data.get("synthetic") and "SYNTHETIC" not in title:
        title += " (SYNTHETIC)"
    counts = f"{data.get('n_train', '?')} training and {data.get('n_val', '?')} validation images"
    split = f" of the {data['split']} split" if data.get("split") else ""
    fingerprint = str(data.get("index_sha256") or "")[:12] or "not recorded"
    date = f", dataset sheet dated {data['data_date']}" if data.get("data_date") else ", no dataset date recorded"
    return (f"Trained on {title}: {counts}{split} ({data.get('n_images', '?')} prepared), "
            f"data fingerprint {fingerprint} (sha256 of data/prepared/index.csv){date}.")
