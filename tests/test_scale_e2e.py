"""Team scale, end to end with the real `dvc` CLI on the tiny synthetic sample (the README's commands).

One module-scoped repo runs the stratified branch up to `evaluate@stratified` once (what inference needs; the
centre branch, explain and report would only multiply the runtime on 2 cores); then, in order: a local-directory remote and an S3 remote
(moto on 127.0.0.1) round trip into fresh clones that infer without training, a queued grid of train-parameter
experiments run two at a time, `dvc exp push` / `dvc exp pull` through a bare git remote, and a training run
SIGKILLed mid-epoch that `dvc repro` resumes into the bytes of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline_e2e import _dvc, _git, _set_params, build_pipeline_repo

pytestmark = pytest.mark.slow

TARGET = "evaluate@stratified"  # the stage every test builds (with its upstream stages)
PULL = ("--with-deps", TARGET)  # plain `dvc pull` after a full `dvc repro`; here only TARGET's branch ran
BUCKET = "assurexray-lab"
S3_KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}  # moto accepts any credentials


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return build_pipeline_repo(tmp_path_factory.mktemp("scale") / "repo", targets=(TARGET,))


def _clone(source: Path | str, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(source), str(dest)], check=True, capture_output=True, text=True)
    _git(dest, "config", "user.email", "e2e@example.invalid")
    _git(dest, "config", "user.name", "e2e")
    return dest


def _status(repo: Path, target: str = TARGET) -> dict:
    return json.loads(_dvc(repo, "status", target, "--json").stdout or "{}")


def _infer_first_image(repo: Path) -> list[str]:
    image = sorted((repo / "data" / "raw" / "images").iterdir())[0]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "assurexray"), "infer", str(image), "--model",
         "models/stratified/model.pt", "--output", "predictions.csv"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (repo / "predictions.csv").read_text().splitlines()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_endpoint(tmp_path):
    """moto's S3 server on loopback only, with one empty bucket."""
    import boto3

    port = _free_port()
    log = (tmp_path / "moto.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # readiness, not a timing assertion: the server imports for a few seconds
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None, (tmp_path / "moto.log").read_text()
            time.sleep(0.5)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def test_a_local_remote_lets_a_fresh_clone_pull_and_infer_without_training(repo, tmp_path):
    store = tmp_path / "nas" / "assurexray-cache"
    _dvc(repo, "remote", "add", "-d", "storage", str(store))  # README "team setup": local NAS
    _git(repo, "add", ".dvc/config")
    _git(repo, "commit", "-qm", "default DVC remote")
    _dvc(repo, "push")
    clone = _clone(repo, tmp_path / "clone")
    assert not (clone / "models" / "stratified" / "model.pt").exists()
    _dvc(clone, "pull", *PULL)
    assert _status(clone) == {}  # every stage up to date: nothing would retrain
    header, row = _infer_first_image(clone)
    assert "prob_Malignant" in header and row


def test_an_s3_remote_round_trip_through_moto_on_loopback(repo, tmp_path, s3_endpoint):
    def configure(where: Path, *, add: bool) -> None:
        if add:  # README "team setup": S3 / MinIO, shared settings committed, keys kept --local
            _dvc(where, "remote", "add", "s3lab", f"s3://{BUCKET}/assurexray")
            _dvc(where, "remote", "modify", "s3lab", "endpointurl", s3_endpoint)
        for key, value in S3_KEYS.items():
            _dvc(where, "remote", "modify", "--local", "s3lab", key, value)

    configure(repo, add=True)
    _git(repo, "add", ".dvc/config")
    _git(repo, "commit", "-qm", "S3 remote")
    assert "secret_access_key" not in (repo / ".dvc" / "config").read_text()
    _dvc(repo, "push", "-r", "s3lab")
    clone = _clone(repo, tmp_path / "s3clone")
    configure(clone, add=False)
    _dvc(clone, "pull", "-r", "s3lab", *PULL)
    assert _status(clone) == {}
    header, row = _infer_first_image(clone)
    assert "prob_Malignant" in header and row
    local = (repo / "models/stratified/model.pt").read_bytes()
    assert (clone / "models/stratified/model.pt").read_bytes() == local


def _experiments(shown) -> dict[str, dict]:
    """name -> data of every named experiment in `dvc exp show --json` output."""
    found: dict[str, dict] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            if node.get("name") and isinstance(node.get("data"), dict) and "params" in node["data"]:
                found[node["name"]] = node["data"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(shown)
    return found


GRID = {"lr-high": ["-S", "train.lr=0.005", "-S", "train.batch_size=8"],
        "lr-low": ["-S", "train.lr=0.0005", "-S", "train.batch_size=16"]}


def test_a_queued_grid_of_train_parameters_runs_two_at_a_time_with_its_own_metrics(repo):
    for name, switches in GRID.items():
        _dvc(repo, "exp", "run", "--queue", "-n", name, *switches, TARGET)
    try:
        _dvc(repo, "queue", "start", "-j", "2")
        status = ""
        for _ in range(3600):  # poll until the workers are done (no time limit asserted)
            status = _dvc(repo, "queue", "status").stdout
            if not any(word in status for word in ("Queued", "Running")):
                break
            time.sleep(1)
    finally:
        _dvc(repo, "queue", "stop", check=False)
    logs = {name: _dvc(repo, "queue", "logs", name, check=False).stdout[-3000:] for name in GRID}
    assert "Failed" not in status, (status, logs)
    found = _experiments(json.loads(_dvc(repo, "exp", "show", "--json").stdout))
    assert set(GRID) <= set(found), (sorted(found), status)
    summaries = {}
    for name, switches in GRID.items():
        params = found[name]["params"]["params.yaml"]["data"]["train"]
        assert f"train.lr={params['lr']}" in switches and f"train.batch_size={params['batch_size']}" in switches
        metrics = found[name]["metrics"]
        summary = metrics["metrics/stratified/train/metrics.json"]["data"]
        assert summary["epochs_run"] >= 1 and 0 <= summary["best"]["macro_auc"] <= 1
        assert "metrics/stratified/eval/metrics.json" in metrics
        summaries[name] = summary
    assert summaries["lr-high"] != summaries["lr-low"]  # each experiment logged its own DVCLive run


def test_exp_push_and_pull_share_an_experiment_through_a_bare_git_remote(repo, tmp_path):
    origin = tmp_path / "origin.git"
    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=repo, check=True,
                            capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "init", "-q", "--bare", f"--initial-branch={branch}", str(origin)], check=True)
    _git(repo, "remote", "add", "origin", str(origin))
    _git(repo, "push", "-q", "origin", "HEAD")
    _dvc(repo, "exp", "push", "origin", "lr-high")  # git refs to origin, cached outputs to the DVC remote
    clone = _clone(origin, tmp_path / "teammate")
    assert "lr-high" not in _dvc(clone, "exp", "list", "--all-commits").stdout
    _dvc(clone, "exp", "pull", "origin", "lr-high")
    assert "lr-high" in _experiments(json.loads(_dvc(clone, "exp", "show", "--json").stdout))
    _dvc(clone, "exp", "apply", "lr-high")
    _dvc(clone, "pull", *PULL)
    assert yaml.safe_load((clone / "params.yaml").read_text())["train"]["lr"] == 0.005
    assert _status(clone) == {}  # the experiment's outputs came from the remote: nothing to rerun


def test_training_killed_mid_epoch_resumes_under_dvc_repro_to_the_uninterrupted_bytes(repo):
    _git(repo, "checkout", "-q", "--", ".")  # the committed baseline (exp apply elsewhere never touched repo)
    _set_params(repo / "params.yaml", {("train", "epochs"): 5, ("train", "patience"): None})
    state = repo / ".assurexray" / "resume" / "stratified" / "state.pt"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0"}
    killed = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "train@stratified"], cwd=repo, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while killed.poll() is None and not state.exists():
        time.sleep(0.05)
    assert killed.poll() is None, "training finished before it could be killed"
    os.killpg(killed.pid, signal.SIGKILL)  # dvc, the stage's shell and python: no cleanup runs
    killed.wait()
    assert not (repo / "models" / "stratified" / "model.pt").exists()

    resumed = _dvc(repo, "repro", "train@stratified")
    assert "resuming after epoch" in resumed.stdout + resumed.stderr
    assert not state.parent.exists() and _status(repo, "train@stratified") == {}
    assert ".assurexray" not in subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True,
                                               text=True).stdout
    outputs = ["models/stratified/model.pt", *sorted(str(p.relative_to(repo)) for p in
                                                      (repo / "metrics/stratified/train").rglob("*") if p.is_file())]
    after_kill = {path: (repo / path).read_bytes() for path in outputs}

    fresh = _dvc(repo, "repro", "--force", "--no-run-cache", "--single-item", "train@stratified")
    assert "Running stage 'train@stratified'" in fresh.stdout and "resuming" not in fresh.stdout + fresh.stderr
    assert {path: (repo / path).read_bytes() for path in outputs} == after_kill
    assert len(json.loads((repo / "metrics/stratified/train/metrics.json").read_text())) and len(outputs) > 2
