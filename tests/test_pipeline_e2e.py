"""End to end: the real `dvc` CLI over the whole pipeline, on a tiny synthetic sample, in a temp git repo.

One module-scoped repo is built once (the expensive part: every stage runs), then each test asks one question of
it, in order: does it build, is a second repro a no-op, does a split.center change touch only its own branch, does
the documented experiment/compare sequence work.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import stat
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("stratified", "center")

#: Tiny settings: the machinery runs end to end in about a minute on 2 cores; values are not judged here.
TINY_PARAMS = {
    ("data", "sample", "n_cases"): 70,
    ("data", "sample", "image_size"): 96,
    ("prepare", "image_px"): 48,
    ("prepare", "workers"): 1,
    ("model", "backbone"): "test_efficientnet",
    ("model", "pretrained"): "none",
    ("train", "epochs"): 1,
    ("train", "batch_size"): 16,
    ("evaluate", "bootstrap_resamples"): 50,
    ("explain", "bootstrap_resamples"): 50,
    ("explain", "gallery_top_k"): 1,
}


def _dvc(repo: Path, *args: str, check: bool = True, env_extra: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONHASHSEED"] = "0"
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=1500
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True)


def _set_params(path: Path, updates: dict[tuple[str, ...], object]) -> None:
    params = yaml.safe_load(path.read_text())
    for keys, value in updates.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def build_pipeline_repo(repo: Path, params: dict[tuple[str, ...], object] = TINY_PARAMS,
                        targets: tuple[str, ...] = (), edit_dvc_yaml: Callable[[dict], None] | None = None) -> Path:
    """Copy the project into ``repo`` (a new git + DVC repo), run the pipeline (or ``targets``) once, commit.

    ``edit_dvc_yaml`` may change the parsed dvc.yaml in place first (e.g. keep a subset of its stages).
    """
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(REPO_ROOT / name, repo / name)
    if edit_dvc_yaml is not None:
        pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
        edit_dvc_yaml(pipeline)
        (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    for folder in ("stages", "lib"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _set_params(repo / "params.yaml", params)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "e2e@example.invalid")
    _git(repo, "config", "user.name", "e2e")
    _dvc(repo, "init", "-q")
    shutil.copytree(REPO_ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")  # custom plot templates, offline page
    shutil.copy2(REPO_ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # core.autostage, plots.html_template
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "pipeline definition")  # dvclive needs a repository with a commit
    first = _dvc(repo, "repro", *targets)
    (repo / "first_repro.log").write_text(first.stdout + first.stderr)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "tiny pipeline run")
    return repo


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    return build_pipeline_repo(tmp_path_factory.mktemp("e2e") / "repo")


def test_repro_builds_every_declared_output(pipeline_repo: Path):
    repo = pipeline_repo
    for path in ("data/raw/dataset.xlsx", "data/prepared/images.npy", "data/prepared/index.csv",
                 "reports/audit.md", "metrics/audit.json", "metrics/compare.json", "reports/comparison.md",
                 "reports/model_card.md", "reports/report.md", "reports/report.html", "metrics/headline.json"):
        assert (repo / path).is_file(), path
    umask = os.umask(0o022)
    os.umask(umask)
    for path in ("metrics/headline.json", "reports/report.md", "models/center/model.pt"):
        assert stat.S_IMODE((repo / path).stat().st_mode) == 0o666 & ~umask, path  # shareable, as the umask says
    for variant in VARIANTS:
        for part in ("train", "val", "test"):
            assert (repo / f"data/splits/{variant}/{part}.csv").is_file()
        assert (repo / f"models/{variant}/model.pt").is_file()
        metrics = json.loads((repo / f"metrics/{variant}/eval/metrics.json").read_text())
        auc = metrics["headline"]["macro_auc"]
        assert 0.0 <= auc["ci_low"] <= auc["value"] <= auc["ci_high"] <= 1.0
        assert (repo / f"metrics/{variant}/explain/metrics.json").is_file()
    assert "NOT FOR CLINICAL USE" in (repo / "reports/report.md").read_text()


def test_second_repro_runs_nothing_and_status_is_clean(pipeline_repo: Path):
    again = _dvc(pipeline_repo, "repro")
    assert _ran_stages(again.stdout) == set(), again.stdout
    status = json.loads(_dvc(pipeline_repo, "status", "--json").stdout or "{}")
    assert status == {}


def _flat(data: dict, prefix: str = "") -> dict:
    """A nested metrics dict flattened the way DVC names its columns (``macro_auc.value``); None dropped."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = value
    return out


def test_only_the_headline_and_training_summaries_are_dvc_metrics(pipeline_repo: Path):
    shown = json.loads(_dvc(pipeline_repo, "metrics", "show", "--json").stdout)
    files = set(shown[""]["data"])
    assert files == {f"metrics/{v}/{name}" for v in VARIANTS for name in ("headline.json", "train/metrics.json")}
    heads = {v: json.loads((pipeline_repo / f"metrics/{v}/headline.json").read_text()) for v in VARIANTS}
    assert list(heads["stratified"]) == list(heads["center"])  # identical keys, in the same order
    # Identical keys at every level (nulls kept here: a centre absent from one variant's test is null there).
    keys = {v: [k for k, sub in heads[v].items() for k in ([k] + [f"{k}.{s}" for s in sub] if isinstance(sub, dict)
                                                             else [k])] for v in VARIANTS}
    assert keys["stratified"] == keys["center"]
    for v in VARIANTS:
        assert len((pipeline_repo / f"metrics/{v}/headline.json").read_bytes()) < 1000
        assert len(_flat(heads[v])) <= 17  # 14 numbers (lesion map's included) + 3 centres
        eval_metrics = json.loads((pipeline_repo / f"metrics/{v}/eval/metrics.json").read_text())
        assert heads[v]["macro_auc"] == eval_metrics["headline"]["macro_auc"]
        assert _flat(shown[""]["data"][f"metrics/{v}/headline.json"]["data"]) == _flat(heads[v])  # DVC drops nulls
    text = _dvc(pipeline_repo, "metrics", "show").stdout
    assert max(len(line) for line in text.splitlines()) < 760  # ~720 (headline + training columns); was ~25,000


def test_committed_report_links_only_to_files_in_git(pipeline_repo: Path):
    tracked = set(subprocess.run(["git", "ls-files"], cwd=pipeline_repo, capture_output=True, text=True,
                                 check=True).stdout.splitlines())
    assert "reports/report.md" in tracked and "plots/stratified/eval/roc.png" not in tracked  # a DVC output
    for name in ("reports/report.md", "reports/model_card.md"):
        text = (pipeline_repo / name).read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"", text):
            link = next(t for t in target if t)
            if re.match(r"[a-z]+://|#|mailto:", link):
                continue
            resolved = os.path.normpath(os.path.join(os.path.dirname(name), link))
            assert resolved in tracked, f"{name} links to {link}, which git does not track"


def test_metrics_diff_compares_the_two_variants_with_the_documented_experiment(pipeline_repo: Path):
    repo = pipeline_repo
    page = (REPO_ROOT / "docs" / "experiments.md").read_text()
    for documented in ("dvc exp run -n centre -S headline.variant=center",
                       "dvc metrics diff HEAD centre --targets metrics/headline.json --all"):
        assert documented in page, documented  # the commands below, as docs/experiments.md prints them
    run = _dvc(repo, "exp", "run", "-n", "centre", "-S", "headline.variant=center")
    assert _ran_stages(run.stdout) == {"headline"}, run.stdout  # no retraining: both variants exist already
    diff = json.loads(_dvc(repo, "metrics", "diff", "HEAD", "centre", "--targets", "metrics/headline.json",
                           "--all", "--json").stdout)
    rows = diff["metrics/headline.json"]
    stratified = _flat(json.loads((repo / "metrics/stratified/headline.json").read_text()))
    center = _flat(json.loads((repo / "metrics/center/headline.json").read_text()))
    assert set(rows) == set(stratified) | set(center)
    for key, row in rows.items():
        assert (row["old"], row["new"]) == (stratified.get(key), center.get(key)), key
    text = _dvc(repo, "metrics", "diff", "HEAD", "centre", "--targets", "metrics/headline.json").stdout
    assert "macro_auc.value" in text and max(len(line) for line in text.splitlines()) <= 200
    exp_diff = _dvc(repo, "exp", "diff", "HEAD", "centre").stdout
    assert "headline.variant" in exp_diff and max(len(line) for line in exp_diff.splitlines()) <= 200
    _git(repo, "reset", "-q", "--hard")  # `exp run` left the experiment in the workspace: back to the baseline
    assert json.loads(_dvc(repo, "status", "--json").stdout or "{}") == {}
    # what the README's `dvc metrics diff` line promises when nothing changed: no output at all, exit status 0
    assert "prints nothing (exit status 0) when nothing changed" in (REPO_ROOT / "README.md").read_text()
    assert _dvc(repo, "metrics", "diff").stdout == ""
    assert "with nothing changed it prints nothing and exits 0" in " ".join(page.split())


#: The README's experiments table ("Everyday commands"), run here verbatim.
README_EXP_SHOW = ("exp", "show", "--drop", ".*", "--keep", r"Experiment|.*macro_auc\.value|train\.lr$")


def _dvc_in_terminal(repo: Path, *args: str, columns: int = 200) -> str:
    """What ``dvc *args`` writes to a terminal ``columns`` wide, its pager being ``cat`` (colours stripped).

    In a terminal DVC renders the whole experiments table (up to 1,024 characters) into its pager, ``less -S``,
    which shows the first ``columns`` characters of each line: the left edge is what a bare `dvc exp show` shows.
    """
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "DVC_PAGER": "cat", "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, stdin=terminal,
                            stdout=terminal, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:  # read while it writes: a full terminal buffer would block it
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace")).replace("\r", "")
    if proc.wait(timeout=1500) != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}) in a terminal:\n{text}")
    return text


def test_readme_exp_show_fits_200_columns_with_two_experiments(pipeline_repo: Path):
    repo = pipeline_repo
    readme = (REPO_ROOT / "README.md").read_text()
    assert "dvc exp show --drop '.*' --keep 'Experiment|.*macro_auc\\.value|train\\.lr$'" in readme
    if "centre" not in _dvc(repo, "exp", "list", "--name-only").stdout.split():  # one run experiment ...
        _dvc(repo, "exp", "run", "-n", "centre", "-S", "headline.variant=center")
        _git(repo, "reset", "-q", "--hard")
    _dvc(repo, "exp", "run", "--queue", "-n", "queued-lr", "-S", "train.lr=3e-4")  # ... and one queued
    try:
        header = _dvc(repo, "exp", "show", "--csv").stdout.splitlines()[0].split(",")
        metric_columns = [c for c in header if c.startswith("metrics/")]
        assert len(metric_columns) <= 90, len(metric_columns)  # ~71 (headline + training); was ~1,200 with audit/split/explain/compare JSONs as metrics
        # ~262: 5 + those + one per params.yaml leaf (~93: without --param-deps DVC shows the whole file, whatever
        # the stages declare, so per-key declarations would not narrow it) + one per dependency (~92)
        assert len(header) <= 275, len(header)
        assert len([c for c in header if "headline.json:" in c]) <= 2 * 17
        # Why the bare command cannot fit (docs/experiments.md): one column per stage dependency, which no
        # setting removes.
        deps = [c for c in header if ":" not in c and "/" in c]
        why = (REPO_ROOT / "docs" / "experiments.md").read_text()
        stated = re.search(r"one per stage dependency \((\d+) file and folder hashes", why)
        assert stated and int(stated.group(1)) == len(deps), (stated, len(deps))
        bare = _dvc(repo, "exp", "show", "--no-pager", env_extra={"COLUMNS": "200"}).stdout
        assert "…" in bare and "train.lr" not in bare  # squeezed to unreadable cells, as the README says
        # In a terminal the pager shows the table's left edge: the headline (its stage comes first in dvc.yaml),
        # not the training summary.
        paged = _dvc_in_terminal(repo, "exp", "show").splitlines()
        left_edge = next(line for line in paged if "Experiment" in line)[:200]
        assert "metrics/stratified/headline.json:macro_auc.value" in left_edge, left_edge
        assert "train/metrics.json" not in left_edge, left_edge
        shown = _dvc(repo, *README_EXP_SHOW, "--no-pager", env_extra={"COLUMNS": "200"}).stdout
        lines = shown.splitlines()
        (repo / "exp_show_measured.txt").write_text(
            f"csv columns: {len(header)} ({len(metric_columns)} metrics, {len(deps)} deps); table width: "
            f"{max(map(len, lines))} characters; pager's left edge: {left_edge.split()}\n{shown}")
        assert max(map(len, lines)) <= 200
        assert "…" not in shown  # nothing squeezed out: every kept column is readable
        for text in ("metrics/stratified/headline.json:macro_auc.value", "metrics/center/headline.json:macro_auc.value",
                     "train.lr", "[centre]", "[queued-lr]", "0.0003"):
            assert text in shown, text
    finally:
        _dvc(repo, "queue", "remove", "--all")
        _dvc(repo, "exp", "remove", "centre")
        _git(repo, "reset", "-q", "--hard")


def test_center_split_change_reruns_only_the_center_branch(pipeline_repo: Path):
    repo = pipeline_repo
    params = repo / "params.yaml"
    original = params.read_text()
    try:
        _set_params(params, {("split", "center", "val_fraction"): 0.25})
        status = json.loads(_dvc(repo, "status", "--json").stdout or "{}")
        assert set(status) == {"split@center"}, status
        ran = _ran_stages(_dvc(repo, "repro").stdout)
        assert "split@center" in ran
        stratified_or_upstream = {"fetch", "prepare", "audit"} | {f"{s}@stratified" for s in
                                                                  ("split", "train", "evaluate", "explain")}
        assert not ran & stratified_or_upstream, ran
        assert ran <= {"split@center", "pretrain@center", "train@center", "evaluate@center", "explain@center",
                       "compare", "headline",
                       "report"}
    finally:
        params.write_text(original)
        _dvc(repo, "repro")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", "back to baseline", "--allow-empty")


def test_an_image_px_experiment_rebuilds_the_cache_instead_of_restoring_it(pipeline_repo: Path):
    """dvc's run cache ignores params named ``size``: under that name this ran nothing and kept the old images."""
    repo = pipeline_repo
    before = json.loads((repo / "data/prepared/meta.json").read_text())["size"]
    run = _dvc(repo, "exp", "run", "-n", "px40", "-S", "prepare.image_px=40", "prepare")
    assert "Running stage 'prepare'" in run.stdout and "is cached" not in run.stdout, run.stdout
    assert before != 40 and json.loads((repo / "data/prepared/meta.json").read_text())["size"] == 40
    _git(repo, "reset", "-q", "--hard")
    _dvc(repo, "checkout", "-q", "-f")
    assert json.loads(_dvc(repo, "status", "--json").stdout or "{}") == {}
    assert json.loads((repo / "data/prepared/meta.json").read_text())["size"] == before


def test_documented_experiment_and_comparison_sequence(pipeline_repo: Path):
    repo = pipeline_repo
    # an evaluate-only lever that moves headline figures (the bootstrap intervals); the Malignant target may not
    # move the threshold any more: on the tiny sample both targets' thresholds sit at the 1/K cap of the rule
    run = _dvc(repo, "exp", "run", "-n", "other-resamples", "-S", "evaluate.bootstrap_seed=7")
    ran = _ran_stages(run.stdout)
    assert ran and all(s.startswith(("evaluate@", "explain@", "compare", "headline", "report")) for s in ran), ran
    exp_diff = _dvc(repo, "exp", "diff", "HEAD", "other-resamples", "--json").stdout
    assert "bootstrap_seed" in exp_diff
    _dvc(repo, "exp", "apply", "other-resamples")
    metrics_diff = _dvc(repo, "metrics", "diff", "HEAD", "--json").stdout
    assert "metrics/" in metrics_diff
    plots = _dvc(repo, "plots", "diff", "HEAD", "-o", "plots_diff")
    page = (repo / "plots_diff" / "index.html").read_text()
    assert "cdn.jsdelivr.net" not in page and "/* vega-embed@" in page, plots.stdout  # the offline template
    _dvc(repo, "plots", "show")
    assert (repo / "dvc_plots" / "index.html").is_file()
    untracked = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout
    assert "plots_diff" not in untracked and "dvc_plots" not in untracked, untracked
