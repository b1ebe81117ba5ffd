"""The benchmarks run and report well-formed figures; docs/speed.md's table is the committed bench.json's.

Every module runs with ``tiny=True`` (seconds: tiny model, synthetic files), so this checks the plumbing, never a
speed: no timing threshold here. What is checked is that each figure is well formed and that its ``ok`` agrees
with its value and its goal.
"""

from __future__ import annotations

import importlib
import json
import math
import operator
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

if str(REPO_ROOT) not in sys.path:  # benchmarks/ is a top-level package beside lib/, not installed
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import Figure  # noqa: E402
from benchmarks.__main__ import MODULES  # noqa: E402
from benchmarks.readme import BEGIN, END, PAGE, render, replace_block, update  # noqa: E402

_COMPARISONS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_GOAL = re.compile(r"^(>=|<=|>|<)\s*([0-9][0-9,]*(?:\.[0-9]+)?)\s*(\S*)$")


def goal_met(figure: Figure) -> bool | None:
    """Whether ``figure.value`` meets a goal written as ``<op> <number> [unit]``; None: no such goal."""
    match = _GOAL.match(figure.goal.strip())
    if match is None or figure.value is None:
        return None
    op, number, _unit = match.groups()
    return _COMPARISONS[op](figure.value, float(number.replace(",", "")))


def problems(figure: object) -> list[str]:
    """What is wrong with one figure (empty: well formed and consistent)."""
    if not isinstance(figure, Figure):
        return [f"{figure!r} is not a Figure"]
    found = []
    if not (isinstance(figure.name, str) and figure.name.strip()):
        found.append("empty name")
    if figure.value is not None and (isinstance(figure.value, bool) or not isinstance(figure.value, (int, float))
                                     or not math.isfinite(figure.value)):
        found.append(f"value {figure.value!r} is not a finite number or None")
    if not all(isinstance(text, str) for text in (figure.unit, figure.goal, figure.detail)):
        found.append("unit, goal and detail must be text")
    if figure.ok not in (True, False, None):
        found.append(f"ok {figure.ok!r} is not True, False or None")
    if figure.value is None and figure.ok is True:
        found.append("ok without a value")
    expected = goal_met(figure)
    if figure.ok is not None and expected is not None and figure.ok != expected:
        found.append(f"ok {figure.ok} but value {figure.value} vs goal {figure.goal!r} gives {expected}")
    return found


def test_the_consistency_check_catches_an_ok_that_contradicts_the_goal():
    assert problems(Figure("ratio", 0.95, "", ">= 0.90", True)) == []
    assert problems(Figure("ratio", 0.82, "", ">= 0.90", False)) == []
    assert problems(Figure("memory", 900.0, "MB", "< 1,024 MB", True)) == []
    assert problems(Figure("ratio", 0.82, "", ">= 0.90", True))
    assert problems(Figure("memory", 2000.0, "MB", "< 1024 MB", True))
    assert problems(Figure("skipped", None, "x", ">= 4x", True))
    assert problems(Figure("", float("nan"), "x", ">= 4x", None))


def _dvc_project(folder: Path) -> None:
    """A one-stage DVC project (no git), reproduced once so that ``dvc status`` is clean."""
    folder.mkdir()
    (folder / "dvc.yaml").write_text("stages:\n  hello:\n    cmd: echo hello > out.txt\n    outs:\n"
                                     "      - out.txt\n", encoding="utf-8")
    for args in (["init", "--no-scm", "-q"], ["repro", "-q"]):
        subprocess.run(["dvc", *args], cwd=folder, check=True, capture_output=True, timeout=300)


def _prepared_cache(folder: Path) -> None:
    from assurexray.data.btxrd import load_release
    from assurexray.data.cache import PrepareConfig, build_cache
    from test_cache import synthetic_release

    build_cache(load_release(synthetic_release(folder / "raw")), folder / "data" / "prepared",
                PrepareConfig(image_px=32, near_duplicate_distance=4, workers=1))


@pytest.mark.parametrize("name", MODULES)
def test_each_benchmark_runs_tiny_and_returns_well_formed_consistent_figures(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of the repository's data is read
    if name == "dvc_noop":
        if shutil.which("dvc") is None:
            pytest.skip("dvc not on PATH")
        _dvc_project(tmp_path / "project")
        monkeypatch.chdir(tmp_path / "project")
    if name == "cache_read_speed":
        _prepared_cache(tmp_path)
    found = importlib.import_module(f"benchmarks.{name}").figures(quick=True, tiny=True)
    assert isinstance(found, list) and found, f"{name}: no figures"
    for figure in found:
        assert problems(figure) == [], f"{name}: {figure}"
        if _GOAL.match(figure.goal.strip()):  # set up above so that nothing is skipped: each goal is judged
            assert figure.value is not None and figure.ok is not None, f"{name} skipped or failed: {figure}"
        Figure(**json.loads(json.dumps(figure.to_dict())))  # JSON round trip


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "lib"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_command_writes_valid_json_with_every_figure_and_an_exit_status_that_says_if_all_goals_are_met(tmp_path):
    out = tmp_path / "bench.json"
    proc = _bench("--only", "bootstrap_speed", "grouping_scale", "--tiny", "--out", str(out))
    bench = json.loads(out.read_text(encoding="utf-8"))
    assert {"quick", "tiny", "seconds", "python", "torch", "threads", "machine", "figures"} <= set(bench)
    assert bench["tiny"] is True
    figures = [Figure(**row) for row in bench["figures"]]
    assert [f.name.split(":")[0].split(" ")[0] for f in figures] == ["bootstrap", "grouping"]
    assert all(problems(f) == [] for f in figures)
    assert proc.returncode == (1 if any(f.ok is False for f in figures) else 0), proc.stderr
    assert "| figure | value | goal | met | detail |" in proc.stdout


def test_tiny_figures_can_never_overwrite_the_committed_results():
    proc = _bench("--only", "grouping_scale", "--tiny")
    assert proc.returncode == 2 and "--tiny figures measure nothing" in proc.stderr
    with pytest.raises(ValueError, match="--tiny figures"):
        render({"tiny": True, "figures": []})


def test_the_speed_page_table_is_the_one_generated_from_the_committed_bench_json():
    bench = json.loads((REPO_ROOT / "metrics" / "bench.json").read_text(encoding="utf-8"))
    page = (REPO_ROOT / PAGE).read_text(encoding="utf-8")
    block = page[page.index(BEGIN):page.index(END) + len(END)]
    assert block == render(bench), f"{PAGE}'s speed table is stale: run `python -m benchmarks.readme`"
    for figure in bench["figures"]:  # every figure quoted, as the file has it
        assert f"| {figure['name']} |" in block


def test_replace_block_swaps_only_the_marked_block_and_names_missing_markers():
    text = f"intro\n{BEGIN}\nold\n{END}\noutro\n"
    assert replace_block(text, f"{BEGIN}\nnew\n{END}") == f"intro\n{BEGIN}\nnew\n{END}\noutro\n"
    with pytest.raises(ValueError, match="docs/speed.md: expected one"):
        replace_block("no markers here", "x")
    with pytest.raises(ValueError, match="expected one"):
        replace_block(f"{END}\n{BEGIN}", "x")


def test_update_rewrites_the_page_block_once_and_the_readme_holds_no_second_copy(tmp_path):
    committed = REPO_ROOT / "metrics" / "bench.json"
    page = tmp_path / "speed.md"
    page.write_text(f"# Speed\n\n{BEGIN}\nold\n{END}\nafter\n", encoding="utf-8")
    assert update(committed, page) is True
    assert page.read_text(encoding="utf-8") == f"# Speed\n\n{render(json.loads(committed.read_text()))}\nafter\n"
    assert update(committed, page) is False  # already up to date: not rewritten
    assert BEGIN not in (REPO_ROOT / "README.md").read_text(encoding="utf-8")  # the table has one home: PAGE


def test_the_standalone_training_throughput_script_runs_on_cpu(capsys):
    """benchmarks/train_throughput.py is documented in docs/gpus-and-machines.md: it must at least run here."""
    from benchmarks import train_throughput

    assert train_throughput.main(["--images", "8", "--batch-size", "4", "--size", "32", "--epochs", "1",
                                  "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ratio loop / compute:\s+\d+\.\d\d", out), out
