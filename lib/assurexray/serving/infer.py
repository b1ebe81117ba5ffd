"""Classify radiograph files with a trained checkpoint: the engine behind ``assurexray infer``.

Scoring is :class:`assurexray.learning.prediction.Predictor`, the engine evaluate uses: preprocessing and class order
from the checkpoint (``meta``), the temperature and the Malignant threshold from the evaluate stage's
``operating_point.json``, which must belong to the same model file (checked by SHA-256), so a file scored here
gets the probabilities evaluation reported. Files are decoded as ``prepare`` decodes them
(:func:`assurexray.data.decoding.read_for_letterbox`: JPEG draft mode, letterbox geometry of the full file), so
an original gets the pixels its cached copy has. Several ``--model`` files form a seed ensemble.
A model with a lesion decoder also reports where it thinks the tumour is (:mod:`assurexray.serving.lesion`).
A bad file is named with its reason and skipped; the run continues. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from assurexray.data.decoding import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, Fitted, find_images, read_for_letterbox
from assurexray.assessment.cam import compute_heatmaps
from assurexray.assessment.familiarity import Familiarity, find_familiarity, pooled_features
from assurexray.assessment.gallery import (
    OVERLAY_DECODE_SIZE,
    render_lesion_overlay,
    render_overlay,
    write_lesion_overlay,
    write_overlay,
)
from assurexray.learning.model import resolve_device
from assurexray.learning.prediction import OperatingPoint, Predictor, load_predictor
from assurexray.core.project import DEFAULT_MODEL  # re-exported: the precedence lives in assurexray.core.project
from assurexray.core.project import Layout
from assurexray.core.provenance import trained_on, training_data_fingerprint
from assurexray.serving.onnx_runtime import check_runtime_model, load_onnx_predictor
from assurexray.serving.lesion import (
    LESION_COLUMNS,
    LesionFinding,
    find_lesion,
    lesion_fields,
    lesion_maps_available,
    overlay_caption,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "DEFAULT_MODEL",
    "AUTO_LAYER",
    "Prediction",
    "InferenceResult",
    "collect_inputs",
    "predict_images",
    "default_gradcam_layer",
    "resolve_gradcam_layer",
    "run_inference",
]

logger = logging.getLogger(__name__)

#: Threads decoding the next batch while the model scores the current one (JPEG/PNG decoders release the GIL).
_DECODE_WORKERS = 2
#: ``--gradcam-layer auto``: the automatic layer (the last conv/norm layer, assurexray.assessment.cam.find_target_layer).
AUTO_LAYER = "auto"


@dataclass(frozen=True)
class Prediction:
    """One input's outcome: probabilities and decision, or the reason it failed (``error``)."""

    path: str
    probs: dict[str, float] | None = None
    pred: str | None = None
    malignant_flag: int | None = None
    error: str | None = None
    lesion: LesionFinding | None = None  # a lesion-decoder model's score and box (original pixels)
    input_distance: float | None = None  # distance to the training images' features (assessment.familiarity)
    input_unfamiliar: bool | None = None  # input_distance above the validation threshold; None: no input check

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class InferenceResult:
    """Predictions (inputs that matched nothing first, then files in input order) and what produced them."""

    predictions: list[Prediction]
    class_names: list[str]
    operating_point: OperatingPoint
    model_sha256: str
    gradcam_paths: dict[str, Path] = field(default_factory=dict)
    #: Where overlays were asked for (``--gradcam``); None = not asked, so no ``gradcam_overlay`` column.
    gradcam_dir: Path | None = None
    #: The checkpoint's training-data record (``meta["data"]``, assurexray.core.provenance); None for older checkpoints.
    training_data: dict[str, Any] | None = None
    #: True when the model (every ensemble member) has a lesion decoder: the lesion columns are written.
    lesion_maps: bool = False
    lesion_paths: dict[str, Path] = field(default_factory=dict)  # the lesion-map overlay written per scored input
    #: Where lesion-map overlays were asked for (``--lesion-map``); None = not asked, no ``lesion_overlay`` column.
    lesion_dir: Path | None = None
    #: Lesion-map overlays (RGB) drawn in memory by :func:`predict_images` (the web app), by input key.
    lesion_overlays: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    #: The input check evaluate fitted for this model (familiarity.npz); None: absent, every input_* column null.
    input_check: Familiarity | None = field(default=None, repr=False, compare=False)

    @property
    def trained_on(self) -> str:
        """``synthetic-sample``, ``btxrd`` or ``unknown``: printed beside every prediction."""
        return trained_on({"data": self.training_data})

    @property
    def failures(self) -> list[Prediction]:
        return [p for p in self.predictions if not p.ok]

    def columns(self) -> list[str]:
        """Output columns: path, prob_<class>..., pred, malignant_flag, malignant_threshold,
        malignant_threshold_reliable (true/false; null when the operating point does not say or there is none),
        malignant_threshold_caveat (an unreliable threshold's warning, ``OperatingPoint.caveat``; else null),
        model_sha256, trained_on (``synthetic-sample`` | ``btxrd`` | ``unknown``), training_data_fingerprint (sha256
        of the prepared index.csv the model was trained on), input_distance and input_unfamiliar (true/false: how
        unlike the training images the input is, :mod:`assurexray.assessment.familiarity`; null without the
        model's familiarity.npz), gradcam_overlay (only with ``--gradcam``: the overlay PNG
        written, empty for a failed input), for a model with a lesion decoder lesion_score (the map's maximum),
        lesion_threshold and lesion_box_x0, _y0, _x1, _y1 (original pixels, x1/y1 exclusive, empty when no pixel
        reaches the threshold), lesion_overlay (only with ``--lesion-map``), error."""
        probs = [f"prob_{name}" for name in self.class_names]
        overlay = ["gradcam_overlay"] if self.gradcam_dir is not None else []
        lesion = list(LESION_COLUMNS) if self.lesion_maps else []
        lesion += ["lesion_overlay"] if self.lesion_dir is not None else []
        return ["path", *probs, "pred", "malignant_flag", "malignant_threshold", "malignant_threshold_reliable",
                "malignant_threshold_caveat", "model_sha256", "trained_on", "training_data_fingerprint",
                "input_distance", "input_unfamiliar", *overlay, *lesion, "error"]

    def records(self, *, box_columns: bool = False) -> list[dict[str, Any]]:
        """One flat dict per input; missing values are None. The lesion box is ``lesion_box`` ([x0, y0, x1, y1]
        or None), or with ``box_columns`` (CSV) four columns, as :meth:`columns` lists them."""
        op = self.operating_point
        threshold = op.malignant_threshold
        reliable = None if threshold is None else op.reliable  # no threshold: nothing to be reliable about
        rows = []
        for p in self.predictions:
            row: dict[str, Any] = {"path": p.path}
            for name in self.class_names:
                row[f"prob_{name}"] = None if p.probs is None else p.probs[name]
            row.update(
                pred=p.pred,
                malignant_flag=p.malignant_flag,
                malignant_threshold=threshold,
                malignant_threshold_reliable=reliable,
                malignant_threshold_caveat=op.caveat if threshold is not None else None,
                model_sha256=self.model_sha256,
                trained_on=self.trained_on,
                training_data_fingerprint=training_data_fingerprint({"data": self.training_data}),
                input_distance=p.input_distance,
                input_unfamiliar=p.input_unfamiliar,
            )
            if self.gradcam_dir is not None:
                overlay = self.gradcam_paths.get(p.path)
                row["gradcam_overlay"] = None if overlay is None else str(overlay)
            if self.lesion_maps:
                row.update(lesion_fields(p.lesion, box_columns=box_columns))
            if self.lesion_dir is not None:
                written = self.lesion_paths.get(p.path)
                row["lesion_overlay"] = None if written is None else str(written)
            row["error"] = p.error
            rows.append(row)
        return rows


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Prediction]]:
    """Image files of ``inputs`` (files, folders, globs; :func:`assurexray.data.decoding.find_images`) in a stable
    order, and a failed :class:`Prediction` for each input that is missing, unsupported or matches nothing."""
    files, problems = find_images(inputs)
    return files, [Prediction(path, error=error) for path, error in problems]


def predict_images(
    images: Mapping[str, np.ndarray | Fitted | Callable[[int], Fitted]],
    *,
    model_path: str | os.PathLike | Sequence[str | os.PathLike] = DEFAULT_MODEL,
    operating_point_path: str | os.PathLike | None = None,
    device: str = "cpu",
    gradcam: bool = False,
    gradcam_layer: str | None = None,
    shown: Mapping[str, np.ndarray] | None = None,
    lesion_map: bool = False,
) -> tuple[InferenceResult, dict[str, np.ndarray]]:
    """Score images held in memory (the web demo); optionally their Grad-CAM overlays (RGB arrays).

    Same predictor, operating point and Grad-CAM layer (:func:`resolve_gradcam_layer`) as :func:`run_inference`.
    Each image is a decoded uint8 (H, W) array, a :class:`assurexray.data.decoding.Fitted` (a reduced decode and its
    file's size, letterboxed in the full-size geometry), or a decoder called with the model's input size that
    returns one (so an upload is decoded as ``infer`` and ``prepare`` decode a file). Overlays are drawn on
    ``shown[key]`` (the full image) when given, else on the scored pixels. A model with a lesion decoder adds each
    image's :class:`~assurexray.serving.lesion.LesionFinding`, and with ``lesion_map`` its overlay
    (``result.lesion_overlays``).
    """
    if not images:
        raise ValueError("predict_images: no image given.")
    predictor = load_predictor(_model_paths(model_path), operating_point=operating_point_path,
                               device=resolve_device(device, setting="--device"))
    decoded = {key: image(predictor.input_size) if callable(image) else image for key, image in images.items()}
    layer = resolve_gradcam_layer(predictor, gradcam_layer) if gradcam else None
    lesion = lesion_maps_available(predictor)
    input_check = find_familiarity(predictor)
    scored, heatmaps, lesion_maps = _score(decoded, predictor=predictor, gradcam=gradcam, gradcam_layer=layer,
                                           lesion=lesion, input_check=input_check)
    overlays, lesion_overlays = {}, {}
    for key in decoded:
        gray, original_size = (shown[key], None) if shown and key in shown else _gray_and_size(decoded[key])
        if key in heatmaps:
            caption = f"Grad-CAM: {scored[key].pred} (p={max(scored[key].probs.values()):.2f})"
            overlays[key] = render_overlay(gray, heatmaps[key], original_size=original_size, caption=caption)
        if lesion_map and key in lesion_maps:
            finding = scored[key].lesion
            lesion_overlays[key] = render_lesion_overlay(gray, lesion_maps[key], caption=overlay_caption(finding),
                                                         box=finding.box, original_size=original_size)
    result = InferenceResult(predictions=[scored[k] for k in images], class_names=predictor.class_names,
                             operating_point=predictor.operating_point, model_sha256=predictor.model_sha256,
                             gradcam_paths={}, training_data=predictor.meta.get("data"), lesion_maps=lesion,
                             lesion_overlays=lesion_overlays, input_check=input_check)
    return result, overlays


def default_gradcam_layer(model_path: str | os.PathLike) -> str | None:
    """The Grad-CAM layer the explain stage chose (on validation) for the model at ``model_path``, if it has run.

    Read from the explain metrics of the model's variant in the project layout
    (``<root>/metrics/<variant>/explain/metrics.json`` for ``<root>/models/<variant>/model.pt``, as dvc.yaml
    writes them); None when that file is absent.
    """
    layout, variant = Layout.of_model(model_path)
    path = layout.explain_metrics(variant)
    if not path.is_file():
        return None
    try:
        layer = json.loads(path.read_text(encoding="utf-8")).get("target_layer")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise ValueError(f"{path}: not a valid explain metrics file ({err}); re-run the explain stage.") from err
    return layer if isinstance(layer, str) else None


def resolve_gradcam_layer(predictor: Predictor, layer: str | None = None) -> str | None:
    """The Grad-CAM layer to use, said in the log; None = the automatic layer.

    ``layer`` (``--gradcam-layer``): a module name of the model, or ``auto``. None: the layer the explain stage
    recorded for this model (:func:`default_gradcam_layer`), else the automatic layer with a warning. A named or
    recorded layer the model lacks is an error, never a silent switch to another layer. An ensemble has no
    single layer to explain: ``ValueError``.
    """
    if predictor.is_ensemble:
        raise ValueError(
            f"--gradcam: an ensemble of {len(predictor.models)} models has no single Grad-CAM layer; explain one "
            "model at a time (a single --model)."
        )
    model_path = predictor.model_paths[0]
    if layer == AUTO_LAYER:
        logger.info("Grad-CAM layer: automatic (--gradcam-layer %s)", AUTO_LAYER)
        return None
    source = "--gradcam-layer"
    if layer is None:
        layer = default_gradcam_layer(model_path)
        layout, variant = Layout.of_model(model_path)
        source = str(layout.explain_metrics(variant))
        if layer is None:
            logger.warning("Grad-CAM layer: automatic (the last conv/norm layer); no explain-stage choice at %s. "
                           "Pass --gradcam-layer NAME to choose one.", source)
            return None
    names = {name for name, _ in predictor.models[0].named_modules() if name}
    if layer not in names:
        raise ValueError(
            f"Grad-CAM layer {layer!r} (from {source}) is not a module of {model_path} "
            f"({predictor.meta.get('backbone')!r}); pass --gradcam-layer NAME (a module of this model) or "
            f"--gradcam-layer {AUTO_LAYER}."
        )
    logger.info("Grad-CAM layer %r (from %s)", layer, source)
    return layer


def run_inference(
    inputs: Sequence[str | os.PathLike],
    *,
    model_path: str | os.PathLike | Sequence[str | os.PathLike] = DEFAULT_MODEL,
    operating_point_path: str | os.PathLike | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    gradcam_dir: str | os.PathLike | None = None,
    gradcam_layer: str | None = None,
    lesion_dir: str | os.PathLike | None = None,
    runtime: str = "torch",
) -> InferenceResult:
    """Score every image of ``inputs`` (files, folders, globs); failures are kept as rows with ``error``.

    ``model_path``: one checkpoint or several (a seed ensemble, :func:`assurexray.learning.prediction.load_predictor`).
    ``operating_point_path`` None looks in the model's project layout
    (:func:`assurexray.learning.prediction.default_operating_point_path`) and, if absent there, warns and leaves the
    Malignant decision null. ``gradcam_layer``: see :func:`resolve_gradcam_layer`. A model with a lesion decoder
    (every member of an ensemble) adds its lesion score and box to each row; ``lesion_dir`` (``--lesion-map``)
    writes ``<stem>_lesion.png`` overlays there, and is a ``ValueError`` for a model without one. Raises
    ``ValueError`` when no input matched. ``runtime`` ``onnx``: one ``assurexray export`` model on ONNX Runtime
    (:mod:`assurexray.serving.onnx_runtime`), the same engine and operating point; no Grad-CAM (no gradients).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels!r}.")
    files, problems = collect_inputs(inputs)
    if not files:
        listed = "; ".join(p.error or p.path for p in problems) or "no inputs given"
        raise ValueError(f"no image matched the inputs {[os.fspath(i) for i in inputs]!r} ({listed}).")
    if runtime == "onnx" and gradcam_dir is not None:
        raise ValueError("--gradcam needs --runtime torch: Grad-CAM takes gradients through the PyTorch model, "
                         "which an ONNX Runtime session does not give; drop --gradcam or use the checkpoint.")
    predictor = _load_for_runtime(_model_paths(model_path), runtime=runtime, operating_point=operating_point_path,
                                  device=device)
    gradcam_names = _overlay_names(files, "gradcam") if gradcam_dir is not None else {}
    layer = resolve_gradcam_layer(predictor, gradcam_layer) if gradcam_dir is not None else None
    if lesion_dir is not None and not predictor.has_lesion_maps:
        without = [str(p) for p, has in zip(predictor.model_paths, predictor.lesion_members) if not has]
        raise ValueError(
            f"--lesion-map: {', '.join(without)} {'has' if len(without) == 1 else 'have'} no lesion decoder "
            "(trained without model.lesion_head: true), so there is no lesion map to draw; drop --lesion-map or "
            "pass models trained with model.lesion_head: true."
        )
    lesion = lesion_maps_available(predictor)
    lesion_names = _overlay_names(files, "lesion") if lesion_dir is not None else {}
    input_check = find_familiarity(predictor)
    predictions: list[Prediction] = []
    progress = tqdm(total=len(files), unit="img", desc="infer", disable=len(files) < 2, file=sys.stderr)
    pool = ThreadPoolExecutor(max_workers=_DECODE_WORKERS, thread_name_prefix="decode")
    try:
        with progress:
            for chunk, decoded in _decoded_chunks(files, size=predictor.input_size, batch_size=batch_size,
                                                  max_pixels=max_pixels, pool=pool):
                predictions.extend(
                    _predict_chunk(
                        chunk, decoded, predictor=predictor,
                        gradcam_dir=None if gradcam_dir is None else Path(gradcam_dir), gradcam_names=gradcam_names,
                        gradcam_layer=layer, max_pixels=max_pixels, lesion=lesion, input_check=input_check,
                        lesion_dir=None if lesion_dir is None else Path(lesion_dir), lesion_names=lesion_names,
                    )
                )
                progress.update(len(chunk))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: queued decodes are dropped, not run
    written = {str(f): Path(gradcam_dir) / gradcam_names[f] for f in files if gradcam_dir is not None}
    lesion_written = {str(f): Path(lesion_dir) / lesion_names[f] for f in files if lesion_dir is not None}
    ok_paths = {p.path for p in predictions if p.ok}
    return InferenceResult(
        predictions=problems + predictions,
        class_names=predictor.class_names,
        operating_point=predictor.operating_point,
        model_sha256=predictor.model_sha256,
        gradcam_paths={k: v for k, v in written.items() if k in ok_paths},
        gradcam_dir=None if gradcam_dir is None else Path(gradcam_dir),
        training_data=predictor.meta.get("data"),
        lesion_maps=lesion,
        lesion_paths={k: v for k, v in lesion_written.items() if k in ok_paths},
        lesion_dir=None if lesion_dir is None else Path(lesion_dir),
        input_check=input_check,
    )


# --- helpers ----------------------------------------------------------------------------------------------


def _decoded_chunks(
    files: list[Path], *, size: int, batch_size: int, max_pixels: int | None, pool: ThreadPoolExecutor
) -> Iterator[tuple[list[Path], list[Fitted | Prediction]]]:
    """Batches of files with their decoded images (or error rows), decoding one batch ahead in ``pool``.

    While the model scores batch k the pool decodes batch k+1, so decoding overlaps the forward pass;
    at most two batches of decoded originals are held in memory.
    """
    pending: deque[tuple[list[Path], list[Future]]] = deque()
    for chunk in _chunks(files, batch_size):
        pending.append((chunk, [pool.submit(_decode_one, path, size, max_pixels) for path in chunk]))
        if len(pending) > 1:
            done, futures = pending.popleft()
            yield done, [f.result() for f in futures]
    while pending:
        done, futures = pending.popleft()
        yield done, [f.result() for f in futures]


def _decode_one(path: Path, size: int, max_pixels: int | None) -> Fitted | Prediction:
    """The image decoded for a ``size`` letterbox as ``prepare`` decodes it (JPEG draft mode), or an error row
    naming the file (the run goes on with the others)."""
    try:
        return read_for_letterbox(path, size, max_pixels=max_pixels)
    except (FileNotFoundError, ValueError) as err:
        message = str(err) if str(path) in str(err) else f"{path}: {err}"
        logger.debug("skipping %s: %s", path, message)
        return Prediction(str(path), error=message)


def _predict_chunk(
    files: list[Path],
    decoded: list[Fitted | Prediction],
    *,
    predictor: Predictor,
    gradcam_dir: Path | None,
    gradcam_names: dict[Path, str],
    gradcam_layer: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    lesion: bool = False,
    lesion_dir: Path | None = None,
    lesion_names: dict[Path, str] | None = None,
    input_check: Familiarity | None = None,
) -> list[Prediction]:
    """Score one decoded batch and write its overlays; files that failed to decode keep their error row."""
    outcome: dict[Path, Prediction] = {}
    grays: dict[Path, Fitted] = {}
    for path, item in zip(files, decoded):
        if isinstance(item, Prediction):
            outcome[path] = item
        else:
            grays[path] = item
    if grays:
        scored, heatmaps, lesion_maps = _score(grays, predictor=predictor, gradcam=gradcam_dir is not None,
                                               gradcam_layer=gradcam_layer, lesion=lesion, input_check=input_check)
        outcome.update(scored)
        overlays = gradcam_dir is not None or lesion_dir is not None
        for path in grays if overlays else ():
            p = outcome[path]
            # The scoring decode can be as small as the model input; the overlay canvas shows up to 1024 px.
            shown = read_for_letterbox(path, OVERLAY_DECODE_SIZE, max_pixels=max_pixels)
            if path in heatmaps:
                caption = f"Grad-CAM: {p.pred} (p={max(p.probs.values()):.2f})"
                write_overlay(gradcam_dir / gradcam_names[path], shown.gray, heatmaps[path], caption=caption,
                              original_size=shown.original_size)
            if lesion_dir is not None:
                write_lesion_overlay(lesion_dir / lesion_names[path], shown.gray, lesion_maps[path],
                                     caption=overlay_caption(p.lesion), box=p.lesion.box,
                                     original_size=shown.original_size)
    return [outcome[p] for p in files]


def _score(
    grays: dict[Any, np.ndarray | Fitted], *, predictor: Predictor, gradcam: bool, gradcam_layer: str | None,
    lesion: bool = False, input_check: Familiarity | None = None,
) -> tuple[dict[Any, Prediction], dict[Any, np.ndarray], dict[Any, np.ndarray]]:
    """Predictions, with ``gradcam`` (S, S) heatmaps of the predicted class, and with ``lesion`` (S, S) lesion
    maps (each prediction then holds its score and box in original pixels), for decoded images; with
    ``input_check`` each prediction says how unlike the training images its input is."""
    keys = list(grays)
    boxed, scores = predictor.predict_grays([grays[k] for k in keys])  # (B, S, S) letterboxed once
    lesion_maps = dict(zip(keys, predictor.lesion_maps(boxed))) if lesion else {}  # (S, S) each, in [0, 1]
    names = predictor.class_names
    flags = scores.malignant_flag
    # A second pass for the stage features (the predictor's pass returns logits only); None: no input check.
    distances = None if input_check is None else input_check.distances(pooled_features(predictor, boxed))
    outcome: dict[Any, Prediction] = {}
    for i, (key, row) in enumerate(zip(keys, scores.probs)):
        finding = find_lesion(lesion_maps[key], _original_size(grays[key])) if lesion else None
        outcome[key] = Prediction(str(key), probs={name: float(v) for name, v in zip(names, row)},
                                  pred=names[int(scores.pred_idx[i])],
                                  malignant_flag=None if flags is None else int(flags[i]), lesion=finding,
                                  input_distance=None if distances is None else float(distances[i]),
                                  input_unfamiliar=None if distances is None else bool(
                                      input_check.unfamiliar(distances[i])))
    if not gradcam:
        return outcome, {}, lesion_maps
    model = predictor.models[0]  # resolve_gradcam_layer refused ensembles
    # cam.compute_heatmaps builds its inputs on the CPU, so it gets a CPU copy of a GPU model.
    cam_model = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    heatmaps = compute_heatmaps(
        cam_model, boxed, [int(t) for t in scores.pred_idx], transform=predictor.transform, method="gradcam",
        batch_size=len(keys), target_layer=gradcam_layer, progress=False,
    )  # (B, S, S) in [0, 1]; explain the predicted class
    return outcome, dict(zip(keys, heatmaps)), lesion_maps


def _gray_and_size(image: np.ndarray | Fitted) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The pixels to draw on and, for a reduced decode, the file's full size."""
    return (image.gray, image.original_size) if isinstance(image, Fitted) else (image, None)


def _original_size(image: np.ndarray | Fitted) -> tuple[int, int]:
    """(width, height) of the file an image was decoded from: the box is reported in its pixels."""
    return image.original_size if isinstance(image, Fitted) else (image.shape[1], image.shape[0])


def _overlay_names(files: Sequence[Path], kind: str) -> dict[Path, str]:
    """``<stem>_<kind>.png`` per file, numbered when stems repeat, so no overlay overwrites another."""
    names: dict[Path, str] = {}
    seen: dict[str, int] = {}
    for path in files:
        stem = path.stem
        seen[stem] = seen.get(stem, 0) + 1
        names[path] = f"{stem}_{kind}.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}_{kind}.png"
    return names


def _load_for_runtime(paths: list[Path], *, runtime: str, operating_point: str | os.PathLike | None,
                      device: str) -> Predictor:
    """The predictor of ``paths`` on ``runtime`` (``torch`` or ``onnx``), refusing a model the runtime cannot read."""
    for path in paths:
        check_runtime_model(path, runtime)
    if runtime == "torch":
        return load_predictor(paths, operating_point=operating_point, device=resolve_device(device, setting="--device"))
    if len(paths) > 1:
        raise ValueError(f"--runtime onnx scores one exported model, got {len(paths)} --model files; score an "
                         "ensemble with --runtime torch and its checkpoints.")
    if str(device).strip().lower() not in ("cpu", "auto"):  # auto: the CPU, the one provider used
        raise ValueError(f"--device {device!r}: --runtime onnx runs on ONNX Runtime's CPU provider; drop --device "
                         "or use --runtime torch.")
    return load_onnx_predictor(paths[0], operating_point=operating_point)


def _model_paths(model_path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """One ``--model`` or several (an ensemble) as a list of paths."""
    if isinstance(model_path, (str, os.PathLike)):
        return [Path(model_path)]
    return [Path(p) for p in model_path]


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
