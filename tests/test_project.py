"""Which model `assurexray infer` uses without --model: the written precedence, and errors naming each place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assurexray import cli, project
from assurexray import model as model_lib
from assurexray.project import MODEL_ENV, ROOT_ENV, resolve_model_path
from test_infer import save_image, tiny_checkpoint


def _model(root: Path) -> Path:
    path = root / "models" / "stratified" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"checkpoint")  # resolution only checks the file exists; loading is tested below
    return path


@pytest.fixture()
def places(tmp_path, monkeypatch):
    """Empty current folder, project root and source checkout, with no model anywhere yet."""
    dirs = {name: tmp_path / name for name in ("cwd", "root", "checkout", "elsewhere")}
    for d in dirs.values():
        d.mkdir()
    (dirs["checkout"] / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setattr(project, "_CHECKOUT", dirs["checkout"])
    return dirs


def test_precedence_is_flag_then_model_env_then_root_env_then_current_folder_then_checkout(places):
    cwd = places["cwd"]
    checkout_model = _model(places["checkout"])
    assert resolve_model_path(None, environ={}, cwd=cwd) == checkout_model
    cwd_model = _model(cwd)
    assert resolve_model_path(None, environ={}, cwd=cwd) == cwd_model
    root_model = _model(places["root"])
    assert resolve_model_path(None, environ={ROOT_ENV: str(places["root"])}, cwd=cwd) == root_model
    env_model = _model(places["elsewhere"])
    environ = {ROOT_ENV: str(places["root"]), MODEL_ENV: str(env_model)}
    assert resolve_model_path(None, environ=environ, cwd=cwd) == env_model
    assert resolve_model_path("given.pt", environ=environ, cwd=cwd) == Path("given.pt")  # loading reports it


def test_a_relative_model_env_is_read_from_the_current_folder(places):
    _model(places["cwd"])
    found = resolve_model_path(None, environ={MODEL_ENV: "models/stratified/model.pt"}, cwd=places["cwd"])
    assert found == places["cwd"] / "models" / "stratified" / "model.pt"


def test_a_model_env_naming_a_missing_file_is_an_error_not_a_fall_back(places):
    _model(places["cwd"])
    with pytest.raises(FileNotFoundError, match=rf"{MODEL_ENV}='nope\.pt': checkpoint not found at .*nope\.pt; "
                                                r"point it at a model\.pt"):
        resolve_model_path(None, environ={MODEL_ENV: "nope.pt"}, cwd=places["cwd"])


def test_a_root_env_without_a_model_is_the_only_place_looked(places):
    _model(places["cwd"])  # another project's model must not be picked up
    with pytest.raises(FileNotFoundError) as err:
        resolve_model_path(None, environ={ROOT_ENV: str(places["root"])}, cwd=places["cwd"])
    message = str(err.value)
    assert f"{ROOT_ENV}={str(places['root'])!r}: {places['root'] / 'models' / 'stratified' / 'model.pt'}" in message
    assert str(places["cwd"]) not in message


def test_no_model_anywhere_names_every_place_looked_and_the_fixes(places):
    with pytest.raises(FileNotFoundError) as err:
        resolve_model_path(None, environ={}, cwd=places["cwd"])
    message = str(err.value)
    assert message.startswith("no model given and none found (looked in the current folder: "
                              f"{places['cwd'] / 'models' / 'stratified' / 'model.pt'}; the checkout assurexray is "
                              f"installed from: {places['checkout'] / 'models' / 'stratified' / 'model.pt'})")
    assert f"Pass --model FILE, set {MODEL_ENV}=FILE or {ROOT_ENV}=<project folder>, or run `dvc repro`" in message


def test_an_installed_package_outside_a_checkout_does_not_look_there(places, monkeypatch):
    monkeypatch.setattr(project, "_CHECKOUT", places["elsewhere"])  # no dvc.yaml: site-packages, say
    with pytest.raises(FileNotFoundError) as err:
        resolve_model_path(None, environ={}, cwd=places["cwd"])
    assert "checkout" not in str(err.value)


def test_infer_from_another_folder_uses_the_project_named_by_the_root_env(places, monkeypatch, capsys):
    model = tiny_checkpoint(places["root"] / "models" / "stratified" / "model.pt")
    image = save_image(places["elsewhere"] / "scan.png")
    monkeypatch.chdir(places["cwd"])
    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.setenv(ROOT_ENV, str(places["root"]))
    assert cli.main(["infer", str(image), "--output", "out.jsonl"]) == 0
    row = json.loads((places["cwd"] / "out.jsonl").read_text())
    assert row["model_sha256"] == model_lib.file_sha256(model)
    monkeypatch.setenv(ROOT_ENV, str(places["elsewhere"]))
    assert cli.main(["infer", str(image)]) == 2
    err = capsys.readouterr().err
    assert f"assurexray infer: error: no model given and none found (looked in {ROOT_ENV}=" in err
