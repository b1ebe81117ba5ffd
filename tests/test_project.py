"""Which model `assurexray infer` uses without --model: the written precedence, and errors naming each place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assurexray.core import project
from assurexray.serving import cli
from assurexray.learning import model as model_lib
from assurexray.core.project import MODEL_ENV, ROOT_ENV, resolve_model_path
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


# --- one list of variants, one artefact layout, one list of suffixes -------------------------------------------


def _dvc() -> dict:
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text(encoding="utf-8"))


def _written(stage: str) -> set[str]:
    """What a ``foreach`` stage of dvc.yaml writes (outs, metrics, plots), per variant (``${item}`` filled in)."""
    do = _dvc()["stages"][stage]["do"]
    entries = [e for key in ("outs", "metrics", "plots") for e in do.get(key, [])]
    names = [next(iter(e)) if isinstance(e, dict) else e for e in entries]
    return {n.replace("${item}", v) for n in names for v in project.VARIANTS}


def test_the_layout_names_the_paths_dvc_yaml_writes():
    layout = project.Layout(Path())
    for v in project.VARIANTS:
        assert {layout.model(v).as_posix(), layout.train_metrics(v).as_posix()} <= _written("train")
        assert {p.as_posix() for p in (layout.operating_point(v), layout.eval_metrics(v), layout.predictions(v),
                                       layout.plots(v) / "eval")} <= _written("evaluate")
        assert layout.explain_metrics(v).as_posix() in _written("explain")
        assert layout.split_summary(v).as_posix() in _written("split")
    assert layout.model("stratified") == project.DEFAULT_MODEL


def test_the_variants_dvc_yaml_runs_are_the_projects():
    variants = next(entry["variants"] for entry in _dvc()["vars"] if isinstance(entry, dict) and "variants" in entry)
    assert tuple(variants) == project.VARIANTS


def test_a_layout_of_a_model_or_a_copied_metrics_folder_reads_the_fixed_layout(tmp_path):
    layout, variant = project.Layout.of_model(tmp_path / "models" / "center" / "model.pt")
    assert (layout.root, variant) == (tmp_path, "center")
    assert layout.operating_point(variant) == tmp_path / "metrics" / "center" / "eval" / "operating_point.json"
    copied = project.Layout.of_metrics(tmp_path / "run7")
    assert copied.eval_metrics("center") == tmp_path / "run7" / "center" / "eval" / "metrics.json"
    assert copied.compare == tmp_path / "run7" / "compare.json"


@pytest.mark.parametrize("text, message", [
    ("{not json", r"bad\.json: not valid JSON .*; re-run it"),
    ("[1, 2]", r"bad\.json: expected a JSON object, got list; re-run it"),
])
def test_the_json_reader_names_the_file_and_the_fix(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        project.read_json(path, fix="re-run it")
    (tmp_path / "ok.json").write_text('{"a": 1}', encoding="utf-8")
    assert project.read_json(tmp_path / "ok.json") == {"a": 1}


def test_every_reader_takes_its_image_suffixes_from_the_project():
    from assurexray.data import btxrd, dicom, fetch, imaging
    from assurexray.serving import infer, webapp

    assert imaging.RASTER_SUFFIXES is project.RASTER_SUFFIXES and dicom.DICOM_SUFFIXES is project.DICOM_SUFFIXES
    assert infer.IMAGE_SUFFIXES == project.INFER_SUFFIXES
    assert webapp.UPLOAD_TYPES == tuple(s.lstrip(".") for s in project.INFER_SUFFIXES)
    # what fetch keeps is exactly what prepare reads, and every one of them is decodable
    assert set(fetch.IMAGE_SUFFIXES) == set(btxrd.IMAGE_SUFFIXES) == set(project.DATASET_SUFFIXES)
    assert set(project.DATASET_SUFFIXES) <= set(project.RASTER_SUFFIXES)
