"""Evaluate stage: calibrate on val, test metrics with bootstrap CIs, operating point, plots for one variant."""

from __future__ import annotations

import argparse

from assurexray.core.cli_errors import run_stage
from assurexray.assessment.evaluation import EvaluateConfig, evaluate_checkpoint, write_evaluation
from assurexray.core.params import load_config, train_device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True, help="prepared cache folder, e.g. data/prepared")
    parser.add_argument("--split", required=True, help="split folder with val.csv/test.csv, e.g. data/splits/V")
    parser.add_argument("--model", required=True, action="append",
                        help="checkpoint, e.g. models/V/model.pt; repeat for a seed ensemble (probabilities averaged)")
    parser.add_argument("--out", required=True, help="metrics folder, e.g. metrics/V/eval")
    parser.add_argument("--figures", required=True, help="figures folder; PNGs go to <figures>/eval")
    parser.add_argument("--variant", default=None, help="split variant named in the figure titles, e.g. center")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)

    config = load_config(args.params, "evaluate", EvaluateConfig)
    evaluation = evaluate_checkpoint(config, prepared=args.prepared, split_dir=args.split, model_path=args.model,
                                     device=train_device(args.params))
    write_evaluation(evaluation, out_dir=args.out, figures_dir=args.figures, variant=args.variant)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
