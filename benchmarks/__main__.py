"""Run every benchmark, print each figure with its goal, write metrics/bench.json.

    python -m benchmarks            # all figures (peak memory on the full release size included)
    python -m benchmarks --quick    # fewer repeats and images, no peak-memory runs: a few minutes on 2 cores
    python -m benchmarks --only prepare_draft infer_overlap
    python -m benchmarks --readme   # and rewrite docs/speed.md's table from the new results
    python -m benchmarks --tiny --out bench-tiny.json   # seconds: checks the plumbing, the numbers mean nothing
"""

from __future__ import annotations

import argparse
import importlib
import logging
import platform
import sys
import time
import traceback

import torch

from assurexray.core.atomic import write_json
from benchmarks import Figure, format_table, readme

#: Benchmark modules in run order (benchmarks/<name>.py, each with figures(quick, *, tiny)).
MODULES = (
    "training_overhead", "lesion_cost", "prepare_draft", "infer_overlap", "gradcam_cost", "bootstrap_speed", "grouping_scale",
    "cache_read_speed", "dvc_noop", "peak_memory", "ddp_throughput",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller inputs, no peak-memory runs")
    parser.add_argument("--only", nargs="+", choices=MODULES, metavar="NAME", help=f"a subset of {list(MODULES)}")
    parser.add_argument("--tiny", action="store_true",
                        help="smallest inputs and a tiny model: checks that every benchmark runs, measures nothing")
    parser.add_argument("--out", default="metrics/bench.json", help="JSON results (default: %(default)s)")
    parser.add_argument("--readme", action="store_true", help=f"then rewrite {readme.PAGE}'s table from --out")
    args = parser.parse_args(argv)
    if args.tiny and (args.readme or args.out == parser.get_default("out")):
        parser.error("--tiny figures measure nothing: pass another --out and no --readme")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(0)
    figures: list[Figure] = []
    started = time.perf_counter()
    for name in args.only or MODULES:
        if args.quick and name == "peak_memory":
            figures.append(Figure("peak memory (prepare, train)", None, "MB", "run without --quick", None,
                                  "skipped in --quick"))
            continue
        t0 = time.perf_counter()
        try:
            found = importlib.import_module(f"benchmarks.{name}").figures(quick=args.quick, tiny=args.tiny)
        except Exception as err:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
            traceback.print_exc()
            found = [Figure(name, None, "", "", False, f"failed: {type(err).__name__}: {err}")]
        figures.extend(found)
        print(f"[{name}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
    print(format_table(figures))
    write_json(args.out, {
        "quick": args.quick, "tiny": args.tiny, "seconds": round(time.perf_counter() - started, 1),
        "python": platform.python_version(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "figures": [f.to_dict() for f in figures],
    })
    print(f"wrote {args.out}", file=sys.stderr)
    if args.readme:
        readme.update(args.out, readme.PAGE)
        print(f"updated {readme.PAGE}", file=sys.stderr)
    return 0 if all(f.ok is not False for f in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
