"""The ablation report and figure, drawn from ``ablation.summarise``'s table only (no number computed here).

The paired difference keeps its own signed form, ``+0.012 (-0.010 to +0.030, 3 seed(s))``: the sign is the
finding, and a seed count is not an interval of ``rendering.fmt_ci``. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from assurexray import DISCLAIMER
from assurexray.assessment.ablation import COLUMNS, PAIRED
from assurexray.core.rendering import Alert, Heading, Image, Para, Table, to_markdown

__all__ = ["render_markdown", "plot", "COLUMN_TITLES", "PAIRED_TITLES", "VAL_DELTA_TITLE", "INTERVALS"]

COLUMN_TITLES = {
    "val_macro_auc": "Centre-1 val macro AUC (chooses)", "center_2": "Centre 2 macro AUC",
    "center_3": "Centre 3 macro AUC", "center_pooled": "Centres 2+3 macro AUC",
    "stratified": "Stratified (case-grouped) test macro AUC",
    "center_3_tumour_vs_normal": "Centre 3 tumour-vs-normal AUC",
    "center_2_adapted": "Centre 2 macro AUC, BN-adapted (same images)",
    "center_3_adapted": "Centre 3 macro AUC, BN-adapted (same images)",
    "pointing_game_center": "Pointing game (centres 2+3)",
    "pointing_game_baseline": "Centred-Gaussian pointing game (same tumours)",
    "val_pointing_game": "Centre-1 val pointing game (chooses explain settings)",
    "lesion_pointing_game_center": "Lesion-map pointing game (centres 2+3)",
    "lesion_dice_center": "Lesion-map Dice at its val threshold (centres 2+3)",
}
#: Titles of the paired differences (``ablation.PAIRED``'s test sets).
PAIRED_TITLES = {"center": "Paired Δ centres 2+3 vs baseline", "stratified": "Paired Δ stratified vs baseline"}
#: The decision quantity of a pre-registered rule: validation AUC minus the baseline's, seed by seed.
VAL_DELTA_TITLE = "Δ centre-1 val vs baseline (same seed)"
#: What the intervals are, and what they are not: the bootstrap resamples test images of fixed runs.
INTERVALS = ("Its intervals cover test-set sampling, not seed variance: the bootstrap resamples the test images of "
             "fixed runs, so the spread between seeds shows only in the ± sd (and in how many seeds agree on Δ val).")


def render_markdown(summary: pd.DataFrame, *, command: str, date: str) -> str:
    """The ablation report: every number in it comes from ``summary`` (mean ± sd over seeds)."""
    columns = _present(summary)
    head = ("Configuration", "Seeds", COLUMN_TITLES[columns[0]], VAL_DELTA_TITLE,
            *(COLUMN_TITLES[c] for c in columns[1:]), *(PAIRED_TITLES[p] for p in PAIRED))
    rows = tuple((str(r["config"]), f"{int(r['n_seeds'])} ({r['seeds']})",
                  _mean_sd(r[f"{columns[0]}_mean"], r[f"{columns[0]}_sd"]), _val_delta(r),
                  *(_mean_sd(r[f"{c}_mean"], r[f"{c}_sd"]) for c in columns[1:]), *(_diff(r, p) for p in PAIRED))
                 for _, r in summary.iterrows())
    return to_markdown([
        Alert(DISCLAIMER),
        Heading(1, "Ablation: levers against the centre gap"),
        Para("Each configuration is summarised over its seeds as mean ± sd. Choose on the **centre-1 validation** "
             "columns only (its mean ± sd, and Δ val: minus the baseline seed by seed, on the same validation "
             "images, with how many seeds agree); the test columns are for reporting. A paired difference is a cluster bootstrap of "
             "macro AUC on the same test images (configuration minus baseline, per seed, averaged): the "
             "centre-2/3 test set, and the case-grouped stratified test set of each seed; differences under "
             "about 0.03 are noise for a single run. The stratified columns are n/a for an experiment that did not "
             "retrain the stratified variant, and the centre columns (validation, centres 2 and 3, pointing game) "
             "for one that did not retrain the centre variant. A row marked *ensemble* averages the probabilities of that "
             "configuration's seeds (its paired difference is against the baseline's ensemble; pointing game and "
             "stratified columns are n/a there, the seeds' stratified test sets differ)."),
        Para(INTERVALS),
        Para(f"Made by `{command}` on {date}."),
        Table(head, rows),
        Image("ablation", "ablation.png"),
        Alert(DISCLAIMER),
    ])


def plot(summary: pd.DataFrame, path: str | Path) -> None:
    """Dot plot, one panel per column: configuration mean with ±sd bars (the figure people would rather see)."""
    columns = _present(summary)
    fig = Figure(figsize=(3.2 * len(columns), 0.6 * len(summary) + 2.2))
    axes = fig.subplots(1, len(columns), sharey=True, squeeze=False)[0]
    y = np.arange(len(summary))
    for ax, column in zip(axes, columns):
        mean = summary[f"{column}_mean"].astype(float).to_numpy()
        sd = summary[f"{column}_sd"].astype(float).fillna(0.0).to_numpy()
        ax.errorbar(mean, y, xerr=sd, fmt="o", color="#4C72B0", capsize=3)
        ax.set_title(COLUMN_TITLES[column], fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, summary["config"].tolist(), fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"Ablation (mean ± sd over seeds). {DISCLAIMER}", fontsize=8, color="firebrick")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110, metadata={"Software": None})


# ----------------------------------------------------------------------------------------------- helpers


def _present(summary: pd.DataFrame) -> list[str]:
    """The columns this summary has: a CSV written before a column existed (the lesion map's) renders as it was."""
    return [c for c in COLUMNS if f"{c}_mean" in summary.columns]


def _mean_sd(mean: Any, sd: Any) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "n/a"
    return f"{mean:.3f}" if sd is None or (isinstance(sd, float) and np.isnan(sd)) else f"{mean:.3f} ± {sd:.3f}"


def _diff(r: Mapping[str, Any], prefix: str) -> str:
    value = r.get(f"paired_diff_{prefix}_value")
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a (no paired seed)"
    low, high = r.get(f"paired_diff_{prefix}_ci_low"), r.get(f"paired_diff_{prefix}_ci_high")
    if low is None or (isinstance(low, float) and np.isnan(low)):
        return f"{value:+.3f} (reference)" if value == 0 else f"{value:+.3f}"
    if r.get("ensemble"):
        return f"{value:+.3f} ({low:+.3f} to {high:+.3f}, ensemble vs ensemble)"
    return f"{value:+.3f} ({low:+.3f} to {high:+.3f}, {int(r[f'paired_diff_{prefix}_n_pairs'])} seed(s))"


def _val_delta(r: Mapping[str, Any]) -> str:
    value, n = r.get("val_delta_mean"), int(r.get("val_delta_n") or 0)
    if value is None or (isinstance(value, float) and np.isnan(value)) or not n:
        return "n/a (no paired seed)"
    if r.get("reference"):
        return f"{value:+.4f} (reference)"
    # four decimals: the rules' bars (+0.005, -0.010) sit at the third, where rounding would hide a miss
    return f"{value:+.4f} ({int(r['val_delta_positive'])} of {n} seeds > 0)"
