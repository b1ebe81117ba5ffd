"""Self-supervised pretraining of the classifier's backbone on unlabelled radiographs (SimCLR, via lightly).

Off by default (params ``pretrain.enabled``). When on, the backbone named by ``model.backbone`` starts from
``model.pretrained`` (ImageNet) and learns from pairs of augmented views of the same radiograph (SimCLR, Chen et
al. 2020, https://arxiv.org/abs/2002.05709; lightly's ``SimCLRProjectionHead`` and ``NTXentLoss``). The images are
the training partition of the split being trained (never its validation or test images, so the protocol holds),
plus, when ``pretrain.extra_images`` names a folder, a site's own unlabelled radiographs. The classifier then
starts from the result (:func:`classifier_start`) instead of ``model.pretrained``.

The views are made here with albumentations on the grayscale cache, not with lightly's PIL colour pipelines
(built for RGB photographs): each view ends in :func:`assurexray.learning.transforms.eval_transform`, so the
backbone learns on exactly the preprocessing (intensity, CLAHE, mean/std) the classifier will see.

Crash-safe like training (:mod:`assurexray.learning.resume`): after each epoch the state is written atomically
and every RNG is reseeded from (seed, epoch), so a killed run resumes to the weights of an uninterrupted one
(bitwise on CPU). Outputs (``backbone.safetensors`` + ``pretrain.json``) replace the output folder as a whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

from assurexray.core.atomic import atomic_dir
from assurexray.core.filetypes import DATASET_SUFFIXES, DICOM_SUFFIXES
from assurexray.data.dicom import read_dicom_gray
from assurexray.data.imaging import decode_for_letterbox, letterbox
from assurexray.data.manifests import open_images, read_split
from assurexray.learning import resume
from assurexray.learning.batches import reseed_epoch, seed_worker, warmup_cosine
from assurexray.learning.model import ModelConfig, backbone_norm, create_model, resolve_device
from assurexray.learning.transforms import eval_transform

__all__ = ["PretrainConfig", "PretrainImages", "PretrainResult", "METHODS", "RECORD_FILE", "WEIGHTS_FILE",
           "load_pretrain_images", "pretrain_backbone", "write_pretrained", "write_disabled", "read_record",
           "classifier_start"]

logger = logging.getLogger(__name__)

METHODS = ("simclr",)  # self-supervised objectives offered (lightly's SimCLR head + NT-Xent loss)
RECORD_FILE = "pretrain.json"  # what ran (or that nothing did): read by the train stage
WEIGHTS_FILE = "backbone.safetensors"  # the timm backbone without its classifier, loaded by model.pretrained's path
_WARMUP_FRACTION = 0.1  # share of optimiser steps with a linear LR warm-up before the cosine decay
_PROJECTION_DIM = 128  # SimCLR's projection output size (the head is discarded after pretraining)
_CROP_SCALE = (0.35, 1.0)  # RandomResizedCrop area range: a view keeps at least a third of the radiograph


@dataclass(frozen=True)
class PretrainConfig:
    """The ``pretrain`` section of params.yaml (meanings and units are commented there)."""

    enabled: bool = False
    method: str = "simclr"
    epochs: int = 10
    image_px: int = 128
    batch_size: int = 64
    lr: float = 1.0e-3
    weight_decay: float = 1.0e-4
    temperature: float = 0.2
    extra_images: str | None = None

    def __post_init__(self) -> None:
        checks = [
            ("method", self.method in METHODS, f"one of {list(METHODS)}"),
            ("epochs", _int(self.epochs) and self.epochs >= 1, "an integer >= 1"),
            ("image_px", _int(self.image_px) and self.image_px >= 16, "an integer >= 16 (pixels)"),
            ("batch_size", _int(self.batch_size) and self.batch_size >= 2,
             "an integer >= 2 (a view's negatives are the other images of its batch)"),
            ("lr", _number(self.lr) and self.lr > 0, "a number > 0"),
            ("weight_decay", _number(self.weight_decay) and self.weight_decay >= 0, "a number >= 0"),
            ("temperature", _number(self.temperature) and self.temperature > 0, "a number > 0"),
            ("extra_images", self.extra_images is None or (isinstance(self.extra_images, str)
                                                           and self.extra_images.strip() != ""),
             "null or a folder of unlabelled radiographs"),
        ]
        if not isinstance(self.enabled, bool):
            raise TypeError(f"pretrain.enabled: expected true or false, got {self.enabled!r}.")
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"pretrain.{name}: expected {expected}, got {getattr(self, name)!r}.")


@dataclass(frozen=True)
class PretrainImages:
    """The unlabelled images pretraining sees, (N, S, S) uint8, and where they came from."""

    images: np.ndarray
    sources: dict[str, Any]  # {"train_partition": n, "extra_images": m, "extra_folder": path or None}


@dataclass(frozen=True)
class PretrainResult:
    """The pretrained backbone's tensors (no classifier) and the record written beside them."""

    backbone: dict[str, torch.Tensor]
    record: dict[str, Any]


def load_pretrain_images(prepared_dir: str | os.PathLike, split_dir: str | os.PathLike,
                         extra_images: str | os.PathLike | None = None) -> PretrainImages:
    """The training partition's rows of the prepared cache, then every radiograph in ``extra_images``
    (letterboxed to the cache's size). Validation and test rows are never read."""
    cache, _ = open_images(prepared_dir, masks=False)
    rows = read_split(split_dir, "train", n_images=len(cache))["row"].to_numpy()
    parts = [np.asarray(cache[rows])]  # (N, S, S), copied out of the memory map
    extra = _folder_images(Path(extra_images), cache.shape[1]) if extra_images is not None else None
    if extra is not None:
        parts.append(extra)
    return PretrainImages(images=np.concatenate(parts), sources={
        "train_partition": int(len(rows)), "extra_images": 0 if extra is None else int(len(extra)),
        "extra_folder": None if extra_images is None else str(extra_images)})


def pretrain_backbone(data: PretrainImages, config: PretrainConfig, *, backbone: str, start_weights: str | None,
                      clahe: bool, intensity: str, seed: int, device: str = "cpu", num_workers: int = 0,
                      resume_dir: str | os.PathLike | None = None) -> PretrainResult:
    """SimCLR on ``data.images`` for ``config.epochs``.

    ``backbone`` and ``start_weights`` are params ``model.backbone`` and ``model.pretrained`` (the classifier's
    network and where its weights start); ``clahe`` and ``intensity`` (``train.augment``) preprocess the views as
    the classifier's inputs; ``device`` and ``num_workers`` are ``train``'s. ``resume_dir`` (None = off) holds
    the state of the last completed epoch.
    """
    from lightly.loss import NTXentLoss  # imported here: the train stage reads records without loading lightly
    from lightly.models.modules import SimCLRProjectionHead

    if not config.enabled:
        raise ValueError("pretrain.enabled is false: nothing to pretrain; write the record with write_disabled.")
    images = data.images
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
        raise ValueError(f"pretraining images must be uint8 (N, S, S), got {images.dtype} {images.shape}.")
    if len(images) < config.batch_size:
        raise ValueError(f"pretrain.batch_size={config.batch_size} exceeds the {len(images)} unlabelled images "
                         "(every step needs a full batch of negatives); lower it or add pretrain.extra_images.")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)  # same data + seed => same weights (CPU)
    run_device = resolve_device(device)
    encoder = create_model(backbone, num_classes=1, dropout=0.0, pretrained=start_weights)
    encoder.reset_classifier(0)  # pooled features (B, F): what the classifier's head will read
    mean, std = backbone_norm(encoder)
    meta = {"input_size": config.image_px, "mean": mean, "std": std, "clahe": clahe, "intensity": intensity}
    views = _view_transform(config.image_px, seed)
    dataset = _TwoViews(images, views, eval_transform(meta))
    head = SimCLRProjectionHead(input_dim=encoder.num_features, hidden_dim=encoder.num_features,
                                output_dim=_PROJECTION_DIM)
    net = nn.ModuleDict({"backbone": encoder, "head": head}).to(run_device)
    criterion = NTXentLoss(temperature=config.temperature)
    generator = torch.Generator()
    loader = DataLoader(dataset, batch_size=config.batch_size, drop_last=True, num_workers=num_workers,
                        sampler=RandomSampler(dataset, generator=generator), generator=generator,
                        worker_init_fn=seed_worker, pin_memory=run_device.type == "cuda")
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(round(_WARMUP_FRACTION * total), total))

    settings = {"pretrain": dataclasses.asdict(config), "backbone": backbone, "start_weights": start_weights,
                "seed": int(seed), "clahe": clahe, "intensity": intensity, "device": str(run_device),
                "num_workers": num_workers}  # workers draw their own view seeds: part of the random stream
    fingerprint = resume.fingerprint(settings=settings, images=images, train_index=pd.DataFrame(),
                                     val_index=pd.DataFrame())
    history: list[dict[str, float]] = []
    first_epoch = 1
    state = resume.load(resume_dir, fingerprint)
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, first_epoch = list(state["history"]), state["epoch"] + 1

    started = time.perf_counter()
    for epoch in range(first_epoch, config.epochs + 1):
        reseed_epoch(seed, 0, epoch, generator, views)
        loss = _pretrain_epoch(net, loader, criterion, optimizer, scheduler, device=run_device, epoch=epoch,
                               epochs=config.epochs)
        history.append({"epoch": epoch, "loss": loss, "lr": optimizer.param_groups[0]["lr"]})
        logger.info("pretrain epoch %d/%d: NT-Xent loss %.4f", epoch, config.epochs, loss)
        if resume_dir is not None:
            resume.save(resume_dir, {
                "fingerprint": fingerprint, "epoch": epoch, "history": history,
                "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
    seconds = time.perf_counter() - started
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in encoder.state_dict().items()}
    record = {
        "enabled": True, "method": config.method, "backbone": backbone, "started_from": start_weights,
        "weights": WEIGHTS_FILE, "images": dict(data.sources), "image_px": config.image_px,
        "epochs": config.epochs, "steps_per_epoch": len(loader), "seed": int(seed), "device": run_device.type,
        "clahe": clahe, "intensity": intensity,
        "params": dataclasses.asdict(config), "history": history,
    }
    logger.info("pretrained %s on %d images in %.0f s (this process)", backbone, len(images), seconds)
    return PretrainResult(backbone=weights, record=record)


def write_pretrained(out_dir: str | os.PathLike, result: PretrainResult) -> Path:
    """``out_dir`` replaced as a whole by ``backbone.safetensors`` and ``pretrain.json`` (with its sha256)."""
    from safetensors.torch import save as save_safetensors

    blob = save_safetensors(result.backbone)  # bytes: the same tensors give the same file (and DVC hash)
    record = {**result.record, "weights_sha256": hashlib.sha256(blob).hexdigest()}
    with atomic_dir(out_dir) as tmp:
        (tmp / WEIGHTS_FILE).write_bytes(blob)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return Path(out_dir)


def write_disabled(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` replaced by a record saying pretraining is off (the classifier keeps model.pretrained)."""
    record = {"enabled": False, "note": "pretrain.enabled is false: the classifier starts from model.pretrained."}
    with atomic_dir(out_dir) as tmp:
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def read_record(pretrained_dir: str | os.PathLike) -> dict[str, Any]:
    """``pretrain.json`` of a pretrain stage's output folder, checked for the keys the train stage uses."""
    path = Path(pretrained_dir) / RECORD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the pretrain stage (dvc repro pretrain).")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); rerun the pretrain stage.") from err
    if not isinstance(record, dict) or not isinstance(record.get("enabled"), bool):
        raise ValueError(f"{path}: expected a JSON object with 'enabled' true or false; rerun the pretrain stage.")
    if record["enabled"] and not {"backbone", "weights", "weights_sha256"} <= set(record):
        raise ValueError(f"{path}: an enabled record needs 'backbone', 'weights' and 'weights_sha256'; rerun the "
                         "pretrain stage.")
    return record


def classifier_start(pretrained_dir: str | os.PathLike, model: ModelConfig) -> ModelConfig:
    """``model`` with ``pretrained`` pointing at the pretrained backbone when pretraining ran, else unchanged.

    The weights then load through :func:`assurexray.learning.model.create_model`'s local-file source, which
    refuses (naming the file) any tensor that does not fit the backbone; the checkpoint's
    ``meta["params"]["model"]["pretrained"]`` records the file.
    """
    record = read_record(pretrained_dir)
    if not record["enabled"]:
        return model
    weights = Path(pretrained_dir) / record["weights"]
    if record["backbone"] != model.backbone:
        raise ValueError(f"{Path(pretrained_dir) / RECORD_FILE}: the backbone was pretrained as "
                         f"{record['backbone']!r} but model.backbone is {model.backbone!r}; rerun the pretrain "
                         "stage (dvc repro pretrain) or set pretrain.enabled: false.")
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: pretrained weights not found beside {RECORD_FILE}; rerun the "
                                "pretrain stage (dvc repro pretrain).")
    found = hashlib.sha256(weights.read_bytes()).hexdigest()
    if found != record["weights_sha256"]:
        raise ValueError(f"{weights}: sha256 {found[:12]} differs from {record['weights_sha256'][:12]} in "
                         f"{RECORD_FILE}; the file was changed or truncated. Rerun the pretrain stage.")
    return dataclasses.replace(model, pretrained=str(weights))


# --- helpers ---------------------------------------------------------------------------------------------


class _TwoViews(Dataset):
    """Two independently augmented views (3, P, P) of each cached radiograph."""

    def __init__(self, images: np.ndarray, views: A.Compose, preprocess: A.Compose) -> None:
        self.images, self.transform, self.preprocess = images, views, preprocess  # `transform`: seed_worker's name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = np.ascontiguousarray(self.images[i])  # (S, S) uint8
        return tuple(self.preprocess(image=self.transform(image=image)["image"])["image"] for _ in range(2))


def _view_transform(size: int, seed: int) -> A.Compose:
    """SimCLR's view recipe for grayscale radiographs: crop and resize, flip, small rotation, brightness,
    contrast and gamma (the detector and display curves differ by site), blur. No colour: there is none."""
    return A.Compose([
        A.RandomResizedCrop(size=(size, size), scale=_CROP_SCALE, ratio=(0.75, 1.333), p=1.0),
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-10, 10), border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.5),  # 0 = the letterbox fill
        A.RandomBrightnessContrast(brightness_limit=0.4, contrast_limit=0.4, p=0.8),
        A.RandomGamma(gamma_limit=(70, 150), p=0.5),
        A.GaussianBlur(sigma_limit=(0.1, 1.5), p=0.5),
    ], seed=seed)


def _pretrain_epoch(net: nn.ModuleDict, loader: DataLoader, criterion: nn.Module, optimizer, scheduler, *,
                    device: torch.device, epoch: int, epochs: int) -> float:
    """One pass of SimCLR steps; returns the mean NT-Xent loss."""
    net.train()
    total, count = 0.0, 0
    bar = tqdm(loader, desc=f"pretrain {epoch}/{epochs}", unit="batch", leave=False)
    for step, (view_a, view_b) in enumerate(bar, start=1):
        view_a, view_b = view_a.to(device, non_blocking=True), view_b.to(device, non_blocking=True)  # (B, 3, P, P)
        z_a = net["head"](net["backbone"](view_a))  # (B, _PROJECTION_DIM)
        z_b = net["head"](net["backbone"](view_b))
        loss = criterion(z_a, z_b)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss is {loss.item()} at epoch {epoch}, step {step}; the run "
                                     "diverged. Lower pretrain.lr or raise pretrain.temperature.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()  # per step: warm-up and cosine are defined in optimiser steps
        total += loss.item()
        count += 1
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / count


def _folder_images(folder: Path, size: int) -> np.ndarray:
    """Every raster or DICOM radiograph under ``folder`` (sorted, recursive), letterboxed to ``size``."""
    if not folder.is_dir():
        raise FileNotFoundError(f"pretrain.extra_images: folder {str(folder)!r} not found; set it to a folder of "
                                "unlabelled radiographs or to null.")
    suffixes = DATASET_SUFFIXES + DICOM_SUFFIXES
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"pretrain.extra_images: no images ({', '.join(suffixes)}) under {folder}; add the "
                         "site's radiographs or set it to null.")
    out = np.zeros((len(files), size, size), dtype=np.uint8)
    for i, path in enumerate(tqdm(files, desc="extra images", unit="image", leave=False)):
        if path.suffix.lower() in DICOM_SUFFIXES:
            gray, original = read_dicom_gray(path), None
        else:
            gray, _, original = decode_for_letterbox(path, size)
        out[i] = letterbox(gray, size, original_size=original)[0]
    return out


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
