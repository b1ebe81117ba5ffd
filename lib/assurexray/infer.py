"""Classify radiograph files with a trained checkpoint: the engine behind ``assurexray infer``.

Scoring is :class:`assurexray.prediction.Predictor`, the engine evaluate uses: preprocessing and class order
from the checkpoint (``meta``), the temperature and the Malignant threshold from the evaluate stage's
``operating_point.json``, which must belong to the same model file (checked by SHA-256), so a file scored here
gets the probabilities evaluation reported. Several ``--model`` files form a seed ensemble. (One known
difference: ``prepare`` decodes JPEGs over twice the cache size in draft mode, which differs from the full
decode used here by under one grey level on average; see tests/test_imaging.py.)
A bad file is named with its reason and skipped; the run continues. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import copy
import csv
import glob
import io
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image
from tqdm import tqdm

from assurexray import DISCLAIMER
from assurexray.atomic import atomic_path, write_text
from assurexray.dicom import is_dicom, read_dicom_bytes, read_dicom_gray
from assurexray.explain import compute_heatmaps
from assurexray.imaging import (
    UNSUPPORTED_IMAGE_SUFFIXES,
    decode_gray,
    decode_gray_bytes,
    image_size,
    letterbox_geometry,
)
from assurexray.model import resolve_device
from assurexray.prediction import OperatingPoint, Predictor, load_predictor
from assurexray.project import DEFAULT_MODEL  # re-exported: the precedence lives in assurexray.project
from assurexray.project import DICOM_SUFFIXES, INFER_SUFFIXES, Layout
from assurexray.provenance import trained_on, training_data_fingerprint, training_data_sentence

__all__ = [
    "IMAGE_SUFFIXES",
    "DEFAULT_MODEL",
    "DEFAULT_MAX_PIXELS",
    "MIN_SIDE_PX",
    "MAX_ASPECT",
    "AUTO_LAYER",
    "Prediction",
    "InferenceResult",
    "collect_inputs",
    "read_gray_bytes",
    "predict_images",
    "render_overlay",
    "render_original",
    "read_gray",
    "default_gradcam_layer",
    "resolve_gradcam_layer",
    "run_inference",
    "write_predictions",
    "format_table",
    "describe_result",
    "infer_command",
]

logger = logging.getLogger(__name__)

#: Suffixes picked up when walking a folder (DICOM files without a suffix are found by content).
IMAGE_SUFFIXES: tuple[str, ...] = INFER_SUFFIXES
#: Refuse images above this many pixels (100 MP): a decompression bomb or a scan no radiograph needs.
#: It replaces PIL's own limit (89 MP), so ``--max-pixels`` can raise it.
DEFAULT_MAX_PIXELS = 100_000_000
#: Refuse images whose short side is below this, px: a 1x1 or 10x4000 file is not a radiograph, and
#: letterboxing would blow a few pixels up into an input the model was never shown.
MIN_SIDE_PX = 16
#: Refuse images whose long side exceeds this multiple of the short side (full-leg films are about 3.6).
MAX_ASPECT = 10.0
#: Threads decoding the next batch while the model scores the current one (JPEG/PNG decoders release the GIL).
_DECODE_WORKERS = 2
#: ``--gradcam-layer auto``: the automatic layer (the last conv/norm layer, assurexray.explain.find_target_layer).
AUTO_LAYER = "auto"
_OVERLAY_MAX_SIDE = 1024  # long side of Grad-CAM overlays at most, px (originals can be 4000+ px)
_OVERLAY_MIN_SIDE = 256  # ... and at least, px, so the banner text stays readable on small inputs
_BANNER = "NOT FOR CLINICAL USE"  # printed on every overlay
_CMAP = "jet"  # Grad-CAM colour map of the overlays and their colour bar
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Prediction:
    """One input's outcome: probabilities and decision, or the reason it failed (``error``)."""

    path: str
    probs: dict[str, float] | None = None
    pred: str | None = None
    malignant_flag: int | None = None
    error: str | None = None

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
    #: The checkpoint's training-data record (``meta["data"]``, assurexray.provenance); None for older checkpoints.
    training_data: dict[str, Any] | None = None

    @property
    def trained_on(self) -> str:
        """``synthetic-sample``, ``btxrd`` or ``unknown``: printed beside every prediction."""
        return trained_on({"data": self.training_data})

    @property
    def failures(self) -> list[Prediction]:
        return [p for p in self.predictions if not p.ok]

    def columns(self) -> list[str]:
        """Output columns: path, prob_<class>..., pred, malignant_flag, malignant_threshold, model_sha256,
        trained_on (``synthetic-sample`` | ``btxrd`` | ``unknown``), training_data_fingerprint (sha256 of the
        prepared index.csv the model was trained on), gradcam_overlay (only with ``--gradcam``: the overlay PNG
        written, empty for a failed input), error."""
        probs = [f"prob_{name}" for name in self.class_names]
        overlay = ["gradcam_overlay"] if self.gradcam_dir is not None else []
        return ["path", *probs, "pred", "malignant_flag", "malignant_threshold", "model_sha256", "trained_on",
                "training_data_fingerprint", *overlay, "error"]

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per input; missing values are None."""
        threshold = self.operating_point.malignant_threshold
        rows = []
        for p in self.predictions:
            row: dict[str, Any] = {"path": p.path}
            for name in self.class_names:
                row[f"prob_{name}"] = None if p.probs is None else p.probs[name]
            row.update(
                pred=p.pred,
                malignant_flag=p.malignant_flag,
                malignant_threshold=threshold,
                model_sha256=self.model_sha256,
                trained_on=self.trained_on,
                training_data_fingerprint=training_data_fingerprint({"data": self.training_data}),
            )
            if self.gradcam_dir is not None:
                overlay = self.gradcam_paths.get(p.path)
                row["gradcam_overlay"] = None if overlay is None else str(overlay)
            row["error"] = p.error
            rows.append(row)
        return rows


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Prediction]]:
    """Expand files, folders (recursive) and globs into image files, in a stable order.

    Returns (files, problems): an input that is missing, or a glob/folder that yields no image, becomes a
    failed :class:`Prediction` naming it, so nothing asked for is silently dropped. Files given explicitly
    are kept whatever their suffix (reading them reports a wrong type); folder walks keep image suffixes
    and DICOM files recognised by content.
    """
    files: list[Path] = []
    problems: list[Prediction] = []
    for raw in inputs:
        text = os.fspath(raw)
        path = Path(text)
        if path.is_dir():
            found, unsupported = _walk_images(path)
            problems.extend(unsupported)
            if not found and not unsupported:
                problems.append(Prediction(text, error=f"{text}: folder holds no image files ({_suffix_hint()})."))
        elif path.exists():
            found = [path]
        elif _GLOB_CHARS & set(text):
            found = []
            for match in sorted(glob.glob(text, recursive=True)):
                if Path(match).is_dir():
                    walked, unsupported = _walk_images(Path(match))
                    found.extend(walked)
                    problems.extend(unsupported)
                else:
                    found.append(Path(match))
            if not found:
                problems.append(Prediction(text, error=f"{text}: no file matches this pattern."))
        else:
            found = []
            problems.append(Prediction(text, error=f"{text}: file not found."))
        files.extend(found)
    unique = list(dict.fromkeys(files))  # a file named twice (say, alone and via its folder) is scored once
    return unique, problems


def read_gray(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG/TIFF/BMP/WebP/GIF (via imaging.decode_gray) or DICOM to uint8 (H, W).

    Refused with a ``ValueError`` naming the file: more than ``max_pixels`` (from the header, before
    decoding), multi-frame files, and degenerate shapes (short side < :data:`MIN_SIDE_PX`, aspect ratio
    > :data:`MAX_ASPECT`). A missing file raises ``FileNotFoundError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found.")
    if is_dicom(path):
        gray = read_dicom_gray(path, max_pixels=max_pixels)
    else:
        _check_shape(*image_size(path, max_pixels=max_pixels), label=str(path))  # header only
        gray = decode_gray(path, max_pixels=max_pixels)
    _check_shape(gray.shape[1], gray.shape[0], label=str(path))
    return gray


def read_gray_bytes(data: bytes, *, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an in-memory file (an upload) exactly as :func:`read_gray` decodes one on disk; nothing is written.

    DICOM is recognised by the ``name``'s suffix or the "DICM" marker. Errors name ``name``.
    """
    if Path(name).suffix.lower() in DICOM_SUFFIXES or data[128:132] == b"DICM":
        gray = read_dicom_bytes(data, name=name, max_pixels=max_pixels)
    else:
        _check_shape(*image_size(io.BytesIO(data), label=name, max_pixels=max_pixels), label=name)
        gray = decode_gray_bytes(data, name=name, max_pixels=max_pixels)
    _check_shape(gray.shape[1], gray.shape[0], label=name)
    return gray


def predict_images(
    images: dict[str, np.ndarray],
    *,
    model_path: str | os.PathLike | Sequence[str | os.PathLike] = DEFAULT_MODEL,
    operating_point_path: str | os.PathLike | None = None,
    device: str = "cpu",
    gradcam: bool = False,
    gradcam_layer: str | None = None,
) -> tuple[InferenceResult, dict[str, np.ndarray]]:
    """Score decoded uint8 (H, W) images held in memory (the web demo); optionally their overlays (RGB arrays).

    Same predictor, operating point and Grad-CAM layer (:func:`resolve_gradcam_layer`) as :func:`run_inference`.
    """
    if not images:
        raise ValueError("predict_images: no image given.")
    predictor = load_predictor(_model_paths(model_path), operating_point=operating_point_path,
                               device=resolve_device(device, setting="--device"))
    layer = resolve_gradcam_layer(predictor, gradcam_layer) if gradcam else None
    scored, heatmaps = _score(dict(images), predictor=predictor, gradcam=gradcam, gradcam_layer=layer)
    overlays = {key: render_overlay(images[key], heat,
                                    caption=f"Grad-CAM: {scored[key].pred} (p={max(scored[key].probs.values()):.2f})")
                for key, heat in heatmaps.items()}
    result = InferenceResult(predictions=[scored[k] for k in images], class_names=predictor.class_names,
                             operating_point=predictor.operating_point, model_sha256=predictor.model_sha256,
                             gradcam_paths={}, training_data=predictor.meta.get("data"))
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
) -> InferenceResult:
    """Score every image of ``inputs`` (files, folders, globs); failures are kept as rows with ``error``.

    ``model_path``: one checkpoint or several (a seed ensemble, :func:`assurexray.prediction.load_predictor`).
    ``operating_point_path`` None looks in the model's project layout
    (:func:`assurexray.prediction.default_operating_point_path`) and, if absent there, warns and leaves the
    Malignant decision null. ``gradcam_layer``: see :func:`resolve_gradcam_layer`. Raises ``ValueError`` when
    no input matched.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels!r}.")
    files, problems = collect_inputs(inputs)
    if not files:
        listed = "; ".join(p.error or p.path for p in problems) or "no inputs given"
        raise ValueError(f"no image matched the inputs {[os.fspath(i) for i in inputs]!r} ({listed}).")
    predictor = load_predictor(_model_paths(model_path), operating_point=operating_point_path,
                               device=resolve_device(device, setting="--device"))
    gradcam_names = _overlay_names(files) if gradcam_dir is not None else {}
    layer = resolve_gradcam_layer(predictor, gradcam_layer) if gradcam_dir is not None else None
    predictions: list[Prediction] = []
    progress = tqdm(total=len(files), unit="img", desc="infer", disable=len(files) < 2, file=sys.stderr)
    pool = ThreadPoolExecutor(max_workers=_DECODE_WORKERS, thread_name_prefix="decode")
    try:
        with progress:
            for chunk, decoded in _decoded_chunks(files, batch_size=batch_size, max_pixels=max_pixels, pool=pool):
                predictions.extend(
                    _predict_chunk(
                        chunk, decoded, predictor=predictor,
                        gradcam_dir=None if gradcam_dir is None else Path(gradcam_dir), gradcam_names=gradcam_names,
                        gradcam_layer=layer,
                    )
                )
                progress.update(len(chunk))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: queued decodes are dropped, not run
    written = {str(f): Path(gradcam_dir) / gradcam_names[f] for f in files if gradcam_dir is not None}
    ok_paths = {p.path for p in predictions if p.ok}
    return InferenceResult(
        predictions=problems + predictions,
        class_names=predictor.class_names,
        operating_point=predictor.operating_point,
        model_sha256=predictor.model_sha256,
        gradcam_paths={k: v for k, v in written.items() if k in ok_paths},
        gradcam_dir=None if gradcam_dir is None else Path(gradcam_dir),
        training_data=predictor.meta.get("data"),
    )


def write_predictions(result: InferenceResult, path: str | os.PathLike) -> Path:
    """Write ``result`` as JSON Lines (``.jsonl``) or CSV (``.csv``), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    records = result.records()
    if suffix == ".jsonl":
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
    elif suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=result.columns(), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in records)
        text = buffer.getvalue()
    else:
        raise ValueError(f"--output {str(path)!r}: unsupported suffix {path.suffix!r}; use .jsonl or .csv.")
    return write_text(path, text)


def format_table(result: InferenceResult) -> str:
    """Fixed-width terminal table of the successful predictions (failures are summarised separately).

    ``top_class`` is the argmax; ``malignant_flag`` the operating-point decision (:func:`describe_result` says how
    the two relate); ``trained_on`` the model's training data, on every row so no excerpt loses it.
    """
    header = ["path", "top_class", *[f"p_{name}" for name in result.class_names], "malignant_flag", "trained_on"]
    rows = []
    for p in result.predictions:
        if not p.ok:
            continue
        flag = "n/a" if p.malignant_flag is None else ("YES" if p.malignant_flag else "no")
        rows.append([p.path, str(p.pred), *[f"{p.probs[n]:.3f}" for n in result.class_names], flag,
                     result.trained_on])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def describe_result(result: InferenceResult) -> str:
    """Lines printed above the table: the training data, and what the Malignant flag and top_class mean."""
    from assurexray.decision import threshold_sentence, validation_rates  # pandas + report, only for the CLI

    lines = [training_data_sentence({"data": result.training_data})]
    if result.training_data and result.training_data.get("synthetic"):
        lines.append("This model was trained on SYNTHETIC images: its outputs say nothing about real radiographs.")
    op = result.operating_point
    if op.malignant_threshold is None:
        lines.append("Malignant flag: n/a (no operating point for this model; probabilities uncalibrated, T = 1).")
    else:
        rates = validation_rates(op.source.parent / "predictions.csv") if op.source is not None else None
        split = (result.training_data or {}).get("split")
        lines.append(threshold_sentence(threshold=op.malignant_threshold, target_sensitivity=op.target_sensitivity,
                                        split=split, rates=rates))
    lines.append("top_class is the most probable class (argmax); malignant_flag is the separate, deliberately "
                 "sensitive operating-point decision, so it can be YES while another class is on top.")
    return "\n".join(lines)


def infer_command(
    inputs: Sequence[str],
    *,
    model_path: str | os.PathLike | Sequence[str | os.PathLike] = DEFAULT_MODEL,
    operating_point_path: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    gradcam_dir: str | os.PathLike | None = None,
    gradcam_layer: str | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run inference, print the table and a failure summary, write ``output``; return the exit code.

    0 = every input scored, 1 = some inputs failed (named on stderr; the others are still written).
    Usage problems (no input matched, bad model or operating point) raise ``ValueError``/``FileNotFoundError``.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if output is not None and Path(output).suffix.lower() not in (".jsonl", ".csv"):
        raise ValueError(f"--output {os.fspath(output)!r}: unsupported suffix; use a .jsonl or .csv file name.")
    result = run_inference(
        inputs, model_path=model_path, operating_point_path=operating_point_path, batch_size=batch_size,
        device=device, max_pixels=max_pixels, gradcam_dir=gradcam_dir, gradcam_layer=gradcam_layer,
    )
    print(DISCLAIMER, file=stdout)
    print(describe_result(result), file=stdout)
    print(format_table(result), file=stdout)
    if output is not None:
        write_predictions(result, output)
        print(f"wrote {len(result.predictions)} row(s) to {output}", file=stdout)
    if gradcam_dir is not None:
        print(f"wrote {len(result.gradcam_paths)} Grad-CAM overlays to {gradcam_dir}", file=stdout)
    failures = result.failures
    n_ok = len(result.predictions) - len(failures)
    if failures:
        print(f"{len(failures)} of {len(result.predictions)} inputs failed (skipped):", file=stderr)
        for p in failures:
            print(f"  {p.error}", file=stderr)
    print(f"{n_ok} image(s) classified, {len(failures)} failed.", file=stderr)
    return 1 if failures else 0


# --- helpers ----------------------------------------------------------------------------------------------


def _decoded_chunks(
    files: list[Path], *, batch_size: int, max_pixels: int | None, pool: ThreadPoolExecutor
) -> Iterator[tuple[list[Path], list[np.ndarray | Prediction]]]:
    """Batches of files with their decoded images (or error rows), decoding one batch ahead in ``pool``.

    While the model scores batch k the pool decodes batch k+1, so decoding overlaps the forward pass;
    at most two batches of decoded originals are held in memory.
    """
    pending: deque[tuple[list[Path], list[Future]]] = deque()
    for chunk in _chunks(files, batch_size):
        pending.append((chunk, [pool.submit(_decode_one, path, max_pixels) for path in chunk]))
        if len(pending) > 1:
            done, futures = pending.popleft()
            yield done, [f.result() for f in futures]
    while pending:
        done, futures = pending.popleft()
        yield done, [f.result() for f in futures]


def _decode_one(path: Path, max_pixels: int | None) -> np.ndarray | Prediction:
    """The decoded image, or an error row naming the file (the run goes on with the others)."""
    try:
        return read_gray(path, max_pixels=max_pixels)
    except (FileNotFoundError, ValueError) as err:
        message = str(err) if str(path) in str(err) else f"{path}: {err}"
        logger.debug("skipping %s: %s", path, message)
        return Prediction(str(path), error=message)


def _predict_chunk(
    files: list[Path],
    decoded: list[np.ndarray | Prediction],
    *,
    predictor: Predictor,
    gradcam_dir: Path | None,
    gradcam_names: dict[Path, str],
    gradcam_layer: str | None = None,
) -> list[Prediction]:
    """Score one decoded batch; files that failed to decode keep their error row."""
    outcome: dict[Path, Prediction] = {}
    grays: dict[Path, np.ndarray] = {}
    for path, item in zip(files, decoded):
        if isinstance(item, Prediction):
            outcome[path] = item
        else:
            grays[path] = item
    if grays:
        scored, heatmaps = _score(grays, predictor=predictor, gradcam=gradcam_dir is not None,
                                  gradcam_layer=gradcam_layer)
        outcome.update(scored)
        for path, heat in heatmaps.items():
            p = outcome[path]
            caption = f"Grad-CAM: {p.pred} (p={max(p.probs.values()):.2f})"
            _write_overlay(gradcam_dir / gradcam_names[path], grays[path], heat, caption=caption)
    return [outcome[p] for p in files]


def _score(
    grays: dict[Any, np.ndarray], *, predictor: Predictor, gradcam: bool, gradcam_layer: str | None,
) -> tuple[dict[Any, Prediction], dict[Any, np.ndarray]]:
    """Predictions (and, with ``gradcam``, (S, S) heatmaps of the predicted class) for decoded images."""
    keys = list(grays)
    boxed, scores = predictor.predict_grays([grays[k] for k in keys])  # (B, S, S) letterboxed once
    names = predictor.class_names
    flags = scores.malignant_flag
    outcome: dict[Any, Prediction] = {}
    for i, (key, row) in enumerate(zip(keys, scores.probs)):
        outcome[key] = Prediction(str(key), probs={name: float(v) for name, v in zip(names, row)},
                                  pred=names[int(scores.pred_idx[i])],
                                  malignant_flag=None if flags is None else int(flags[i]))
    if not gradcam:
        return outcome, {}
    model = predictor.models[0]  # resolve_gradcam_layer refused ensembles
    # explain.compute_heatmaps builds its inputs on the CPU, so it gets a CPU copy of a GPU model.
    cam_model = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    heatmaps = compute_heatmaps(
        cam_model, boxed, [int(t) for t in scores.pred_idx], transform=predictor.transform, method="gradcam",
        batch_size=len(keys), target_layer=gradcam_layer, progress=False,
    )  # (B, S, S) in [0, 1]; explain the predicted class
    return outcome, dict(zip(keys, heatmaps))


def _write_overlay(path: Path, gray: np.ndarray, heat: np.ndarray, *, caption: str) -> Path:
    """Write :func:`render_overlay` as a PNG, atomically."""
    canvas = Image.fromarray(render_overlay(gray, heat, caption=caption))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def render_overlay(gray: np.ndarray, heat: np.ndarray, *, caption: str) -> np.ndarray:
    """Blend the (S, S) letterboxed heatmap onto the original radiograph, under a banner: the disclaimer,
    ``caption``, and a colour bar (the heatmap is min-max scaled per image, so its scale is relative).
    The long side is scaled into [256, 1024] px so text stays legible. Returns uint8 RGB (H, W, 3)."""
    from matplotlib import colormaps

    height, width = gray.shape
    geom = letterbox_geometry(width, height, heat.shape[0])
    crop = np.ascontiguousarray(heat[geom.pad_y:geom.pad_y + geom.new_h, geom.pad_x:geom.pad_x + geom.new_w],
                                dtype=np.float32)
    size = _display_size(width, height)
    base = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    heat_big = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR))
    colour = colormaps[_CMAP](np.clip(heat_big, 0.0, 1.0))[..., :3]  # (H, W, 3) RGB in [0, 1]
    blend = 0.6 * base[..., None] + 0.4 * colour
    image = Image.fromarray(np.clip(np.rint(blend * 255), 0, 255).astype(np.uint8))
    return _under_banner(image, caption, colour_bar=True)


def render_original(gray: np.ndarray, *, caption: str) -> np.ndarray:
    """The radiograph alone on the canvas :func:`render_overlay` draws (same size, same banner), so the two
    can be shown side by side at the same scale. Returns uint8 RGB (H, W, 3)."""
    height, width = gray.shape
    image = Image.fromarray(gray).resize(_display_size(width, height), Image.Resampling.BILINEAR).convert("RGB")
    return _under_banner(image, caption, colour_bar=False)


def _display_size(width: int, height: int) -> tuple[int, int]:
    long_side = min(_OVERLAY_MAX_SIDE, max(_OVERLAY_MIN_SIDE, width, height))
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _under_banner(image: Image.Image, caption: str, *, colour_bar: bool) -> np.ndarray:
    """``image`` under three banner rows: the disclaimer, ``caption``, then the colour bar (or a note saying
    there is no heatmap), sized so the disclaimer fits the width."""
    from matplotlib import colormaps
    from PIL import ImageDraw, ImageFont

    width = image.size[0]
    third = "heatmap: low" if colour_bar else "original (no heatmap)"
    lines = [_BANNER, caption, third]
    font_px = max(8, width // 24)
    font = ImageFont.load_default(size=font_px)
    while font_px > 8 and max(font.getlength(line) for line in lines[:2]) > width - 8:
        font_px -= 1  # shrink until the disclaimer fits the width
        font = ImageFont.load_default(size=font_px)
    line_h = font_px + 4
    top = 3 * line_h + 4
    canvas = Image.new("RGB", (width, image.size[1] + top), (0, 0, 0))
    canvas.paste(image, (0, top))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines[:2]):
        draw.text((4, 2 + i * line_h), line, fill=(255, 255, 0), font=font)
    y = 2 + 2 * line_h
    draw.text((4, y), third, fill=(255, 255, 0), font=font)
    if colour_bar:
        high = "high (per-image max)"
        left = 8 + int(font.getlength(third))
        right = width - 8 - int(font.getlength(high))
        if right - left > 8:
            ramp = colormaps[_CMAP](np.linspace(0.0, 1.0, right - left))[:, :3]  # (w, 3)
            strip = np.repeat((ramp * 255).astype(np.uint8)[None], max(2, font_px - 2), axis=0)
            canvas.paste(Image.fromarray(strip), (left, y + 2))
        draw.text((max(left, right) + 4, y), high, fill=(255, 255, 0), font=font)
    return np.asarray(canvas)


def _overlay_names(files: Sequence[Path]) -> dict[Path, str]:
    """``<stem>_gradcam.png`` per file, numbered when stems repeat, so no overlay overwrites another."""
    names: dict[Path, str] = {}
    seen: dict[str, int] = {}
    for path in files:
        stem = path.stem
        seen[stem] = seen.get(stem, 0) + 1
        names[path] = f"{stem}_gradcam.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}_gradcam.png"
    return names


def _model_paths(model_path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """One ``--model`` or several (an ensemble) as a list of paths."""
    if isinstance(model_path, (str, os.PathLike)):
        return [Path(model_path)]
    return [Path(p) for p in model_path]


def _walk_images(folder: Path) -> tuple[list[Path], list[Prediction]]:
    """Image files under ``folder`` (recursive, sorted) and error rows for image types we cannot read.

    Hidden entries (``.DS_Store``, macOS ``._IMG.jpg`` resource forks, half-written ``.x.png.tmp``) are
    skipped: they are never radiographs. A file with an image suffix we do not decode (``.jp2``, ``.heic``...)
    is named as a failure, never dropped; other files (notes, spreadsheets) are counted in a warning.
    """
    found: list[Path] = []
    unsupported: list[Prediction] = []
    hidden, other = 0, []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            hidden += 1
        # DICOM files are often named by UID ("1.2.840...5") or nothing: recognise them by content.
        elif suffix in IMAGE_SUFFIXES or is_dicom(path):
            found.append(path)
        elif suffix in UNSUPPORTED_IMAGE_SUFFIXES:
            unsupported.append(Prediction(str(path), error=(
                f"{path}: unsupported image type {suffix!r}; convert it to PNG or TIFF (readable types: "
                f"{_suffix_hint()})."
            )))
        else:
            other.append(path.name)
    if hidden:
        logger.info("%s: skipped %d hidden file(s) (names starting with '.')", folder, hidden)
    if other:
        logger.warning("%s: skipped %d non-image file(s) (e.g. %s); readable types: %s", folder, len(other),
                       other[:3], _suffix_hint())
    return found, unsupported


def _suffix_hint() -> str:
    return ", ".join(IMAGE_SUFFIXES) + ", or DICOM by content"


def _check_shape(width: int, height: int, *, label: str) -> None:
    """Refuse degenerate images (see :data:`MIN_SIDE_PX`, :data:`MAX_ASPECT`) naming the file and the fix."""
    short, long = min(width, height), max(width, height)
    if short < MIN_SIDE_PX:
        raise ValueError(
            f"{label}: degenerate image {width}x{height} px: the short side is below {MIN_SIDE_PX} px, too "
            "small to be a radiograph. Export the radiograph at its acquired resolution."
        )
    if long > MAX_ASPECT * short:
        raise ValueError(
            f"{label}: degenerate image {width}x{height} px: aspect ratio {long / short:.1f} exceeds "
            f"{MAX_ASPECT:g}, letterboxing would leave a sliver of pixels. Crop it to the radiograph."
        )


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
