"""torchrun / DDP: the train stage runs as 2 CPU processes (gloo) and rank 0 alone writes its outputs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_training import CLASSES, _prepared_dirs

from assurexray.model import load_checkpoint


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_train_stage_under_torchrun_with_two_processes_writes_one_loadable_checkpoint(tmp_path, repo_root):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed beside this python")
    prepared, split = _prepared_dirs(tmp_path)  # the tiny fake cache of the training tests
    params = yaml.safe_load((repo_root / "params.yaml").read_text(encoding="utf-8"))
    params["model"].update(backbone="test_efficientnet", pretrained="none")
    params["train"].update(epochs=2, batch_size=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    model_path, live = tmp_path / "model.pt", tmp_path / "live"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(
        [str(torchrun if torchrun.exists() else shutil.which("torchrun")), "--nnodes=1", "--nproc_per_node=2",
         f"--master_addr=127.0.0.1", f"--master_port={_free_port()}",
         str(repo_root / "stages" / "train.py"), "--prepared", str(prepared), "--split", str(split),
         "--model", str(model_path), "--live", str(live), "--params", str(tmp_path / "params.yaml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, meta = load_checkpoint(model_path)
    assert meta["class_names"] == CLASSES and meta["best_epoch"] in (1, 2)
    assert not any(name.startswith("module.") for name in model.state_dict())  # DDP wrapper not saved
    assert (live / "metrics.json").is_file()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # no half-written temp outputs from the non-writing rank
