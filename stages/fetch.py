"""Fetch stage: write the raw dataset (synthetic sample or the BTXRD release) to --out in the release layout."""

from __future__ import annotations

import argparse

from assurexray.core.cli_errors import run_stage
from assurexray.data.fetch import DataConfig, fetch_data
from assurexray.core.params import BaseConfig, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="output folder (release layout), e.g. data/raw")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)

    base = load_config(args.params, "base", BaseConfig)
    data = load_config(args.params, "data", DataConfig)
    fetch_data(args.out, data, seed=base.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
