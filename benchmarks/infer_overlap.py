"""``assurexray infer`` on a folder of full-resolution originals: images/s vs the pure forward (goal >= 0.5).

The folder holds the 30 JPEGs of ../shared/btxrd-mini/images (up to 2768x4250 px) four times over (links
under other names, 120 files): a folder a user scores has hundreds of files, and over 30 the fixed costs
(model load, first forward) would weigh as much as decoding does. The model is the production backbone at the
prepared size with random weights (speed does not depend on the weights). infer decodes the next batch in a
thread pool while the model scores the current one, each file as ``prepare`` decodes it (JPEG draft mode).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from assurexray.serving.infer import run_inference
from assurexray.learning.model import checkpoint_format, create_model, save_checkpoint
from benchmarks import Figure, synthetic_originals

MINI = Path(os.environ.get("BTXRD_MINI", Path(__file__).resolve().parents[1].parent / "shared" / "btxrd-mini"))
BACKBONE, SIZE, BATCH = "tf_efficientnet_lite0", 160, 16
REPEATS = 4  # the 30 originals, each linked this many times (module docstring)
TINY = ("test_efficientnet", 32, 2)  # tiny=True: backbone, px, batch (plumbing only)


def _checkpoint(path: Path, backbone: str, size: int) -> Path:
    torch.manual_seed(0)
    net = create_model(backbone, num_classes=3, dropout=0.0, pretrained="none")
    meta = {
        "backbone": backbone, "num_classes": 3, "class_names": ["Normal", "Benign", "Malignant"], "dropout": 0.0,
        "input_size": size, "in_chans": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "clahe": False, "letterbox_fill": 0, "params": {}, "best_epoch": 0, "monitor": "loss", "best_score": 0.0,
        "seed": 0, "format_version": checkpoint_format(lesion_head=False),  # a plain classifier: format 1
    }
    return save_checkpoint(path, net, meta)


def figures(quick: bool = False, *, tiny: bool = False) -> list[Figure]:
    if tiny:  # plumbing only: a tiny model on two small synthetic JPEGs
        with tempfile.TemporaryDirectory() as tmp:
            files = synthetic_originals(Path(tmp) / "originals", TINY[2])
            return _figures(files, *TINY, source="synthetic")
    originals = sorted((MINI / "images").glob("*.jp*g"))
    if not originals:
        return [Figure("infer folder of originals / pure forward", None, "", ">= 0.5", None,
                       f"skipped: {MINI} absent")]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for k in range(1 if quick else REPEATS):
            for original in originals:
                link = Path(tmp) / f"copy{k}_{original.name}"
                link.symlink_to(original.resolve())
                files.append(link)
        return _figures(files, BACKBONE, SIZE, BATCH, source=f"btxrd-mini ({len(originals)} x {len(files) // len(originals)})")


def _figures(files: list[Path], backbone: str, size: int, batch: int, *, source: str) -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        model_path = _checkpoint(Path(tmp) / "models" / "bench" / "model.pt", backbone, size)
        logging.getLogger("assurexray.serving.infer").setLevel(logging.ERROR)  # no operating point here: expected
        started = time.perf_counter()
        result = run_inference(files, model_path=model_path, batch_size=batch)
        infer_speed = len(files) / (time.perf_counter() - started)
        assert not result.failures, result.failures
    model = create_model(backbone, num_classes=3, dropout=0.0, pretrained="none").eval()
    x = torch.randn(batch, 3, size, size)  # (B, 3, S, S)
    with torch.inference_mode():
        model(x)  # warm-up
        started = time.perf_counter()
        rounds = max(1, len(files) // batch)
        for _ in range(rounds):
            model(x)
        forward_speed = rounds * batch / (time.perf_counter() - started)
    ratio = infer_speed / forward_speed
    return [Figure("infer folder of originals / pure forward", ratio, "", ">= 0.5", ratio >= 0.5,
                   f"{infer_speed:.1f} vs {forward_speed:.1f} img/s ({len(files)} {source} originals, model "
                   "load included)")]


if __name__ == "__main__":
    for figure in figures():
        print(figure)
