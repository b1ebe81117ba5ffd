"""No file the library loads can run code: every ``torch.load`` site refuses a pickle that would.

The payload is an object whose ``__reduce__`` calls ``open(sentinel, "w")``: a full unpickler creates the sentinel
file, ``weights_only=True`` refuses it. Each site gets the payload through its own public path (a checkpoint, an
ensemble member, a local weights file, each weights package's file, a resume state) and must leave no sentinel
behind, so turning any site to ``weights_only=False`` fails its test. A static guard lists the sites, so a new
``torch.load`` in lib/ fails until it is added here.
"""

from __future__ import annotations

import ast
import logging
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

import assurexray
from assurexray.learning import resume
from assurexray.learning.model import WEIGHT_PACKAGES, create_model, load_checkpoint, save_checkpoint
from assurexray.learning.prediction import load_predictor
from test_model import TINY, _meta

LIB = Path(assurexray.__file__).resolve().parent
#: Every torch.load in lib/ as (module path under assurexray/, enclosing function): each has a test below.
SITES = {
    ("learning/model.py", "load_checkpoint"),
    ("learning/model.py", "_load_weights_file"),  # _package_weights and _from_file read weights through it
    ("learning/resume.py", "load"),
    ("serving/webapp.py", "_checkpoint_data"),  # the app's training-data notice reads meta["data"] only
}
REFUSED = r"refused to load: the file holds objects other than tensors .* No code from it was run"


class _Touch:
    """Unpickling this object runs ``open(path, "w")``: the sentinel file appears only if code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def _evil(path: Path, sentinel: Path, **plain) -> Path:
    """A torch archive holding ``plain`` data plus the payload, under key ``payload``."""
    torch.save({**plain, "payload": _Touch(sentinel)}, path)
    return path


@pytest.fixture()
def sentinel(tmp_path) -> Path:
    path = tmp_path / "code-ran"
    yield path
    assert not path.exists(), f"{path} exists: a load ran code from the file (weights_only must stay True)"


def test_the_payload_runs_code_under_a_full_unpickler(tmp_path):
    """The control: without weights_only the payload does create its file, so the tests below can fail."""
    sentinel = tmp_path / "code-ran"
    evil = _evil(tmp_path / "evil.pt", sentinel, state_dict={"w": torch.zeros(1)})
    loaded = torch.load(evil, weights_only=False)
    loaded["payload"].close()
    assert sentinel.exists()


def test_a_checkpoint_with_code_is_refused_without_running_it(tmp_path, sentinel):
    evil = _evil(tmp_path / "model.pt", sentinel, state_dict={"w": torch.zeros(1)}, meta=_meta())
    with pytest.raises(ValueError, match=rf"model\.pt: {REFUSED}"):
        load_checkpoint(evil)


def test_an_ensemble_member_with_code_is_refused_without_running_it(tmp_path, sentinel):
    good = save_checkpoint(tmp_path / "good.pt", create_model(TINY, num_classes=3), _meta())
    evil = _evil(tmp_path / "member2.pt", sentinel, state_dict={"w": torch.zeros(1)}, meta=_meta())
    with pytest.raises(ValueError, match=rf"member2\.pt: {REFUSED}"):
        load_predictor([good, evil])


@pytest.mark.parametrize("name", ["weights.pt", "weights.pth"])
def test_a_local_weights_file_with_code_is_refused_without_running_it(tmp_path, sentinel, name):
    evil = _evil(tmp_path / name, sentinel, state_dict={"w": torch.zeros(1)})
    with pytest.raises(ValueError, match=rf"{name}: {REFUSED}") as raised:
        create_model(TINY, pretrained=str(evil))
    assert "weights_only=False" not in str(raised.value)  # never a hint to run the file's code


@pytest.mark.parametrize("package", sorted(WEIGHT_PACKAGES))
def test_a_weights_package_file_is_loaded_without_running_code(tmp_path, sentinel, monkeypatch, package):
    """The package's weights file is swapped (a fake module in its place) for one carrying the payload."""
    spec = WEIGHT_PACKAGES[package]
    evil = _evil(tmp_path / f"{spec.module}.pth", sentinel, w=torch.zeros(1))
    fake = types.ModuleType(spec.module)
    setattr(fake, spec.file_class, type(spec.file_class, (), {"get_model_file_path": staticmethod(lambda: str(evil))}))
    monkeypatch.setitem(sys.modules, spec.module, fake)
    with pytest.raises(ValueError, match=rf"{spec.module}\.pth: {REFUSED}"):
        create_model(spec.backbone, pretrained=package)


def test_a_resume_state_with_code_is_ignored_without_running_it(tmp_path, sentinel, caplog):
    _evil(tmp_path / resume.STATE_FILE, sentinel, fingerprint="abc", epoch=1)
    with caplog.at_level(logging.WARNING, logger=resume.__name__):
        assert resume.load(tmp_path, "abc") is None
    assert any("unreadable resume state (UnpicklingError" in r.getMessage() for r in caplog.records)


def test_the_app_reading_a_checkpoint_with_code_for_its_notice_refuses_it_without_running_it(tmp_path, sentinel):
    from assurexray.serving import webapp

    evil = _evil(tmp_path / "model.pt", sentinel, state_dict={}, meta={"data": {"source": "btxrd"}})
    reader = getattr(webapp._checkpoint_data, "__wrapped__", webapp._checkpoint_data)  # past any cache
    with pytest.raises(ValueError, match="model.pt is not a readable checkpoint"):
        reader(str(evil), 0, evil.stat().st_size)


def test_every_torch_load_in_the_library_is_weights_only_and_has_a_test_here():
    found, unsafe = set(), []
    for path in sorted(LIB.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for call in (n for n in ast.walk(func) if isinstance(n, ast.Call)):
                if ast.unparse(call.func) != "torch.load":
                    continue
                site = (path.relative_to(LIB).as_posix(), func.name)
                found.add(site)
                weights_only = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    unsafe.append(f"{site[0]}:{call.lineno} in {site[1]}()")
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"
    assert found == SITES, f"torch.load sites changed: new {found - SITES}, gone {SITES - found}; test each one"
