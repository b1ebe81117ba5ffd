"""Self-supervised pretraining of one variant's backbone on its training partition (off: a record saying so)."""

from __future__ import annotations

import argparse
import logging

from assurexray.core.cli_errors import run_stage
from assurexray.core.params import BaseConfig, load_config, train_device
from assurexray.learning import resume
from assurexray.learning.model import ModelConfig
from assurexray.learning.pretraining import (
    PretrainConfig,
    load_pretrain_images,
    pretrain_backbone,
    write_disabled,
    write_pretrained,
)
from assurexray.learning.train_config import TrainConfig
from assurexray.learning.transforms import AugmentConfig

logger = logging.getLogger("assurexray.stages.pretrain")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True, help="prepared cache folder, e.g. data/prepared")
    parser.add_argument("--split", required=True, help="split folder whose train.csv is pretrained on, e.g. data/splits/V")
    parser.add_argument("--out", required=True, help="output folder (backbone.safetensors, pretrain.json)")
    parser.add_argument("--resume", default=None,
                        help="folder for the last completed epoch's state (not a DVC out); omit to disable")
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    config = load_config(args.params, "pretrain", PretrainConfig)
    if not config.enabled:
        write_disabled(args.out)
        resume.clear(args.resume)
        logger.info("pretrain.enabled is false: wrote %s/pretrain.json only", args.out)
        return 0
    model = load_config(args.params, "model", ModelConfig)
    augment = load_config(args.params, "train.augment", AugmentConfig)
    seed = load_config(args.params, "base", BaseConfig).seed
    result = pretrain_backbone(
        load_pretrain_images(args.prepared, args.split, config.extra_images), config,
        backbone=model.backbone, start_weights=model.pretrained, clahe=augment.clahe, intensity=augment.intensity,
        seed=seed, device=train_device(args.params),
        num_workers=load_config(args.params, "train", TrainConfig).num_workers, resume_dir=args.resume,
    )
    write_pretrained(args.out, result)
    resume.clear(args.resume)  # the outputs are written: the stage is complete, nothing to resume
    logger.info("wrote %s (final NT-Xent loss %.4f)", args.out, result.record["history"][-1]["loss"])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
