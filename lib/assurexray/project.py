"""Where a project's files are found from outside it: the model ``assurexray infer`` uses by default.

Precedence of the model file (the first that applies wins; a named file that is missing is an error, never a
silent fall-back to another model):

1. ``--model FILE`` on the command line;
2. ``$ASSUREXRAY_MODEL`` (a checkpoint file);
3. ``$ASSUREXRAY_ROOT/models/stratified/model.pt`` (the project root, the same setting the web app reads;
   when set, the only place looked);
4. ``./models/stratified/model.pt`` (run from the project root, where ``dvc repro`` ran);
5. ``models/stratified/model.pt`` of the source checkout this package is installed from (``pip install -e``),
   so ``assurexray infer`` works from any folder on the machine that trained the model.

Nothing walks up folders looking for a project: every place is fixed and listed in the error message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

__all__ = ["ROOT_ENV", "MODEL_ENV", "DEFAULT_MODEL", "resolve_model_path"]

#: Environment variable naming the project root (models/, metrics/, plots/, data/).
ROOT_ENV = "ASSUREXRAY_ROOT"
#: Environment variable naming the checkpoint ``assurexray infer`` uses without ``--model``.
MODEL_ENV = "ASSUREXRAY_MODEL"
#: The default checkpoint, relative to a project root (as in dvc.yaml).
DEFAULT_MODEL = Path("models/stratified/model.pt")
#: lib/assurexray/project.py -> the repository root of a source checkout (holds dvc.yaml when it is one).
_CHECKOUT = Path(__file__).resolve().parents[2]


def resolve_model_path(
    model: str | os.PathLike | None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> Path:
    """The checkpoint to use, by the precedence in the module docstring.

    ``model`` (``--model``) is returned as given: loading it reports a missing file. ``FileNotFoundError``
    when ``$ASSUREXRAY_MODEL`` names a missing file, or when no default place holds a model (the message
    lists every place looked and how to fix it).
    """
    if model is not None:
        return Path(model)
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else Path(cwd)
    named = environ.get(MODEL_ENV, "").strip()
    if named:
        path = cwd / Path(named).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{MODEL_ENV}={named!r}: checkpoint not found at {path}; point it at a model.pt "
                f"(e.g. <project>/{DEFAULT_MODEL.as_posix()}) or unset it."
            )
        return path
    root = environ.get(ROOT_ENV, "").strip()
    if root:  # a named project is the only place looked: never another project's model
        candidates = [(f"{ROOT_ENV}={root!r}", cwd / Path(root).expanduser() / DEFAULT_MODEL)]
    else:
        candidates = [("the current folder", cwd / DEFAULT_MODEL)]
        if (_CHECKOUT / "dvc.yaml").is_file():
            candidates.append(("the checkout assurexray is installed from", _CHECKOUT / DEFAULT_MODEL))
    for _, path in candidates:
        if path.is_file():
            return path
    looked = "; ".join(f"{where}: {path}" for where, path in candidates)
    raise FileNotFoundError(
        f"no model given and none found (looked in {looked}). Pass --model FILE, set {MODEL_ENV}=FILE or "
        f"{ROOT_ENV}=<project folder>, or run `dvc repro` (or `dvc pull`) in the project."
    )
