"""Split stage: partition the prepared index into train/val/test for one variant (case groups kept whole)."""

from __future__ import annotations

import argparse
import logging

from assurexray.core.atomic import write_json
from assurexray.core.cli_errors import run_stage
from assurexray.core.params import BaseConfig, load_config
from assurexray.data.splits import SplitConfig, read_index, split_partitions, split_summary, write_splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", required=True, help="name of the block under `split` in params.yaml")
    parser.add_argument("--index", required=True, help="data/prepared/index.csv")
    parser.add_argument("--out", required=True, help="output folder for train.csv, val.csv, test.csv")
    parser.add_argument("--metrics", required=True, help="split metrics JSON")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)

    base = load_config(args.params, "base", BaseConfig)
    config = load_config(args.params, f"split.{args.variant}", SplitConfig)
    class_names = list(base.class_names)
    parts, notes = split_partitions(read_index(args.index), config, seed=base.seed, class_names=class_names)
    write_splits(parts, args.out)
    summary = split_summary(parts, class_names)
    record = {"variant": args.variant, "strategy": config.strategy, "seed": base.seed, **summary}
    if notes:
        record["published"] = notes
    write_json(args.metrics, record)
    logging.getLogger("split").info("%s: %s images per partition", args.variant, summary["n_images"])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
