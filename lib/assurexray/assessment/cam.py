"""Grad-CAM (pytorch-grad-cam) on a trained classifier: target layers, heatmaps, weight randomisation.

Heatmaps live in the prepared geometry (S, S) and are min-max scaled per image to [0, 1]. The model handed
in is never changed: CAM hooks, ``eval()``, ``zero_grad()`` and weight randomisation all act on a deep copy.
Used by the explain stage (``assurexray.assessment.explain``) and by ``assurexray infer --gradcam``.
NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from albumentations.core.composition import BaseCompose
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from tqdm import tqdm

__all__ = [
    "CAM_METHODS",
    "RANDOMIZATIONS",
    "cam_method",
    "find_target_layer",
    "layer_candidates",
    "compute_heatmaps",
    "compute_heatmaps_per_layer",
    "randomized_copy",
    "apply_transform",
]


#: CAM methods by their params.yaml name (``explain.method``).
CAM_METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "gradcamelementwise": GradCAMElementWise,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
    "scorecam": ScoreCAM,
}


#: Adebayo et al. 2018 model randomisation: ``full`` re-initialises every layer; ``cascading`` the top of the
#: network, from the target layer to the classifier (the first step of their cascade that moves Grad-CAM).
RANDOMIZATIONS: tuple[str, ...] = ("full", "cascading")


# A module qualifies as a target layer when it is (or contains) one of these and outputs a (B, C, H, W) map.
_CONV_OR_NORM = (nn.Conv2d, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


_CANDIDATES_SHOWN = 20


def cam_method(name: str) -> type[BaseCAM]:
    """The CAM class registered under ``name``."""
    if name not in CAM_METHODS:
        raise ValueError(f"explain.method: unknown CAM method {name!r}; valid methods are {sorted(CAM_METHODS)}.")
    return CAM_METHODS[name]


def find_target_layer(
    model: nn.Module, *, name: str | None = None, input_shape: tuple[int, int, int] = (3, 64, 64)
) -> str:
    """Name of the CAM target layer: ``name`` if valid, else the last conv/norm block with a 4-D map.

    Found by probing a copy of the model with forward hooks on a zero input: the last module to finish
    whose output is (B, C, H, W) with H, W > 1 (so the 1x1 global pool is excluded). Containers finish
    after their children, hence ``layer4`` for ResNets and ``bn2`` for EfficientNets.
    """
    candidates, _ = _probe(model, input_shape)
    return _resolve_layer(candidates, name, model)


def compute_heatmaps(
    model: nn.Module,
    images: np.ndarray,
    target_classes: Sequence[int],
    *,
    transform: Callable[..., Any],
    method: str = "gradcam",
    target_layer: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """CAM heatmaps (N, S, S) float32 in [0, 1] of uint8 images (N, S, S) for the given class indices.

    ``transform`` maps one uint8 (S, S) image to a (C, S, S) tensor: a plain callable or an
    albumentations Compose (``assurexray.learning.transforms.eval_transform(meta)``, the one preprocessing).
    """
    maps = _heatmaps(model, images, target_classes, transform=transform, method=method, layers=[target_layer],
                     batch_size=batch_size, progress=progress)
    return maps[:, 0]


def compute_heatmaps_per_layer(
    model: nn.Module,
    images: np.ndarray,
    target_classes: Sequence[int],
    *,
    transform: Callable[..., Any],
    layers: Sequence[str],
    method: str = "gradcam",
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """:func:`compute_heatmaps` for each of ``layers``, from one forward and one backward pass per batch.

    pytorch-grad-cam hooks every layer at once (``compute_cam_per_layer``); its mean over layers is replaced
    by keeping each layer's map, so each equals that layer's own :func:`compute_heatmaps` (float rounding
    of the shared backward aside). The explain stage's layer search costs about one CAM pass, not one per
    candidate.
    """
    names = list(dict.fromkeys(layers))
    maps = _heatmaps(model, images, target_classes, transform=transform, method=method, layers=names,
                     batch_size=batch_size, progress=False)
    return {name: maps[:, i] for i, name in enumerate(names)}


def _heatmaps(
    model: nn.Module, images: np.ndarray, target_classes: Sequence[int], *, transform: Callable[..., Any],
    method: str, layers: Sequence[str | None], batch_size: int, progress: bool,
) -> np.ndarray:
    """Heatmaps (N, L, S, S) of ``layers`` (None = the automatic layer), one CAM pass per batch."""
    cam_cls = cam_method(method)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images: expected (N, S, S) prepared images, got shape {images.shape}.")
    targets = np.asarray(target_classes, dtype=np.int64)
    if targets.shape != (images.shape[0],):
        raise ValueError(f"target_classes: need one class per image ({images.shape[0]}), got {targets.shape}.")
    if batch_size < 1:
        raise ValueError(f"explain.batch_size must be >= 1, got {batch_size!r}.")
    if not layers:
        raise ValueError("layers: name at least one target layer.")
    n, size = images.shape[0], images.shape[1]
    out = np.zeros((n, len(layers), size, size), dtype=np.float32)
    if n == 0:
        return out
    clone = _cam_copy(model)
    sample = apply_transform(transform, images[0], size)
    candidates, n_outputs = _probe(clone, tuple(sample.shape))
    names = [_resolve_layer(candidates, name, model) for name in layers]
    if targets.min() < 0 or targets.max() >= n_outputs:
        raise ValueError(f"target_classes: indices must lie in [0, {n_outputs}), got {sorted(set(targets.tolist()))}.")
    modules = [clone.get_submodule(name) for name in names]
    # Gradients are needed only from the logits back to the target layers' outputs: letting just the last
    # parameterised module inside each layer require grad makes the backward stop at the earliest of them
    # (a container layer such as `blocks` would otherwise pull it through the whole backbone).
    clone.requires_grad_(False)
    for layer in modules:
        _last_with_parameters(layer, fallback=clone).requires_grad_(True)
    cam = cam_cls(model=clone, target_layers=modules)
    if len(modules) > 1:
        cam.aggregate_multi_layers = functools.partial(_each_layer, cam)  # keep every layer's map, not their mean
    device = _device_of(clone)  # inputs follow the model (CPU, or the GPU explain/infer loaded it on)
    cam.batch_size = batch_size  # read by ScoreCAM for its masked forward passes
    with _hooks_released(cam), torch.enable_grad():
        for start in tqdm(range(0, n, batch_size), desc=f"{method} heatmaps", disable=not progress):
            stop = min(start + batch_size, n)
            batch = torch.stack([apply_transform(transform, img, size) for img in images[start:stop]])  # (B, C, S, S)
            maps = cam(input_tensor=batch.to(device), targets=[ClassifierOutputTarget(int(c)) for c in targets[start:stop]])
            maps = maps[:, None] if maps.ndim == 3 else maps  # one layer: (B, S, S); several: (B, L, S, S)
            out[start:stop] = np.stack([_minmax(maps[:, i]) for i in range(len(modules))], axis=1)
    return out


def _last_with_parameters(layer: nn.Module, *, fallback: nn.Module) -> nn.Module:
    """The last module (registration order, which timm keeps in forward order) holding parameters of its own:
    its output feeds the layer's output, so that output requires grad. ``fallback`` when there is none."""
    owners = [m for m in layer.modules() if any(True for _ in m.parameters(recurse=False))]
    return owners[-1] if owners else fallback


def _each_layer(cam: BaseCAM, cam_per_layer: list[np.ndarray]) -> np.ndarray:
    """(B, L, S, S): each layer's map scaled as pytorch-grad-cam scales the one map of a single layer."""
    pairs = cam.activations_and_grads
    if cam.uses_gradients and (
        len(pairs.activations) != len(cam_per_layer) or len(pairs.gradients) != len(cam_per_layer)
        or any(a.shape != g.shape for a, g in zip(pairs.activations, pairs.gradients))
    ):
        raise RuntimeError(
            f"Grad-CAM over {len(cam_per_layer)} layers at once got {len(pairs.activations)} activations and "
            f"{len(pairs.gradients)} gradients that do not pair up; compute the layers one at a time "
            "(compute_heatmaps)."
        )
    return np.stack([scale_cam_image(np.maximum(maps[:, 0], 0)) for maps in cam_per_layer], axis=1)


def randomized_copy(
    model: nn.Module,
    *,
    seed: int,
    mode: str = "full",
    target_layer: str | None = None,
    input_shape: tuple[int, int, int] = (3, 64, 64),
) -> nn.Module:
    """A copy of ``model`` with re-initialised weights (Adebayo et al. 2018 model-randomisation test).

    ``full`` resets every layer; ``cascading`` resets the target layer and every module run after it.
    Uses a forked torch RNG seeded with ``seed``, so the caller's RNG state is untouched.
    """
    if mode not in RANDOMIZATIONS:
        raise ValueError(f"explain.randomization: expected one of {list(RANDOMIZATIONS)}, got {mode!r}.")
    clone = copy.deepcopy(model).eval()
    names = [n for n, _ in clone.named_modules()]
    if mode == "cascading":
        layer = find_target_layer(clone, name=target_layer, input_shape=input_shape)
        order = _call_order(clone, input_shape)
        names = order[order.index(layer) :]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module_name in names:
            module = clone.get_submodule(module_name)
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
            else:
                for p in own:
                    nn.init.normal_(p, std=0.02)
    return clone


def layer_candidates(model: nn.Module, *, input_shape: tuple[int, int, int], last: int) -> list[str]:
    """The ``last`` block-level target layers (names at most two levels deep), in forward order.

    A container whose output is its last child's tensor is the same layer twice: only the child is kept.
    """
    candidates, _ = _probe(model, input_shape, distinct_outputs=True)
    shallow = [name for name in candidates if name.count(".") <= 1]
    return shallow[-last:] if last > 0 else []


def _probe(
    model: nn.Module, input_shape: tuple[int, ...], *, distinct_outputs: bool = False
) -> tuple[list[str], int]:
    """Candidate target layers (forward-finish order) and the number of model outputs, from a copy.

    With ``distinct_outputs`` a tensor returned again by a later-finishing module (a container passing on
    its last child's output, or an in-place residual add/activation) is listed once, under the outer name.
    """
    clone = copy.deepcopy(model).eval()
    finished: list[str] = []
    slot: dict[int, tuple[int, torch.Tensor]] = {}  # id -> (position, tensor); holding it keeps ids unique

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[-2:]) > 1:
                if distinct_outputs and id(output) in slot:
                    finished[slot[id(output)][0]] = name
                    return
                slot[id(output)] = (len(finished), output)
                finished.append(name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in clone.named_modules()
               if n and any(isinstance(x, _CONV_OR_NORM) for x in m.modules())]
    try:
        with torch.no_grad():
            logits = clone(torch.zeros(1, *input_shape, device=_device_of(clone)))
    finally:
        for h in handles:
            h.remove()
    last = list(dict.fromkeys(reversed(finished)))[::-1]  # each name at its last finish
    return last, int(logits.shape[-1])


def _resolve_layer(candidates: list[str], name: str | None, model: nn.Module) -> str:
    if not candidates:
        raise ValueError(
            f"{type(model).__name__}: no conv/norm module produces a 4-D feature map; Grad-CAM needs a CNN."
        )
    if name is None:
        return candidates[-1]
    if name not in candidates:
        shown = candidates[-_CANDIDATES_SHOWN:]
        raise ValueError(
            f"explain.target_layer: {name!r} is not a module of {type(model).__name__} producing a 4-D "
            f"feature map; valid candidates (last {len(shown)} of {len(candidates)}, in forward order): "
            f"{shown}. Use one of them, or null for automatic."
        )
    return name


def _call_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Module names in the order their forward starts (an eval-mode, no-grad probe; hooks removed)."""
    started: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, n=n: started.append(n))
               for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=_device_of(model)))
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(started))


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a parameter-free module)."""
    return next(model.parameters(), torch.empty(0)).device


def _cam_copy(model: nn.Module) -> nn.Module:
    """A private eval-mode copy: CAM's hooks, eval(), zero_grad() and requires_grad changes land here."""
    return copy.deepcopy(model).eval()


@contextlib.contextmanager
def _hooks_released(cam: BaseCAM) -> Iterator[BaseCAM]:
    """Release the CAM's hooks on exit. pytorch_grad_cam's own ``__exit__`` also does this but swallows
    IndexError (it prints and returns True), which would leave heatmaps silently unfilled."""
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()


def apply_transform(transform: Callable[..., Any], image: np.ndarray, size: int) -> torch.Tensor:
    image = np.ascontiguousarray(image)
    out = transform(image=image)["image"] if isinstance(transform, BaseCompose) else transform(image)
    tensor = torch.as_tensor(out, dtype=torch.float32)
    if tensor.ndim != 3 or tuple(tensor.shape[1:]) != (size, size):
        raise ValueError(
            f"transform: expected a (C, {size}, {size}) tensor for a ({size}, {size}) image, got "
            f"{tuple(tensor.shape)}; heatmaps must stay in the prepared geometry (use eval_transform(meta))."
        )
    return tensor


def _minmax(maps: np.ndarray) -> np.ndarray:
    """Scale each map to [0, 1]; a constant map becomes all zeros."""
    maps = np.asarray(maps, dtype=np.float32)
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)
