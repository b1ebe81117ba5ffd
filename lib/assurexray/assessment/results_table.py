"""The README's "results on real BTXRD" table, generated from a run's metrics files (never typed by hand).

``python -m assurexray.assessment.results_table --metrics metrics --command "..." --readme README.md`` rewrites the block
between ``<!-- results:begin -->`` and ``<!-- results:end -->`` of the README with a table of both variants,
pooled and per test centre, with intervals (in the one format of ``assurexray.core.rendering.fmt_ci``), the
lesion map's pointing game and Dice beside the centred Gaussian's (``n/a`` for a model without a lesion head or
explain metrics written before lesion maps), the grouping each split guarantees, the command and the date.
NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Mapping

from assurexray.core.atomic import write_text
from assurexray.core.project import MALIGNANT, VARIANTS, Layout, read_json
from assurexray.core.rendering import fmt_ci, fmt_diff, fmt_level, markdown_table
from assurexray.data.splits import grouping_statement

__all__ = ["results_table", "update_readme", "BEGIN", "END"]

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
#: The table's row titles (longer than project.VARIANT_TITLES: the README says what each split guarantees).
_TITLES = {"stratified": "Stratified (grouped)", "center": "Centre holdout (train centre 1)"}


def results_table(metrics_dir: str | Path, *, command: str, date: str, commit: str = "") -> str:
    """Markdown: one row per (variant, test set), pooled then each centre, from ``metrics_dir`` only."""
    layout = Layout.of_metrics(metrics_dir)
    evals = {variant: _read(layout.eval_metrics(variant)) for variant in VARIANTS}
    names, level = _class_names_and_level(evals, layout)
    header = (
        "Variant", "Test set", f"Images ({'/'.join(n[0] for n in names)})", f"Macro AUC ({fmt_level(level)} CI)",
        "Tumour vs normal AUC", f"{MALIGNANT} sens. / spec. at the val threshold",
        "Pointing game: lesion map vs centred Gaussian", "Dice (val threshold): lesion map vs centred Gaussian",
    )
    rows, notes = [], []
    explains = {v: _read(layout.explain_metrics(v)) if layout.explain_metrics(v).is_file() else None
                for v in VARIANTS}
    for variant in VARIANTS:
        title, e, x = _TITLES[variant], evals[variant], explains[variant]
        split = _read(layout.split_summary(variant))
        # (row label, eval block, where explain metrics.json holds the same test set's localisation)
        blocks = [("all test", e, ("overall",))] + [(f"centre {c}", b, ("per_center", str(c)))
                                                    for c, b in (e.get("by_center") or {}).items()]
        if variant == "stratified":
            blocks = blocks[:1]  # per-centre rows of the stratified test are small; the holdout is the question
        for label, block, scope in blocks:
            counts = block.get("test_counts") or block.get("counts") or {}
            op = block.get("operating_point") or {}
            rows.append((
                title, label, f"{block.get('n_test', block.get('n'))} ({'/'.join(str(counts.get(c, 0)) for c in names)})",
                fmt_ci(_get(block, "headline", "macro_auc")), fmt_ci(_get(block, "diagnostics", "tumour_vs_normal_auc")),
                f"{fmt_ci(op.get('test_sensitivity'))} / {fmt_ci(op.get('test_specificity'))}",
                *(_lesion_cell(x, scope, m) for m in ("pointing_game", "dice@val")),
            ))
        if x is not None:
            lesion = "" if _get(x, "lesion_map") is None else (
                f"; lesion map minus Grad-CAM, paired on the same images: "
                f"{fmt_diff(_get(x, 'comparisons', 'lesion_map_vs_gradcam', 'overall', 'pointing_game'))}")
            notes.append(f"- {title}: Grad-CAM pointing game on {_get(x, 'model', 'overall', 'n')} annotated test "
                         f"tumours {fmt_ci(_get(x, 'model', 'overall', 'pointing_game'))} against "
                         f"{fmt_ci(_get(x, 'baseline', 'overall', 'pointing_game'))} for a centred Gaussian "
                         f"(layer `{x.get('target_layer')}`, chosen on validation){lesion}.")
        notes.append(f"- {title}: {grouping_statement(split)}")
        op = e.get("operating_point") or {}
        if op.get("reliable") is False:
            reason = f" ({op['reason']})" if op.get("reason") else ""
            notes.append(f"- {title}: the {MALIGNANT} threshold rests on {op.get('val_positives')} validation "
                         f"{MALIGNANT} images and is flagged unreliable{reason}.")
    with_map = [x for x in explains.values() if _get(x, "lesion_map") is not None]
    if with_map:
        notes.append(f"- Lesion map: the model's own estimate of where the tumour is (research only), scored on the "
                     f"annotated test tumours at its own validation-chosen threshold; intervals: "
                     f"{with_map[0].get('intervals') or 'bootstrap (method not recorded)'}; n/a: no lesion head, or "
                     "explain metrics written before lesion maps were scored.")
    made = f"Made by `{command}` on {date}" + (f" at commit {commit}" if commit else "") + "."
    return "\n".join([markdown_table(header, rows), "", *notes, "", made])


def update_readme(readme: str | Path, table: str) -> None:
    """Replace the README block between BEGIN and END with ``table`` (atomically)."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path}: no {BEGIN} ... {END} block; add the two markers where the table belongs.")
    new = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: f"{BEGIN}\n{table}\n{END}", text, flags=re.S)
    write_text(path, new)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the pipeline (dvc repro) before making the table.")
    return read_json(path, fix="re-run the pipeline (dvc repro) before making the table")


def _get(node: Mapping[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _lesion_cell(explain: Mapping[str, Any] | None, scope: tuple[str, ...], metric: str) -> str:
    """The lesion map's ``metric`` beside the centred Gaussian's on one test set; ``n/a`` without a lesion map."""
    if _get(explain, "lesion_map") is None:
        return "n/a"
    lesion, baseline = (_get(explain, side, *scope, metric) for side in ("lesion_map", "baseline"))
    return f"{fmt_ci(lesion)} vs {fmt_ci(baseline)}"


def _class_names_and_level(evals: Mapping[str, Mapping[str, Any]], layout: Layout) -> tuple[list[str], float]:
    """Class order and bootstrap level the table states, read from the eval metrics (both variants must agree)."""
    found = {v: (e.get("class_names"), _get(e, "bootstrap", "ci_level")) for v, e in evals.items()}
    for variant, (names, level) in found.items():
        if not names or level is None:
            raise ValueError(f"{layout.eval_metrics(variant)}: 'class_names' or 'bootstrap.ci_level' "
                             f"missing (schema in docs/ARCHITECTURE.md); re-run `dvc repro evaluate@{variant}`.")
    if len(set(map(repr, found.values()))) > 1:
        raise ValueError(f"{layout.metrics_dir}: the variants' class_names / bootstrap.ci_level differ ({found!r}); re-run "
                         "evaluate for both with the same params.")
    names, level = next(iter(found.values()))
    return list(names), level


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", default="metrics", help="the run's metrics folder")
    parser.add_argument("--command", required=True, help="the command that made the run (quoted in the table)")
    parser.add_argument("--date", required=True, help="the date of the run (YYYY-MM-DD)")
    parser.add_argument("--commit", default="", help="the commit the run used")
    parser.add_argument("--readme", help="rewrite this README's results block instead of printing")
    args = parser.parse_args(argv)
    table = results_table(args.metrics, command=args.command, date=args.date, commit=args.commit)
    if args.readme:
        update_readme(args.readme, table)
    else:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
