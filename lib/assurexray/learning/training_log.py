"""DVCLive logging of the training loop: one row per epoch, a summary of the best epoch.

dvclive writes plots/metrics/<name>.tsv with columns step and the last name part (dvc.yaml reads
plots/metrics/train/loss.tsv and plots/metrics/val/loss.tsv with x=step, y=loss).
"""

from __future__ import annotations

import os
from typing import Mapping

from dvclive import Live
from scmrepo.exceptions import SCMError

__all__ = ["open_live", "log_epoch", "log_summary", "VAL_KEYS"]

#: Validation scores every run logs; a lesion head adds ``lesion_dice`` (``auc_dice``, their sum, is not logged
#: again: it is ``best_score`` when it is the monitor, and every logged key is a column of ``dvc metrics show``).
VAL_KEYS = ("loss", "macro_auc", "balanced_accuracy", "accuracy")
_LESION_KEYS = ("lesion_dice",)


def open_live(live_dir: str | os.PathLike) -> Live:
    """DVCLive logger that leaves the hand-written dvc.yaml alone.

    dvclive reads the git HEAD even with save_dvc_exp=False and fails with a bare "Empty git repo" in a
    repository without a commit: say what to do instead.
    """
    try:
        return Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    except SCMError as err:
        raise RuntimeError(
            f"DVCLive cannot log to {live_dir}: {err}. The project's git repository has no commit yet; run "
            "`git add -A && git commit -m 'pipeline'` and repeat."
        ) from err


def log_epoch(live: Live, row: Mapping[str, float]) -> None:
    live.log_metric("train/loss", row["train_loss"])
    for key in (*VAL_KEYS, *_LESION_KEYS):
        if f"val_{key}" in row:
            live.log_metric(f"val/{key}", row[f"val_{key}"])
    if "train_seg_loss" in row:
        live.log_metric("train/seg_loss", row["train_seg_loss"])
    live.log_metric("lr", row["lr"])
    live.next_step()


def log_summary(live: Live, best: Mapping[str, float], monitor: str, epochs_run: int) -> None:
    live.summary["best_epoch"] = int(best["epoch"])
    live.summary["monitor"] = monitor
    live.summary["best_score"] = float(best[f"val_{monitor}"])
    live.summary["epochs_run"] = epochs_run
    keys = [k for k in (*VAL_KEYS, *_LESION_KEYS) if f"val_{k}" in best]
    live.summary["best"] = {"train_loss": best["train_loss"], **{k: best[f"val_{k}"] for k in keys}}
