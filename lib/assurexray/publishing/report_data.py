"""What the report and the model card show: the params the report stage tracks and the metrics files it reads.

:func:`collect_report_data` reads every file once into a :class:`ReportData`; the documents are built from it
alone (``report_sections``, ``model_card``, ``report``), so what they can say is exactly what is listed here.
Eval metrics of both variants are required; every other file is optional and reads as "not available" where
it would be used. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from assurexray.publishing.learning_curves import LossHistory, read_loss_history
from assurexray.core.params import check_keys
from assurexray.core.project import VARIANT_TITLES, VARIANTS, Layout, read_json

logger = logging.getLogger(__name__)

__all__ = [
    "VARIANTS", "VARIANT_TITLES", "TRACKED_PARAMS", "FIGURES", "ReportData", "tracked_params",
    "collect_report_data", "lookup", "ci_level", "explain_name",
]

#: The params the report stage reads: exactly its ``params:`` list in dvc.yaml (None = whole section), so
#: a change DVC does not track can never alter the documents.
TRACKED_PARAMS: dict[str, tuple[str, ...] | None] = {
    "data": ("source",), "prepare": ("image_px",), "model": None, "train": None, "evaluate": None, "explain": None,
}
#: Figures per variant: (plots sub-folder, file, caption).
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("eval", "roc.png", "ROC curves, one-vs-rest (test)"),
    ("eval", "pr.png", "Precision-recall curves, one-vs-rest (test)"),
    ("eval", "confusion.png", "Confusion matrix (test)"),
    ("eval", "reliability.png", "Reliability diagram before/after temperature scaling (test)"),
    ("gradcam", "overview.png", "Grad-CAM gallery overview (test; lesion outline where annotated)"),
)
_EVAL_KEYS = ("n_test", "class_names", "headline", "per_class", "confusion", "calibration", "operating_point",
              "bootstrap")


@dataclass(frozen=True)
class ReportData:
    """Everything the documents show: the params read and the metrics files (None = optional file absent)."""

    params: dict[str, Any]
    class_names: tuple[str, ...]
    evals: dict[str, dict[str, Any]]
    explains: dict[str, dict[str, Any] | None]
    splits: dict[str, dict[str, Any] | None]
    trains: dict[str, dict[str, Any] | None]
    operating_points: dict[str, dict[str, Any] | None]
    audit: dict[str, Any] | None
    compare: dict[str, Any] | None
    #: variant -> figure file -> absolute path, or None when the PNG is absent.
    figures: dict[str, dict[str, Path | None]]
    #: variant -> train and validation loss per epoch (DVCLive's files), or None when absent.
    losses: dict[str, LossHistory | None]
    #: Names shown for missing files, relative to the metrics/plots folders' parent (no machine paths).
    metrics_name: str = "metrics"
    plots_name: str = "plots"


def tracked_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of a whole params.yaml the report reads (``TRACKED_PARAMS``); KeyError names what is missing."""
    out: dict[str, Any] = {}
    for section, keys in TRACKED_PARAMS.items():
        if section not in params:
            raise KeyError(f"params.yaml: section {section!r} missing; the report stage reads {_tracked_list()}.")
        values = params[section]
        if keys is not None:
            absent = [k for k in keys if k not in values]
            if absent:
                raise KeyError(f"params.yaml: {section}.{absent[0]} missing; the report stage reads {_tracked_list()}.")
            values = {k: values[k] for k in keys}
        out[section] = dict(values)
    return out


def collect_report_data(
    metrics_dir: str | os.PathLike, plots_dir: str | os.PathLike, params: Mapping[str, Any]
) -> ReportData:
    """Read every metrics file and locate the figures; eval metrics are required, the rest optional."""
    check_keys(params, set(TRACKED_PARAMS), where="report params")
    absent = [s for s in TRACKED_PARAMS if s not in params]
    if absent:
        raise ValueError(f"report params: section(s) {absent} missing; pass tracked_params(params.yaml contents).")
    for section, keys in TRACKED_PARAMS.items():
        if keys is not None:
            check_keys(params[section], set(keys), where=f"report params section {section!r}")
    metrics_dir, plots_dir = Path(metrics_dir), Path(plots_dir)
    layout = Layout.of_metrics(metrics_dir)
    evals = {v: _read_eval(layout.eval_metrics(v), v) for v in VARIANTS}
    names = [tuple(evals[v]["class_names"]) for v in VARIANTS]
    if names[0] != names[1]:
        raise ValueError(
            f"class_names differ between variants: {dict(zip(VARIANTS, names))!r}; re-run evaluate for both."
        )
    return ReportData(
        params=dict(params),
        class_names=names[0],
        evals=evals,
        explains={v: _read_optional(layout.explain_metrics(v)) for v in VARIANTS},
        splits={v: _read_optional(layout.split_summary(v)) for v in VARIANTS},
        trains={v: _read_optional(layout.train_metrics(v)) for v in VARIANTS},
        operating_points={v: _read_optional(layout.operating_point(v)) for v in VARIANTS},
        audit=_read_optional(metrics_dir / "audit.json"),
        compare=_read_optional(layout.compare),
        figures={v: {f"{sub}/{name}": _existing(plots_dir / v / sub / name) for sub, name, _ in FIGURES}
                 for v in VARIANTS},
        losses={v: read_loss_history(metrics_dir / v / "train") for v in VARIANTS},
        metrics_name=metrics_dir.name,
        plots_name=plots_dir.name,
    )


# ----------------------------------------------------------------------------------------- data helpers


def lookup(data: Mapping[str, Any] | None, *keys: str) -> Any:
    """``data[k1][k2]...``, or None where any level is absent (optional files and keys read as n/a)."""
    node: Any = data
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def ci_level(d: ReportData) -> Any:
    """The bootstrap confidence level the eval metrics were computed at."""
    return d.evals[VARIANTS[0]]["bootstrap"].get("ci_level")


def explain_name(d: ReportData, v: str) -> str:
    """Display name of a variant's explain metrics file (for 'not available' sentences)."""
    return f"{d.metrics_name}/{v}/explain/metrics.json"


# ---------------------------------------------------------------------------------------------- readers


def _read_eval(path: Path, variant: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: evaluation metrics of variant {variant!r} not found; the report needs both variants' "
            f"eval metrics. Run `dvc repro evaluate@{variant}` first."
        )
    metrics = read_json(path, fix="re-run the stage that writes it")
    absent = [k for k in _EVAL_KEYS if k not in metrics]
    if absent:
        raise ValueError(f"{path}: keys {absent} missing (schema in docs/ARCHITECTURE.md); re-run `dvc repro "
                         f"evaluate@{variant}`.")
    return metrics


def _read_optional(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        logger.info("%s absent: the report says 'not available' where it would be used", path)
        return None
    return read_json(path, fix="re-run the stage that writes it")


def _existing(path: Path) -> Path | None:
    return path.resolve() if path.is_file() else None


def _tracked_list() -> str:
    return ", ".join(s if k is None else ", ".join(f"{s}.{x}" for x in k) for s, k in TRACKED_PARAMS.items())
