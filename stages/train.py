"""Train one split variant's classifier and save its checkpoint (models/V/model.pt) plus DVCLive metrics."""

from __future__ import annotations

import argparse
import logging

from assurexray import resume
from assurexray.cli_errors import run_stage
from assurexray.model import file_sha256, save_checkpoint
from assurexray.params import check_keys, load_params
from assurexray.provenance import training_data_info
from assurexray.training import is_main_process, load_training_data, train_model

logger = logging.getLogger("assurexray.stages.train")

MODEL_KEYS = {"backbone", "pretrained", "dropout"}
TRAIN_KEYS = {
    "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "grad_clip", "class_weights", "monitor",
    "patience", "device", "amp", "channels_last", "num_workers", "augment", "launcher", "seg_weight", "ema_decay",
}
LAUNCHER_KEYS = {"launcher"}  # read by dvc.yaml's cmd (python | torchrun ...), not by the training loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", required=True, help="prepared cache dir (images.npy, meta.json)")
    parser.add_argument("--split", required=True, help="split dir with train.csv and val.csv")
    parser.add_argument("--model", required=True, help="output checkpoint path (.pt)")
    parser.add_argument("--live", required=True, help="DVCLive output dir (metrics.json, plots/)")
    parser.add_argument("--resume", default=None,
                        help="folder for the last completed epoch's state (not a DVC out); omit to disable")
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    base = load_params(args.params, "base")
    model_params = check_keys(load_params(args.params, "model"), MODEL_KEYS, where=f"{args.params} model")
    train_params = check_keys(load_params(args.params, "train"), TRAIN_KEYS, where=f"{args.params} train")
    missing = sorted(MODEL_KEYS - set(model_params)) + sorted(TRAIN_KEYS - LAUNCHER_KEYS - set(train_params))
    if missing:
        raise ValueError(f"{args.params}: missing key(s) {missing} in sections model/train; add them.")

    data = load_training_data(args.prepared, args.split)
    if list(data.class_names) != list(base["class_names"]):
        raise ValueError(
            f"{args.prepared}/meta.json class_names {data.class_names!r} differ from params base.class_names "
            f"{base['class_names']!r}; rerun the prepare stage (dvc repro prepare)."
        )
    result = train_model(
        images=data.images,
        masks=data.masks,
        train_index=data.train_index,
        val_index=data.val_index,
        class_names=list(base["class_names"]),
        seed=int(base["seed"]),
        live_dir=args.live,
        resume_dir=args.resume,
        data_info=training_data_info(args.prepared, args.split, source=load_params(args.params, "data")["source"]),
        **model_params,
        **{k: v for k, v in train_params.items() if k not in LAUNCHER_KEYS},
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
