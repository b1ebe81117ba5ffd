"""Grad-CAM heatmaps, their localisation against the lesion masks, and the gallery (explain@<variant>)."""

from __future__ import annotations

import argparse
import logging

from assurexray import DISCLAIMER
from assurexray.core.atomic import atomic_path, write_json
from assurexray.core.cli_errors import run_stage
from assurexray.assessment.explain import ExplainConfig, explain_variant
from assurexray.assessment.gallery import write_gallery
from assurexray.learning.model import load_checkpoint, resolve_device
from assurexray.core.params import BaseConfig, load_config, train_device
from assurexray.learning.transforms import eval_transform


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True, help="prepared cache directory (images.npy, masks.npy)")
    parser.add_argument("--split", required=True, help="split directory with val.csv and test.csv")
    parser.add_argument("--model", required=True, help="checkpoint models/<variant>/model.pt")
    parser.add_argument("--predictions", required=True, help="evaluate's predictions.csv")
    parser.add_argument("--out", required=True, help="directory for metrics.json and per_image.csv")
    parser.add_argument("--figures", required=True, help="gallery directory (replaced whole)")
    parser.add_argument("--variant", default=None, help="split variant named in the gallery titles, e.g. center")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    logging.getLogger(__name__).info(DISCLAIMER)

    config = load_config(args.params, "explain", ExplainConfig)
    base = load_config(args.params, "base", BaseConfig)
    model, meta = load_checkpoint(args.model, device=resolve_device(train_device(args.params)))
    result = explain_variant(
        model=model,
        transform=eval_transform(meta),
        prepared_dir=args.prepared,
        split_dir=args.split,
        predictions_path=args.predictions,
        config=config,
        seed=base.seed,
        class_names=list(meta["class_names"]),
    )
    write_json(f"{args.out}/metrics.json", result.metrics)
    with atomic_path(f"{args.out}/per_image.csv") as tmp:
        result.per_image.to_csv(tmp, index=False, float_format="%.6g")
    write_gallery(args.figures, result.panels, class_names=list(meta["class_names"]), variant=args.variant)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
