"""Compare stage: stratified vs centre hold-out metrics, generalisation gap with CIs, markdown report."""

from __future__ import annotations

import argparse

from assurexray.core.atomic import write_json, write_text
from assurexray.core.cli_errors import run_stage
from assurexray.assessment.compare import compare_variants, load_test_predictions, load_variant, render_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stratified", required=True, help="stratified metrics folder, e.g. metrics/stratified")
    parser.add_argument("--center", required=True, help="centre hold-out metrics folder, e.g. metrics/center")
    parser.add_argument("--out", required=True, help="comparison JSON, e.g. metrics/compare.json")
    parser.add_argument("--report", required=True, help="markdown report, e.g. reports/comparison.md")
    args = parser.parse_args(argv)

    stratified, stratified_explain = load_variant(args.stratified)
    center, center_explain = load_variant(args.center)
    comparison = compare_variants(
        stratified, center, stratified_explain=stratified_explain, center_explain=center_explain,
        stratified_predictions=load_test_predictions(args.stratified),
        center_predictions=load_test_predictions(args.center),
    )
    write_json(args.out, comparison)
    write_text(args.report, render_report(comparison))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
