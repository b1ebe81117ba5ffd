"""The library's layers: a module imports only from its own layer or one below it (read from the source).

core -> data -> learning -> assessment -> publishing -> serving. An import against that order is the first
step to a cycle, and it hides where a fact lives; move the shared piece down instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "assurexray"
LAYERS = ["core", "data", "learning", "assessment", "publishing", "serving"]


def _imported_layers(source: Path) -> set[tuple[str, int]]:
    """(layer, line) of every ``assurexray.<layer>`` import in ``source``, imports inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "assurexray":
                names = [f"assurexray.{a.name}" for a in node.names]
            else:
                names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "assurexray" and len(parts) > 1 and parts[1] in LAYERS:
                found.add((parts[1], node.lineno))
    return found


def test_every_module_lives_in_a_layer():
    flat = [p.name for p in LIB.glob("*.py") if p.name != "__init__.py"]
    assert flat == [], f"modules outside a layer subpackage: {flat}; put each in one of {LAYERS}"
    assert sorted(p.name for p in LIB.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS)


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_itself_and_the_layers_below(layer):
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    upward = [f"{path.relative_to(LIB)}:{line} imports assurexray.{used}"
              for path in sorted((LIB / layer).glob("*.py"))
              for used, line in sorted(_imported_layers(path)) if used not in allowed]
    assert upward == []


def test_each_layer_says_what_it_holds():
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((LIB / layer / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc.split()) > 20, f"{layer}/__init__.py: a one-paragraph docstring says what it holds"


def test_the_check_sees_an_upward_import(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from assurexray.serving import infer\n", encoding="utf-8")
    assert _imported_layers(source) == {("serving", 2)}
