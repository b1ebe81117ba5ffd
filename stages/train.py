"""Train one split variant's classifier and save its checkpoint (models/V/model.pt) plus DVCLive metrics."""

from __future__ import annotations

import argparse
import logging

from assurexray.learning import resume
from assurexray.core.cli_errors import run_stage
from assurexray.learning.model import ModelConfig, file_sha256, save_checkpoint
from assurexray.core.params import BaseConfig, load_config, load_params
from assurexray.core.provenance import training_data_info
from assurexray.learning.pretraining import classifier_start
from assurexray.learning.training import TrainConfig, is_main_process, load_training_data, train_model

logger = logging.getLogger("assurexray.stages.train")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True, help="prepared cache dir (images.npy, meta.json)")
    parser.add_argument("--split", required=True, help="split dir with train.csv and val.csv")
    parser.add_argument("--model", required=True, help="output checkpoint path (.pt)")
    parser.add_argument("--live", required=True, help="DVCLive output dir (metrics.json, plots/)")
    parser.add_argument("--resume", default=None,
                        help="folder for the last completed epoch's state (not a DVC out); omit to disable")
    parser.add_argument("--pretrained", default=None,
                        help="pretrain stage's output folder (pretrain.json): when it holds pretrained weights the "
                             "backbone starts from them instead of model.pretrained; omit to use model.pretrained")
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    base = load_config(args.params, "base", BaseConfig)
    model_config = load_config(args.params, "model", ModelConfig)
    if args.pretrained is not None:
        model_config = classifier_start(args.pretrained, model_config)
    train_config = load_config(args.params, "train", TrainConfig)
    source = load_params(args.params, "data")["source"]  # provenance only; the fetch stage checks the section

    result = train_model(
        load_training_data(args.prepared, args.split), model_config=model_config, train=train_config, base=base,
        live_dir=args.live, resume_dir=args.resume,
        data_info=training_data_info(args.prepared, args.split, source=source),
    )
    if not is_main_process():
        return 0  # under torchrun only rank 0 writes
    path = save_checkpoint(args.model, result.model, result.meta)
    resume.clear(args.resume)  # the outputs are written: the stage is complete, nothing to resume
    logger.info(
        "saved %s (sha256 %s): best epoch %d, val %s %.4f, %.1f images/s",
        path, file_sha256(path)[:12], result.meta["best_epoch"], result.meta["monitor"],
        result.meta["best_score"], result.images_per_second,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
