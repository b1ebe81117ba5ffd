"""Training and validation loss per epoch, read from the train stage's DVCLive files and drawn for the report.

The train stage logs ``train/loss`` and ``val/loss`` through DVCLive, which writes one TSV per metric (columns
``step`` and ``loss``) under ``<live dir>/plots/metrics/``; `dvc plots` draws the same files. The report draws
them again as a PNG so that ``report.html`` (one offline file) shows the training curves too.

Epochs are counted from 1, as people count them and as the training summary's ``best_epoch`` is: DVCLive's step
0 is epoch 1. The report, the model card, this chart and the `dvc plots` loss chart all use that one numbering.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from assurexray import DISCLAIMER

logger = logging.getLogger(__name__)

__all__ = ["LOSS_FILES", "EPOCH_AXIS", "LossHistory", "read_loss_history", "loss_curve_png"]

#: Curve label -> its DVCLive file, relative to the train stage's live dir (``metrics/<variant>/train``).
LOSS_FILES: dict[str, str] = {"train": "plots/metrics/train/loss.tsv", "validation": "plots/metrics/val/loss.tsv"}
#: Curve label -> colour, as the `dvc plots` loss template draws them (.dvc/plots/loss.json).
_COLOURS = {"train": "#1f77b4", "validation": "#d62728"}

#: The epoch axis title: epochs counted from 1 (.dvc/plots/loss.json draws the same).
EPOCH_AXIS = "epoch (1 = first)"

#: Curve label -> (epochs, losses); epochs counted from 1 (DVCLive step + 1), like ``best_epoch``.
LossHistory = dict[str, tuple[np.ndarray, np.ndarray]]


def read_loss_history(live_dir: str | Path) -> LossHistory | None:
    """The loss curves under ``live_dir``, or None when a file is absent (the report then says so)."""
    live_dir = Path(live_dir)
    history: LossHistory = {}
    for label, rel in LOSS_FILES.items():
        path = live_dir / rel
        if not path.is_file():
            logger.info("%s absent: the report says the training curve is not available", path)
            return None
        frame = pd.read_csv(path, sep="\t")
        missing = [c for c in ("step", "loss") if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing} (found {list(frame.columns)}); DVCLive writes "
                             "step and loss. Re-run the train stage (`dvc repro train`).")
        steps = pd.to_numeric(frame["step"], errors="coerce").to_numpy(dtype=float)
        losses = pd.to_numeric(frame["loss"], errors="coerce").to_numpy(dtype=float)
        bad = [i + 2 for i in range(len(frame)) if not (math.isfinite(steps[i]) and math.isfinite(losses[i]))]
        if bad:
            raise ValueError(f"{path}: row(s) {bad[:5]} hold a non-numeric step or loss; re-run the train stage "
                             "(`dvc repro train`).")
        history[label] = (steps.astype(int) + 1, losses)  # DVCLive's step 0 is the first epoch
    return history


def loss_curve_png(history: LossHistory, *, title: str, best_epoch: int | None = None) -> bytes:
    """PNG bytes of the train and validation loss against epoch; same inputs give the same bytes.

    ``best_epoch`` (the training summary's, counted from 1 like the curves): a dotted line marks the checkpoint
    kept, so the chart and the report's "Best epoch" point at the same place."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    for label, (steps, losses) in history.items():
        ax.plot(steps, losses, marker="o", markersize=3, color=_COLOURS[label], label=label)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label=f"best epoch ({best_epoch})")
    ax.set(title=title, xlabel=EPOCH_AXIS, ylabel="cross-entropy loss")
    ax.xaxis.get_major_locator().set_params(integer=True)  # whole epochs only
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(title="loss on", fontsize=8, title_fontsize=8)
    fig.text(0.5, 0.005, DISCLAIMER, ha="center", va="bottom", fontsize=6, color="crimson")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})  # no version stamp: reproducible
    return buffer.getvalue()
