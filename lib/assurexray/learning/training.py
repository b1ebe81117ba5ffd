"""Training loop: weighted cross-entropy, AdamW, warm-up + cosine, keep-best and early stopping on validation.

Read top to bottom: ``train_model`` takes the prepared data and the ``model``/``train``/``base`` config objects
whole, checks them against each other, builds the model (with its lesion decoder when ``model.lesion_head``)
and the loaders, then ``_fit`` runs epochs of train -> validate -> log -> keep-best -> maybe stop. On CPU two
runs with the same params and data give identical weights and metrics (every RNG reseeded from (seed, rank,
epoch) each epoch, deterministic algorithms). One loop serves 1 and N processes (``torchrun``, see
:mod:`assurexray.learning.distributed`): a DistributedSampler shards the global batch, DDP averages the
gradients (the decoder's too: it is inside the wrapped module), validation is sharded and reassembled on
rank 0, which alone takes the keep-best / stop decision (:mod:`assurexray.learning.early_stopping`) and
broadcasts it; only rank 0 writes. Around it: what feeds a step (:mod:`assurexray.learning.batches`), one
validation pass (:mod:`assurexray.learning.validation`), DVCLive (:mod:`assurexray.learning.training_log`)
and resume after a kill (:mod:`assurexray.learning.resume`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim import swa_utils
from torch.utils.data import DataLoader
from tqdm import tqdm

from assurexray.core.atomic import atomic_dir
from assurexray.core.params import BaseConfig
from assurexray.data.manifests import open_images, read_meta, read_split
from assurexray.learning import distributed, resume
from assurexray.learning.batches import (
    ImageDataset,
    inverse_frequency_weights,
    local_batch_size,
    partition_labels,
    reseed_epoch,
    seed_worker,
    train_sampler,
    warmup_cosine,
)
from assurexray.learning.early_stopping import EarlyStopping
from assurexray.learning.lesion_head import WithLesionHead, has_lesion_head, lesion_loss
from assurexray.learning.model import ModelConfig, backbone_norm, checkpoint_format, create_model, resolve_device
from assurexray.learning.train_config import MONITORS, TrainConfig, params_record
from assurexray.learning.training_log import log_epoch, log_summary, open_live
from assurexray.learning.transforms import eval_transform, train_transform
from assurexray.learning.validation import predict_shard, reassemble, val_scores

__all__ = ["TrainConfig", "TrainResult", "TrainingData", "is_main_process", "load_training_data", "train_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """The best-epoch model (eval mode), its checkpoint meta and the per-epoch history."""

    model: nn.Module
    meta: dict[str, Any]
    history: list[dict[str, float]]
    images_per_second: float = field(default=float("nan"), compare=False)  # training throughput (not in meta)


@dataclass(frozen=True)
class TrainingData:
    """Prepared arrays (memory-mapped) plus the train/val partitions of one split variant."""

    images: np.ndarray  # (N, S, S) uint8
    masks: np.ndarray | None  # (N, S, S) uint8 or None
    train_index: pd.DataFrame
    val_index: pd.DataFrame
    class_names: list[str]


@dataclass(frozen=True)
class _Run:
    """What one process of one training run works with, resolved once by :func:`train_model`."""

    train: TrainConfig
    ctx: distributed.Context
    device: torch.device
    amp_dtype: torch.dtype | None
    local_batch: int
    seed: int
    lesion: bool  # the model carries a lesion decoder, trained with train.seg_weight
    live_dir: str | os.PathLike | None
    resume_dir: str | os.PathLike | None


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0: the one process that writes checkpoints and logs."""
    return distributed.context_from_env().is_main


def load_training_data(prepared_dir: str | os.PathLike, split_dir: str | os.PathLike) -> TrainingData:
    """Read data/prepared (images.npy, masks.npy, meta.json) and data/splits/V/{train,val}.csv."""
    images, masks = open_images(prepared_dir, masks=None)  # masks only where the cache has them
    meta = read_meta(prepared_dir)
    train_index, val_index = (read_split(split_dir, part, n_images=len(images), columns=("row", "label_idx"))
                              for part in ("train", "val"))
    return TrainingData(images, masks, train_index, val_index, list(meta["class_names"]))


def train_model(data: TrainingData, *, model_config: ModelConfig, train: TrainConfig, base: BaseConfig,
                live_dir: str | os.PathLike | None = None, resume_dir: str | os.PathLike | None = None,
                data_info: Mapping[str, Any] | None = None) -> TrainResult:
    """Train ``model_config``'s network on ``data.train_index``; keep the weights best on ``data.val_index``.

    ``train.batch_size`` is the global batch: under torchrun each of the WORLD_SIZE processes takes
    ``batch_size / WORLD_SIZE`` of it, so the same params give the same optimisation for 1 and N processes.
    With ``model_config.lesion_head`` the lesion decoder is trained on ``data.masks`` (BCE + Dice on tumour
    images, weight ``train.seg_weight``) and kept in the model. ``ema_decay`` > 0 validates and keeps an
    exponential moving average of the weights. ``live_dir`` None disables DVCLive logging; ``resume_dir``
    (None = off) holds the state of the last completed epoch (:mod:`assurexray.learning.resume`);
    ``data_info`` (``assurexray.core.provenance.training_data_info``) is stored as ``meta["data"]``.
    """
    class_names = list(base.class_names)
    if list(data.class_names) != class_names:
        raise ValueError(
            f"the prepared cache's class_names {list(data.class_names)!r} differ from params base.class_names "
            f"{class_names!r}; rerun the prepare stage (dvc repro prepare).")
    _check_arrays(data.images, data.masks)
    lesion = bool(model_config.lesion_head)
    if lesion and train.seg_weight <= 0:
        raise ValueError("model.lesion_head: true trains the lesion decoder with weight train.seg_weight, which is "
                         f"{train.seg_weight!r}; set train.seg_weight > 0 (e.g. 1.0) or model.lesion_head: false.")
    if train.seg_weight > 0 and not lesion:
        raise ValueError(f"train.seg_weight={train.seg_weight!r} weights the lesion decoder's loss, but "
                         "model.lesion_head is false; set model.lesion_head: true or train.seg_weight: 0.")
    if lesion and data.masks is None:
        raise ValueError("model.lesion_head: true needs the lesion masks (masks.npy of the prepared cache); "
                         "rerun prepare or set model.lesion_head: false and train.seg_weight: 0.")
    if train.monitor == "auc_dice" and not lesion:
        raise ValueError("train.monitor: auc_dice adds the validation lesion Dice, which needs model.lesion_head: "
                         "true; use macro_auc for a model without a lesion head.")
    ctx = distributed.context_from_env()
    _seed_everything(base.seed)
    run_device = resolve_device(train.device)
    run = _Run(train=train, ctx=ctx, device=run_device, amp_dtype=_amp_dtype(train.amp, run_device),
               local_batch=local_batch_size(train.batch_size, ctx.world_size), seed=base.seed, lesion=lesion,
               live_dir=live_dir, resume_dir=resume_dir)

    model = create_model(model_config.backbone, num_classes=len(class_names), dropout=model_config.dropout,
                         pretrained=model_config.pretrained, lesion_head=lesion)
    mean, std = backbone_norm(model)
    meta: dict[str, Any] = {
        "backbone": model_config.backbone, "num_classes": len(class_names), "class_names": class_names,
        "dropout": float(model_config.dropout), "input_size": int(data.images.shape[1]), "in_chans": 3,
        "mean": mean, "std": std, "clahe": train.augment.clahe, "intensity": train.augment.intensity,
        "letterbox_fill": 0,
        "params": params_record(model_config, train, device=run_device, amp=run.amp_dtype is not None,
                                 world_size=ctx.world_size),
        "best_epoch": None, "monitor": train.monitor, "best_score": None, "seed": int(base.seed),
        "format_version": checkpoint_format(lesion_head=lesion),
        "data": None if data_info is None else json.loads(json.dumps(dict(data_info))),  # a plain JSON copy
    }
    if lesion:
        meta["lesion_head"] = True
    with distributed.process_group(ctx, run_device):
        return _fit(model, meta, data, run)


def _fit(model: nn.Module, meta: dict[str, Any], data: TrainingData, run: _Run) -> TrainResult:
    """The epoch loop, identical for 1 and N processes (inside the process group when N > 1)."""
    cfg, ctx, device = run.train, run.ctx, run.device
    num_classes = meta["num_classes"]
    y_train = partition_labels(data.train_index, "train", data.images.shape[0], meta["class_names"])
    y_val = partition_labels(data.val_index, "val", data.images.shape[0], meta["class_names"])
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    # What the optimiser trains: the classifier, or (logits, lesion logits) from one wrapped forward.
    trained: nn.Module = WithLesionHead(model) if run.lesion else model
    net: nn.Module = trained
    if ctx.distributed:  # gradients (the decoder's too) are averaged over the ranks inside backward()
        net = nn.parallel.DistributedDataParallel(trained, device_ids=None if device.index is None else [device.index])
    # The weights that are validated and kept: the raw model, or its exponential moving average.
    ema = None
    if cfg.ema_decay > 0:
        ema = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(cfg.ema_decay),
                                      use_buffers=True)
    kept = model if ema is None else ema.module

    augment = dataclasses.asdict(cfg.augment)  # every key, defaults filled in
    train_tf = train_transform(meta, augment, seed=run.seed)
    masks = data.masks if run.lesion else None
    train_ds = ImageDataset(data.images, data.train_index["row"].to_numpy(), y_train, train_tf, masks=masks)
    # Validation is sharded too: rank r scores val rows r, r+N, ...; rank 0 reassembles them in order.
    val_positions = np.arange(len(data.val_index))[ctx.rank::ctx.world_size]
    val_ds = ImageDataset(data.images, data.val_index["row"].to_numpy()[val_positions], y_val[val_positions],
                          eval_transform(meta), masks=masks)
    generator = torch.Generator()
    sampler = train_sampler(train_ds, world_size=ctx.world_size, rank=ctx.rank, seed=run.seed)
    loader_opts = {"num_workers": cfg.num_workers, "worker_init_fn": seed_worker,
                   "pin_memory": device.type == "cuda"}
    train_loader = DataLoader(train_ds, batch_size=run.local_batch, sampler=sampler, generator=generator,
                              **loader_opts)
    val_loader = DataLoader(val_ds, batch_size=run.local_batch, shuffle=False, **loader_opts)

    weight = inverse_frequency_weights(y_train, num_classes) if cfg.class_weights == "inverse_frequency" else None
    criterion = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device))
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(round(cfg.warmup_epochs * steps_per_epoch), cfg.epochs * steps_per_epoch)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp_dtype == torch.float16)  # bf16 needs no loss scaling

    tracker = EarlyStopping(larger_is_better=MONITORS[cfg.monitor], patience=cfg.patience)
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    first_epoch = 1
    fingerprint = None
    if run.resume_dir is not None:
        settings = {k: v for k, v in meta.items() if k not in ("best_epoch", "best_score")}
        fingerprint = resume.fingerprint(settings=settings, images=data.images, train_index=data.train_index,
                                         val_index=data.val_index)
        # Rank 0 reads the file and sends it to the others: multi-node runs need no shared filesystem.
        state = distributed.broadcast_object(resume.load(run.resume_dir, fingerprint) if ctx.is_main else None,
                                             ctx)
        if state is not None:
            trained.load_state_dict(state["model"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            tracker = EarlyStopping(**state["tracker"])
            history, best_state, first_epoch = list(state["history"]), state["best_state"], state["epoch"] + 1

    seen, train_seconds = 0, 0.0
    # DVCLive writes into a temp dir that replaces live_dir only when training succeeds (atomic output).
    live_ctx = (atomic_dir(run.live_dir) if ctx.is_main and run.live_dir is not None
                else contextlib.nullcontext(None))
    with live_ctx as live_tmp:
        live = None if live_tmp is None else open_live(live_tmp)
        for row in history:  # a resumed run replays the completed epochs: same files as an uninterrupted run
            if live is not None:
                log_epoch(live, row)
        for epoch in range(first_epoch, cfg.epochs + 1):
            if tracker.stopped:
                break
            reseed_epoch(run.seed, ctx.rank, epoch, generator, train_tf)
            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
            started = time.perf_counter()
            loss_sum, count, seg_sum, seg_count = _train_epoch(
                net, train_loader, criterion, optimizer, scheduler, scaler, run=run, epoch=epoch,
                memory_format=memory_format, ema=ema, ema_source=model)
            train_seconds += time.perf_counter() - started
            loss_sum, count, seg_sum, seg_count = distributed.all_reduce_sum(
                [loss_sum, count, seg_sum, seg_count], ctx, device)
            seen += int(count)
            shard = predict_shard(kept, val_loader, device=device, memory_format=memory_format,
                                  amp_dtype=run.amp_dtype, lesion=run.lesion)
            shards = distributed.all_gather_objects((val_positions, shard), ctx)
            decision = None
            if ctx.is_main:  # the keep-best / stop decision is taken once, then broadcast
                scores = val_scores(reassemble(shards, len(data.val_index), num_classes), weight, num_classes,
                                    epoch=epoch, lesion=run.lesion)
                tracker.update(epoch, scores[cfg.monitor])
                decision = {"scores": scores, "tracker": tracker.state()}
            decision = distributed.broadcast_object(decision, ctx)
            tracker = EarlyStopping(**decision["tracker"])
            improved = tracker.best_epoch == epoch
            row = {"epoch": epoch, "train_loss": loss_sum / count,
                   **({"train_seg_loss": seg_sum / max(seg_count, 1)} if run.lesion else {}),
                   **{f"val_{k}": v for k, v in decision["scores"].items()}, "lr": optimizer.param_groups[0]["lr"]}
            history.append(row)
            if improved:
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in kept.state_dict().items()})
            if live is not None:
                log_epoch(live, row)
            logger.info("epoch %d/%d: train loss %.4f, val %s %.4f%s", epoch, cfg.epochs, row["train_loss"],
                        cfg.monitor, row[f"val_{cfg.monitor}"], " (best)" if improved else "")
            if ctx.is_main and run.resume_dir is not None:
                resume.save(run.resume_dir, {
                    "fingerprint": fingerprint, "epoch": epoch, "history": history, "tracker": tracker.state(),
                    "model": {k: v.detach().cpu() for k, v in trained.state_dict().items()},
                    **({"ema": ema.state_dict()} if ema is not None else {}),
                    "best_state": best_state, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                })
            if tracker.stopped:
                logger.info("early stop: val %s did not improve for %d epochs", cfg.monitor, cfg.patience)
        if live is not None:
            best_row = history[tracker.best_epoch - 1]
            # make_summary, not end(): under `dvc exp run` end() git-adds Live.dir, here a temp dir.
            log_summary(live, best_row, cfg.monitor, len(history))
            live.make_summary()
    model.load_state_dict(best_state)
    meta = {**meta, "best_epoch": int(tracker.best_epoch), "best_score": float(tracker.best_score)}
    speed = seen / train_seconds if train_seconds > 0 else float("nan")
    logger.info("training throughput %.1f images/s on %s x %d", speed, device, ctx.world_size)
    return TrainResult(model=model.eval(), meta=meta, history=history, images_per_second=speed)


def _train_epoch(net, loader, criterion, optimizer, scheduler, scaler, *, run: _Run, epoch: int, memory_format,
                 ema=None, ema_source: nn.Module | None = None) -> tuple[float, int, float, int]:
    """One pass over this rank's shard; returns the sums the ranks all-reduce: (classification loss sum,
    images, lesion loss sum, images with a lesion). The optimised loss is the classification loss plus
    ``train.seg_weight`` times the mean lesion loss of the batch's tumour images."""
    cfg, device, amp_dtype = run.train, run.device, run.amp_dtype
    net.train()
    total, count, seg_total, seg_count = 0.0, 0, 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False, disable=not run.ctx.is_main)
    for step, batch in enumerate(bar, start=1):
        x, y = batch[0], batch[1]
        x = x.to(device, memory_format=memory_format, non_blocking=True)  # (B, 3, S, S)
        y = y.to(device, non_blocking=True)  # (B,)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if run.lesion:
                logits, lesion_logits = net(x)
                cls_loss = criterion(logits, y)
                seg_sum, seg_n = lesion_loss(lesion_logits, batch[2].to(device, non_blocking=True))
                loss = cls_loss + cfg.seg_weight * seg_sum / max(seg_n, 1)
                seg_total += float(seg_sum.detach())
                seg_count += seg_n
            else:
                cls_loss = loss = criterion(net(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at epoch {epoch}, step {step}; the run diverged. "
                f"Lower train.lr (this step used lr={optimizer.param_groups[0]['lr']:.3g}) or set "
                "train.grad_clip."
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # DDP all-reduces (averages) the gradients here
        if cfg.grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), max_norm=cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()  # per step: warm-up and cosine are defined in optimiser steps
        if ema is not None:
            ema.update_parameters(ema_source)
        total += cls_loss.item() * y.shape[0]
        count += y.shape[0]
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total, count, seg_total, seg_count


# --- setup -----------------------------------------------------------------------------------------------


def _check_arrays(images: np.ndarray, masks: np.ndarray | None) -> None:
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, S, S), got dtype {images.dtype} shape {images.shape}; "
                         "rerun the prepare stage.")
    if masks is not None and masks.shape != images.shape:
        raise ValueError(
            f"masks shape {masks.shape} differs from images shape {images.shape}; rerun prepare."
        )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)  # process-wide: same data + seed => same weights
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


def _amp_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for train.amp: bfloat16 where the GPU supports it (no loss scaling), else float16."""
    if not amp:
        return None
    if device.type != "cuda":
        logger.warning("train.amp=true ignored: mixed precision is CUDA-only; the device is %s", device)
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


