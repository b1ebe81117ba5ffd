"""Training loop: weighted cross-entropy, AdamW, warm-up + cosine, early stopping on validation, DVCLive.

Read top to bottom: ``train_model`` validates its inputs, builds the model and loaders, then runs epochs of
train -> validate -> log -> keep-best -> maybe stop. On CPU, two runs with the same params and data give
identical weights and metrics (every RNG reseeded from (seed, rank, epoch) each epoch, deterministic algorithms).
One loop serves 1 and N processes (``torchrun``, see :mod:`assurexray.learning.distributed`): a DistributedSampler
shards the global batch, DDP averages the gradients, the train loss is all-reduced, validation is sharded
and reassembled on rank 0, which alone takes the keep-best / early-stop decision and broadcasts it; only
rank 0 writes. With ``resume_dir`` every completed epoch is saved so a killed run continues where it was
(:mod:`assurexray.learning.resume`).
Over 400 lines on purpose: the loop is one unit (checks and setup, epochs with keep-best, early stopping and
resume, validation, logging) sharing its state; what feeds it is :mod:`assurexray.learning.batches`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from dvclive import Live
from scmrepo.exceptions import SCMError
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from torch import nn
from torch.optim import swa_utils
from torch.utils.data import DataLoader
from tqdm import tqdm

from assurexray.learning import distributed, resume
from assurexray.core.atomic import atomic_dir
from assurexray.learning.lesion_head import WithLesionHead, lesion_loss
from assurexray.data.manifests import open_images, read_meta, read_split
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
from assurexray.learning.model import FORMAT_VERSION, ModelConfig, backbone_norm, create_model, resolve_device
from assurexray.learning.transforms import AugmentConfig, augment_config, eval_transform, train_transform

__all__ = ["MONITORS", "CLASS_WEIGHTS", "TrainConfig", "TrainResult", "TrainingData", "is_main_process", "load_training_data",
           "train_model"]

logger = logging.getLogger(__name__)

#: Validation criteria: name -> True when larger is better.
MONITORS = {"macro_auc": True, "balanced_accuracy": True, "loss": False}
CLASS_WEIGHTS = ("inverse_frequency", "none")
DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of params.yaml (meanings and units are commented there).

    :func:`train_model` takes these as plain keyword arguments (all but ``launcher``) and records the resolved
    values in the checkpoint's ``meta["params"]["train"]``.
    """

    epochs: int
    batch_size: int  # the global batch: all processes together
    lr: float
    weight_decay: float
    warmup_epochs: float
    grad_clip: float | None
    class_weights: str
    monitor: str
    patience: int | None
    device: str
    amp: bool
    channels_last: bool
    num_workers: int
    augment: AugmentConfig  # the nested train.augment block
    seg_weight: float
    ema_decay: float
    launcher: str = "python"  # read by dvc.yaml's cmd (python | torchrun ...), not by the training loop

    def __post_init__(self) -> None:
        _check_options(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                       warmup_epochs=self.warmup_epochs, grad_clip=self.grad_clip, class_weights=self.class_weights,
                       monitor=self.monitor, patience=self.patience, device=self.device,
                       num_workers=self.num_workers, seg_weight=self.seg_weight, ema_decay=self.ema_decay)
        for name in ("amp", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"train.{name}: expected true or false, got {getattr(self, name)!r}.")
        if not isinstance(self.launcher, str) or not self.launcher.strip():
            raise TypeError(f"train.launcher: expected a command such as python, got {self.launcher!r}.")
        object.__setattr__(self, "augment", augment_config(self.augment))


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


def train_model(
    *,
    images: np.ndarray,
    masks: np.ndarray | None = None,
    train_index: pd.DataFrame,
    val_index: pd.DataFrame,
    class_names: list[str],
    backbone: str,
    pretrained: str | None,
    dropout: float,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_epochs: float,
    grad_clip: float | None,
    class_weights: str,
    monitor: str,
    patience: int | None,
    device: str,
    amp: bool,
    channels_last: bool,
    num_workers: int,
    augment: Mapping[str, Any] | None,
    seed: int,
    live_dir: str | os.PathLike | None,
    resume_dir: str | os.PathLike | None = None,
    data_info: Mapping[str, Any] | None = None,
    seg_weight: float = 0.0,
    ema_decay: float = 0.0,
) -> TrainResult:
    """Train ``backbone`` on ``train_index`` rows of ``images``; keep the weights best on ``val_index``.

    ``batch_size`` is the global batch (images per optimiser step, all processes together): under torchrun
    each of the WORLD_SIZE processes takes ``batch_size / WORLD_SIZE`` of it, so the same params give the
    same optimisation for 1 and N processes. ``masks`` (the lesion masks of the prepared cache) feed the
    auxiliary lesion head when ``seg_weight`` > 0 (:mod:`assurexray.learning.lesion_head`; the saved model is the plain
    classifier); otherwise they are only checked to match ``images``. ``ema_decay`` > 0 validates and keeps an
    exponential moving average of the weights instead of the raw ones. ``live_dir`` None disables DVCLive logging. ``resume_dir``
    (None = off) holds the state of the last completed epoch (see :mod:`assurexray.learning.resume`). ``data_info``
    (what the data is: ``assurexray.core.provenance.training_data_info``) is stored as ``meta["data"]``.
    """
    model_config = ModelConfig(backbone=backbone, pretrained=pretrained, dropout=dropout)  # checks the values
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                         warmup_epochs=warmup_epochs, grad_clip=grad_clip, class_weights=class_weights,
                         monitor=monitor, patience=patience, device=device, amp=amp, channels_last=channels_last,
                         num_workers=num_workers, augment=augment, seg_weight=seg_weight, ema_decay=ema_decay)
    _check_arrays(images, masks)
    if seg_weight > 0 and masks is None:
        raise ValueError("train.seg_weight > 0 needs the lesion masks (masks.npy of the prepared cache); "
                         "rerun prepare or set train.seg_weight: 0.")
    ctx = distributed.context_from_env()
    local_batch = local_batch_size(batch_size, ctx.world_size)
    num_classes = len(class_names)
    y_train = partition_labels(train_index, "train", images.shape[0], class_names)
    y_val = partition_labels(val_index, "val", images.shape[0], class_names)
    _seed_everything(seed)
    run_device = resolve_device(device)
    amp_dtype = _amp_dtype(amp, run_device)

    model = create_model(backbone, num_classes=num_classes, dropout=dropout, pretrained=pretrained)
    mean, std = backbone_norm(model)
    augment = dataclasses.asdict(config.augment)  # every key, defaults filled in
    meta: dict[str, Any] = {
        "backbone": backbone, "num_classes": num_classes, "class_names": list(class_names),
        "dropout": float(dropout), "input_size": int(images.shape[1]), "in_chans": 3, "mean": mean,
        "std": std, "clahe": config.augment.clahe, "intensity": config.augment.intensity, "letterbox_fill": 0,
        "params": _params_record(model_config, config, device=run_device, amp=amp_dtype is not None,
                                 world_size=ctx.world_size),
        "best_epoch": None, "monitor": monitor, "best_score": None, "seed": int(seed),
        "format_version": FORMAT_VERSION,
        "data": None if data_info is None else json.loads(json.dumps(dict(data_info))),  # a plain JSON copy
    }
    with distributed.process_group(ctx, run_device):
        return _fit(model, meta, ctx=ctx, images=images, masks=masks if seg_weight > 0 else None,
                    seg_weight=float(seg_weight), ema_decay=float(ema_decay),
                    train_index=train_index, val_index=val_index,
                    y_train=y_train, y_val=y_val, epochs=epochs, local_batch=local_batch, lr=lr,
                    weight_decay=weight_decay, warmup_epochs=warmup_epochs, grad_clip=grad_clip,
                    class_weights=class_weights, monitor=monitor, patience=patience, device=run_device,
                    amp_dtype=amp_dtype, channels_last=channels_last, num_workers=num_workers,
                    augment=augment, seed=seed, live_dir=live_dir, resume_dir=resume_dir)


def _fit(model: nn.Module, meta: dict[str, Any], *, ctx: distributed.Context, images, masks, seg_weight,
         ema_decay, train_index, val_index,
         y_train, y_val, epochs, local_batch, lr, weight_decay, warmup_epochs, grad_clip, class_weights,
         monitor, patience, device, amp_dtype, channels_last, num_workers, augment, seed, live_dir,
         resume_dir) -> TrainResult:
    """The epoch loop, identical for 1 and N processes (inside the process group when N > 1)."""
    num_classes = meta["num_classes"]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    # What the optimiser trains: the classifier, or the classifier plus the lesion head (dropped at the end).
    trained: nn.Module = model
    if seg_weight > 0:
        trained = WithLesionHead(model).to(device, memory_format=memory_format)
    net: nn.Module = trained
    if ctx.distributed:  # gradients are averaged over the ranks inside backward()
        net = nn.parallel.DistributedDataParallel(trained, device_ids=None if device.index is None else [device.index])
    # The weights that are validated and kept: the raw classifier, or its exponential moving average.
    ema = None
    if ema_decay > 0:
        ema = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(ema_decay),
                                      use_buffers=True)
    kept = model if ema is None else ema.module

    train_tf = train_transform(meta, augment, seed=seed)
    train_ds = ImageDataset(images, train_index["row"].to_numpy(), y_train, train_tf, masks=masks)
    # Validation is sharded too: rank r scores val rows r, r+N, ...; rank 0 reassembles them in order.
    val_positions = np.arange(len(val_index))[ctx.rank::ctx.world_size]
    val_ds = ImageDataset(images, val_index["row"].to_numpy()[val_positions], y_val[val_positions],
                           eval_transform(meta))
    generator = torch.Generator()
    sampler = train_sampler(train_ds, world_size=ctx.world_size, rank=ctx.rank, seed=seed)
    loader_opts = {"num_workers": num_workers, "worker_init_fn": seed_worker, "pin_memory": device.type == "cuda"}
    train_loader = DataLoader(train_ds, batch_size=local_batch, sampler=sampler, generator=generator,
                              **loader_opts)
    val_loader = DataLoader(val_ds, batch_size=local_batch, shuffle=False, **loader_opts)

    weight = inverse_frequency_weights(y_train, num_classes) if class_weights == "inverse_frequency" else None
    criterion = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(round(warmup_epochs * steps_per_epoch), epochs * steps_per_epoch)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)  # bf16 needs no loss scaling

    tracker = _EarlyStopping(larger_is_better=MONITORS[monitor], patience=patience)
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    first_epoch = 1
    fingerprint = None
    if resume_dir is not None:
        settings = {k: v for k, v in meta.items() if k not in ("best_epoch", "best_score")}
        fingerprint = resume.fingerprint(settings=settings, images=images, train_index=train_index,
                                         val_index=val_index)
        # Rank 0 reads the file and sends it to the others: multi-node runs need no shared filesystem.
        state = distributed.broadcast_object(resume.load(resume_dir, fingerprint) if ctx.is_main else None, ctx)
        if state is not None:
            trained.load_state_dict(state["model"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            tracker = _EarlyStopping(**state["tracker"])
            history, best_state, first_epoch = list(state["history"]), state["best_state"], state["epoch"] + 1

    seen, train_seconds = 0, 0.0
    # DVCLive writes into a temp dir that replaces live_dir only when training succeeds (atomic output).
    live_ctx = atomic_dir(live_dir) if ctx.is_main and live_dir is not None else contextlib.nullcontext(None)
    with live_ctx as live_tmp:
        live = None if live_tmp is None else _open_live(live_tmp)
        for row in history:  # a resumed run replays the completed epochs: same files as an uninterrupted run
            if live is not None:
                _log_epoch(live, row)
        for epoch in range(first_epoch, epochs + 1):
            if tracker.stopped:
                break
            reseed_epoch(seed, ctx.rank, epoch, generator, train_tf)
            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
            started = time.perf_counter()
            loss_sum, count, seg_sum, seg_count = _train_epoch(
                net, train_loader, criterion, optimizer, scheduler, scaler, epoch=epoch, epochs=epochs,
                device=device, memory_format=memory_format, amp_dtype=amp_dtype, grad_clip=grad_clip,
                show=ctx.is_main, seg_weight=seg_weight, ema=ema, ema_source=model)
            train_seconds += time.perf_counter() - started
            loss_sum, count, seg_sum, seg_count = distributed.all_reduce_sum(
                [loss_sum, count, seg_sum, seg_count], ctx, device)
            seen += int(count)
            shard = _predict(kept, val_loader, device=device, memory_format=memory_format, amp_dtype=amp_dtype)
            shards = distributed.all_gather_objects((val_positions, *shard), ctx)
            decision = None
            if ctx.is_main:  # the keep-best / stop decision is taken once, then broadcast
                logits, labels = _reassemble(shards, len(val_index), num_classes)
                scores = _val_scores(logits, labels, weight, num_classes, epoch=epoch)
                tracker.update(epoch, scores[monitor])
                decision = {"scores": scores, "tracker": tracker.state()}
            decision = distributed.broadcast_object(decision, ctx)
            tracker = _EarlyStopping(**decision["tracker"])
            improved = tracker.best_epoch == epoch
            row = {"epoch": epoch, "train_loss": loss_sum / count,
                   **({"train_seg_loss": seg_sum / max(seg_count, 1)} if seg_weight > 0 else {}),
                   **{f"val_{k}": v for k, v in decision["scores"].items()}, "lr": optimizer.param_groups[0]["lr"]}
            history.append(row)
            if improved:
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in kept.state_dict().items()})
            if live is not None:
                _log_epoch(live, row)
            logger.info("epoch %d/%d: train loss %.4f, val %s %.4f%s", epoch, epochs, row["train_loss"],
                        monitor, row[f"val_{monitor}"], " (best)" if improved else "")
            if ctx.is_main and resume_dir is not None:
                resume.save(resume_dir, {
                    "fingerprint": fingerprint, "epoch": epoch, "history": history, "tracker": tracker.state(),
                    "model": {k: v.detach().cpu() for k, v in trained.state_dict().items()},
                    **({"ema": ema.state_dict()} if ema is not None else {}),
                    "best_state": best_state, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                })
            if tracker.stopped:
                logger.info("early stop: val %s did not improve for %d epochs", monitor, patience)
        if live is not None:
            best_row = history[tracker.best_epoch - 1]
            # make_summary, not end(): under `dvc exp run` end() git-adds Live.dir, here a temp dir.
            _log_summary(live, best_row, monitor, len(history))
            live.make_summary()
    model.load_state_dict(best_state)
    meta = {**meta, "best_epoch": int(tracker.best_epoch), "best_score": float(tracker.best_score)}
    speed = seen / train_seconds if train_seconds > 0 else float("nan")
    logger.info("training throughput %.1f images/s on %s x %d", speed, device, ctx.world_size)
    return TrainResult(model=model.eval(), meta=meta, history=history, images_per_second=speed)


@dataclass
class _EarlyStopping:
    """Best score so far, its epoch, and epochs since: the keep-best and stop decision (rank 0 owns it)."""

    larger_is_better: bool
    patience: int | None
    best_score: float | None = None
    best_epoch: int | None = None
    stale: int = 0

    def update(self, epoch: int, score: float) -> bool:
        better = self.best_score is None or (
            score > self.best_score if self.larger_is_better else score < self.best_score)
        if better:
            self.best_score, self.best_epoch, self.stale = float(score), int(epoch), 0
        else:
            self.stale += 1
        return better

    @property
    def stopped(self) -> bool:
        return self.patience is not None and self.stale >= self.patience

    def state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- one epoch -------------------------------------------------------------------------------------------


def _train_epoch(net, loader, criterion, optimizer, scheduler, scaler, *, epoch: int, epochs: int,
                 device: torch.device, memory_format, amp_dtype: torch.dtype | None, grad_clip: float | None,
                 show: bool, seg_weight: float = 0.0, ema=None,
                 ema_source: nn.Module | None = None) -> tuple[float, int, float, int]:
    """One pass over this rank's shard; returns the sums the ranks all-reduce: (classification loss sum,
    images, lesion loss sum, images with a lesion). The optimised loss is the classification loss plus
    ``seg_weight`` times the mean lesion loss of the batch's tumour images."""
    net.train()
    total, count, seg_total, seg_count = 0.0, 0, 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, disable=not show)
    for step, batch in enumerate(bar, start=1):
        x, y = batch[0], batch[1]
        x = x.to(device, memory_format=memory_format, non_blocking=True)  # (B, 3, S, S)
        y = y.to(device, non_blocking=True)  # (B,)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if seg_weight > 0:
                logits, lesion_logits = net(x)
                cls_loss = criterion(logits, y)
                seg_sum, seg_n = lesion_loss(lesion_logits, batch[2].to(device, non_blocking=True))
                loss = cls_loss + seg_weight * seg_sum / max(seg_n, 1)
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
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), max_norm=grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()  # per step: warm-up and cosine are defined in optimiser steps
        if ema is not None:
            ema.update_parameters(ema_source)
        total += cls_loss.item() * y.shape[0]
        count += y.shape[0]
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total, count, seg_total, seg_count


@torch.no_grad()
def _predict(model, loader, *, device: torch.device, memory_format,
             amp_dtype: torch.dtype | None) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n, K) float32 and labels (n,) of this rank's validation shard."""
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        x = x.to(device, memory_format=memory_format)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits.append(model(x).float().cpu().numpy())
        labels.append(y.numpy())
    if not logits:  # fewer val images than ranks: this shard is empty
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(logits), np.concatenate(labels)


def _reassemble(shards, n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Put each rank's (positions, logits, labels) back into validation order."""
    logits, labels = np.zeros((n, num_classes), np.float32), np.zeros(n, np.int64)
    for positions, shard_logits, shard_labels in shards:
        if len(positions):
            logits[positions], labels[positions] = shard_logits, shard_labels
    return logits, labels


def _val_scores(logits: np.ndarray, labels: np.ndarray, weight: torch.Tensor | None, num_classes: int, *,
                epoch: int) -> dict[str, float]:
    """Validation loss (class-weighted CE over the whole set) and the monitored metrics."""
    x, t = torch.from_numpy(logits), torch.from_numpy(labels)
    loss = float(nn.functional.cross_entropy(x, t, weight=weight))
    p = torch.softmax(x, dim=1).numpy()
    if not (math.isfinite(loss) and np.isfinite(p).all()):
        raise FloatingPointError(
            f"validation loss is {loss} after epoch {epoch}; the model diverged. Lower train.lr or set "
            "train.grad_clip."
        )
    pred = p.argmax(axis=1)
    return {
        "loss": loss,
        "macro_auc": float(roc_auc_score(labels, p, multi_class="ovr", average="macro",
                                         labels=list(range(num_classes)))),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "accuracy": float(accuracy_score(labels, pred)),
    }


def _open_live(live_dir: str | os.PathLike) -> Live:
    """DVCLive logger that leaves the hand-written dvc.yaml alone.

    dvclive reads the git HEAD even with save_dvc_exp=False and fails with a bare "Empty git repo" in a
    repository without a commit: say what to do instead.
    """
    try:
        return Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    except SCMError as err:
        raise RuntimeError(
            f"DVCLive cannot log to {live_dir}: {err}. The project's git repository has no commit yet; run "
            "`git add -A && git commit -m 'pipeline'` and repeat."
        ) from err


# --- setup and logging -----------------------------------------------------------------------------------


def _params_record(model: ModelConfig, train: TrainConfig, *, device: torch.device, amp: bool,
                   world_size: int) -> dict[str, Any]:
    """``meta["params"]``: the resolved model and train sections, device and amp as actually run.

    ``launcher`` is left out (how dvc.yaml started the processes; ``world_size`` records what it gave), and the
    keys keep the order of checkpoints written before :class:`TrainConfig`, so the same run gives the same bytes.
    """
    values = dataclasses.asdict(train)
    del values["launcher"]
    values.update(device=str(device), amp=amp, seg_weight=float(train.seg_weight),
                  ema_decay=float(train.ema_decay))
    keys = list(values)
    at = keys.index("augment") + 1
    record = {**{k: values[k] for k in keys[:at]}, "world_size": world_size, **{k: values[k] for k in keys[at:]}}
    return {"model": dataclasses.asdict(model), "train": record}


def _check_options(*, epochs, batch_size, lr, weight_decay, warmup_epochs, grad_clip,
                   class_weights, monitor, patience, device, num_workers, seg_weight, ema_decay) -> None:
    number = (int, float)
    checks = [
        ("train.epochs", epochs, isinstance(epochs, int) and epochs >= 1, "an integer >= 1"),
        ("train.batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1, "an integer >= 1"),
        ("train.lr", lr, isinstance(lr, number) and lr > 0, "a number > 0"),
        ("train.weight_decay", weight_decay, isinstance(weight_decay, number) and weight_decay >= 0,
         "a number >= 0"),
        ("train.warmup_epochs", warmup_epochs, isinstance(warmup_epochs, number) and warmup_epochs >= 0,
         "a number >= 0"),
        ("train.grad_clip", grad_clip, grad_clip is None or (isinstance(grad_clip, number) and grad_clip > 0),
         "null or a number > 0"),
        ("train.class_weights", class_weights, class_weights in CLASS_WEIGHTS,
         f"one of {list(CLASS_WEIGHTS)}"),
        ("train.monitor", monitor, monitor in MONITORS, f"one of {list(MONITORS)}"),
        ("train.patience", patience, patience is None or (isinstance(patience, int) and patience >= 1),
         "null or an integer >= 1"),
        ("train.device", device, device in DEVICES, f"one of {list(DEVICES)}"),
        ("train.num_workers", num_workers, isinstance(num_workers, int) and num_workers >= 0,
         "an integer >= 0"),
        ("train.seg_weight", seg_weight, isinstance(seg_weight, number) and seg_weight >= 0, "a number >= 0"),
        ("train.ema_decay", ema_decay, isinstance(ema_decay, number) and 0 <= ema_decay < 1,
         "a number in [0, 1) (0 = off)"),
    ]
    for name, value, ok, expected in checks:
        if not ok:
            raise ValueError(f"{name}: expected {expected}, got {value!r}.")


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


def _log_epoch(live, row: Mapping[str, float]) -> None:
    # dvclive writes plots/metrics/<name>.tsv with columns step and the last name part (dvc.yaml reads
    # plots/metrics/train/loss.tsv and plots/metrics/val/loss.tsv with x=step, y=loss).
    live.log_metric("train/loss", row["train_loss"])
    for key in ("loss", "macro_auc", "balanced_accuracy", "accuracy"):
        live.log_metric(f"val/{key}", row[f"val_{key}"])
    if "train_seg_loss" in row:
        live.log_metric("train/seg_loss", row["train_seg_loss"])
    live.log_metric("lr", row["lr"])
    live.next_step()


def _log_summary(live, best: Mapping[str, float], monitor: str, epochs_run: int) -> None:
    live.summary["best_epoch"] = int(best["epoch"])
    live.summary["monitor"] = monitor
    live.summary["best_score"] = float(best[f"val_{monitor}"])
    live.summary["epochs_run"] = epochs_run
    val_keys = ("loss", "macro_auc", "balanced_accuracy", "accuracy")
    live.summary["best"] = {"train_loss": best["train_loss"], **{k: best[f"val_{k}"] for k in val_keys}}
