"""Crash-safe training: a run interrupted mid-epoch resumes from its last completed epoch, bit for bit."""

from __future__ import annotations

import logging

import pytest
import torch

from assurexray.learning import resume, training
from assurexray.learning.model import save_checkpoint
from kills import Killed, dies_after_first_step
from test_training import _options
from training_options import train


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_killed_mid_epoch_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path, monkeypatch, caplog):
    settings = dict(epochs=4, patience=2)
    reference = train(**_options(tmp_path, live_dir=tmp_path / "ref_live",
                                                resume_dir=tmp_path / "ref_resume", **settings))
    resume_dir = tmp_path / "resume"
    with monkeypatch.context() as patch:
        patch.setattr(training, "_train_epoch", dies_after_first_step(training._train_epoch, kill_epoch=3))
        with pytest.raises(Killed):
            train(**_options(tmp_path, resume_dir=resume_dir, **settings))
    assert not (tmp_path / "live").exists()  # DVCLive output is atomic: nothing half-written
    state = torch.load(resume_dir / resume.STATE_FILE, weights_only=True)  # plain tensors + JSON-able values
    assert state["epoch"] == 2 and [row["epoch"] for row in state["history"]] == [1, 2]

    with caplog.at_level(logging.INFO, logger="assurexray.learning.resume"):
        resumed = train(**_options(tmp_path, resume_dir=resume_dir, **settings))
    assert "resuming after epoch 2" in caplog.text
    paths = [save_checkpoint(tmp_path / name, result.model, result.meta)
             for name, result in (("ref.pt", reference), ("resumed.pt", resumed))]
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert resumed.history == reference.history
    assert _files(tmp_path / "live") == _files(tmp_path / "ref_live")  # DVCLive steps and summary replayed


def test_a_resume_state_of_other_params_is_reported_and_never_resumed_from(tmp_path, monkeypatch, caplog):
    resume_dir = tmp_path / "resume"
    with monkeypatch.context() as patch:
        patch.setattr(training, "_train_epoch", dies_after_first_step(training._train_epoch, kill_epoch=2))
        with pytest.raises(Killed):
            train(**_options(tmp_path, resume_dir=resume_dir, live_dir=None))
    with caplog.at_level(logging.INFO, logger="assurexray.learning.resume"):
        changed = train(**_options(tmp_path, resume_dir=resume_dir, live_dir=None, lr=1e-3))
    assert "resume state belongs to other params or data" in caplog.text and "resuming" not in caplog.text
    fresh = train(**_options(tmp_path, live_dir=None, lr=1e-3))
    a, b = changed.model.state_dict(), fresh.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and changed.history == fresh.history


def test_the_fingerprint_changes_with_the_data_and_the_settings(tmp_path):
    options = _options(tmp_path)
    images, train, val = options["images"], options["train_index"], options["val_index"]
    base = resume.fingerprint(settings={"lr": 1}, images=images, train_index=train, val_index=val)
    assert base == resume.fingerprint(settings={"lr": 1}, images=images.copy(), train_index=train, val_index=val)
    other_pixels = images.copy()
    other_pixels[0, 0, 0] ^= 1
    assert base != resume.fingerprint(settings={"lr": 1}, images=other_pixels, train_index=train, val_index=val)
    assert base != resume.fingerprint(settings={"lr": 2}, images=images, train_index=train, val_index=val)
    assert base != resume.fingerprint(settings={"lr": 1}, images=images, train_index=val, val_index=train)


def test_an_unreadable_resume_file_means_a_fresh_start_with_a_warning(tmp_path, caplog):
    (tmp_path / resume.STATE_FILE).write_bytes(b"not a torch archive")
    with caplog.at_level(logging.WARNING, logger="assurexray.learning.resume"):
        assert resume.load(tmp_path, "abc") is None
    assert "unreadable resume state" in caplog.text
