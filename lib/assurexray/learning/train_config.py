"""The ``train`` section of params.yaml as one frozen, checked object: what the training loop is told to do.

Passed whole from the train stage to :func:`assurexray.learning.training.train_model`; a new setting is one
field here and one key in params.yaml, never a keyword threaded through several signatures.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from assurexray.learning.transforms import AugmentConfig, augment_config

if TYPE_CHECKING:
    import torch

    from assurexray.learning.model import ModelConfig

__all__ = ["TrainConfig", "MONITORS", "CLASS_WEIGHTS", "DEVICES", "params_record"]

#: Validation criteria: name -> True when larger is better. ``auc_dice`` is validation macro AUC plus the
#: validation lesion Dice (models with a lesion head only; docs/decisions/2026-12-07-lesion-map.md says why).
MONITORS = {"macro_auc": True, "balanced_accuracy": True, "loss": False, "auc_dice": True}
CLASS_WEIGHTS = ("inverse_frequency", "none")
DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of params.yaml (meanings and units are commented there).

    The resolved values are recorded in the checkpoint's ``meta["params"]["train"]``.
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
        number = (int, float)
        checks = [
            ("epochs", isinstance(self.epochs, int) and self.epochs >= 1, "an integer >= 1"),
            ("batch_size", isinstance(self.batch_size, int) and self.batch_size >= 1, "an integer >= 1"),
            ("lr", isinstance(self.lr, number) and self.lr > 0, "a number > 0"),
            ("weight_decay", isinstance(self.weight_decay, number) and self.weight_decay >= 0, "a number >= 0"),
            ("warmup_epochs", isinstance(self.warmup_epochs, number) and self.warmup_epochs >= 0,
             "a number >= 0"),
            ("grad_clip", self.grad_clip is None or (isinstance(self.grad_clip, number) and self.grad_clip > 0),
             "null or a number > 0"),
            ("class_weights", self.class_weights in CLASS_WEIGHTS, f"one of {list(CLASS_WEIGHTS)}"),
            ("monitor", self.monitor in MONITORS, f"one of {list(MONITORS)}"),
            ("patience", self.patience is None or (isinstance(self.patience, int) and self.patience >= 1),
             "null or an integer >= 1"),
            ("device", self.device in DEVICES, f"one of {list(DEVICES)}"),
            ("num_workers", isinstance(self.num_workers, int) and self.num_workers >= 0, "an integer >= 0"),
            ("seg_weight", isinstance(self.seg_weight, number) and self.seg_weight >= 0, "a number >= 0"),
            ("ema_decay", isinstance(self.ema_decay, number) and 0 <= self.ema_decay < 1,
             "a number in [0, 1) (0 = off)"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"train.{name}: expected {expected}, got {getattr(self, name)!r}.")
        for name in ("amp", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"train.{name}: expected true or false, got {getattr(self, name)!r}.")
        if not isinstance(self.launcher, str) or not self.launcher.strip():
            raise TypeError(f"train.launcher: expected a command such as python, got {self.launcher!r}.")
        object.__setattr__(self, "augment", augment_config(self.augment))


def params_record(model: ModelConfig, train: TrainConfig, *, device: torch.device, amp: bool,
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
    model_record = dataclasses.asdict(model)
    if not model.lesion_head:  # a plain classifier's record stays as in format-1 checkpoints (same bytes)
        del model_record["lesion_head"]
    return {"model": model_record, "train": record}
