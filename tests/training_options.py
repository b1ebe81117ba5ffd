"""Tests describe a training run as flat options (as params.yaml's keys read); ``train`` turns them into the
config objects :func:`assurexray.learning.training.train_model` takes whole."""

from __future__ import annotations

import dataclasses

from assurexray.core.params import BaseConfig
from assurexray.learning.model import ModelConfig
from assurexray.learning.train_config import TrainConfig
from assurexray.learning.training import TrainingData, TrainResult, train_model

_RUN_KEYS = ("live_dir", "resume_dir", "data_info")


def configs(options: dict) -> tuple[TrainingData, dict]:
    """(TrainingData, keyword arguments of train_model) from flat ``options``."""
    options = dict(options)
    data = TrainingData(images=options.pop("images"), masks=options.pop("masks", None),
                        train_index=options.pop("train_index"), val_index=options.pop("val_index"),
                        class_names=list(options["class_names"]))
    base = BaseConfig(seed=options.pop("seed"), class_names=tuple(options.pop("class_names")))
    model = ModelConfig(**{f.name: options.pop(f.name) for f in dataclasses.fields(ModelConfig)
                           if f.name in options})
    run = {k: options.pop(k) for k in _RUN_KEYS if k in options}
    options.setdefault("seg_weight", 0.0)
    options.setdefault("ema_decay", 0.0)
    train = TrainConfig(**options)
    return data, {"model_config": model, "train": train, "base": base, **run}


def train(**options) -> TrainResult:
    data, kwargs = configs(options)
    return train_model(data, **kwargs)
