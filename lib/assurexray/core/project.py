"""Facts about a project that every module shares, each stated once: the split variants, where each stage's
artefacts live (:class:`Layout`, the paths of dvc.yaml), the class the operating point is about, the image
suffixes each reader accepts (from assurexray.core.filetypes), the one reader of the pipeline's JSON files, and which model ``assurexray infer``
uses by default. A module that needs one of these imports it from here; none rebuilds a path or a list.

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

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from assurexray.core.filetypes import DATASET_SUFFIXES, DICOM_SUFFIXES, INFER_SUFFIXES, RASTER_SUFFIXES

__all__ = [
    "VARIANTS", "VARIANT_TITLES", "MALIGNANT", "NORMAL", "RASTER_SUFFIXES", "DICOM_SUFFIXES", "INFER_SUFFIXES",
    "DATASET_SUFFIXES", "Layout", "read_json", "ROOT_ENV", "MODEL_ENV", "DEFAULT_MODEL", "resolve_model_path",
]

#: The split variants, in the order every table and page shows them (``foreach`` lists of dvc.yaml).
VARIANTS: tuple[str, ...] = ("stratified", "center")
#: Their human titles.
VARIANT_TITLES: dict[str, str] = {"stratified": "Stratified split", "center": "Centre hold-out"}
#: The class of the operating point (the sensitivity-targeted threshold) and of every "flag".
MALIGNANT = "Malignant"
#: The no-tumour class: lesion fusion (assurexray.learning.lesion_fusion) lowers its logit.
NORMAL = "Normal"

# The suffix lists (RASTER_SUFFIXES, DICOM_SUFFIXES, INFER_SUFFIXES, DATASET_SUFFIXES) live in
# assurexray.core.filetypes, re-exported here, so the data and training stages do not depend on this file.

#: Environment variable naming the project root (models/, metrics/, plots/, data/).
ROOT_ENV = "ASSUREXRAY_ROOT"
#: Environment variable naming the checkpoint ``assurexray infer`` uses without ``--model``.
MODEL_ENV = "ASSUREXRAY_MODEL"
#: The default checkpoint, relative to a project root (as in dvc.yaml).
DEFAULT_MODEL = Path("models/stratified/model.pt")
#: lib/assurexray/core/project.py -> the repository root of a source checkout (holds dvc.yaml when it is one).
_CHECKOUT = Path(__file__).resolve().parents[3]


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


@dataclass(frozen=True)
class Layout:
    """Where the pipeline's files live under one project ``root`` (the paths of dvc.yaml, stated once).

    ``metrics_root`` reads a metrics folder kept elsewhere (a copied run's ``metrics/``); default ``root/metrics``.
    """

    root: Path
    metrics_root: Path | None = None

    @classmethod
    def of_metrics(cls, metrics_dir: str | os.PathLike) -> "Layout":
        """The layout of a run whose metrics folder is ``metrics_dir`` (its parent is taken as the root)."""
        metrics_dir = Path(metrics_dir)
        return cls(metrics_dir.parent, metrics_root=metrics_dir)

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics" if self.metrics_root is None else self.metrics_root

    def model(self, variant: str) -> Path:
        return self.root / "models" / variant / "model.pt"

    def metrics(self, variant: str) -> Path:
        """``metrics/<variant>``: split.json and one folder per stage (train, eval, explain)."""
        return self.metrics_dir / variant

    def eval_dir(self, variant: str) -> Path:
        return self.metrics(variant) / "eval"

    def operating_point(self, variant: str) -> Path:
        return self.eval_dir(variant) / "operating_point.json"

    def eval_metrics(self, variant: str) -> Path:
        return self.eval_dir(variant) / "metrics.json"

    def predictions(self, variant: str) -> Path:
        return self.eval_dir(variant) / "predictions.csv"

    def explain_metrics(self, variant: str) -> Path:
        return self.metrics(variant) / "explain" / "metrics.json"

    def train_metrics(self, variant: str) -> Path:
        return self.metrics(variant) / "train" / "metrics.json"

    def split_summary(self, variant: str) -> Path:
        return self.metrics(variant) / "split.json"

    def split_test(self, variant: str) -> Path:
        return self.root / "data" / "splits" / variant / "test.csv"

    def plots(self, variant: str) -> Path:
        return self.root / "plots" / variant

    @property
    def compare(self) -> Path:
        return self.metrics_dir / "compare.json"

    @property
    def samples(self) -> Path:
        return self.root / "data" / "raw" / "images"

    @property
    def index_csv(self) -> Path:
        return self.root / "data" / "prepared" / "index.csv"

    @classmethod
    def of_model(cls, model_path: str | os.PathLike) -> tuple["Layout", str]:
        """The layout and variant of a checkpoint at ``<root>/models/<variant>/model.pt`` (as dvc.yaml puts it).

        Only the fixed layout is read off the path; whether the files it names exist (and belong to this
        model) is for the caller to check.
        """
        path = Path(model_path)
        return cls(path.parent.parent.parent), path.parent.name


def read_json(path: str | os.PathLike, *, fix: str = "re-run the stage that writes it (dvc repro)") -> dict[str, Any]:
    """The JSON object in ``path``; ``ValueError`` naming the file and ``fix`` when it is not one.

    A missing file raises ``FileNotFoundError`` (callers that treat absence as "not run yet" check first).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); {fix}.") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}; {fix}.")
    return data
