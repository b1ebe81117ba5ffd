"""Headline stage: the dozen numbers people compare, one small DVC metrics file per variant (identical keys)."""

from __future__ import annotations

import argparse
import logging

from assurexray.core.atomic import write_json
from assurexray.core.cli_errors import run_stage
from assurexray.assessment.headline import HeadlineConfig, headlines, load_variant_metrics
from assurexray.core.params import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stratified", required=True, help="stratified metrics folder, e.g. metrics/stratified")
    parser.add_argument("--stratified-out", required=True, help="its headline, e.g. metrics/stratified/headline.json")
    parser.add_argument("--center", required=True, help="centre hold-out metrics folder, e.g. metrics/center")
    parser.add_argument("--center-out", required=True, help="its headline, e.g. metrics/center/headline.json")
    parser.add_argument("--selected-out", required=True,
                        help="copy of the headline of params headline.variant, e.g. metrics/headline.json")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    config = load_config(args.params, "headline", HeadlineConfig)
    outs = {"stratified": args.stratified_out, "center": args.center_out}
    results = headlines({"stratified": load_variant_metrics(args.stratified),
                         "center": load_variant_metrics(args.center)})
    for variant, path in outs.items():
        write_json(path, results[variant])
    write_json(args.selected_out, results[config.variant])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
