"""Split stage: partition the prepared index into train/val/test for one variant (case groups kept whole)."""

from __future__ import annotations

import argparse
import logging

from assurexray.atomic import write_json
from assurexray.cli_errors import run_stage
from assurexray.params import load_params
from assurexray.splits import read_index, split_partitions, split_summary, write_splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", required=True, help="name of the block under `split` in params.yaml")
    parser.add_argument("--index", required=True, help="data/prepared/index.csv")
    parser.add_argument("--out", required=True, help="output folder for train.csv, val.csv, test.csv")
    parser.add_argument("--metrics", required=True, help="split metrics JSON")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)

    base = load_params(args.params, "base")
    variants = load_params(args.params, "split")
    if args.variant not in variants:
        raise ValueError(f"--variant {args.variant!r}: no block split.{args.variant} in {args.params}; "
                         f"variants defined: {sorted(variants)}.")
    options = dict(variants[args.variant])
    strategy = options.pop("strategy", None)
    parts, notes = split_partitions(
        read_index(args.index), strategy=strategy, seed=base["seed"], class_names=base["class_names"], **options
    )
    write_splits(parts, args.out)
    summary = split_summary(parts, base["class_names"])
    record = {"variant": args.variant, "strategy": strategy, "seed": base["seed"], **summary}
    if notes:
        record["published"] = notes
    write_json(args.metrics, record)
    logging.getLogger("split").info("%s: %s images per partition", args.variant, summary["n_images"])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
