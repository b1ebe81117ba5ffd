"""The dozen numbers people compare across experiments, one small file per variant (``headline.json``).

The detailed metrics files (evaluation, explain, split, audit, compare) hold hundreds of keys; declared as DVC
metrics they made ``dvc exp show`` a 1,200-column table. Only these headline files are DVC metrics. Every
variant's file has the same keys (per-centre keys are the union over the variants, ``null`` where a variant
has no test image from a centre), so a key means the same thing in every column of ``dvc exp show`` and
``dvc metrics diff`` can compare one variant with another (see ``headline.variant`` in params.yaml).
Every value is copied from a metrics file, never computed here. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from assurexray.core.project import VARIANTS, Layout, read_json

__all__ = ["HEADLINE_KEYS", "HeadlineConfig", "headline_metrics", "headlines", "load_variant_metrics", "leaf_count"]

#: Top-level keys of a headline file, in order, with what each holds (documentation and the tests' contract).
HEADLINE_KEYS: dict[str, str] = {
    "n_test": "test images (eval metrics.json n_test)",
    "macro_auc": "macro one-vs-rest AUC on test with its bootstrap interval: value, ci_low, ci_high",
    "malignant_sensitivity_at_threshold": "Malignant sensitivity on test at the operating point (threshold) chosen on "
                                          "validation; not the argmax sensitivity of eval metrics.json",
    "malignant_specificity_at_threshold": "Malignant specificity on test at that threshold",
    "ece_calibrated": "expected calibration error on test after temperature scaling",
    "pointing_game": "pointing game hit rate on test: model (Grad-CAM), the centred-Gaussian baseline and lesion_map "
                     "(the lesion head's map; null for a model without a lesion head)",
    "lesion_dice": "Dice against the lesion masks on test at each map's validation-chosen threshold (dice@val): "
                   "lesion_map (null without a lesion head) and gradcam",
    "epochs_trained": "epochs the training loop ran (early stopping included)",
    "best_epoch": "epoch of the checkpoint kept (best validation monitor)",
    "macro_auc_by_center": "macro AUC on each centre's test images, keyed by centre id (null: none in test)",
}


@dataclass(frozen=True)
class HeadlineConfig:
    """The ``headline`` section of params.yaml."""

    variant: str  # whose headline metrics/headline.json copies

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"headline.variant: {self.variant!r} is not a variant; use one of {sorted(VARIANTS)}.")


def load_variant_metrics(metrics_dir: str | os.PathLike) -> dict[str, dict[str, Any] | None]:
    """``{"eval", "explain", "train"}`` metrics of one variant folder (``metrics/<variant>``).

    eval/metrics.json is required; explain/metrics.json and train/metrics.json are None when absent.
    """
    root = Path(metrics_dir)
    layout = Layout.of_metrics(root.parent)
    paths = {"eval": layout.eval_metrics(root.name), "explain": layout.explain_metrics(root.name),
             "train": layout.train_metrics(root.name)}
    if not paths["eval"].is_file():
        raise FileNotFoundError(
            f"{paths['eval']}: evaluation metrics not found; run `dvc repro evaluate` first."
        )
    return {name: _read_json(path) if path.is_file() else None for name, path in paths.items()}


def headline_metrics(
    eval_metrics: Mapping[str, Any],
    *,
    explain_metrics: Mapping[str, Any] | None = None,
    train_metrics: Mapping[str, Any] | None = None,
    centers: list[str] | None = None,
) -> dict[str, Any]:
    """One variant's headline dict (keys :data:`HEADLINE_KEYS`, in that order).

    ``centers``: the centre ids to report (default: those in ``eval_metrics["by_center"]``); a centre absent
    from this variant's test set gets ``None``. Missing explain/train metrics give ``None`` values.
    """
    source = "eval metrics.json"
    auc = _get(eval_metrics, ("headline", "macro_auc"), source)
    by_center = eval_metrics.get("by_center") or {}
    if centers is None:
        centers = _center_order(by_center)
    return {
        "n_test": _get(eval_metrics, ("n_test",), source),
        "macro_auc": {k: _get(auc, (k,), f"{source} headline.macro_auc") for k in ("value", "ci_low", "ci_high")},
        "malignant_sensitivity_at_threshold": _get(eval_metrics, ("operating_point", "test_sensitivity", "value"),
                                                   source),
        "malignant_specificity_at_threshold": _get(eval_metrics, ("operating_point", "test_specificity", "value"),
                                                   source),
        "ece_calibrated": _get(eval_metrics, ("calibration", "ece_after"), source),
        "pointing_game": {side: _overall(explain_metrics, side, "pointing_game")
                          for side in ("model", "baseline", "lesion_map")},
        "lesion_dice": {"lesion_map": _overall(explain_metrics, "lesion_map", "dice@val"),
                        "gradcam": _overall(explain_metrics, "model", "dice@val")},
        "epochs_trained": None if train_metrics is None else train_metrics.get("epochs_run"),
        "best_epoch": None if train_metrics is None else train_metrics.get("best_epoch"),
        "macro_auc_by_center": {
            c: (_get(by_center[c], ("headline", "macro_auc", "value"), f"{source} by_center.{c}")
                if c in by_center else None)
            for c in centers
        },
    }


def headlines(variants: Mapping[str, Mapping[str, Mapping[str, Any] | None]]) -> dict[str, dict[str, Any]]:
    """Headline dicts of several variants (``{variant: load_variant_metrics(...)}``) with identical keys."""
    centers: set[str] = set()
    for metrics in variants.values():
        centers |= set((metrics["eval"] or {}).get("by_center") or {})
    order = _center_order(dict.fromkeys(centers))
    return {
        name: headline_metrics(m["eval"], explain_metrics=m.get("explain"), train_metrics=m.get("train"),
                               centers=order)
        for name, m in variants.items()
    }


def leaf_count(data: Mapping[str, Any]) -> int:
    """Number of scalar values in a nested dict: the columns it adds to ``dvc exp show``."""
    return sum(leaf_count(v) if isinstance(v, Mapping) else 1 for v in data.values())


def _overall(explain_metrics: Mapping[str, Any] | None, side: str, metric: str) -> Any:
    """``explain_metrics[side]["overall"][metric]["value"]``; None without explain metrics or, for the lesion map,
    when the model has no lesion head (``"lesion_map": null``, or a file written before lesion maps existed)."""
    if explain_metrics is None or (side == "lesion_map" and explain_metrics.get(side) is None):
        return None
    return _get(explain_metrics.get(side) or {}, ("overall", metric, "value"), f"explain metrics.json {side}")


def _center_order(by_center: Mapping[str, Any]) -> list[str]:
    """Centre ids in numeric order when they are numbers (``"2"`` before ``"10"``), else alphabetical."""
    return sorted(by_center, key=lambda c: (0, int(c), "") if str(c).isdigit() else (1, 0, str(c)))


def _get(data: Mapping[str, Any], keys: tuple[str, ...], source: str) -> Any:
    node: Any = data
    for i, key in enumerate(keys):
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(
                f"{source}: key {'.'.join(keys[:i + 1])!r} missing (schema in docs/ARCHITECTURE.md); re-run the "
                "stage that writes it (dvc repro)."
            )
        node = node[key]
    return node


def _read_json(path: Path) -> dict[str, Any]:
    return read_json(path, fix="re-run the stage that writes it")
