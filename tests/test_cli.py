"""The `assurexray` console script: help, version, usage errors, and the Streamlit launcher."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_infer import CAVEAT, RELIABLE, UNRELIABLE, read_rows, save_image, tiny_checkpoint, write_op

from assurexray import __version__
from assurexray.serving import cli


def console_script() -> str:
    """The installed `assurexray` entry point of this interpreter's environment."""
    beside = Path(sys.executable).parent / "assurexray"
    found = str(beside) if beside.is_file() else shutil.which("assurexray")
    if found is None:
        pytest.fail("the `assurexray` console script is not installed; run `pip install -e .`")
    return found


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([console_script(), *args], capture_output=True, text=True, timeout=120, check=False)


def test_console_script_help_lists_the_subcommands_and_the_disclaimer():
    done = run_script("--help")
    assert done.returncode == 0, done.stderr
    for word in ("infer", "app", "version", "NOT FOR CLINICAL USE"):
        assert word in done.stdout


def test_console_script_infer_help_lists_every_option():
    done = run_script("infer", "--help")
    assert done.returncode == 0, done.stderr
    for option in ("--model", "--operating-point", "--output", "--json", "--runtime", "--gradcam", "--lesion-map",
                   "--batch-size", "--device", "--max-pixels"):
        assert option in done.stdout
    assert "models/stratified/model.pt" in done.stdout
    assert "NOT FOR CLINICAL USE" in done.stdout


def test_version_subcommand_prints_the_package_version(capsys):
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"assurexray {__version__}"


def test_no_subcommand_prints_help_and_is_a_usage_error(capsys):
    assert cli.main([]) == 2
    assert "usage: assurexray" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["infer", "x.png", "--batch-size", "0"], r"--batch-size: expected a positive integer, got '0'"),
        (["infer", "x.png", "--max-pixels", "many"], r"--max-pixels: expected a positive integer, got 'many'"),
        (["infer"], r"the following arguments are required: PATH"),
        (["app", "--port", "70000"], r"--port: expected a TCP port 1-65535, got '70000'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_infer_with_a_missing_model_is_a_usage_error(tmp_path, capsys):
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    code = cli.main(["infer", str(tmp_path / "x.png"), "--model", str(tmp_path / "none.pt")])
    assert code == 2
    assert f"assurexray infer: error: {tmp_path / 'none.pt'}: checkpoint not found" in capsys.readouterr().err


def test_app_command_binds_streamlit_to_localhost_headless_on_the_port(tmp_path):
    command = cli.app_command(port=8765, script=tmp_path / "app.py")
    assert command[:5] == [sys.executable, "-m", "streamlit", "run", str(tmp_path / "app.py")]
    options = dict(zip(command[5::2], command[6::2]))
    assert options == {"--server.address": "127.0.0.1", "--server.headless": "true", "--server.port": "8765"}


def test_app_without_app_py_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_REPO_ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"app\.py: Streamlit app not found"):
        cli.app_path()
    assert cli.main(["app"]) == 2
    assert "Streamlit app not found" in capsys.readouterr().err


def test_app_runs_streamlit_on_the_repository_app_and_returns_its_exit_code(tmp_path, monkeypatch):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.py").write_text("import streamlit\n")
    monkeypatch.setattr(cli, "_REPO_ROOT", tmp_path)
    seen = []

    def fake_run(command, check):
        seen.append(command)
        return subprocess.CompletedProcess(command, returncode=3)

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    assert cli.main(["app", "--port", "9000"]) == 3
    assert seen == [cli.app_command(port=9000, script=tmp_path / "app" / "app.py")]


def test_repository_root_is_the_folder_holding_lib_and_pyproject():
    assert (cli._REPO_ROOT / "pyproject.toml").is_file()
    assert (cli._REPO_ROOT / "lib" / "assurexray" / "serving" / "cli.py").is_file()


def test_max_pixels_default_is_the_decoders_cap():
    from assurexray.data.decoding import DEFAULT_MAX_PIXELS

    assert cli.build_parser().parse_args(["infer", "x.png"]).max_pixels == DEFAULT_MAX_PIXELS


#: What the infer header may say about sensitivity, and only for a threshold chosen by the lower-bound rule.
SENSITIVITY_CLAIM = "its threshold was chosen so that a lower confidence bound on validation sensitivity reaches 0.90"
RELATION = ("pred is the most probable class (argmax); malignant_flag is 1 for every image whose pred is Malignant, "
            "and can also be 1 while another class is on top")


@pytest.mark.parametrize("reliable", [False, True], ids=["unreliable", "reliable"])
def test_infer_header_and_output_lead_with_an_unreliable_thresholds_caveat_and_claim_sensitivity_only_when_reliable(
        tmp_path, capsys, reliable):
    model = tiny_checkpoint(tmp_path / "models" / "stratified" / "model.pt")
    op = write_op(tmp_path / "op.json", model, threshold=0.3, record=RELIABLE if reliable else UNRELIABLE)
    out = tmp_path / "out.jsonl"
    assert cli.main(["infer", str(save_image(tmp_path / "one.png")), "--model", str(model), "--operating-point",
                     str(op), "--output", str(out)]) == 0
    header = capsys.readouterr().out.split("\npath ", 1)[0]  # the lines above the table
    threshold = "Malignant flag when P(Malignant) >= 0.300: a threshold chosen on the model's validation partition"
    (row,) = read_rows(out)
    if reliable:
        assert f"\n{threshold}" in header and "UNRELIABLE" not in header
        assert f"{RELATION}; {SENSITIVITY_CLAIM}." in header
        assert (row["malignant_threshold_reliable"], row["malignant_threshold_caveat"]) == (True, None)
    else:  # the caveat leads the threshold sentence, and nothing is claimed about sensitivity
        assert f"\n{CAVEAT} {threshold}" in header
        assert f"{RELATION}." in header and "lower confidence bound on validation sensitivity reaches" not in header
        assert row["malignant_threshold_reliable"] is False and row["malignant_threshold_caveat"] == CAVEAT


def test_infer_help_lists_every_file_type_the_reader_accepts():
    from assurexray.data.decoding import IMAGE_SUFFIXES  # what a folder walk picks up and infer decodes

    done = run_script("infer", "--help")
    assert done.returncode == 0, done.stderr
    listed = set(re.findall(r"\.[a-z]+\b", done.stdout.split("positional arguments")[0]))
    assert listed >= set(IMAGE_SUFFIXES), sorted(set(IMAGE_SUFFIXES) - listed)


def test_runtime_and_export_format_choices_are_the_librarys():
    from assurexray.serving.export import EXPORT_FORMATS
    from assurexray.serving.onnx_runtime import RUNTIMES

    assert cli._RUNTIMES == RUNTIMES and cli._EXPORT_FORMATS == EXPORT_FORMATS


def test_infer_json_prints_one_json_document_holding_the_output_files_records(tmp_path, capsys):
    model = tiny_checkpoint(tmp_path / "models" / "stratified" / "model.pt")
    op = write_op(tmp_path / "op.json", model, threshold=0.3, record=UNRELIABLE)
    images = [save_image(tmp_path / "a.png"), save_image(tmp_path / "b.png")]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out.jsonl"
    code = cli.main(["infer", *map(str, images), str(tmp_path / "bad.png"), "--model", str(model),
                     "--operating-point", str(op), "--output", str(out), "--json"])
    assert code == 1  # one input failed
    printed = capsys.readouterr()
    document = json.loads(printed.out)  # stdout is the JSON document alone: no table, no "wrote" line
    assert document["disclaimer"].startswith("NOT FOR CLINICAL USE")
    assert document["predictions"] == read_rows(out)
    assert [r["path"] for r in document["predictions"]] == [*map(str, images), str(tmp_path / "bad.png")]
    assert document["predictions"][2]["error"] and document["predictions"][2]["prob_Normal"] is None
    assert any(CAVEAT in note for note in document["notes"])
    assert f"wrote 3 row(s) to {out}" in printed.err and "1 failed" in printed.err


def test_the_table_has_the_output_files_column_names_and_values(tmp_path, capsys):
    model = tiny_checkpoint(tmp_path / "models" / "stratified" / "model.pt")
    op = write_op(tmp_path / "op.json", model, threshold=0.3, record=RELIABLE)
    out = tmp_path / "out.jsonl"
    image = save_image(tmp_path / "one.png")
    assert cli.main(["infer", str(image), "--model", str(model), "--operating-point", str(op),
                     "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("path ")).split()
    cells = next(line for line in lines if line.startswith(str(image))).split()
    (row,) = read_rows(out)
    assert header == ["path", "pred", "prob_Normal", "prob_Benign", "prob_Malignant", "malignant_flag", "trained_on"]
    assert set(header) <= set(row)
    shown = dict(zip(header, cells))
    assert shown["pred"] == row["pred"] and shown["trained_on"] == row["trained_on"]
    assert shown["malignant_flag"] == str(row["malignant_flag"]) and row["malignant_flag"] in (0, 1)
    for name in ("prob_Normal", "prob_Benign", "prob_Malignant"):
        assert shown[name] == f"{row[name]:.3f}"
