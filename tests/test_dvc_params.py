"""dvc.yaml declares, for every stage, exactly the params.yaml keys its script reads.

DVC reruns a stage when a param it declares changes. A key the stage reads but does not declare lets its outputs
go stale (``dvc repro`` skips the stage); a key it declares but never reads reruns it, and everything after it,
for nothing. Declaring a whole section is fine when the stage reads every key in it. (It does not change what a
bare ``dvc exp show`` lists: without ``--param-deps`` DVC 3.67 shows every leaf of params.yaml.)

The keys read are found in the stage script's source (``ast``) and in the config dataclasses it loads, never by
running it. Rules, one per way a stage reads params (assurexray.core.params):
``load_config(path, "section", Cls)`` reads every field of ``Cls`` (a nested dataclass field: all of its fields;
a plain mapping such as ``data.sample``: every key under it), unless the result is only ever used as
``result.field``, which reads just those fields; ``load_params(path, "section")["key"]`` reads that key;
``tracked_params(...)`` reads ``TRACKED_PARAMS``; ``train_device(path)`` reads ``train.device``. Any other call of
those loaders fails the test, so a new way of reading params cannot go unchecked.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import typing
from pathlib import Path
from typing import Any, Mapping

import pytest
import yaml

from assurexray.core.params import train_device
from assurexray.publishing.report_data import TRACKED_PARAMS

REPO_ROOT = Path(__file__).resolve().parents[1]
LOADERS = {"load_config", "load_params", "tracked_params", "train_device"}


def leaves(params: Mapping[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of every non-mapping value in ``params`` (a list is one leaf, as DVC shows it)."""
    out = set()
    for key, value in params.items():
        out |= leaves(value, f"{prefix}{key}.") if isinstance(value, Mapping) else {f"{prefix}{key}"}
    return out


def under(params: Mapping[str, Any], dotted: str) -> Any:
    """The value at ``dotted`` in ``params``; KeyError when absent."""
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            raise KeyError(dotted)
        node = node[key]
    return node


def expand(params: Mapping[str, Any], dotted: str) -> set[str]:
    """``dotted`` as the params.yaml leaves it covers: itself for a leaf, every leaf below it for a section."""
    value = under(params, dotted)
    return leaves(value, f"{dotted}.") if isinstance(value, Mapping) else {dotted}


def dataclass_keys(cls: type, section: str) -> set[str]:
    """Dotted keys of every field of ``cls`` under ``section``, nested dataclasses recursed into."""
    hints = typing.get_type_hints(cls)
    keys = set()
    for field in dataclasses.fields(cls):
        nested = hints.get(field.name)
        dotted = f"{section}.{field.name}"
        keys |= dataclass_keys(nested, dotted) if dataclasses.is_dataclass(nested) else {dotted}
    return keys


def keys_read(script: Path, args: Mapping[str, str]) -> set[str]:
    """Dotted params keys the stage ``script`` reads, given its command-line ``args`` (``--variant center``)."""
    tree = ast.parse(script.read_text(encoding="utf-8"), filename=str(script))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    classes = {alias.asname or alias.name: (node.module, alias.name) for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and node.module for alias in node.names}
    read: set[str] = set()
    for call in ast.walk(tree):
        name = getattr(call.func, "id", None) if isinstance(call, ast.Call) else None
        if name not in LOADERS:
            continue
        where = f"{script.name} line {call.lineno}"
        if name == "train_device":
            read.add("train.device")
        elif name == "tracked_params":
            read |= {f"{section}.{k}" if k else section for section, ks in TRACKED_PARAMS.items()
                     for k in (ks or [None])}
        elif name == "load_params":
            parent = parents[call]
            if isinstance(parent, ast.Call) and getattr(parent.func, "id", None) == "tracked_params":
                continue  # the whole file, narrowed by tracked_params (counted there)
            subscript = isinstance(parent, ast.Subscript) and isinstance(parent.slice, ast.Constant)
            if not (len(call.args) == 2 and subscript):
                raise AssertionError(f"{where}: load_params(path, 'section')['key'] is the form this test reads; "
                                     "load a config dataclass with load_config instead.")
            read.add(f"{_text(call.args[1], args, where)}.{parent.slice.value}")
        else:  # load_config(path, section, Cls)
            section = _text(call.args[1], args, where)
            module, attr = classes[call.args[2].id]
            keys = dataclass_keys(getattr(importlib.import_module(module), attr), section)
            used = _fields_used(call, parents, tree)
            read |= keys if used is None else {f"{section}.{f}" for f in used}
    return read


def _text(node: ast.expr, args: Mapping[str, str], where: str) -> str:
    """A section name: a string constant, or an f-string of ``args.<name>`` (the stage's command line)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(value.value)
            elif isinstance(value.value, ast.Attribute) and value.value.attr in args:
                parts.append(args[value.value.attr])
            else:
                raise AssertionError(f"{where}: section {ast.unparse(node)} uses a value not on the command line.")
        return "".join(parts)
    raise AssertionError(f"{where}: section {ast.unparse(node)} is neither a string nor an f-string of args.")


def _fields_used(call: ast.Call, parents: dict, tree: ast.AST) -> set[str] | None:
    """The fields read from ``call``'s config object, or None when the object is used whole (passed on)."""
    parent = parents[call]
    if isinstance(parent, ast.Attribute):
        return {parent.attr}
    if not (isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name)):
        return None
    name = parent.targets[0].id
    uses = [parents[n] for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == name
            and isinstance(n.ctx, ast.Load)]
    if all(isinstance(use, ast.Attribute) for use in uses):
        return {use.attr for use in uses}
    return None


def stage_params(dvc_yaml: Path) -> dict[str, tuple[list[str], set[str]]]:
    """stage (``train@center`` for a foreach item) -> (its ``params:`` entries, the keys its script reads)."""
    pipeline = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))
    out = {}
    for name, stage in pipeline["stages"].items():
        body = stage.get("do", stage)
        items = pipeline["vars"][0][stage["foreach"][2:-1]] if "foreach" in stage else [None]
        for item in items:
            def sub(text: Any) -> Any:
                return text.replace("${item}", item) if item and isinstance(text, str) else text
            words = sub(str(body["cmd"])).split()
            script = next(w for w in words if w.startswith("stages/") and w.endswith(".py"))
            args = {w[2:].replace("-", "_"): v for w, v in zip(words, words[1:]) if w.startswith("--")}
            entries = [sub(p) for p in body.get("params", [])]
            if any(not isinstance(p, str) for p in entries):
                raise AssertionError(f"dvc.yaml {name}: a params entry names another file; this test reads params.yaml")
            out[f"{name}@{item}" if item else name] = (entries, keys_read(dvc_yaml.parent / script, args))
    return out


def mismatches(dvc_yaml: Path, params_yaml: Path) -> dict[str, str]:
    """stage -> what its declared params and the keys its script reads disagree on (stages that agree: absent).

    A key read that params.yaml lacks (a field left at its default) is fine under a declared section, which
    tracks it once it is set, and named otherwise."""
    params = yaml.safe_load(params_yaml.read_text(encoding="utf-8"))
    problems = {}
    for stage, (entries, read) in stage_params(dvc_yaml).items():
        declared = set().union(*(expand(params, entry) for entry in entries))
        present, absent = set(), set()
        for key in read:
            try:
                present |= expand(params, key)
            except KeyError:
                absent.add(key)
        notes = []
        if present - declared:
            notes.append(f"reads {sorted(present - declared)} without declaring them (add them to its params:)")
        if declared - present:
            notes.append(f"declares {sorted(declared - present)} that it never reads (remove them from its params:)")
        uncovered = sorted(k for k in absent if not any(k.startswith(entry + ".") for entry in entries))
        if uncovered:
            notes.append(f"reads {uncovered}, absent from params.yaml and under no declared section (add the key "
                         "to params.yaml and to the stage's params:)")
        if notes:
            problems[stage] = "; ".join(notes)
    return problems


# ------------------------------------------------------------------------------------------------ tests


def test_every_stage_declares_exactly_the_params_its_script_reads():
    problems = mismatches(REPO_ROOT / "dvc.yaml", REPO_ROOT / "params.yaml")
    assert not problems, "dvc.yaml params disagree with what the stages read:\n" + "\n".join(
        f"  {stage}: {text}" for stage, text in problems.items())


def _edited(tmp_path: Path, stage: str, params: list[str]) -> Path:
    pipeline = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    body = pipeline["stages"][stage]
    body.get("do", body)["params"] = params
    (tmp_path / "stages").symlink_to(REPO_ROOT / "stages")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return tmp_path / "dvc.yaml"


def test_a_key_read_but_not_declared_is_named_for_each_foreach_item(tmp_path):
    dvc_yaml = _edited(tmp_path, "evaluate", ["evaluate"])  # train.device dropped
    problems = mismatches(dvc_yaml, REPO_ROOT / "params.yaml")
    assert set(problems) == {"evaluate@stratified", "evaluate@center"}
    assert problems["evaluate@center"].startswith("reads ['train.device'] without declaring them")


def test_a_whole_section_declared_where_one_key_is_read_is_named(tmp_path):
    dvc_yaml = _edited(tmp_path, "fetch", ["base", "data"])  # fetch uses base.seed only
    assert mismatches(dvc_yaml, REPO_ROOT / "params.yaml") == {
        "fetch": "declares ['base.class_names'] that it never reads (remove them from its params:)"}


def _keys(tmp_path: Path, source: str, **args: str) -> set[str]:
    script = tmp_path / "s.py"
    script.write_text(source)
    return keys_read(script, args)


def test_a_config_passed_whole_reads_every_field_and_one_used_by_attribute_reads_those(tmp_path):
    source = ("from assurexray.core.params import BaseConfig, load_config\n"
              "from assurexray.learning.training import TrainConfig\n"
              "base = load_config(p, 'base', BaseConfig)\n"
              "train = load_config(p, 'train', TrainConfig)\n"
              "run(train, seed=base.seed)\n")
    keys = _keys(tmp_path, source)
    assert "base.seed" in keys and "base.class_names" not in keys
    assert {"train.lr", "train.launcher", "train.augment.hflip", "train.augment.jpeg_quality"} <= keys
    assert "train.augment" not in keys  # a nested dataclass is its fields, not one key


def test_an_f_string_section_takes_the_stage_command_line_and_a_subscript_reads_one_key(tmp_path):
    source = ("from assurexray.core.params import BaseConfig, load_config, load_params\n"
              "from assurexray.data.splits import SplitConfig\n"
              "names = list(load_config(a, 'base', BaseConfig).class_names)\n"
              "config = load_config(a, f'split.{args.variant}', SplitConfig)\n"
              "source = load_params(a, 'data')['source']\n"
              "run(config)\n")
    keys = _keys(tmp_path, source, variant="center")
    assert {"base.class_names", "split.center.strategy", "split.center.train_centers", "data.source"} <= keys
    assert "base.seed" not in keys and not any(k.startswith("split.stratified") for k in keys)


def test_a_way_of_reading_params_the_test_does_not_know_fails_with_the_line(tmp_path):
    with pytest.raises(AssertionError, match=r"s\.py line 2: load_params\(path, 'section'\)\['key'\]"):
        _keys(tmp_path, "from assurexray.core.params import load_params\ntrain = load_params(p, 'train')\n")


def test_train_device_reads_the_train_device_key_and_nothing_else(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  device: cpu\n")
    assert train_device(params) == "cpu"
    params.write_text("train:\n  epochs: 1\n")
    with pytest.raises(ValueError, match="train.device is missing"):
        train_device(params)
