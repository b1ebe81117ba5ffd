"""``assurexray adapt``: a site's unlabelled radiographs -> a checkpoint with BatchNorm statistics of that site.

Files are found and decoded as ``assurexray infer`` finds and decodes them
(:func:`assurexray.data.decoding.find_images`, :func:`~assurexray.data.decoding.read_for_letterbox`, the predictor's
letterbox and preprocessing), then
:func:`assurexray.learning.adaptation.adapt_batchnorm` re-estimates the statistics. The new checkpoint is an ordinary
one (infer, the app and evaluate load it like any model) whose ``meta["adaptation"]`` records the method, how many
images, their fingerprint, the source model's SHA-256 and the date. It has a new SHA-256, so the source's operating
point cannot be used as it is; :func:`inherit_operating_point` writes a copy bound to the adapted file
(``site.operating_point.json`` beside ``site.pt``, found by infer and the app), the same temperature, Malignant
threshold and lesion-fusion weight, fitted on the source's validation without adaptation, exactly as evaluate's
adapted rows apply them. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from assurexray.data.decoding import DEFAULT_MAX_PIXELS, find_images, read_for_letterbox
from assurexray.learning.adaptation import (
    BATCH_SIZE,
    MIN_IMAGES,
    adapt_batchnorm,
    adaptation_record,
    check_image_count,
)
from assurexray.learning.model import file_sha256, load_checkpoint, resolve_device, save_checkpoint
from assurexray.core.atomic import write_json
from assurexray.learning.prediction import (
    Predictor,
    default_operating_point_path,
    load_operating_point,
    sibling_operating_point_path,
)

__all__ = ["adapt_checkpoint", "files_sha256", "inherit_operating_point"]

logger = logging.getLogger(__name__)


def adapt_checkpoint(
    model_path: str | os.PathLike,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    min_images: int = MIN_IMAGES,
    batch_size: int = BATCH_SIZE,
    device: str = "cpu",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    date: dt.date | None = None,
) -> dict[str, Any]:
    """Re-estimate ``model_path``'s BatchNorm statistics on the radiographs of ``images`` (a folder, files or
    globs) and write the adapted checkpoint to ``out_path`` (atomically); return its ``meta["adaptation"]``.

    Every image found is used: an unreadable or unsupported file, fewer than ``min_images`` images, or
    ``out_path`` equal to ``model_path`` is a ``ValueError`` naming it (a skipped file would make the record
    describe images the statistics never saw). ``date`` (default today, UTC) is recorded. No label is read:
    there is none to read.
    """
    model_path, out_path = Path(model_path), Path(out_path)
    if out_path.resolve() == model_path.resolve():
        raise ValueError(f"-o {out_path}: the adapted model would overwrite the model it is adapted from; write it "
                         "to another file.")
    inputs = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    where = "--images " + (", ".join(os.fspath(i) for i in inputs) or "(none)")
    files, problems = find_images(inputs)
    if problems:
        raise ValueError(f"{where}: {len(problems)} input(s) cannot be used: "
                         f"{'; '.join(message for _, message in problems[:5])}. Remove or convert them.")
    more = "Add more of the site's radiographs (or lower --min-images, knowingly)."
    check_image_count(len(files), min_images, where, fix=more)
    model, meta = load_checkpoint(model_path, device=resolve_device(device, setting="--device"))
    source_sha256 = file_sha256(model_path)
    # A one-model Predictor gives infer's letterbox and preprocessing, so adaptation sees what scoring will see.
    predictor = Predictor(models=(model,), meta=meta, model_paths=(model_path,), member_sha256s=(source_sha256,))
    boxed, unreadable = [], []
    for path in files:
        try:
            decoded = read_for_letterbox(path, predictor.input_size, max_pixels=max_pixels)
        except (FileNotFoundError, ValueError) as err:
            unreadable.append(str(err) if str(path) in str(err) else f"{path}: {err}")
            continue
        boxed.append(predictor.letterbox([decoded])[0])  # (S, S) uint8
    if unreadable:
        raise ValueError(f"{where}: {len(unreadable)} of {len(files)} image(s) could not be read: "
                         f"{'; '.join(unreadable[:5])}. Remove or convert them; adaptation uses every image it finds.")
    adapted = adapt_batchnorm(model, np.stack(boxed), predictor.transform, batch_size=batch_size,
                              min_images=min_images, source=where)
    root = Path(inputs[0]) if len(inputs) == 1 and Path(inputs[0]).is_dir() else None
    when = date or dt.datetime.now(dt.timezone.utc).date()
    record = adaptation_record(n_images=len(files), images_sha256=files_sha256(files, root=root),
                               source_model_sha256=source_sha256, batch_size=batch_size, date=when.isoformat())
    if "adaptation" in meta:  # the statistics were reset, so the earlier adaptation is gone; its record is kept
        logger.info("%s was itself adapted (%s); its statistics are replaced", model_path, meta["adaptation"])
        record["previous"] = meta["adaptation"]
    save_checkpoint(out_path, adapted, {**meta, "adaptation": record})
    return record


def files_sha256(files: Sequence[Path], *, root: Path | None = None) -> str:
    """SHA-256 of the files adapted on: one line per file, in the order used, ``name<TAB>bytes<TAB>sha256``
    (names relative to ``root``, else the bare name), so the same pictures in another folder fingerprint alike."""
    lines = []
    for path in files:
        name = path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else path.name
        lines.append(f"{name}\t{path.stat().st_size}\t{file_sha256(path)}")
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def inherit_operating_point(source_model: str | os.PathLike, adapted_model: str | os.PathLike, *,
                            operating_point: str | os.PathLike | None = None) -> Path | None:
    """Write the source model's operating point, bound to the adapted checkpoint, beside it; return its path.

    ``operating_point`` None: the source's own (its variant's evaluate output, or the file beside it); when it has
    none, nothing is written and None returned. The file is checked to belong to the source (SHA-256) before it is
    copied, and the copy says where it came from and that nothing was refitted.
    """
    source_model, adapted_model = Path(source_model), Path(adapted_model)
    candidates = [Path(operating_point)] if operating_point is not None else [
        sibling_operating_point_path(source_model), default_operating_point_path(source_model)]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        if operating_point is not None:
            raise FileNotFoundError(f"--operating-point {operating_point}: not found.")
        return None
    meta = load_checkpoint(adapted_model)[1]
    classes = [str(c) for c in meta["class_names"]]
    source_sha = file_sha256(source_model)
    load_operating_point(found, model_sha256=source_sha, class_names=classes)  # refuses another model's file
    record = {k: v for k, v in json.loads(found.read_text(encoding="utf-8")).items() if k != "member_sha256s"}
    record["model_sha256"] = file_sha256(adapted_model)
    record["inherited"] = {"from": str(found), "source_model_sha256": source_sha,
                           "note": "fitted on the source model's validation without adaptation; nothing refitted"}
    target = sibling_operating_point_path(adapted_model)
    write_json(target, record)
    return target
