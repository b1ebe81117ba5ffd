"""Loss curves read from DVCLive's files and drawn for the report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assurexray.publishing.learning_curves import EPOCH_AXIS, LOSS_FILES, loss_curve_png, read_loss_history


def _write(live: Path, train: str, val: str) -> None:
    for rel, text in zip(LOSS_FILES.values(), (train, val)):
        (live / rel).parent.mkdir(parents=True, exist_ok=True)
        (live / rel).write_text(text, encoding="utf-8")


def test_both_curves_are_read_by_epoch_in_file_order(tmp_path):
    _write(tmp_path, "step\tloss\n0\t1.5\n1\t0.5\n", "step\tloss\n0\t1.25\n1\t1.0\n")
    history = read_loss_history(tmp_path)
    assert list(history) == ["train", "validation"]
    epochs, losses = history["validation"]
    assert epochs.tolist() == [1, 2] and np.allclose(losses, [1.25, 1.0])


def test_epochs_count_from_one_as_the_training_summary_s_best_epoch_does(tmp_path):
    # DVCLive logs the first epoch as step 0; a 3-epoch run's last epoch is 3, as epochs_run and best_epoch say
    _write(tmp_path, "step\tloss\n0\t1.5\n1\t0.5\n2\t0.4\n", "step\tloss\n0\t1.25\n1\t1.0\n2\t1.1\n")
    epochs, _ = read_loss_history(tmp_path)["train"]
    assert epochs[0] == 1 and epochs[-1] == 3 == len(epochs)
    assert EPOCH_AXIS == "epoch (1 = first)"
    template = json.loads((Path(__file__).resolve().parents[1] / ".dvc" / "plots" / "loss.json").read_text())
    assert template["spec"]["encoding"]["x"]["title"] == EPOCH_AXIS  # `dvc plots` counts the same way


def test_the_best_epoch_is_marked_on_the_chart(tmp_path):
    _write(tmp_path, "step\tloss\n0\t1.5\n1\t0.5\n2\t0.4\n", "step\tloss\n0\t1.25\n1\t1.0\n2\t1.1\n")
    history = read_loss_history(tmp_path)
    unmarked = loss_curve_png(history, title="t")
    assert loss_curve_png(history, title="t", best_epoch=2) not in (unmarked, loss_curve_png(history, title="t",
                                                                                           best_epoch=3))


def test_an_absent_file_gives_none_so_the_report_says_not_available(tmp_path):
    _write(tmp_path, "step\tloss\n0\t1.5\n", "step\tloss\n0\t1.25\n")
    (tmp_path / LOSS_FILES["validation"]).unlink()
    assert read_loss_history(tmp_path) is None


@pytest.mark.parametrize(("val", "message"), [
    ("epoch\tloss\n0\t1.0\n", r"val/loss\.tsv: missing column\(s\) \['step'\] \(found \['epoch', 'loss'\]\)"),
    ("step\tloss\n0\t1.0\n1\tnan?\n", r"val/loss\.tsv: row\(s\) \[3\] hold a non-numeric step or loss"),
])
def test_a_malformed_file_is_named_with_the_row_and_the_fix(tmp_path, val, message):
    _write(tmp_path, "step\tloss\n0\t1.5\n", val)
    with pytest.raises(ValueError, match=message + r".*dvc repro train"):
        read_loss_history(tmp_path)


def test_the_chart_is_a_png_that_depends_on_the_losses_and_nothing_else(tmp_path):
    _write(tmp_path, "step\tloss\n0\t1.5\n1\t0.5\n", "step\tloss\n0\t1.25\n1\t1.0\n")
    history = read_loss_history(tmp_path)
    png = loss_curve_png(history, title="stratified: train and validation loss")
    assert png == loss_curve_png(history, title="stratified: train and validation loss")  # reproducible bytes
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 200
    steps, losses = history["validation"]
    assert png != loss_curve_png({**history, "validation": (steps, losses * 0.5)}, title="stratified: train and "
                                 "validation loss")
