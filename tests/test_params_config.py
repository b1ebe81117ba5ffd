"""load_config: one params section -> one frozen dataclass, with unknown, missing and bad values named."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import pytest
import torch
import yaml

from assurexray.data.cache import PrepareConfig
from assurexray.assessment.evaluation import EvaluateConfig
from assurexray.assessment.explain import ExplainConfig
from assurexray.data.fetch import DataConfig
from assurexray.assessment.headline import HeadlineConfig
from assurexray.learning.model import ModelConfig
from assurexray.learning.pretraining import PretrainConfig
from assurexray.core.params import AuditConfig, BaseConfig, load_config, load_params
from assurexray.data.splits import STRATEGIES, SplitConfig
from assurexray.learning.training import TrainConfig
from assurexray.learning.train_config import params_record as _params_record
from assurexray.learning.transforms import AUGMENT_KEYS, AugmentConfig

SECTIONS = {
    "base": BaseConfig, "data": DataConfig, "prepare": PrepareConfig, "audit": AuditConfig,
    "split.stratified": SplitConfig, "split.center": SplitConfig, "model": ModelConfig, "pretrain": PretrainConfig, "train": TrainConfig,
    "evaluate": EvaluateConfig, "explain": ExplainConfig, "headline": HeadlineConfig,
}


@dataclass(frozen=True)
class _Toy:
    count: int
    name: str = "x"

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"toy.count: expected an integer >= 1, got {self.count!r}.")


@pytest.fixture
def write(tmp_path):
    def _write(data) -> str:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return str(path)
    return _write


@pytest.fixture
def repo_params(repo_root):
    return yaml.safe_load((repo_root / "params.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_section_of_the_repository_params_loads_into_its_dataclass(repo_root, section):
    config = load_config(repo_root / "params.yaml", section, SECTIONS[section])
    assert dataclasses.is_dataclass(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, dataclasses.fields(config)[0].name, None)


def test_the_values_are_those_of_the_file(repo_root, repo_params):
    train = load_config(repo_root / "params.yaml", "train", TrainConfig)
    assert train.lr == repo_params["train"]["lr"] and train.launcher == repo_params["train"]["launcher"]
    assert isinstance(train.augment, AugmentConfig)
    assert dataclasses.asdict(train.augment) == repo_params["train"]["augment"]
    center = load_config(repo_root / "params.yaml", "split.center", SplitConfig)
    assert center.strategy == "center" and center.train_centers == [1] and center.test_fraction is None
    assert load_config(repo_root / "params.yaml", "base", BaseConfig).class_names == ("Normal", "Benign", "Malignant")


def test_an_unknown_key_is_named_with_the_valid_keys(write):
    path = write({"toy": {"count": 3, "nmae": "y"}})
    with pytest.raises(ValueError, match=r"params.yaml toy: unknown key\(s\) \['nmae'\]; valid keys are "
                                         r"\['count', 'name'\]"):
        load_config(path, "toy", _Toy)


def test_a_missing_key_is_named_with_the_file_and_a_key_with_a_default_may_be_left_out(write):
    path = write({"toy": {"name": "y"}})
    with pytest.raises(ValueError, match=rf"toy: missing key\(s\) \['count'\]; add them to {path}"):
        load_config(path, "toy", _Toy)
    assert load_config(write({"toy": {"count": 2}}), "toy", _Toy) == _Toy(count=2, name="x")


def test_an_empty_section_reports_every_required_key(write):
    with pytest.raises(ValueError, match=r"missing key\(s\) \['count'\]"):
        load_config(write({"toy": None}), "toy", _Toy)


def test_a_section_that_is_not_a_mapping_is_refused(write):
    with pytest.raises(TypeError, match=r"toy: expected a mapping of keys, got int 3"):
        load_config(write({"toy": 3}), "toy", _Toy)


@pytest.mark.parametrize(
    ("section", "values", "error", "match"),
    [
        ("toy", {"count": 0}, ValueError, r"toy.count: expected an integer >= 1, got 0"),
        ("base", {"seed": "42", "class_names": ["A", "B"]}, TypeError, r"base.seed: expected an integer, got '42'"),
        ("base", {"seed": 1, "class_names": ["A", "A"]}, ValueError, r"base.class_names: expected a list of at least two"),
        ("evaluate", {"bootstrap_resamples": 10, "bootstrap_cluster": "yes", "ci_level": 0.95, "calibration_bins": 10,
                      "malignant_target_sensitivity": 0.9, "bootstrap_seed": 1, "batch_size": 8, "tta_flip": False},
         ValueError, r"evaluate.bootstrap_cluster: expected true or false, got 'yes'"),
        ("evaluate", {"bootstrap_resamples": 10, "bootstrap_cluster": True, "ci_level": 95, "calibration_bins": 10,
                      "malignant_target_sensitivity": 0.9, "bootstrap_seed": 1, "batch_size": 8, "tta_flip": False},
         ValueError, r"evaluate.ci_level: expected a number in \(0, 1\), got 95"),
        ("headline", {"variant": "centre"}, ValueError, r"headline.variant: 'centre' is not a variant"),
        ("model", {"backbone": "resnet18", "pretrained": "none", "dropout": 1.5}, ValueError,
         r"model.dropout: expected a number in \[0, 1\), got 1.5"),
        ("prepare", {"image_px": 4, "near_duplicate_distance": 4, "workers": None}, ValueError,
         r"prepare.image_px must be an integer >= 8, got 4"),
        ("data", {"source": "kaggle"}, ValueError, r"data.source: unknown source 'kaggle'"),
        ("split", {"strategy": "random"}, ValueError, r"split.strategy: unknown strategy 'random'"),
    ],
)
def test_a_wrong_type_or_value_is_refused_by_the_dataclass_and_names_the_file(write, section, values, error, match):
    classes = {**SECTIONS, "toy": _Toy, "split": SplitConfig}
    path = write({section: values})
    with pytest.raises(error, match=match) as info:
        load_config(path, section, classes[section])
    assert str(info.value).startswith(f"{path}: ")


def test_a_nested_section_becomes_a_nested_dataclass_with_its_own_key_checks(write, repo_params):
    train = dict(repo_params["train"])
    train["augment"] = {**train["augment"], "hflipp": 0.5}
    path = write({"train": train})
    with pytest.raises(ValueError, match=r"train.augment: unknown key\(s\) \['hflipp'\]; valid keys are"):
        load_config(path, "train", TrainConfig)
    train["augment"] = {"rotate_deg": -1}
    with pytest.raises(ValueError, match=r"train.augment: values out of range \{'rotate_deg': -1\}"):
        load_config(write({"train": train}), "train", TrainConfig)
    train["augment"] = None  # null = every augmentation off
    assert load_config(write({"train": train}), "train", TrainConfig).augment == AugmentConfig()
    train["augment"] = 0.5
    with pytest.raises(TypeError, match=r"train.augment: expected a mapping of keys, got float"):
        load_config(write({"train": train}), "train", TrainConfig)


def test_a_missing_train_key_is_named_but_the_launcher_defaults_to_python(write, repo_params):
    train = {k: v for k, v in repo_params["train"].items() if k not in ("launcher", "ema_decay")}
    with pytest.raises(ValueError, match=r"params.yaml train: missing key\(s\) \['ema_decay'\]"):
        load_config(write({"train": train}), "train", TrainConfig)
    train["ema_decay"] = 0.0
    assert load_config(write({"train": train}), "train", TrainConfig).launcher == "python"


def test_a_dotted_section_names_the_blocks_found_when_absent(write):
    path = write({"split": {"stratified": {"strategy": "stratified"}}})
    with pytest.raises(KeyError, match=r"no section 'split.centre'; blocks under split: \['stratified'\]"):
        load_config(path, "split.centre", SplitConfig)
    with pytest.raises(ValueError, match=r"no section 'headline'; sections found: \['split'\]"):
        load_config(path, "headline", HeadlineConfig)


def test_split_config_accepts_exactly_the_keys_the_strategies_read():
    known = set().union(*(s.defaults for s in STRATEGIES.values()))
    assert {f.name for f in dataclasses.fields(SplitConfig)} == known | {"strategy"}


def test_augment_keys_are_the_fields_of_augment_config():
    assert AUGMENT_KEYS == tuple(f.name for f in dataclasses.fields(AugmentConfig))


def test_the_checkpoint_records_the_resolved_sections_without_the_launcher(repo_root, repo_params):
    model = load_config(repo_root / "params.yaml", "model", ModelConfig)
    train = load_config(repo_root / "params.yaml", "train", TrainConfig)
    record = _params_record(model, train, device=torch.device("cpu"), amp=False, world_size=2)
    assert record["model"] == repo_params["model"]
    expected = {k: v for k, v in repo_params["train"].items() if k != "launcher"}
    assert record["train"] == {**expected, "device": "cpu", "amp": False, "world_size": 2}
    # the key order of checkpoints written before TrainConfig existed, so the same run keeps the same bytes
    assert list(record["train"]).index("world_size") == list(record["train"]).index("augment") + 1


def _leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, "x"]
    return 1  # None


def test_every_params_key_changes_dvcs_run_cache_key(repo_params):
    """A key dvc's run cache does not hash (one named ``size``) makes ``dvc exp run -S key=...`` restore old outputs."""
    from dvc.stage.cache import _get_cache_hash

    def run_cache_key(params):
        return _get_cache_hash({"cmd": "python stages/x.py", "deps": [], "params": {"params.yaml": params},
                                "outs": [{"path": "out"}]}, key=True)

    baseline = run_cache_key(copy.deepcopy(repo_params))
    leaves = list(_leaves(repo_params))
    assert ("prepare", "image_px") in leaves and len(leaves) > 40
    for path in leaves:
        params = copy.deepcopy(repo_params)
        node = params
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = _changed(node[path[-1]])
        assert run_cache_key(params) != baseline, f"{'.'.join(path)} is invisible to dvc's run cache; rename it"


def test_a_params_key_the_run_cache_cannot_see_is_refused_with_its_path(write):
    path = write({"prepare": {"size": 224, "workers": None}, "train": {"x": {"nfiles": 2}}})
    with pytest.raises(ValueError, match=r"\['prepare.size', 'train.x.nfiles'\] have a name DVC leaves out of its "
                                         r"run-cache key.*Rename the key"):
        load_params(path, "train")
    with pytest.raises(ValueError, match=r"prepare.size"):
        load_config(path, "prepare", PrepareConfig)
