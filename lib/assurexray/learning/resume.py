"""Crash-safe training: the state of the last completed epoch, kept outside the DVC outputs.

After every epoch rank 0 writes ``<resume_dir>/state.pt`` atomically (a SIGKILL leaves the previous epoch's
file whole). A restarted ``dvc repro`` finds it and continues from the next epoch; the train stage deletes it
once the checkpoint is written, so a finished stage leaves nothing behind. The file is used only when its
fingerprint (every training setting + the bytes of the data) matches the current run: a state written for
other params or data is reported and replaced, never resumed from.

The state holds plain dicts of tensors and JSON-able values, so ``torch.load(weights_only=True)`` reads it.
RNG: the training loop reseeds every RNG from (seed, rank, epoch) at the start of each epoch, so the next
epoch's random stream is a function of its number and needs no saved generator state.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from assurexray.core.atomic import atomic_path

__all__ = ["STATE_FILE", "FORMAT", "clear", "fingerprint", "load", "save"]

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
FORMAT = 1  # bump when the state layout changes: an old file is then ignored (different fingerprint)
_CHUNK = 1 << 24  # bytes hashed at a time from the memory-mapped image cache


def fingerprint(*, settings: Mapping[str, Any], images: np.ndarray, train_index: pd.DataFrame,
                val_index: pd.DataFrame) -> str:
    """sha256 over the JSON of ``settings`` (params, seed, world size...), the image bytes and both splits."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": FORMAT, **settings}, sort_keys=True, default=str).encode())
    flat = np.ascontiguousarray(images).reshape(-1).view(np.uint8)
    digest.update(repr((images.shape, str(images.dtype))).encode())
    for start in range(0, flat.size, _CHUNK):
        digest.update(memoryview(flat[start:start + _CHUNK]))
    for index in (train_index, val_index):
        digest.update(index.to_csv(index=False).encode())
    return digest.hexdigest()


def load(resume_dir: str | os.PathLike | None, expected_fingerprint: str) -> dict[str, Any] | None:
    """The saved state when it exists and matches ``expected_fingerprint``, else None (a mismatch is logged)."""
    if resume_dir is None:
        return None
    path = Path(resume_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as err:  # not a torch archive / not weights-only
        logger.warning("%s: unreadable resume state (%s: %s); training starts from epoch 1 and replaces it.",
                       path, type(err).__name__, err)
        return None
    found = state.get("fingerprint") if isinstance(state, dict) else None
    if found != expected_fingerprint:
        logger.warning(
            "%s: resume state belongs to other params or data (fingerprint %s, this run %s); training starts "
            "from epoch 1 and replaces it.", path, str(found)[:12], expected_fingerprint[:12],
        )
        return None
    logger.info("%s: resuming after epoch %d", path, state["epoch"])
    return state


def save(resume_dir: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` (with its ``fingerprint``) atomically to ``<resume_dir>/state.pt``."""
    path = Path(resume_dir) / STATE_FILE
    buffer = io.BytesIO()  # serialise first: a failure never leaves a partial file behind
    torch.save(dict(state), buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def clear(resume_dir: str | os.PathLike | None) -> None:
    """Delete the resume folder (called once the stage's outputs are written)."""
    if resume_dir is not None and Path(resume_dir).exists():
        shutil.rmtree(resume_dir)
