"""Report stage: model card and proof-of-concept report (markdown + self-contained HTML) from metrics files."""

from __future__ import annotations

import argparse

from assurexray.core.cli_errors import run_stage
from assurexray.core.params import check_keys, load_params
from assurexray.publishing.report import write_reports
from assurexray.publishing.report_data import TRACKED_PARAMS, collect_report_data, tracked_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", required=True, help="metrics folder, e.g. metrics")
    parser.add_argument("--plots", required=True, help="plots folder, e.g. plots")
    parser.add_argument("--out", required=True, help="output folder for model_card.md, report.md, report.html")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)

    # Only the keys dvc.yaml lists for this stage are read, so no untracked change can alter the documents.
    params = check_keys(tracked_params(load_params(args.params)), set(TRACKED_PARAMS), where=f"{args.params} (report)")
    data = collect_report_data(metrics_dir=args.metrics, plots_dir=args.plots, params=params)
    write_reports(data, out_dir=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
