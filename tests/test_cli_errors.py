"""Stage scripts: a user error is one `error:` line and exit status 2; tracebacks only with -v / ASSUREXRAY_DEBUG=1."""

from __future__ import annotations

import ast
import io
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from assurexray.core.cli_errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, debug_requested, error_line, run_stage
from assurexray.core.params import ParamsSectionError, load_params

REPO_ROOT = Path(__file__).resolve().parents[1]


def run(main, argv=(), **env) -> tuple[int, str]:
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ASSUREXRAY_DEBUG", raising=False)
        for key, value in env.items():
            patch.setenv(key, value)
        code = run_stage(main, list(argv), prog="prepare", stderr=stderr)
    return code, stderr.getvalue()


def failing(error: BaseException):
    def main(argv):
        raise error
    return main


@pytest.mark.parametrize(("error", "line"), [
    (ValueError("dataset.xlsx row 212: 'benign' and 'malignant' are both 1.\n   Fix the sheet."),
     "prepare: error: dataset.xlsx row 212: 'benign' and 'malignant' are both 1. Fix the sheet."),
    (FileNotFoundError("data/raw: release folder not found; run fetch."),
     "prepare: error: data/raw: release folder not found; run fetch."),
    (PermissionError(13, "Permission denied", "data/prepared"), "prepare: error: data/prepared: Permission denied"),
    (ParamsSectionError("params.yaml: no section 'prepare'; sections found: ['base']."),
     "prepare: error: params.yaml: no section 'prepare'; sections found: ['base']."),
], ids=["value-error-on-two-lines", "missing-file", "os-error-with-filename", "missing-params-section"])
def test_a_user_error_is_one_error_line_and_exit_2(error, line):
    code, err = run(failing(error))
    assert code == EXIT_USER_ERROR == 2
    assert err.splitlines() == [line]
    assert "Traceback" not in err


@pytest.mark.parametrize(("argv", "env"), [(["-v"], {}), (["--verbose"], {}), ([], {"ASSUREXRAY_DEBUG": "1"})],
                         ids=["-v", "--verbose", "ASSUREXRAY_DEBUG=1"])
def test_the_traceback_is_printed_only_when_asked_for(argv, env):
    seen = []

    def main(args):
        seen.append(args)
        raise ValueError("x.csv row 3: bad flag. Fix it.")

    code, err = run(main, [*argv, "--raw", "r"], **env)
    assert code == 2 and seen == [["--raw", "r"]]  # -v is the wrapper's, not passed on
    assert "Traceback (most recent call last)" in err and err.strip().endswith("prepare: error: x.csv row 3: bad flag. Fix it.")


def test_a_bug_keeps_its_traceback_and_ctrl_c_exits_130():
    with pytest.raises(RuntimeError, match="a bug"):
        run(failing(RuntimeError("a bug")))
    code, err = run(failing(KeyboardInterrupt()))
    assert code == EXIT_INTERRUPTED == 130
    assert err.strip() == "prepare: error: interrupted; outputs are written atomically, so earlier outputs are intact."


def test_success_returns_mains_status_and_library_warnings_become_one_log_line(caplog, capsys):
    def main(argv):
        warnings.warn("pydicom: invalid value for VR UI\n  with a second line", UserWarning, stacklevel=1)
        return 0

    with caplog.at_level(logging.WARNING, logger="assurexray.warnings"):
        code, err = run(main)
    assert code == 0
    (record,) = [r for r in caplog.records if r.name == "assurexray.warnings"]
    assert record.getMessage().startswith("UserWarning (test_cli_errors:")
    assert record.getMessage().endswith("pydicom: invalid value for VR UI with a second line")
    assert "warnings.warn(" not in err + capsys.readouterr().err  # no source line dumped


def test_debug_is_requested_by_flag_or_environment_only():
    assert debug_requested(["-v"], {}) and debug_requested([], {"ASSUREXRAY_DEBUG": "true"})
    assert not debug_requested(["--raw", "x"], {}) and not debug_requested([], {"ASSUREXRAY_DEBUG": "0"})
    assert error_line("fetch", ValueError("")) == "fetch: error: ValueError"


def test_a_missing_params_section_is_a_key_error_and_a_user_error(tmp_path):
    (tmp_path / "params.yaml").write_text("base: {seed: 1}\n")
    with pytest.raises(KeyError, match=r"params.yaml: no section 'prepare'; sections found: \['base'\]"):
        load_params(tmp_path / "params.yaml", "prepare")
    with pytest.raises(ValueError, match=r"no section 'prepare'"):
        load_params(tmp_path / "params.yaml", "prepare")


@pytest.mark.parametrize("script", sorted((REPO_ROOT / "stages").glob("*.py")), ids=lambda p: p.stem)
def test_every_stage_script_runs_its_main_through_run_stage(script):
    tree = ast.parse(script.read_text(encoding="utf-8"))
    guard = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    assert len(guard) == 1 and ast.unparse(guard[0].body[0]) == "raise SystemExit(run_stage(main))"


def test_a_stage_script_prints_one_error_line_and_exits_2_in_a_real_process(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    command = [sys.executable, str(REPO_ROOT / "stages" / "prepare.py"), "--raw", "no-such-folder", "--out", "out"]
    env = {k: v for k, v in os.environ.items() if k != "ASSUREXRAY_DEBUG"}
    quiet = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines()[-1].startswith("prepare: error: ")
    assert "no-such-folder: release folder not found" in quiet.stderr and "Traceback" not in quiet.stderr
    loud = subprocess.run(command, cwd=tmp_path, env={**env, "ASSUREXRAY_DEBUG": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert loud.returncode == 2 and "Traceback (most recent call last)" in loud.stderr
    assert not (tmp_path / "out").exists()
