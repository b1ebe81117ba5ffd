"""docs/gpus-and-machines.md's torchrun commands, run through the real `dvc` CLI on the tiny sample.

The lines are read from that page (tests/test_scale_e2e.py's reader), so what is documented is what runs. They
run on copies of test_scale_e2e's tiny pipeline (fetch .. evaluate, stratified variant), CPU and gloo:
``dvc exp run -S "train.launcher='torchrun --standalone --nproc_per_node=2'"`` as printed; the two-machine lines
as two "nodes" on 127.0.0.1, each a copy of the repo (its own workspace, no shared disk), with HOST, the port and
4 processes per node replaced by 127.0.0.1, a free port and 1 (2 cores here). The GPU line runs only where CUDA
is (with one process per visible GPU). Each asserts the checkpoint DVC recorded came from a 2-process run:
``world_size`` in the checkpoint's params is what the process group had, not a parameter.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_pipeline_e2e import _dvc, _ran_stages
from test_scale_e2e import MODEL, _doc_block, _lab, _line, _md5, built  # noqa: F401  (built: the fixture)

from assurexray.learning.model import load_checkpoint

pytestmark = pytest.mark.slow

GPUS = _doc_block("docs/gpus-and-machines.md", "GPUs and several machines")
TRAIN_STAGE = "train@stratified"
NODE1_HANG_GUARD_S = 1500  # node 1 waits for node 0's rendezvous (torchrun's static timeout: 600 s); a guard only


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _exp_run(line: str, repo: Path) -> str:
    """Run a documented ``dvc exp run ...`` line in ``repo``; the output, after checking the train stage ran."""
    argv = shlex.split(line)
    assert argv[:3] == ["dvc", "exp", "run"], line
    out = _dvc(repo, *argv[1:], env_extra={"OMP_NUM_THREADS": "1"})  # one thread a process on 2 shared cores
    assert TRAIN_STAGE in _ran_stages(out.stdout), out.stdout
    return out.stdout + out.stderr


def _assert_trained_by(repo: Path, launcher: str, world_size: int) -> None:
    """dvc.lock records ``launcher`` as the train cmd's start, and the checkpoint a ``world_size`` process group."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    cmd = lock["stages"][TRAIN_STAGE]["cmd"]
    assert cmd.startswith(f"{launcher} stages/train.py "), cmd
    _, meta = load_checkpoint(repo / MODEL)
    assert meta["params"]["train"]["world_size"] == world_size, meta["params"]["train"]
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["launcher"] == launcher


def _launcher(line: str) -> str:
    """The launcher a line sets: ``-S "train.launcher='torchrun ...'"`` (Hydra quotes a value with spaces and =)."""
    value = next(arg.split("=", 1)[1] for arg in shlex.split(line) if arg.startswith("train.launcher="))
    assert value[0] == value[-1] == "'", f"docs: {line!r} must quote the launcher for dvc's -S parser"
    return value[1:-1]


def test_the_page_lists_plain_dvc_repro_as_the_one_process_run():
    assert GPUS[0] == "dvc repro"  # test_pipeline_e2e and test_scale_e2e build their repos with it
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert params["train"]["launcher"] == "python"


def test_the_documented_two_process_line_trains_the_dvc_experiment_under_torchrun(built, tmp_path):
    line = _line(GPUS, "dvc exp run -S \"train.launcher='torchrun --standalone")
    lab = _lab(built, tmp_path / "lab")
    _exp_run(line, lab)
    _assert_trained_by(lab, _launcher(line), world_size=2)
    assert _md5(lab / MODEL) != _md5(built / MODEL)  # retrained, not restored from the run-cache


def _multi_node(line: str, port: int) -> str:
    """The documented two-machine line on one machine: HOST = 127.0.0.1, a free port, 1 process per node."""
    subs = {"HOST": "127.0.0.1", "29500": str(port), "--nproc_per_node=4": "--nproc_per_node=1"}
    for placeholder, value in subs.items():
        assert placeholder in line, (placeholder, line)
        line = line.replace(placeholder, value)
    return line


def test_the_documented_two_node_lines_train_one_model_across_two_torchrun_nodes(built, tmp_path):
    port = _free_port()
    node0_line = _multi_node(_line(GPUS, "dvc exp run -S \"train.launcher='torchrun --nnodes=2"), port)
    node1_argv = shlex.split(_multi_node(_line(GPUS, "torchrun --nnodes=2 --node-rank=1 "), port))
    # node 1 runs exactly the train stage's command of the variant, under its own torchrun
    stage_cmd = yaml.safe_load((built / "dvc.yaml").read_text())["stages"]["train"]["do"]["cmd"]
    script = shlex.split(stage_cmd.replace("${item}", "stratified"))
    assert script[0] == "${train.launcher}" and node1_argv[-len(script) + 1:] == script[1:], (node1_argv, script)

    node0, node1 = _lab(built, tmp_path / "node0"), _lab(built, tmp_path / "node1")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    joined = subprocess.Popen([str(torchrun), *node1_argv[1:]], cwd=node1, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _exp_run(node0_line, node0)
        out, _ = joined.communicate(timeout=NODE1_HANG_GUARD_S)
    finally:
        if joined.poll() is None:
            os.killpg(joined.pid, signal.SIGKILL)
            joined.wait()
    assert joined.returncode == 0, out[-4000:]
    _assert_trained_by(node0, _launcher(node0_line), world_size=2)
    # node 1 wrote nothing: its model, its DVCLive metrics (in git) and its resume folder are as they were
    assert _md5(node1 / MODEL) == _md5(built / MODEL)
    changed = subprocess.run(["git", "status", "--porcelain"], cwd=node1, check=True, capture_output=True,
                             text=True).stdout
    assert changed == "", changed
    assert [p for p in (node1 / ".assurexray").rglob("*") if p.is_file()] == []  # no resume state either


def test_the_documented_gpu_line_trains_on_every_visible_gpu(built, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here: the NCCL line runs only on a GPU machine")
    gpus = torch.cuda.device_count()
    line = _line(GPUS, "dvc exp run -S train.device=cuda ").replace("--nproc_per_node=4", f"--nproc_per_node={gpus}")
    lab = _lab(built, tmp_path / "lab")
    _exp_run(line, lab)
    _assert_trained_by(lab, _launcher(line), world_size=gpus)
