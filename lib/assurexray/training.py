"""Training loop: weighted cross-entropy, AdamW, warm-up + cosine, early stopping on validation, DVCLive.

Read top to bottom: ``train_model`` validates its inputs, builds the model and loaders, then runs epochs of
train -> validate -> log -> keep-best -> maybe stop. On CPU, two runs with the same params and data give
identical weights and metrics (seeded RNGs, seeded loader and augmentation, deterministic algorithms).
Under ``torchrun`` (WORLD_SIZE > 1) it uses DistributedSampler + DDP and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from dvclive import Live
from scmrepo.exceptions import SCMError
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from assurexray.atomic import atomic_dir
from assurexray.model import FORMAT_VERSION, backbone_norm, create_model
from assurexray.transforms import eval_transform, train_transform

__all__ = ["MONITORS", "CLASS_WEIGHTS", "TrainResult", "TrainingData", "is_main_process", "load_training_data",
           "train_model"]

logger = logging.getLogger(__name__)

#: Validation criteria: name -> True when larger is better.
MONITORS = {"macro_auc": True, "balanced_accuracy": True, "loss": False}
CLASS_WEIGHTS = ("inverse_frequency", "none")
DEVICES = ("cpu", "cuda", "auto")


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
    return int(os.environ.get("RANK", "0")) == 0


def load_training_data(prepared_dir: str | os.PathLike, split_dir: str | os.PathLike) -> TrainingData:
    """Read data/prepared (images.npy, masks.npy, meta.json) and data/splits/V/{train,val}.csv."""
    prepared_dir, split_dir = Path(prepared_dir), Path(split_dir)
    for path in (prepared_dir / "images.npy", prepared_dir / "meta.json", split_dir / "train.csv",
                 split_dir / "val.csv"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run the prepare and split stages (dvc repro split).")
    images = np.load(prepared_dir / "images.npy", mmap_mode="r")
    masks_path = prepared_dir / "masks.npy"
    masks = np.load(masks_path, mmap_mode="r") if masks_path.is_file() else None
    meta = json.loads((prepared_dir / "meta.json").read_text(encoding="utf-8"))
    if "class_names" not in meta:
        raise ValueError(f"{prepared_dir / 'meta.json'}: no 'class_names'; rerun the prepare stage.")
    train_index = pd.read_csv(split_dir / "train.csv", keep_default_na=False)
    val_index = pd.read_csv(split_dir / "val.csv", keep_default_na=False)
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
    data_info: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``backbone`` on ``train_index`` rows of ``images``; keep the weights best on ``val_index``.

    ``masks`` are not used by the classification loss; when given they are only checked to match
    ``images`` (the prepared cache is passed whole). ``live_dir`` None disables DVCLive logging. ``data_info``
    (what the data is: ``assurexray.provenance.training_data_info``) is stored as ``meta["data"]``.
    """
    _check_options(dropout=dropout, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                   warmup_epochs=warmup_epochs, grad_clip=grad_clip, class_weights=class_weights,
                   monitor=monitor, patience=patience, device=device, num_workers=num_workers)
    _check_arrays(images, masks)
    num_classes = len(class_names)
    y_train = _labels(train_index, "train", images.shape[0], class_names)
    y_val = _labels(val_index, "val", images.shape[0], class_names)
    _seed_everything(seed)
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    run_device = _resolve_device(device)
    if world_size > 1:
        run_device = _init_distributed(run_device)
    use_amp = bool(amp) and run_device.type == "cuda"
    if amp and not use_amp:
        logger.warning("train.amp=true ignored: mixed precision is CUDA-only; the device is %s", run_device)

    model = create_model(backbone, num_classes=num_classes, dropout=dropout, pretrained=pretrained)
    mean, std = backbone_norm(model)
    augment = dict(augment or {})
    meta: dict[str, Any] = {
        "backbone": backbone, "num_classes": num_classes, "class_names": list(class_names),
        "dropout": float(dropout), "input_size": int(images.shape[1]), "in_chans": 3, "mean": mean,
        "std": std, "clahe": bool(augment.get("clahe", False)),
        "intensity": augment.get("intensity") or "none", "letterbox_fill": 0,
        "params": {
            "model": {"backbone": backbone, "pretrained": pretrained, "dropout": dropout},
            "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                      "warmup_epochs": warmup_epochs, "grad_clip": grad_clip, "class_weights": class_weights,
                      "monitor": monitor, "patience": patience, "device": str(run_device), "amp": use_amp,
                      "channels_last": channels_last, "num_workers": num_workers, "augment": augment},
        },
        "best_epoch": None, "monitor": monitor, "best_score": None, "seed": int(seed),
        "format_version": FORMAT_VERSION,
        "data": None if data_info is None else json.loads(json.dumps(dict(data_info))),  # a plain JSON copy
    }
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(run_device, memory_format=memory_format)
    net: nn.Module = model
    if world_size > 1:
        ids = None if run_device.index is None else [run_device.index]
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    train_ds = _ImageDataset(images, train_index["row"].to_numpy(), y_train,
                             train_transform(meta, augment, seed=seed))
    val_ds = _ImageDataset(images, val_index["row"].to_numpy(), y_val, eval_transform(meta))
    generator = torch.Generator().manual_seed(seed)
    sampler = _train_sampler(train_ds, world_size=world_size, rank=rank, seed=seed, generator=generator)
    loader_opts = {"num_workers": num_workers, "worker_init_fn": _seed_worker, "generator": generator,
                   "pin_memory": run_device.type == "cuda"}
    train_loader = DataLoader(train_ds, batch_size=batch_size, sampler=sampler, **loader_opts)
    val_loader = DataLoader(val_ds, batch_size=batch_size, shuffle=False, **loader_opts)

    weight = _class_weights(y_train, num_classes) if class_weights == "inverse_frequency" else None
    criterion = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(run_device))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(round(warmup_epochs * steps_per_epoch), epochs * steps_per_epoch)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    history: list[dict[str, float]] = []
    larger_is_better = MONITORS[monitor]
    best_score, best_state, best_row, stale = None, None, None, 0
    seen, train_seconds = 0, 0.0
    # DVCLive writes into a temp dir that replaces live_dir only when training succeeds (atomic output).
    live_ctx = atomic_dir(live_dir) if rank == 0 and live_dir is not None else contextlib.nullcontext(None)
    with live_ctx as live_tmp:
        live = None if live_tmp is None else _open_live(live_tmp)
        for epoch in range(1, epochs + 1):
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)
            started = time.perf_counter()
            train_loss = _train_epoch(net, train_loader, criterion, optimizer, scheduler, scaler, epoch=epoch,
                                      epochs=epochs, device=run_device, memory_format=memory_format,
                                      use_amp=use_amp, grad_clip=grad_clip, show=rank == 0)
            train_seconds += time.perf_counter() - started
            seen += len(sampler)
            scores = _validate(model, val_loader, criterion, num_classes, epoch=epoch, device=run_device,
                               memory_format=memory_format, use_amp=use_amp)
            row = {"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in scores.items()},
                   "lr": optimizer.param_groups[0]["lr"]}
            history.append(row)
            if live is not None:
                _log_epoch(live, row)
            score = scores[monitor]
            improved = best_score is None or (score > best_score if larger_is_better else score < best_score)
            if improved:
                best_score, best_row, stale = score, row, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            else:
                stale += 1
            logger.info("epoch %d/%d: train loss %.4f, val %s %.4f%s", epoch, epochs, train_loss, monitor,
                        score, " (best)" if improved else "")
            if patience is not None and stale >= patience:
                logger.info("early stop: val %s did not improve for %d epochs", monitor, patience)
                break
        if live is not None:
            # make_summary, not end(): under `dvc exp run` end() git-adds Live.dir, here a temp dir.
            _log_summary(live, best_row, monitor, len(history))
            live.make_summary()
    model.load_state_dict(best_state)
    meta.update(best_epoch=int(best_row["epoch"]), best_score=float(best_score))
    speed = seen / train_seconds if train_seconds > 0 else float("nan")
    logger.info("training throughput %.1f images/s on %s", speed, run_device)
    return TrainResult(model=model.eval(), meta=meta, history=history, images_per_second=speed)


# --- one epoch -------------------------------------------------------------------------------------------


def _train_epoch(net, loader, criterion, optimizer, scheduler, scaler, *, epoch: int, epochs: int,
                 device: torch.device, memory_format, use_amp: bool, grad_clip: float | None,
                 show: bool) -> float:
    net.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, disable=not show)
    for step, (x, y) in enumerate(bar, start=1):
        x = x.to(device, memory_format=memory_format, non_blocking=True)  # (B, 3, S, S)
        y = y.to(device, non_blocking=True)  # (B,)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            loss = criterion(net(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at epoch {epoch}, step {step}; the run diverged. "
                f"Lower train.lr (this step used lr={optimizer.param_groups[0]['lr']:.3g}) or set "
                "train.grad_clip."
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), max_norm=grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()  # per step: warm-up and cosine are defined in optimiser steps
        total += loss.item() * y.shape[0]
        count += y.shape[0]
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / count


@torch.no_grad()
def _validate(model, loader, criterion, num_classes: int, *, epoch: int, device: torch.device, memory_format,
              use_amp: bool) -> dict[str, float]:
    model.eval()
    losses, probs, labels = 0.0, [], []
    for x, y in loader:
        x = x.to(device, memory_format=memory_format)
        y = y.to(device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(x).float()
        losses += criterion(logits, y).item() * y.shape[0]
        probs.append(torch.softmax(logits, dim=1).cpu().numpy())
        labels.append(y.cpu().numpy())
    p, t = np.concatenate(probs), np.concatenate(labels)
    loss = losses / len(t)
    if not (math.isfinite(loss) and np.isfinite(p).all()):
        raise FloatingPointError(
            f"validation loss is {loss} after epoch {epoch}; the model diverged. Lower train.lr or set "
            "train.grad_clip."
        )
    pred = p.argmax(axis=1)
    return {
        "loss": loss,
        "macro_auc": float(roc_auc_score(t, p, multi_class="ovr", average="macro",
                                         labels=list(range(num_classes)))),
        "balanced_accuracy": float(balanced_accuracy_score(t, pred)),
        "accuracy": float(accuracy_score(t, pred)),
    }


# --- data ------------------------------------------------------------------------------------------------


class _ImageDataset(Dataset):
    """Rows of the (memory-mapped) prepared cache, transformed on the fly."""

    def __init__(self, images: np.ndarray, rows: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.rows, self.labels, self.transform = images, rows, labels, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = np.ascontiguousarray(self.images[self.rows[i]])  # (S, S) uint8, copied out of the mmap
        return self.transform(image=image)["image"], int(self.labels[i])


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


def _train_sampler(dataset: Dataset, *, world_size: int, rank: int, seed: int,
                   generator: torch.Generator) -> Sampler:
    """Shuffling sampler: a DistributedSampler shard per rank under torchrun, else a seeded RandomSampler."""
    if world_size > 1:
        return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    return RandomSampler(dataset, generator=generator)


def _seed_worker(worker_id: int) -> None:
    # Each worker gets torch's per-worker seed (drawn from the loader's generator) for numpy, random and the
    # albumentations Compose, which keeps its own RNG and would otherwise repeat across workers and epochs.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def _labels(index: pd.DataFrame, partition: str, n_images: int, class_names: list[str]) -> np.ndarray:
    for column in ("row", "label_idx"):
        if column not in index.columns:
            raise ValueError(
                f"{partition} split: column {column!r} missing; columns are {list(index.columns)}."
            )
    if len(index) == 0:
        raise ValueError(f"{partition} split is empty; re-run the split stage with more data.")
    rows, labels = index["row"].to_numpy(), index["label_idx"].to_numpy()
    bad_rows = index.loc[(rows < 0) | (rows >= n_images), "row"].tolist()
    if bad_rows:
        raise ValueError(f"{partition} split: row(s) {bad_rows[:5]} outside images.npy (N={n_images}); "
                         "the split does not belong to this prepared cache: re-run split.")
    bad = sorted(set(labels.tolist()) - set(range(len(class_names))))
    if bad:
        raise ValueError(
            f"{partition} split: label_idx {bad} outside 0..{len(class_names) - 1} ({class_names})."
        )
    counts = np.bincount(labels, minlength=len(class_names))
    for k, name in enumerate(class_names):
        if counts[k] == 0:
            raise ValueError(
                f"class {name!r} (label_idx {k}) has no images in the {partition} partition; every class is "
                "needed to train and to compute the macro AUC. Use more data or another split."
            )
    return labels.astype(np.int64)


def _class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse frequency, scaled so a balanced set gets weight 1 per class: n / (K * n_k)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(len(labels) / (num_classes * counts), dtype=torch.float32)


def _warmup_cosine(warmup_steps: int, total_steps: int):
    """LR factor per optimiser step: linear 1/w..1 over ``warmup_steps``, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# --- setup and logging -----------------------------------------------------------------------------------


def _check_options(*, dropout, epochs, batch_size, lr, weight_decay, warmup_epochs, grad_clip,
                   class_weights, monitor, patience, device, num_workers) -> None:
    number = (int, float)
    checks = [
        ("model.dropout", dropout, isinstance(dropout, number) and 0 <= dropout < 1, "a number in [0, 1)"),
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


def _resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is available; use 'cpu' or 'auto'.")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _init_distributed(device: torch.device) -> torch.device:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK/MASTER_ADDR; NCCL on GPUs, gloo on CPU."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _log_epoch(live, row: Mapping[str, float]) -> None:
    # dvclive writes plots/metrics/<name>.tsv with columns step and the last name part (dvc.yaml reads
    # plots/metrics/train/loss.tsv and plots/metrics/val/loss.tsv with x=step, y=loss).
    live.log_metric("train/loss", row["train_loss"])
    for key in ("loss", "macro_auc", "balanced_accuracy", "accuracy"):
        live.log_metric(f"val/{key}", row[f"val_{key}"])
    live.log_metric("lr", row["lr"])
    live.next_step()


def _log_summary(live, best: Mapping[str, float], monitor: str, epochs_run: int) -> None:
    live.summary["best_epoch"] = int(best["epoch"])
    live.summary["monitor"] = monitor
    live.summary["best_score"] = float(best[f"val_{monitor}"])
    live.summary["epochs_run"] = epochs_run
    val_keys = ("loss", "macro_auc", "balanced_accuracy", "accuracy")
    live.summary["best"] = {"train_loss": best["train_loss"], **{k: best[f"val_{k}"] for k in val_keys}}
