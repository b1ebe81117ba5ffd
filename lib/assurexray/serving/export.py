"""``assurexray export --format onnx``: a checkpoint as an ONNX model that carries its own input contract.

The graph takes the *preprocessed* batch ``image`` (B, C, S, S) float32 and returns ``logits`` (B, K) and, for a
checkpoint with a lesion decoder, ``lesion_logits`` (B, 1, S/4, S/4) (:func:`assurexray.learning.lesion_head.
forward_with_lesion`); B is a dynamic axis. Preprocessing stays outside the graph (CLAHE and the intensity
standardisation are OpenCV/numpy steps with no faithful ONNX form), so the export records in ``metadata_props``
everything :func:`assurexray.learning.transforms.eval_transform` needs, and ``infer --runtime onnx`` rebuilds the
same transform from it: one preprocessing definition, two runtimes. Each value is JSON under an ``assurexray.``
key. The export is checked against PyTorch on a probe batch before it is written (atomically): an export that
disagrees by more than :data:`LOGIT_ATOL` (plus :data:`LOGIT_RTOL` of large logits) is refused, never written.
NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from assurexray import DISCLAIMER
from assurexray.core.atomic import atomic_path
from assurexray.learning.lesion_head import forward_with_lesion, has_lesion_head
from assurexray.learning.model import file_sha256, load_checkpoint
from assurexray.learning.prediction import PREPROCESSING_KEYS

__all__ = [
    "EXPORT_FORMATS",
    "ONNX_SUFFIX",
    "INPUT_NAME",
    "LOGITS_NAME",
    "LESION_LOGITS_NAME",
    "LOGIT_ATOL",
    "LOGIT_RTOL",
    "METADATA_PREFIX",
    "OnnxContract",
    "ExportRecord",
    "export_onnx",
    "onnx_metadata",
    "read_onnx_contract",
    "import_optional",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS: tuple[str, ...] = ("onnx",)  # what ``assurexray export --format`` writes
ONNX_SUFFIX = ".onnx"
INPUT_NAME, LOGITS_NAME, LESION_LOGITS_NAME = "image", "logits", "lesion_logits"  # the graph's tensor names
#: Largest |ONNX Runtime - PyTorch| logit difference accepted, on the export's probe batch and in
#: tests/test_export_onnx.py. Float32 kernels differ in summation order, about 1e-6 of the value: observed
#: ~1e-6 on a trained tf_efficientnet_lite0 (logits ~1), 3e-5 on a random one (logits ~30). 1e-4 leaves room
#: and still catches a wrong graph; the export check adds :data:`LOGIT_RTOL` of the value for large logits.
LOGIT_ATOL = 1e-4
LOGIT_RTOL = 1e-5  # relative part of the export check: |ort - torch| <= LOGIT_ATOL + LOGIT_RTOL * |torch|
#: Prefix of every metadata key the export writes; ``assurexray.format_version`` marks an AssureXRay export.
METADATA_PREFIX = "assurexray."
ONNX_FORMAT_VERSION = 1  # of the metadata below; a reader refuses versions it does not know
_PROBE_BATCH = 2  # images in the probe batch the export is traced and checked on (2, so B is not fixed to 1)
_REQUIRED = ("format_version", "class_names", "source_sha256", "lesion_head", "input_size", "in_chans", "mean",
             "std", "clahe")


@dataclass(frozen=True)
class OnnxContract:
    """What an AssureXRay ONNX export records: the checkpoint ``meta`` subset that preprocessing and the output
    need (the keys of :data:`assurexray.learning.prediction.PREPROCESSING_KEYS`, ``class_names``, ``backbone``,
    ``data``), the source checkpoint's SHA-256 (its operating point applies) and whether it has a lesion map."""

    meta: dict[str, Any]
    source_sha256: str
    lesion_head: bool


@dataclass(frozen=True)
class ExportRecord:
    """What :func:`export_onnx` wrote and how closely ONNX Runtime reproduced PyTorch on the probe batch."""

    path: Path
    source: Path
    source_sha256: str
    outputs: tuple[str, ...]
    opset: int
    max_abs_logit_diff: float


def export_onnx(model_path: str | os.PathLike, output: str | os.PathLike) -> ExportRecord:
    """Export the checkpoint at ``model_path`` to ``output`` (``.onnx``), checked against PyTorch, atomically.

    Raises ``ValueError`` for a wrong suffix or an export whose outputs differ from PyTorch's by more than
    :data:`LOGIT_ATOL` + :data:`LOGIT_RTOL` of the value, ``ModuleNotFoundError`` (with the fix) when onnx,
    onnxscript or onnxruntime is missing.
    """
    output, model_path = Path(output), Path(model_path)
    if output.suffix.lower() != ONNX_SUFFIX:
        raise ValueError(f"-o {os.fspath(output)!r}: an ONNX export is written to a {ONNX_SUFFIX} file; "
                         f"name it e.g. {output.with_suffix(ONNX_SUFFIX).name!r}.")
    onnx = import_optional("onnx", "assurexray export --format onnx")
    import_optional("onnxscript", "assurexray export --format onnx")  # torch's exporter builds the graph with it
    ort = import_optional("onnxruntime", "assurexray export --format onnx (it checks the export)")
    model, meta = load_checkpoint(model_path)
    lesion = has_lesion_head(model)
    size, channels = int(meta["input_size"]), int(meta["in_chans"])
    probe = torch.randn(_PROBE_BATCH, channels, size, size, generator=torch.Generator().manual_seed(0))
    names = [LOGITS_NAME, LESION_LOGITS_NAME] if lesion else [LOGITS_NAME]
    proto = _trace(_Forward(model, lesion=lesion), probe, names)
    sha = file_sha256(model_path)
    for key, value in onnx_metadata(meta, source_sha256=sha, lesion_head=lesion).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    onnx.checker.check_model(proto)
    diff, within = _compare_with_torch(ort, data, model, probe, lesion=lesion)
    if not within:
        raise ValueError(
            f"{model_path}: the ONNX export's logits differ from PyTorch's by {diff:.3g} on a probe batch (tolerance "
            f"{LOGIT_ATOL:g} + {LOGIT_RTOL:g} x |logit|); nothing was written to {output}. Report it with the torch "
            "and onnxruntime versions.")
    with atomic_path(output) as tmp:
        tmp.write_bytes(data)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    logger.info("wrote %s (opset %d, outputs %s); max |ORT - torch| logit difference %.3g", output, opset, names,
                diff)
    return ExportRecord(path=output, source=model_path, source_sha256=sha, outputs=tuple(names), opset=opset,
                        max_abs_logit_diff=diff)


def onnx_metadata(meta: dict[str, Any], *, source_sha256: str, lesion_head: bool) -> dict[str, str]:
    """The ``metadata_props`` of an export: ``assurexray.<key>`` -> JSON, keys in a stable order."""
    record: dict[str, Any] = {"format_version": ONNX_FORMAT_VERSION, "disclaimer": DISCLAIMER,
                              "backbone": meta.get("backbone"), "class_names": [str(c) for c in meta["class_names"]]}
    record.update({key: meta.get(key) for key in PREPROCESSING_KEYS})  # None = the checkpoint predates the key
    record.update(source_sha256=source_sha256, lesion_head=bool(lesion_head), data=meta.get("data"))
    return {METADATA_PREFIX + key: json.dumps(value) for key, value in record.items()}


def read_onnx_contract(path: str | os.PathLike, metadata: dict[str, str]) -> OnnxContract:
    """The :class:`OnnxContract` of the ONNX model at ``path`` from its ``metadata`` (``metadata_props`` as a dict).

    ``ValueError`` naming the file when it is not an AssureXRay export, a key is missing or unreadable, or its
    format is newer than this version reads.
    """
    path = Path(path)
    ours = {k[len(METADATA_PREFIX):]: v for k, v in metadata.items() if k.startswith(METADATA_PREFIX)}
    if "format_version" not in ours:
        raise ValueError(
            f"{path}: an ONNX model without AssureXRay metadata (no {METADATA_PREFIX}format_version key), so its "
            "input size, normalisation and class order are unknown. Export the checkpoint with `assurexray export "
            f"--format onnx --model model.pt -o {path.name}`.")
    values: dict[str, Any] = {}
    for key, text in ours.items():
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: metadata {METADATA_PREFIX}{key} is not valid JSON ({err}); "
                             "re-export it.") from err
    if values["format_version"] != ONNX_FORMAT_VERSION:
        raise ValueError(f"{path}: AssureXRay ONNX metadata version {values['format_version']!r}; this version "
                         f"reads {ONNX_FORMAT_VERSION}. Re-export it with this AssureXRay or update AssureXRay.")
    missing = [METADATA_PREFIX + k for k in _REQUIRED if values.get(k) is None]
    if missing:
        raise ValueError(f"{path}: AssureXRay ONNX metadata lacks {missing}; re-export it with `assurexray export`.")
    meta = {k: values[k] for k in PREPROCESSING_KEYS if values.get(k) is not None}
    meta.update(class_names=list(values["class_names"]), num_classes=len(values["class_names"]),
                backbone=values.get("backbone"), lesion_head=bool(values["lesion_head"]))
    if values.get("data") is not None:
        meta["data"] = values["data"]
    return OnnxContract(meta=meta, source_sha256=str(values["source_sha256"]), lesion_head=bool(values["lesion_head"]))


def import_optional(name: str, needed_by: str) -> Any:
    """Import an optional dependency of the ONNX path; ``ModuleNotFoundError`` saying how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"{needed_by} needs the {name} package, which is not installed: pip install {name} (or pip install -r "
            "requirements.txt).", name=name) from err


# --- helpers ----------------------------------------------------------------------------------------------


class _Forward(nn.Module):
    """The exported forward: logits, and with ``lesion`` the lesion logits of the same pass."""

    def __init__(self, model: nn.Module, *, lesion: bool) -> None:
        super().__init__()
        self.model, self.lesion = model, lesion

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return forward_with_lesion(self.model, image) if self.lesion else self.model(image)


def _trace(module: nn.Module, probe: torch.Tensor, names: list[str]) -> Any:
    """The ONNX ``ModelProto`` of ``module`` with a dynamic batch axis (torch's dynamo exporter).

    The TorchScript exporter (``dynamo=False``) is not used: on torch 2.14 its graph of a timm EfficientNet
    disagreed with PyTorch by whole logits. The exporter's progress lines go to the log, not stdout.
    """
    shapes = {INPUT_NAME: {0: torch.export.Dim("batch")}}
    printed = io.StringIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(printed):
        warnings.simplefilter("ignore")  # deprecation chatter of the exporter's internals, not the user's concern
        program = torch.onnx.export(module, (probe,), None, input_names=[INPUT_NAME], output_names=names,
                                    dynamo=True, dynamic_shapes=shapes, verbose=False)
    logger.debug("torch.onnx.export: %s", printed.getvalue().strip())
    return program.model_proto


def _compare_with_torch(ort: Any, data: bytes, model: nn.Module, probe: torch.Tensor, *,
                        lesion: bool) -> tuple[float, bool]:
    """(largest |ORT - PyTorch| difference over the logits and lesion logits of ``probe``, whether every value
    is within :data:`LOGIT_ATOL` + :data:`LOGIT_RTOL` x |PyTorch's|)."""
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: probe.numpy()})
    with torch.no_grad():
        want = [w.float().numpy() for w in (forward_with_lesion(model, probe) if lesion else (model(probe),))]
    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    within = all(bool((np.abs(g - w) <= LOGIT_ATOL + LOGIT_RTOL * np.abs(w)).all()) for g, w in zip(got, want))
    return diff, within
