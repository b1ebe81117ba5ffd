"""Decode the release once into a letterboxed uint8 cache with lesion masks and duplicate groups."""

from __future__ import annotations

import argparse

from assurexray.btxrd import load_release
from assurexray.cache import build_cache
from assurexray.cli_errors import run_stage
from assurexray.params import check_keys, load_params

PREPARE_KEYS = {"size", "near_duplicate_distance", "workers"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, help="release folder: images/, Annotations/, dataset.xlsx")
    parser.add_argument("--out", required=True, help="cache folder to (re)write")
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args(argv)

    params = check_keys(load_params(args.params, "prepare"), PREPARE_KEYS, where=f"{args.params} prepare")
    class_names = load_params(args.params, "base")["class_names"]

    release = load_release(args.raw, class_names=class_names)
    out = build_cache(
        release,
        args.out,
        size=params["size"],
        class_names=class_names,
        near_duplicate_distance=params["near_duplicate_distance"],
        workers=params["workers"],
    )
    print(f"prepare: {len(release.table)} images -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
