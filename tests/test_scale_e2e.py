"""Team scale, end to end with the real `dvc` CLI on the tiny synthetic sample: the documented commands, as printed.

One module-scoped repo runs, once, the project's pipeline cut to what inference needs (test_pipeline_e2e's tiny
params; stages fetch, prepare, split, train, evaluate of the stratified variant: the centre branch, audit, explain
and report would only multiply the runtime on 2 cores). Its stage definitions are the project's and every stage
of it has run, so the documented lines run verbatim (a never-run stage makes a plain `dvc pull` and `dvc exp apply`
fail: nothing to check out for it). Each remote test works on its own copy ("the lab machine"): the
docs/team-setup.md lines configure a local-directory remote, an S3 remote (moto's server on 127.0.0.1) or an SSH
remote (an asyncssh SFTP server on 127.0.0.1), `dvc push`, then a teammate's fresh `git clone` runs `dvc pull`,
`dvc status` (clean: nothing to retrain) and `assurexray infer`. The "Experiment grids" lines of
docs/experiments.md queue a grid of train parameters, run it two at a time, read `dvc exp show --json`, and share
one experiment through a bare git remote (`dvc exp push` / `dvc exp pull`).

The commands are read from those pages (placeholders such as ``<experiment>`` substituted), so the pages and
what runs here cannot drift apart. Timeouts are hang guards only; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import skip_or_fail
from documentation import bash_lines, inline_code, section
from test_pipeline_e2e import REPO_ROOT, _dvc, _git, build_pipeline_repo

pytestmark = pytest.mark.slow

#: The stages kept (model + operating point: all `assurexray infer` needs), for the one variant kept.
KEPT_STAGES, KEPT_VARIANT = ("fetch", "prepare", "split", "pretrain", "train", "evaluate"), "stratified"
MODEL = "models/stratified/model.pt"
TRAIN_SUMMARY = "metrics/stratified/train/metrics.json"  # DVCLive's summary: a DVC metric of the train stage
QUEUE_HANG_GUARD_S = 1800  # two 1-epoch trainings on 2 busy cores take minutes; this only stops a hung queue
FAKE_KEYS = {"AKIA...": "testing", "...": "testing"}  # the page's key placeholders; moto accepts any


# --- the documented commands -------------------------------------------------------------------------------------

def _doc_block(page: str, heading: str) -> list[str]:
    """Command lines of the ```bash blocks under ``heading`` of ``page``: continuations joined, comments dropped."""
    return bash_lines(section(page, heading))


def _doc_inline(page: str, heading: str, prefix: str) -> str:
    """The one inline `command` under ``heading`` of ``page`` that starts with ``prefix`` (quoted in prose)."""
    return _line(inline_code(section(page, heading)), prefix)


def _line(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, f"docs: expected one command starting {prefix!r}, found {found}"
    return found[0]


def _run_line(line: str, cwd: Path, subs: dict[str, str] | None = None) -> tuple[Path, list[str]]:
    """Run a documented line (``a && b && cd d && c``) as a shell would, placeholders replaced by ``subs``.

    Returns the final directory and each dvc command's stdout.
    """
    outputs = []
    for part in line.split(" && "):
        argv = [(subs or {}).get(arg, arg) for arg in shlex.split(part)]
        if argv[0] == "cd":
            cwd = cwd / argv[1]
        elif argv[0] == "git":
            _git(cwd, *argv[1:])
        elif argv[0] == "dvc":
            outputs.append(_dvc(cwd, *argv[1:]).stdout)
        else:
            raise AssertionError(f"documented line {line!r}: no runner for {argv[0]!r}")
    return cwd, outputs


TEAM = _doc_block("docs/team-setup.md", "Team setup")
GRID = _doc_block("docs/experiments.md", "Experiment grids")
CLONE = _line(TEAM, "git clone ")  # git clone <repo-url> assurexray && cd assurexray && dvc pull && dvc status
COMMIT_AND_PUSH = _line(TEAM, "git add .dvc/config ")
#: What to pull when some stage never ran (quoted in the page's prose).
PULL_WITH_DEPS = _doc_inline("docs/team-setup.md", "Team setup", "dvc pull --with-deps ")


# --- the repos -----------------------------------------------------------------------------------------------------

def _keep_inference_branch(pipeline: dict) -> None:
    """dvc.yaml cut to KEPT_STAGES of KEPT_VARIANT (definitions unchanged); the plots of dropped outputs go too."""
    pipeline["vars"] = [{"variants": [KEPT_VARIANT]}]
    pipeline["stages"] = {name: stage for name, stage in pipeline["stages"].items() if name in KEPT_STAGES}
    assert set(pipeline["stages"]) == set(KEPT_STAGES)
    pipeline.pop("plots", None)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The tiny pipeline (inference branch) run and committed, once; tests copy it and never change it."""
    if shutil.which("git") is None:
        skip_or_fail("git is not installed")
    return build_pipeline_repo(tmp_path_factory.mktemp("scale") / "repo", edit_dvc_yaml=_keep_inference_branch)


def _lab(built: Path, dest: Path) -> Path:
    """A copy of the built repo, DVC cache included (the machine that ran the pipeline)."""
    shutil.copytree(built, dest, symlinks=True)
    return dest


def _teammate_clone(url: Path, parent: Path) -> Path:
    """In ``parent``, docs/team-setup.md's
    ``git clone <repo-url> assurexray && cd assurexray && dvc pull && dvc status``."""
    parent.mkdir(parents=True, exist_ok=True)
    clone, (pulled, status) = _run_line(CLONE, parent, {"<repo-url>": str(url)})
    assert "up to date" in status.lower(), status
    assert json.loads(_dvc(clone, "status", "--json").stdout or "{}") == {}  # nothing would retrain
    return clone


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _infer_first_image(repo: Path) -> list[str]:
    image = sorted((repo / "data" / "raw" / "images").iterdir())[0]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "assurexray"), "infer", str(image), "--model", MODEL,
         "--output", "predictions.csv"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (repo / "predictions.csv").read_text().splitlines()


def _assert_pulled_and_infers(clone: Path, lab: Path) -> None:
    assert (clone / MODEL).read_bytes() == (lab / MODEL).read_bytes()
    header, row = _infer_first_image(clone)
    assert "prob_Malignant" in header and row


# --- remotes -------------------------------------------------------------------------------------------------------

def test_a_local_directory_remote_lets_a_fresh_clone_pull_and_infer_without_training(built, tmp_path):
    lab = _lab(built, tmp_path / "lab")
    store = tmp_path / "nas" / "assurexray-cache"
    _run_line(_line(TEAM, "dvc remote add -d storage /"), lab, {"/mnt/nas/assurexray-cache": str(store)})
    _run_line(COMMIT_AND_PUSH, lab)
    assert store.is_dir()
    clone = _teammate_clone(lab, tmp_path / "teammate")
    _assert_pulled_and_infers(clone, lab)
    partial = tmp_path / "partial"  # the page's targeted pull, in another fresh clone
    subprocess.run(["git", "clone", "-q", str(lab), str(partial)], check=True, capture_output=True)
    _run_line(PULL_WITH_DEPS, partial)  # dvc pull --with-deps evaluate@stratified
    _assert_pulled_and_infers(partial, lab)


@pytest.fixture
def s3_endpoint(monkeypatch, tmp_path):
    """moto's S3 API served on 127.0.0.1 (a free port) in this process; no real AWS settings reach DVC."""
    try:
        import boto3
        import dvc_s3  # noqa: F401  (what `dvc` needs for s3:// remotes: pip install .[s3])
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        skip_or_fail(f"S3 remote test needs dvc-s3 and moto[server] ({exc})")
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):  # empty files, not ~/.aws (must exist)
        (tmp_path / name).write_text("")
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}", boto3
    finally:
        server.stop()


def test_an_s3_remote_on_loopback_moto_round_trips_to_a_fresh_clone_that_infers(built, tmp_path, s3_endpoint,
                                                                               monkeypatch):
    endpoint, boto3 = s3_endpoint
    add = _line(TEAM, "dvc remote add -d storage s3://")
    bucket = re.match(r"s3://([^/]+)/", add.split()[-1]).group(1)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)

    lab = _lab(built, tmp_path / "lab")
    _run_line(add, lab)
    _run_line(_line(TEAM, "dvc remote modify storage endpointurl "), lab,
              {"https://minio.lab.example:9000": endpoint})
    for key in ("access_key_id", "secret_access_key"):  # the lab keeps its keys in .dvc/config.local
        _run_line(_line(TEAM, f"dvc remote modify --local storage {key} "), lab, FAKE_KEYS)
    _run_line(COMMIT_AND_PUSH, lab)
    committed = subprocess.run(["git", "show", "HEAD:.dvc/config"], cwd=lab, check=True, capture_output=True,
                               text=True).stdout
    assert endpoint in committed and "testing" not in committed  # shared settings in git, keys not
    listed = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing").list_objects_v2(Bucket=bucket)
    assert listed.get("KeyCount", 0) > 0

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # the teammate's keys come from the environment
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    clone = _teammate_clone(lab, tmp_path / "teammate")
    _assert_pulled_and_infers(clone, lab)


@pytest.fixture
def ssh_server(tmp_path, monkeypatch):
    """An SSH/SFTP server (asyncssh, what dvc-ssh's client is built on) on 127.0.0.1, key login only.

    HOME is a temp dir whose ~/.ssh holds the user's key and the server's host key in known_hosts, as on a lab
    machine after ``ssh-keygen`` and ``ssh-keyscan``; no other SSH settings reach DVC. Yields the port.
    """
    try:
        import asyncssh
        import dvc_ssh  # noqa: F401  (what `dvc` needs for ssh:// remotes: pip install .[ssh])
    except ImportError as exc:
        skip_or_fail(f"SSH remote test needs dvc-ssh ({exc})")
    dot_ssh = tmp_path / "home" / ".ssh"
    dot_ssh.mkdir(parents=True)
    user_key, host_key = asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key("ssh-ed25519")
    user_key.write_private_key(str(dot_ssh / "id_ed25519"))
    (dot_ssh / "id_ed25519").chmod(0o600)
    monkeypatch.setenv("HOME", str(dot_ssh.parent))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    authorized = asyncssh.import_authorized_keys(user_key.export_public_key().decode())

    async def listen():  # asyncssh.listen returns an awaitable, not the coroutine run_coroutine_threadsafe wants
        return await asyncssh.listen("127.0.0.1", 0, server_host_keys=[host_key], sftp_factory=True,
                                     authorized_client_keys=authorized)

    server = asyncio.run_coroutine_threadsafe(listen(), loop).result(timeout=60)
    try:
        port = server.sockets[0].getsockname()[1]
        (dot_ssh / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key.export_public_key().decode()}")
        yield port
    finally:
        server.close()
        asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=60)
        loop.close()


def test_an_ssh_remote_on_loopback_round_trips_to_a_fresh_clone_that_infers(built, tmp_path, ssh_server):
    store = tmp_path / "server" / "srv" / "assurexray-cache"
    add = _line(TEAM, "dvc remote add -d storage ssh://")
    lab = _lab(built, tmp_path / "lab")
    _run_line(add, lab, {add.split()[-1]: f"ssh://lab@127.0.0.1:{ssh_server}{store}"})
    _run_line(_line(TEAM, "dvc remote modify --local storage keyfile "), lab)  # ~/.ssh/id_ed25519, as printed
    _run_line(COMMIT_AND_PUSH, lab)
    committed = subprocess.run(["git", "show", "HEAD:.dvc/config"], cwd=lab, check=True, capture_output=True,
                               text=True).stdout
    assert f"127.0.0.1:{ssh_server}" in committed and "keyfile" not in committed  # the key path stays local
    assert any(path.is_file() for path in (store / "files" / "md5").rglob("*"))  # pushed over SFTP
    clone = _teammate_clone(lab, tmp_path / "teammate")  # no config.local: ssh's default key in ~/.ssh
    _assert_pulled_and_infers(clone, lab)


# --- experiment queue, exp push / pull -----------------------------------------------------------------------------

def _experiments(shown) -> dict[str, dict]:
    """name -> data of every named experiment in `dvc exp show --json` output (any nesting)."""
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


def _overrides(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-S")


def _queue_status(lab: Path) -> dict[str, str]:
    """Experiment name -> status word, from `dvc queue status`'s table (Task, Name, Created, Status, Message)."""
    rows = {}
    for line in _dvc(lab, "queue", "status").stdout.splitlines():
        words = line.split()
        status = next((w for w in words if w in {"Queued", "Running", "Success", "Failed"}), None)  # dvc's 4 states
        if status and len(words) > 1:
            rows[words[1]] = status
    return rows


@pytest.fixture(scope="module")
def grid(built, tmp_path_factory):
    """The documented grid queued on a lab copy with a local DVC remote and a bare git `origin`, run 2 at a time.

    Returns (lab, origin, {experiment name: its -S overrides}).
    """
    root = tmp_path_factory.mktemp("grid")
    lab = _lab(built, root / "lab")
    store = root / "nas" / "assurexray-cache"
    _run_line(_line(TEAM, "dvc remote add -d storage /"), lab, {"/mnt/nas/assurexray-cache": str(store)})
    _run_line(COMMIT_AND_PUSH, lab)
    origin = root / "origin.git"
    branch = subprocess.run(["git", "rev-parse", "--abbrev-ref", "HEAD"], cwd=lab, check=True,
                            capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "init", "-q", "--bare", f"--initial-branch={branch}", str(origin)], check=True)
    _git(lab, "remote", "add", "origin", str(origin))
    _git(lab, "push", "-q", "origin", "HEAD")

    queued = [line for line in GRID if line.startswith("dvc exp run --queue ")]
    assert len(queued) >= 2, GRID
    experiments = {}
    for line in queued:
        argv = shlex.split(line)
        assert all(key.startswith(("train.", "base.")) for key in _overrides(argv)), line  # train-stage params
        out = _dvc(lab, *argv[1:])
        name = re.search(r"Queued experiment '([^']+)'", out.stdout + out.stderr).group(1)
        experiments[name] = _overrides(argv)
    assert len(set(map(frozenset, (o.items() for o in experiments.values())))) == len(experiments)

    _run_line(_line(GRID, "dvc queue start "), lab)  # dvc queue start -j 2
    assert _line(GRID, "dvc queue status") == "dvc queue status"
    deadline = time.monotonic() + QUEUE_HANG_GUARD_S
    try:
        while True:
            status = _queue_status(lab)
            if all(status.get(name) in {"Success", "Failed"} for name in experiments):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(5)
    finally:
        _dvc(lab, "queue", "stop", check=False)
    if any(status.get(name) != "Success" for name in experiments):
        logs = {name: _dvc(lab, "queue", "logs", name, check=False).stdout[-4000:] for name in experiments}
        hung = time.monotonic() > deadline
        pytest.fail(f"queued experiments {'still unfinished after the hang guard' if hung else 'did not succeed'}: "
                    f"{status}\n" + "\n".join(f"--- dvc queue logs {n}\n{log}" for n, log in logs.items()))
    return lab, origin, experiments


def test_a_queued_grid_of_train_parameters_runs_two_at_a_time_each_with_its_own_dvclive_metrics(grid):
    lab, _, experiments = grid
    assert _line(GRID, "dvc exp show") == "dvc exp show"
    found = _experiments(json.loads(_dvc(lab, "exp", "show", "--json").stdout))
    assert set(experiments) <= set(found), (sorted(found), sorted(experiments))
    summaries = {}
    for name, overrides in experiments.items():
        params = found[name]["params"]["params.yaml"]["data"]
        for key, value in overrides.items():
            section, leaf = key.split(".", 1)
            assert params[section][leaf] == yaml.safe_load(value), (name, key)
        summary = found[name]["metrics"][TRAIN_SUMMARY]["data"]  # written by DVCLive in the experiment's run
        assert summary["epochs_run"] >= 1 and 0 <= summary["best"]["macro_auc"] <= 1
        summaries[name] = json.dumps(summary, sort_keys=True)
    assert len(set(summaries.values())) == len(summaries), summaries  # each experiment logged its own run


def test_the_ablation_report_summarises_the_queued_grid_from_dvc_exp_show_and_git_refs(grid, tmp_path):
    """The ablation command on real queued experiments: its rows are the experiments' own metrics files.

    The lab keeps only the stratified branch, so the centre columns must come out n/a, not fail or invent."""
    lab, _, experiments = grid
    baseline, other = sorted(experiments)
    out = tmp_path / "ablation"
    done = subprocess.run([sys.executable, "-m", "assurexray.assessment.ablation", "--repo", str(lab),
                           "--baseline", baseline, "--out", str(out), "--resamples", "50"],
                          cwd=lab, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    table = {row["config"]: row for row in _csv_rows(out / "ablation.csv")}
    label = ", ".join(f"{k}={yaml.safe_load(v)}" for k, v in sorted(experiments[other].items())
                      if yaml.safe_load(v) != yaml.safe_load(experiments[baseline].get(k, "null")))
    assert {"baseline", label} <= set(table), table.keys()  # (the grid's parent commit is a row of its own too)
    for name, config in ((baseline, "baseline"), (other, label)):
        shown = subprocess.run(["git", "show", f"{_exp_rev(lab, name)}:metrics/stratified/eval/metrics.json"],
                               cwd=lab, check=True, capture_output=True, text=True).stdout
        expected = json.loads(shown)["headline"]["macro_auc"]["value"]
        assert float(table[config]["stratified_mean"]) == pytest.approx(expected)
        assert table[config]["center_pooled_mean"] == ""  # no centre branch here: n/a
    # each experiment retrained its stratified model on the same seed's split: one paired difference
    assert float(table[label]["paired_diff_stratified_n_pairs"]) == 1
    assert table[label]["paired_diff_stratified_value"] != ""
    report = (out / "ablation.md").read_text(encoding="utf-8")
    assert "NOT FOR CLINICAL USE" in report and f"--baseline {baseline}" in report and (out / "ablation.png").is_file()


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_exp_push_and_pull_share_an_experiment_and_its_model_through_a_bare_git_remote(grid, tmp_path):
    lab, origin, experiments = grid
    name, overrides = next(iter(experiments.items()))
    _run_line(_line(GRID, "dvc exp push origin "), lab, {"<experiment>": name})  # git refs + cache to the remote
    lock = yaml.safe_load(subprocess.run(["git", "show", f"{_exp_rev(lab, name)}:dvc.lock"], cwd=lab, check=True,
                                         capture_output=True, text=True).stdout)
    model_md5 = next(o["md5"] for o in lock["stages"]["train@stratified"]["outs"] if o["path"] == MODEL)
    assert model_md5 != _md5(lab / MODEL)  # the experiment's own model, not the baseline's

    teammate = tmp_path / "teammate"
    subprocess.run(["git", "clone", "-q", str(origin), str(teammate)], check=True, capture_output=True)
    assert name not in _dvc(teammate, "exp", "list", "--all-commits").stdout
    _run_line(_line(GRID, "dvc exp pull origin "), teammate, {"<experiment>": name})  # pull, apply, dvc pull
    shown = _experiments(json.loads(_dvc(teammate, "exp", "show", "--json").stdout))
    assert name in shown and TRAIN_SUMMARY in shown[name]["metrics"]
    params = yaml.safe_load((teammate / "params.yaml").read_text())
    for key, value in overrides.items():
        section, leaf = key.split(".", 1)
        assert params[section][leaf] == yaml.safe_load(value), key
    assert _md5(teammate / MODEL) == model_md5  # fetched from the DVC remote, not retrained
    assert json.loads(_dvc(teammate, "status", "--json").stdout or "{}") == {}  # its evaluate came along too
    header, row = _infer_first_image(teammate)  # with the experiment's model and its own operating point
    assert "prob_Malignant" in header and row


def _exp_rev(repo: Path, name: str) -> str:
    refs = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.splitlines()
    found = [rev for rev, ref in (r.split() for r in refs) if ref.rsplit("/", 1)[-1] == name]
    assert len(found) == 1, refs
    return found[0]
