"""torchrun / DDP on 2 CPU processes (gloo): the ranks really synchronise, and only rank 0 writes.

Each test fails when synchronisation is broken: ranks training on the whole set instead of their shard
(DDP off), gradients not all-reduced (ranks drift apart), the loss of one shard reported as the train loss, or
an early-stopping decision taken by each rank on its own (the ranks stop at different epochs: one errors).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_training import CLASSES, _prepared_dirs

from assurexray.learning.model import load_checkpoint
from assurexray.learning.model import create_model
from training_options import train

WORKER = Path(__file__).with_name("ddp_worker.py")
#: A GroupNorm backbone (no BatchNorm: its per-process batch statistics would differ from one process's),
#: no dropout, no augmentation, unweighted loss: the 2-process run is then the 1-process run up to float order.
EXACT = {"backbone": "test_efficientnet_gn", "pretrained": "none", "dropout": 0.0, "epochs": 2, "batch_size": 8,
         "lr": 3e-3, "weight_decay": 1e-4, "warmup_epochs": 1, "grad_clip": 1.0, "class_weights": "none",
         "monitor": "loss", "patience": None, "device": "cpu", "amp": False, "channels_last": True,
         "num_workers": 0, "augment": None, "seed": 7}
#: 2-process vs 1-process: weights agree to this absolute difference and the logged losses to this relative one
#: (float summation order differs: 2 x mean of 4 vs mean of 8). Measured: 8.4e-6 and 5e-5; one epoch of
#: training moves the weights by about 1e-2, so a rank that skips the all-reduce lands far outside.
WEIGHT_TOLERANCE, LOSS_TOLERANCE = 1e-4, 1e-3


def _torchrun() -> str:
    torchrun = Path(sys.executable).parent / "torchrun"
    if torchrun.exists():
        return str(torchrun)
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed beside this python")
    return shutil.which("torchrun")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    return subprocess.run(
        [_torchrun(), "--nnodes=1", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
         f"--master_port={_free_port()}", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=1800,  # a hang guard only
    )


def _worker(nproc: int, out: Path, options: dict, *extra: str) -> list[dict]:
    proc = _run(nproc, [str(WORKER), "--out", str(out), "--options", json.dumps(options), *extra], out.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(nproc)]


def test_two_ranks_train_disjoint_shards_into_the_weights_of_one_process_on_the_same_global_batch(tmp_path):
    two = _worker(2, tmp_path / "two", EXACT)
    for epoch in range(EXACT["epochs"]):
        shard0, shard1 = (set(rank["shards"][epoch]) for rank in two)
        assert len(shard0) == len(shard1) == 8 and shard0.isdisjoint(shard1), (shard0, shard1)
        assert shard0 | shard1 == set(range(16))
    a, b = (rank["state_dict"] for rank in two)
    assert all(torch.equal(a[k], b[k]) for k in a)  # DDP kept the ranks in lockstep
    (one,) = _worker(1, tmp_path / "one", EXACT)
    assert [set(s) for s in one["shards"]] == [set(range(16))] * EXACT["epochs"]
    c = one["state_dict"]
    worst = max((a[k].float() - c[k].float()).abs().max().item() for k in a)
    assert worst < WEIGHT_TOLERANCE, worst
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in a.values())
    history = [json.loads(rank["history"]) for rank in (*two, one)]
    assert history[0] == history[1]  # the scores rank 0 broadcast
    for row2, row1 in zip(history[0], history[2]):  # train loss all-reduced over both shards
        for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
            assert row2[key] == pytest.approx(row1[key], rel=LOSS_TOLERANCE), (key, row2, row1)
    assert json.loads(two[0]["meta"])["params"]["train"]["world_size"] == 2


def test_ddp_synchronises_the_lesion_decoder_across_ranks(tmp_path):
    """The decoder sits inside the module DDP wraps: its gradients are averaged, so both ranks end with the same
    decoder parameters although each trained on its own shard (a decoder outside DDP would drift apart). Its
    BatchNorm running statistics are per rank, like any BatchNorm's under DDP: rank 0's are the ones saved."""
    options = {**EXACT, "lesion_head": True, "seg_weight": 1.0}
    two = _worker(2, tmp_path / "lesion", options, "--masks")
    a, b = (rank["state_dict"] for rank in two)
    decoder = [k for k in a if k.startswith("lesion_decoder.") and "running_" not in k and "num_batches" not in k]
    assert len(decoder) >= 10 and all(torch.equal(a[k], b[k]) for k in decoder)
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("lesion_decoder."))
    history = json.loads(two[0]["history"])
    assert all(row["train_seg_loss"] > 0 for row in history) and "val_lesion_dice" in history[0]
    fresh = create_model(EXACT["backbone"], num_classes=3, lesion_head=True).state_dict()
    moved = max((a[k].float() - fresh[k].float()).abs().max().item() for k in decoder if k.endswith("weight"))
    assert moved > 1e-3  # the decoder trained (a frozen or unused decoder would trivially agree)
    assert json.loads(two[0]["meta"])["lesion_head"] is True


def test_when_rank_0_would_stop_early_both_ranks_stop_together(tmp_path):
    options = {**EXACT, "epochs": 5, "patience": 2}
    ranks = _worker(2, tmp_path / "vote", options, "--split-vote")
    epochs = [[row["epoch"] for row in json.loads(rank["history"])] for rank in ranks]
    assert epochs == [[1, 2, 3], [1, 2, 3]]  # rank 0's losses 1, 2, 3: two epochs without improvement
    assert [json.loads(rank["meta"])["best_epoch"] for rank in ranks] == [1, 1]
    a, b = (rank["state_dict"] for rank in ranks)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_stage_under_torchrun_with_two_processes_writes_one_loadable_checkpoint(tmp_path, repo_root):
    prepared, split = _prepared_dirs(tmp_path)  # the tiny fake cache of the training tests
    params = yaml.safe_load((repo_root / "params.yaml").read_text(encoding="utf-8"))
    params["model"].update(backbone="test_efficientnet", pretrained="none")
    params["train"].update(epochs=2, batch_size=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    model_path, live, resume = tmp_path / "model.pt", tmp_path / "live", tmp_path / "resume"
    proc = _run(2, [str(repo_root / "stages" / "train.py"), "--prepared", str(prepared), "--split", str(split),
                    "--model", str(model_path), "--live", str(live), "--resume", str(resume),
                    "--params", str(tmp_path / "params.yaml")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, meta = load_checkpoint(model_path)
    assert meta["class_names"] == CLASSES and meta["best_epoch"] in (1, 2)
    assert meta["params"]["train"]["world_size"] == 2 and meta["params"]["train"]["batch_size"] == 4
    assert not any(name.startswith("module.") for name in model.state_dict())  # DDP wrapper not saved
    assert (live / "metrics.json").is_file() and not resume.exists()  # resume state cleared once written
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # no half-written temp outputs from the non-writing rank


def test_a_global_batch_that_does_not_divide_over_the_processes_is_refused(tmp_path, monkeypatch):
    from test_training import _options

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before any process group is joined
    monkeypatch.setenv("RANK", "0")
    message = r"train\.batch_size=7 is the global batch and must divide evenly over the 2 torchrun processes"
    with pytest.raises(ValueError, match=message):
        train(**_options(tmp_path, batch_size=7))
