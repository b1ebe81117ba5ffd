"""The pretrain stage through the real `dvc` CLI: off it costs train nothing, on it feeds train its weights.

A tiny repo (``test_pipeline_e2e``'s settings) built up to ``train@stratified`` only, so it stays cheap.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from test_pipeline_e2e import _dvc, _ran_stages, build_pipeline_repo

pytestmark = pytest.mark.slow

V = "stratified"


def test_pretrain_off_leaves_train_alone_and_on_trains_from_its_weights(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = build_pipeline_repo(tmp_path / "repo", targets=(f"train@{V}",))
    out = repo / "models" / V / "pretrained"
    assert [p.name for p in out.iterdir()] == ["pretrain.json"]
    assert json.loads((out / "pretrain.json").read_text())["enabled"] is False

    # A pretraining setting changed while pretraining is off: the record is unchanged, so train is not rerun.
    idle = _dvc(repo, "exp", "run", "-n", "idle", "-S", "pretrain.epochs=2", f"train@{V}")
    assert _ran_stages(idle.stdout) == {f"pretrain@{V}"}, idle.stdout

    on = _dvc(repo, "exp", "run", "-n", "ssl", "-S", "pretrain.enabled=true", "-S", "pretrain.epochs=1",
              "-S", "pretrain.batch_size=8", "-S", "pretrain.image_px=32", f"train@{V}")
    assert _ran_stages(on.stdout) == {f"pretrain@{V}", f"train@{V}"}, on.stdout
    record = json.loads((out / "pretrain.json").read_text())
    assert record["enabled"] is True and record["images"]["train_partition"] > 0
    meta = torch.load(repo / "models" / V / "model.pt", weights_only=True)["meta"]
    assert meta["params"]["model"]["pretrained"] == f"models/{V}/pretrained/backbone.safetensors"
    assert not (repo / ".assurexray" / "resume" / f"pretrain-{V}").exists()  # a finished stage leaves no state
