"""Audit the raw release and the prepared cache: composition, data quality, duplicates and leakage routes."""

from __future__ import annotations

import argparse

from assurexray.data.audit import audit_dataset
from assurexray.data.audit_report import write_audit
from assurexray.core.cli_errors import run_stage
from assurexray.core.params import AuditConfig, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, help="release folder: images/, Annotations/, dataset.xlsx")
    parser.add_argument("--prepared", required=True, help="prepared cache folder (index.csv, duplicate_pairs.csv)")
    parser.add_argument("--report", required=True, help="markdown report to write")
    parser.add_argument("--figures", required=True, help="figures folder to (re)write")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    parser.add_argument("--datasheet", required=True, help="datasheet markdown to write (Gebru et al. 2021)")
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args(argv)

    config = load_config(args.params, "audit", AuditConfig)
    result = audit_dataset(args.raw, args.prepared, config)
    write_audit(result, report_path=args.report, figures_dir=args.figures, metrics_path=args.metrics,
                datasheet_path=args.datasheet)
    duplicates = result.metrics["duplicates"]
    print(f"audit: {result.metrics['n_images']} images, {duplicates['exact_pairs']} exact + "
          f"{duplicates['near_pairs']} near duplicate pairs ({duplicates['cross_class_pairs']} cross-class) "
          f"-> {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
