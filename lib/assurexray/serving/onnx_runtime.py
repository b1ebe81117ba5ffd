"""``assurexray infer --runtime onnx``: score with ONNX Runtime (CPU) through the same engine as PyTorch.

:class:`OnnxPredictor` is a :class:`assurexray.learning.prediction.Predictor` whose model is an ONNX Runtime
session: letterboxing, the preprocessing (rebuilt from the export's metadata, :mod:`assurexray.serving.export`),
the temperature, the Malignant threshold and mirror TTA are Predictor's own code; only the forward pass differs.
The operating point is the source checkpoint's (the export records its SHA-256). NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from assurexray.learning.model import WEIGHT_SUFFIXES
from assurexray.learning.prediction import (
    OperatingPoint,
    Predictor,
    default_operating_point_path,
    flip_averaged_logits,
    load_operating_point,
)
from assurexray.serving.export import (
    INPUT_NAME,
    LESION_LOGITS_NAME,
    LOGITS_NAME,
    ONNX_SUFFIX,
    import_optional,
    read_onnx_contract,
)

__all__ = ["RUNTIMES", "OrtModel", "OnnxPredictor", "load_onnx_predictor", "check_runtime_model"]

logger = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("torch", "onnx")  # ``infer --runtime``: PyTorch checkpoints, or ONNX exports


@dataclass(frozen=True)
class OrtModel:
    """An ONNX Runtime session called like the PyTorch model: a preprocessed batch (B, C, S, S) -> logits (B, K)."""

    session: Any  # onnxruntime.InferenceSession
    has_lesion: bool

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([LOGITS_NAME], {INPUT_NAME: _array(batch)})
        return torch.from_numpy(logits)

    def lesion_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 1, S/4, S/4) lesion logits of a preprocessed batch."""
        (lesion,) = self.session.run([LESION_LOGITS_NAME], {INPUT_NAME: _array(batch)})
        return torch.from_numpy(lesion)


@dataclass(frozen=True)
class OnnxPredictor(Predictor):
    """A :class:`Predictor` over one :class:`OrtModel`; :meth:`scores`, :meth:`predict_grays` and the operating
    point are inherited unchanged, so both runtimes turn logits into decisions with the same code."""

    @property
    def lesion_members(self) -> tuple[bool, ...]:
        return tuple(m.has_lesion for m in self.models)

    def logits(self, boxed: np.ndarray) -> np.ndarray:
        """Logits ``(B, K)`` of letterboxed uint8 images ``(B, S, S)`` (mirror TTA as the operating point says)."""
        return flip_averaged_logits(self.models[0], self._batch(boxed), tta_flip=self.operating_point.tta_flip)

    def lesion_maps(self, boxed: np.ndarray) -> np.ndarray:
        """Lesion probability maps ``(B, S, S)`` in [0, 1], upsampled exactly as
        :func:`assurexray.learning.lesion_head.lesion_probabilities` upsamples them (bilinear, then sigmoid)."""
        if not self.has_lesion_maps:
            raise ValueError(f"lesion maps: {self.model_paths[0]} was exported from a checkpoint without a lesion "
                             "decoder; export one trained with model.lesion_head: true.")
        batch = self._batch(boxed)
        lesion = F.interpolate(self.models[0].lesion_logits(batch).float(), size=batch.shape[-2:], mode="bilinear",
                               align_corners=False)
        return torch.sigmoid(lesion[:, 0]).numpy().astype(np.float32)

    def _batch(self, boxed: np.ndarray) -> torch.Tensor:
        transform = self.transform
        return torch.stack([transform(image=img)["image"] for img in boxed])  # (B, C, S, S) float32


def check_runtime_model(path: str | os.PathLike, runtime: str) -> None:
    """Refuse a model file the ``runtime`` cannot read, saying which runtime (or export) fits it."""
    path = Path(path)
    if runtime not in RUNTIMES:
        raise ValueError(f"--runtime {runtime!r}: expected one of {list(RUNTIMES)}.")
    onnx_file = path.suffix.lower() == ONNX_SUFFIX
    if runtime == "torch" and onnx_file:
        raise ValueError(f"--model {path}: an ONNX model, but --runtime is torch (the default); pass --runtime onnx "
                         "to score it with ONNX Runtime, or pass the PyTorch checkpoint.")
    if runtime == "onnx" and not onnx_file:
        kind = ("a PyTorch checkpoint" if path.suffix.lower() in WEIGHT_SUFFIXES or _is_zip(path)
                else f"not an {ONNX_SUFFIX} file")
        raise ValueError(
            f"--model {path}: {kind}, but --runtime is onnx; export it first (assurexray export --format onnx "
            f"--model {path} -o {path.with_suffix(ONNX_SUFFIX).name}) and pass the .onnx, or use --runtime torch.")


def load_onnx_predictor(
    model_path: str | os.PathLike, *, operating_point: str | os.PathLike | OperatingPoint | None = None
) -> OnnxPredictor:
    """An :class:`OnnxPredictor` of the AssureXRay export at ``model_path`` on ONNX Runtime's CPU provider.

    ``operating_point``: an ``operating_point.json`` of the *source checkpoint* (checked by the SHA-256 the export
    recorded), an :class:`OperatingPoint`, or None: the evaluate output beside ``models/<variant>/`` when the
    export lies there (as for the checkpoint), else a warning, T = 1 and no Malignant decision.
    """
    path = Path(model_path)
    check_runtime_model(path, "onnx")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX model not found; write it with `assurexray export --format onnx "
                                f"--model model.pt -o {path.name}`.")
    ort = import_optional("onnxruntime", "assurexray infer --runtime onnx")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types (Fail, InvalidProtobuf...): translate
        raise ValueError(f"{path}: ONNX Runtime cannot load it ({type(err).__name__}: {err}); re-export it with "
                         "`assurexray export --format onnx`.") from err
    contract = read_onnx_contract(path, dict(session.get_modelmeta().custom_metadata_map))
    outputs = {o.name for o in session.get_outputs()}
    if LOGITS_NAME not in outputs or (contract.lesion_head and LESION_LOGITS_NAME not in outputs):
        raise ValueError(f"{path}: outputs {sorted(outputs)} lack what its metadata promises ({LOGITS_NAME!r}"
                         f"{', ' + repr(LESION_LOGITS_NAME) if contract.lesion_head else ''}); re-export it.")
    predictor = OnnxPredictor(models=(OrtModel(session, has_lesion=contract.lesion_head),), meta=contract.meta,
                              model_paths=(path,), member_sha256s=(contract.source_sha256,))
    return predictor.with_operating_point(_operating_point(operating_point, predictor))


# --- helpers ----------------------------------------------------------------------------------------------


def _operating_point(given: str | os.PathLike | OperatingPoint | None, predictor: OnnxPredictor) -> OperatingPoint:
    """As :func:`assurexray.learning.prediction.load_predictor` resolves it for one checkpoint."""
    if isinstance(given, OperatingPoint):
        return given
    sha, classes = predictor.model_sha256, predictor.class_names
    path = Path(given) if given is not None else default_operating_point_path(predictor.model_paths[0])
    if given is None and not path.is_file():
        logger.warning("no operating point at %s: probabilities are uncalibrated (temperature 1) and the Malignant "
                       "decision is null. Pass --operating-point (the source checkpoint's).", path)
        return OperatingPoint()
    return load_operating_point(path, model_sha256=sha, class_names=classes)


def _array(batch: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)


def _is_zip(path: Path) -> bool:
    """torch.save writes a zip archive: how a checkpoint is known whatever its suffix."""
    return path.is_file() and zipfile.is_zipfile(path)
