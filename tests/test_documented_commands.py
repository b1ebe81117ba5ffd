"""The commands of README.md and docs/*.md, checked as written (paths to local fixtures substituted).

A documented override of a key absent from params.yaml fails in DVC ("Key 'list_file' is not in struct"), so
every `-S` key on every page must exist in params.yaml; every `dvc exp run` line must parse with DVC's own
parser and name stages of dvc.yaml, every `assurexray` line with the CLI's parser. The real-data and
published-split commands are run through the split stage on real DVC. The real-data one runs on
../shared/btxrd-dev with the authors' sheets and asserts that no case straddles the stratified split. The README
itself stays a few screens long: it starts with the two commands and links to docs/ for the rest.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import skip_or_fail
from documentation import README, commands, page_text, pages, prose

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
BTXRD_DEV = SHARED / "btxrd-dev"

#: Tiny settings so fetch + prepare + split of the sample take seconds.
TINY = {("data", "sample", "n_cases"): 60, ("data", "sample", "image_size"): 96, ("prepare", "image_px"): 48,
        ("prepare", "workers"): 1}


def _documented_commands(prefix: tuple[str, ...] = ("dvc", "exp", "run")) -> list[list[str]]:
    """Every command starting ``prefix`` in the ```bash blocks of README.md and docs/*.md, as argv."""
    return [argv for page in pages() for argv in commands(page_text(page), prefix)]


def _overrides(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-S")


def test_every_documented_override_names_a_key_of_params_yaml():
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    keys = {(page, key) for page in pages()  # -S key=v, -S 'key=v', -S "key='v w'", in blocks and in prose
            for key in re.findall(r"-S ['\"]?([a-z_][a-z0-9_.]*)=", page_text(page))}
    assert len(keys) > 10, keys
    for page, key in sorted(keys):
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, (
                f"{page} documents -S {key}=..., but params.yaml has no such key (DVC would refuse it)")
            node = node[part]


def test_the_pages_document_the_real_data_and_published_commands():
    readme = [_overrides(c) for c in commands(page_text(README), ("dvc", "exp", "run"))]
    assert any(k.get("data.source") == "btxrd" and "data.btxrd.case_sheets" in k for k in readme)  # day one
    kinds = [_overrides(c) for c in _documented_commands()]
    assert any(k.get("split.stratified.strategy") == "published" for k in kinds)


def _stage_names() -> set[str]:
    """Every stage `dvc exp run` takes as a target: a plain stage's name, a foreach stage's name@variant."""
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    variants = next(v["variants"] for v in pipeline["vars"] if isinstance(v, dict) and "variants" in v)
    names = set()
    for name, stage in pipeline["stages"].items():
        if "foreach" in stage:
            assert stage["foreach"] == "${variants}", (name, stage["foreach"])
            names |= {f"{name}@{variant}" for variant in variants}
        else:
            names.add(name)
    return names


def test_every_documented_dvc_exp_run_parses_and_targets_stages_of_dvc_yaml():
    from dvc.cli import DvcParserError, parse_args

    documented = [(page, argv) for page in pages()
                  for argv in commands(page_text(page), ("dvc", "exp", "run"), inline=True)]
    assert len(documented) > 20, documented
    assert {page for page, _ in documented} >= {README, "docs/experiments.md", "docs/levers-and-ablations.md"}
    stages = _stage_names()
    for page, argv in documented:
        try:
            args = parse_args(argv[1:])  # DVC's own parser: a flag it lacks fails here, not on a reader's machine
        except DvcParserError as err:
            raise AssertionError(f"{page}: dvc rejects {shlex.join(argv)!r}") from err
        assert args.func.__name__ == "CmdExperimentsRun", (page, argv)
        unknown = sorted(set(args.targets) - stages)
        assert unknown == [], f"{page}: {shlex.join(argv)!r} targets {unknown}, not stages of dvc.yaml"


def test_the_dvc_exp_run_check_sees_a_bad_flag_and_a_bad_stage():
    from dvc.cli import DvcParserError, parse_args

    with pytest.raises(DvcParserError):
        parse_args(["exp", "run", "--no-such-flag", "-S", "train.lr=0.1"])
    assert "train@centre" not in _stage_names() and "train@center" in _stage_names()


def test_every_documented_assurexray_command_parses_with_the_cli():
    from assurexray.serving.cli import build_parser

    documented = [(page, argv) for page in pages() for argv in commands(page_text(page), ("assurexray",))]
    assert {argv[1] for _, argv in documented} >= {"infer", "adapt", "app"}, documented
    for page, argv in documented:
        try:
            args = build_parser().parse_args(argv[1:])
        except SystemExit as err:  # argparse's answer to an unknown command or flag
            raise AssertionError(f"{page}: assurexray rejects {shlex.join(argv)!r}") from err
        assert args.command == argv[1], (page, argv)


#: The README's size: a newcomer reads it in a few screens; everything else lives in docs/.
README_MAX_LINES, MAX_LINE_CHARS = 220, 120


def test_the_readme_starts_with_the_two_commands_and_fits_a_few_screens():
    from assurexray.assessment.results_table import BEGIN, END

    text = page_text(README)
    assert text.startswith("# AssureXRay\n\n```bash\nbash bin/setup && . .venv/bin/activate && dvc repro\n"
                           "bash bin/test\n```\n")
    lines = text.splitlines()
    assert "NOT FOR CLINICAL USE" in "\n".join(lines[:15])
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to a docs/ page"
    assert text.count(BEGIN) == text.count(END) == 1  # the generated results block, kept as generated
    first, last = lines.index(BEGIN), lines.index(END)
    long = [f"README.md:{n}: {len(line)} characters" for n, line in enumerate(lines, 1)
            if len(line) > MAX_LINE_CHARS and not first < n - 1 < last]
    assert long == []


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_docs_page_is_linked_from_the_readme_and_every_local_link_resolves():
    readme = page_text(README)
    for page in pages()[1:]:
        assert f"]({page})" in readme, f"{page} is not linked from README.md: add it to 'Where to read more'"
    for page in pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page_text(page))):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (REPO_ROOT / page).parent / path if path else REPO_ROOT / page
            assert resolved.exists(), f"{page} links to {target}, which does not exist"
            if anchor and resolved.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", prose(resolved.read_text(encoding="utf-8")), flags=re.M)
                assert anchor in {_slug(h) for h in headings}, f"{page} links to {target}: no such heading"


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _repo(tmp_path: Path, updates: dict) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(REPO_ROOT / name, repo / name)
    for folder in ("stages", "lib"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for keys, value in updates.items():
        node = params
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["init", "-q"], ["config", "user.email", "t@example.invalid"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    _dvc(repo, "init", "-q")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "pipeline"], cwd=repo, check=True, capture_output=True)
    return repo


def _run_documented(repo: Path, predicate, substitute: dict[str, str], *targets: str) -> dict[str, str]:
    command = next(c for c in _documented_commands() if predicate(_overrides(c)))
    argv = []
    for arg in command[3:]:
        for old, new in substitute.items():
            arg = arg.replace(old, new)
        argv.append(arg)
    _dvc(repo, "exp", "run", *argv, *targets)
    return _overrides(command)


@pytest.mark.slow
def test_the_documented_published_split_command_replicates_the_authors_sheets(tmp_path):
    repo = _repo(tmp_path, TINY)
    _dvc(repo, "repro", "prepare")
    index = pd.read_csv(repo / "data/prepared/index.csv", dtype=str)
    ids = index["image_id"].tolist()
    authors = tmp_path / "authors"
    authors.mkdir()
    held_out = ids[::4]  # every class in both sheets
    pd.DataFrame({"image_id": [i for i in ids if i not in held_out] + ["IMG999999.jpeg"]}).to_excel(
        authors / "classification_task_train.xlsx", index=False)
    pd.DataFrame({"image_id": held_out}).to_excel(authors / "classification_task_val.xlsx", index=False)
    _run_documented(repo, lambda o: o.get("split.stratified.strategy") == "published",
                    {"../shared/btxrd-dev/authors": str(authors)}, "split@stratified")
    split = json.loads((repo / "metrics/stratified/split.json").read_text())
    assert split["strategy"] == "published"
    assert split["published"]["listed_absent"] == 1  # reported, not fatal
    test = pd.read_csv(repo / "data/splits/stratified/test.csv", dtype=str)["image_id"]
    assert sorted(test) == sorted(held_out)
    assert "image-level" in split_statement(split)


def split_statement(split: dict) -> str:
    from assurexray.data.splits import grouping_statement

    return grouping_statement(split)


@pytest.mark.slow
def test_on_real_btxrd_with_the_authors_sheets_no_case_straddles_the_stratified_split(tmp_path):
    if not (BTXRD_DEV / "dataset.xlsx").is_file() or not (BTXRD_DEV / "authors").is_dir():
        skip_or_fail(f"real-data fixture absent: {BTXRD_DEV} (dataset.xlsx and authors/)")
    repo = _repo(tmp_path, {("prepare", "workers"): 2})
    _run_documented(repo, lambda o: o.get("data.source") == "btxrd",
                    {"../shared/btxrd-dev": str(BTXRD_DEV)}, "split@stratified", "split@center")
    for variant in ("stratified", "center"):
        split = json.loads((repo / f"metrics/{variant}/split.json").read_text())
        g = split["grouping"]
        assert g["basis"] == "cases+duplicates" and g["n_cases"] > 900 and g["n_images_with_case"] > 1500
        assert g["cases_straddling"] == 0 and g["groups_straddling"] == 0
        assert g["test_images_with_case_elsewhere"] == 0
        assert "No group straddles" in split_statement(split)
    parts = {p: pd.read_csv(repo / f"data/splits/stratified/{p}.csv", dtype=str, keep_default_na=False)
             for p in ("train", "val", "test")}
    cases = {p: set(f.loc[f["case_id"] != "", "case_id"]) for p, f in parts.items()}
    assert not cases["test"] & (cases["train"] | cases["val"])  # checked on the rows themselves, too
