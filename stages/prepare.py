"""Decode the release once into a letterboxed uint8 cache with lesion masks and duplicate groups."""

from __future__ import annotations

import argparse

from assurexray.data.btxrd import load_release
from assurexray.data.cache import PrepareConfig, build_cache
from assurexray.core.cli_errors import run_stage
from assurexray.core.params import BaseConfig, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, help="release folder: images/, Annotations/, dataset.xlsx")
    parser.add_argument("--out", required=True, help="cache folder to (re)write")
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args(argv)

    config = load_config(args.params, "prepare", PrepareConfig)
    class_names = list(load_config(args.params, "base", BaseConfig).class_names)

    release = load_release(args.raw, class_names=class_names)
    out = build_cache(release, args.out, config, class_names=class_names)
    print(f"prepare: {len(release.table)} images -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
