"""dvc.yaml lists, for every stage, each library module its script imports (transitively).

A stage whose deps omit a module it imports is not rerun when that module changes, so its outputs silently
go stale. The import graph is read from the source (``ast``), never by importing anything, and it is
followed through ``lib/assurexray`` recursively, so new modules are covered without editing this test.

Rules: ``import assurexray.x`` / ``from assurexray.x import y`` depend on ``lib/assurexray/x.py`` (and on
``x/y.py`` when ``y`` is a submodule); ``from assurexray import NAME`` depends on ``x.py`` when NAME is a
module, else on the package ``__init__.py`` (where NAME is defined). Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "assurexray"
LIB = REPO_ROOT / "lib"


def module_file(dotted: str, lib: Path = LIB) -> Path | None:
    """The source file of a dotted ``assurexray`` module under ``lib``, or None if it is not a module there."""
    base = lib.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def direct_imports(source: Path, lib: Path = LIB) -> set[Path]:
    """Library module files that ``source`` imports directly (absolute and relative ``assurexray`` imports)."""
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    found: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.add(module_file(alias.name, lib))
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, source, lib)
            if base is None:
                continue
            for alias in node.names:
                sub = module_file(f"{base}.{alias.name}", lib)
                found.add(sub if sub is not None else module_file(base, lib))
    if None in found:
        raise AssertionError(f"{source}: imports an {PACKAGE} module that has no file under {lib}.")
    return found


def transitive_imports(script: Path, lib: Path = LIB) -> set[Path]:
    """Every library module file reachable from ``script`` through imports."""
    seen: set[Path] = set()
    todo = list(direct_imports(script, lib))
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(direct_imports(path, lib) - seen)
    return seen


def stage_deps(dvc_yaml: Path) -> dict[str, tuple[Path, set[Path]]]:
    """stage name -> (stage script from its ``cmd``, declared deps as absolute paths); ``foreach`` bodies once."""
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        script = next((w for w in str(body["cmd"]).split() if w.startswith("stages/") and w.endswith(".py")), None)
        if script is None:
            raise AssertionError(f"dvc.yaml stage {name!r}: cmd {body['cmd']!r} runs no stages/<name>.py script.")
        deps = {(dvc_yaml.parent / d).resolve() for d in body.get("deps", []) if "${" not in d}
        out[name] = (dvc_yaml.parent / script, deps)
    return out


def missing_deps(dvc_yaml: Path, lib: Path = LIB) -> dict[str, list[str]]:
    """stage -> files its script imports (or the script itself) that its ``deps`` do not list."""
    root = dvc_yaml.parent
    problems = {}
    for name, (script, deps) in stage_deps(dvc_yaml).items():
        needed = {script.resolve()} | {p.resolve() for p in transitive_imports(script, lib)}
        absent = sorted(str(p.relative_to(root.resolve())) for p in needed - deps)
        if absent:
            problems[name] = absent
    return problems


def _from_base(node: ast.ImportFrom, source: Path, lib: Path) -> str | None:
    """The absolute dotted module of a ``from X import ...``, or None when X is not in the package."""
    if node.level == 0:
        name = node.module or ""
        return name if name == PACKAGE or name.startswith(PACKAGE + ".") else None
    try:
        parts = list(source.resolve().relative_to(lib.resolve()).with_suffix("").parts)
    except ValueError:
        return None  # a relative import outside the library (a stage script has none)
    parts = parts[:-1]  # the package holding this module (for __init__.py: that package itself)
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


# ------------------------------------------------------------------------------------------------ tests


def test_every_stage_lists_each_library_module_its_script_imports():
    problems = missing_deps(REPO_ROOT / "dvc.yaml")
    assert not problems, "dvc.yaml deps lack imported files (add them to the stage's deps):\n" + "\n".join(
        f"  {stage}: {', '.join(files)}" for stage, files in problems.items()
    )


def _tiny_project(root: Path, deps: list[str]) -> Path:
    pkg = root / "lib" / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('DISCLAIMER = "x"\n')
    (pkg / "alpha.py").write_text("from assurexray.beta import helper\n")
    (pkg / "beta.py").write_text("import json\nfrom . import gamma\n\ndef helper():\n    from .sub import leaf\n")
    (pkg / "gamma.py").write_text("X = 1\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "leaf.py").write_text("from .. import DISCLAIMER\n")
    (pkg / "unused.py").write_text("")
    (root / "stages").mkdir()
    (root / "stages" / "s.py").write_text("import numpy\nfrom assurexray.alpha import helper\n")
    stage = {"cmd": "python stages/s.py --out out", "deps": deps, "outs": ["out"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": stage}}))
    return root / "dvc.yaml"


def test_imports_are_followed_through_absolute_relative_and_function_level_imports(tmp_path):
    dvc_yaml = _tiny_project(tmp_path, ["stages/s.py"])
    lib = tmp_path / "lib"
    found = {p.relative_to(lib).as_posix() for p in transitive_imports(tmp_path / "stages" / "s.py", lib)}
    assert found == {"assurexray/alpha.py", "assurexray/beta.py", "assurexray/gamma.py",
                     "assurexray/sub/leaf.py", "assurexray/__init__.py"}
    assert missing_deps(dvc_yaml, lib) == {"s": sorted(f"lib/{f}" for f in found)}


def test_a_complete_deps_list_passes_and_one_missing_module_is_named(tmp_path):
    files = ["lib/assurexray/alpha.py", "lib/assurexray/beta.py", "lib/assurexray/gamma.py",
             "lib/assurexray/sub/leaf.py", "lib/assurexray/__init__.py"]
    assert missing_deps(_tiny_project(tmp_path / "a", ["stages/s.py", *files]), tmp_path / "a" / "lib") == {}
    without_gamma = [f for f in files if "gamma" not in f]
    dvc_yaml = _tiny_project(tmp_path / "b", without_gamma)  # the stage script itself is missing too
    assert missing_deps(dvc_yaml, tmp_path / "b" / "lib") == {"s": ["lib/assurexray/gamma.py", "stages/s.py"]}


def test_an_import_of_a_module_that_does_not_exist_is_reported(tmp_path):
    dvc_yaml = _tiny_project(tmp_path, ["stages/s.py"])
    (tmp_path / "lib" / PACKAGE / "gamma.py").write_text("from assurexray.nothere import thing\n")
    with pytest.raises(AssertionError, match=r"gamma\.py: imports an assurexray module that has no file"):
        missing_deps(dvc_yaml, tmp_path / "lib")
