"""The ``assurexray`` command: ``infer`` (classify files), ``export`` (a checkpoint as ONNX), ``adapt`` (BatchNorm
statistics of a site), ``app`` (the Streamlit demo), ``version``.

Argument parsing only; each subcommand calls one library function. Heavy imports (torch, timm) happen
inside the handlers so ``assurexray --help`` stays instant. NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence, TextIO

from assurexray import DISCLAIMER, __version__
from assurexray.core.cli_errors import USER_ERRORS, error_line, warnings_as_log_lines
from assurexray.core.filetypes import DICOM_SUFFIXES, RASTER_SUFFIXES
from assurexray.core.project import DEFAULT_MODEL, MODEL_ENV, ROOT_ENV, Layout, resolve_model_path

__all__ = ["main", "build_parser", "infer_command", "export_command", "readable_formats", "app_path", "app_command",
           "launch_app"]

logger = logging.getLogger(__name__)

#: Exit codes: 0 success, 1 some inputs failed, 2 usage error, 130 interrupted (Ctrl-C).
EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_REPO_ROOT = Path(__file__).resolve().parents[3]  # lib/assurexray/serving/cli.py -> repository root
_LAYOUT = Layout(Path())  # the artefact paths, relative to a project root, for the help texts
#: ``--max-pixels`` default: assurexray.data.decoding.DEFAULT_MAX_PIXELS, written out so ``--help`` loads no decoder
#: (tests/test_cli.py checks the two agree).
_DEFAULT_MAX_PIXELS = 100_000_000
#: ``adapt`` defaults: assurexray.learning.adaptation.MIN_IMAGES and BATCH_SIZE, written out for the same reason.
_DEFAULT_MIN_IMAGES, _DEFAULT_ADAPT_BATCH = 32, 64
#: ``infer --runtime`` and ``export --format`` choices: assurexray.serving.onnx_runtime.RUNTIMES and
#: assurexray.serving.export.EXPORT_FORMATS, written out so ``--help`` loads no torch (tests/test_cli.py checks).
_RUNTIMES, _EXPORT_FORMATS = ("torch", "onnx"), ("onnx",)
#: Optional packages of the ONNX path: missing, they are a one-line usage error with the install command.
_OPTIONAL_MODULES = frozenset({"onnx", "onnxruntime", "onnxscript"})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``assurexray`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="assurexray: %(levelname)s: %(message)s"
    )
    try:
        with warnings_as_log_lines(enabled=not args.verbose):
            return args.handler(args)
    except USER_ERRORS as err:  # ValueError, OSError (missing / unwritable paths): one line, exit 2
        print(error_line(f"assurexray {args.command}", err), file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in _OPTIONAL_MODULES:
            raise  # a missing core module is a broken install: keep the traceback
        print(error_line(f"assurexray {args.command}", err), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"assurexray {args.command}: interrupted; no partial output was written.", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="assurexray",
        description=f"Normal/Benign/Malignant classification of bone radiographs (BTXRD).\n{DISCLAIMER}",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the disclaimer on one unbroken line
    )
    parser.add_argument("--version", action="version", version=f"assurexray {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO level)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    infer = sub.add_parser(
        "infer",
        help="classify image files with a trained model",
        description=(
            f"Classify radiographs. {readable_formats()}\n"
            "Unreadable files are named and skipped; exit code 1 when any input failed, 2 for usage errors.\n"
            + DISCLAIMER
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    infer.add_argument("inputs", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    infer.add_argument(
        "--model", default=None, metavar="FILE", action="append",
        help="checkpoint (with --runtime onnx: a .onnx from `assurexray export`); repeat for a seed ensemble "
        "(probabilities averaged; same classes and preprocessing) "
        f"(default: ${MODEL_ENV}, else {DEFAULT_MODEL.as_posix()} under ${ROOT_ENV}, "
        "the current folder or the checkout assurexray is installed from)",
    )
    infer.add_argument(
        "--operating-point",
        default=None,
        metavar="FILE",
        help="operating_point.json (temperature, Malignant threshold); "
        f"default: {_LAYOUT.operating_point('<variant>').as_posix()} beside the model's models/<variant>/ "
        "(an ensemble has none by default: pass the one evaluate wrote for it)",
    )
    infer.add_argument("--output", default=None, metavar="FILE", help="write per-image results to a .jsonl or .csv file")
    infer.add_argument(
        "--json", action="store_true", dest="json_output",
        help="print the results as one JSON object on stdout instead of the table: the disclaimer, the notes and "
        "one record per input with the fields and values of a .jsonl --output (other messages go to stderr)",
    )
    infer.add_argument(
        "--runtime", choices=_RUNTIMES, default="torch",
        help="torch: a PyTorch checkpoint (default); onnx: a model written by `assurexray export` (--model "
        "FILE.onnx), scored by ONNX Runtime on the CPU with the same preprocessing and operating point (the "
        "source checkpoint's); no --gradcam",
    )
    infer.add_argument("--gradcam", default=None, metavar="DIR", help="write a Grad-CAM overlay PNG per image")
    infer.add_argument(
        "--gradcam-layer", default=None, metavar="NAME",
        help="module to explain with --gradcam, or 'auto' (the last conv/norm layer); default: the layer the "
        f"explain stage chose, {_LAYOUT.explain_metrics('<variant>').as_posix()} beside the model's "
        "models/<variant>/",
    )
    infer.add_argument(
        "--lesion-map", default=None, metavar="DIR",
        help="write a lesion-map overlay PNG per image (models with a lesion head only: the model's estimate of "
        "where a tumour is, research only); every lesion-head model also adds lesion_score and lesion_box to "
        "--output",
    )
    infer.add_argument("--batch-size", type=_positive_int, default=16, metavar="N", help="images per forward pass (default: 16)")
    infer.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    infer.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=_DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"refuse images with more pixels than this (default: {_DEFAULT_MAX_PIXELS})",
    )
    infer.set_defaults(handler=_run_infer)

    export = sub.add_parser(
        "export", help="write a checkpoint as an ONNX model that records its preprocessing",
        description=(
            "Write a checkpoint as an ONNX model: input 'image' (batch, C, S, S), preprocessed; outputs 'logits' and,\n"
            "for a checkpoint with a lesion decoder, 'lesion_logits'. The preprocessing, class order and the\n"
            "checkpoint's SHA-256 are recorded in its metadata, so `infer --runtime onnx` prepares images exactly as\n"
            "PyTorch does and applies the checkpoint's operating point. The export is checked against PyTorch\n"
            "before it is written. See docs/export.md.\n" + DISCLAIMER
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("--format", choices=_EXPORT_FORMATS, default="onnx", help="model format (default: onnx)")
    export.add_argument(
        "--model", default=None, metavar="FILE",
        help=f"checkpoint to export (default: ${MODEL_ENV}, else {DEFAULT_MODEL.as_posix()} under ${ROOT_ENV}, the "
        "current folder or the checkout assurexray is installed from)",
    )
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file to write")
    export.set_defaults(handler=_run_export)

    app = sub.add_parser(
        "app", help="start the Streamlit demo on 127.0.0.1",
        description=f"Start the Streamlit demo (app/app.py) on 127.0.0.1.\n{DISCLAIMER}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    app.add_argument("--port", type=_port, default=8501, metavar="N", help="TCP port (default: 8501)")
    app.set_defaults(handler=_run_app)

    adapt = sub.add_parser(
        "adapt", help="adapt a model to a site: BatchNorm statistics re-estimated on its unlabelled radiographs",
        description=(
            "Re-estimate the model's BatchNorm statistics on a folder of one site's radiographs (AdaBN; no labels,\n"
            "no training) and write a new checkpoint recording the adaptation. Every image found is used: an\n"
            "unreadable file or too few images is an error. The new model has no operating point yet.\n" + DISCLAIMER
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    adapt.add_argument("--model", required=True, metavar="FILE", help="checkpoint to adapt (it is not changed)")
    adapt.add_argument("--images", required=True, action="append", metavar="PATH",
                       help="the site's radiographs: a folder (recursive), files or a glob; repeat to add more")
    adapt.add_argument("-o", "--output", required=True, metavar="FILE", help="the adapted checkpoint to write")
    adapt.add_argument(
        "--min-images", type=_positive_int, default=_DEFAULT_MIN_IMAGES, metavar="N",
        help=f"refuse fewer images than this (default: {_DEFAULT_MIN_IMAGES}; statistics of a few images are noise)",
    )
    adapt.add_argument("--operating-point", default=None, metavar="FILE",
                       help="the source model's operating_point.json to carry over (default: its own, if any)")
    adapt.add_argument("--batch-size", type=_positive_int, default=_DEFAULT_ADAPT_BATCH, metavar="N",
                       help=f"images per estimation batch (default: {_DEFAULT_ADAPT_BATCH}, as evaluate.adapt uses)")
    adapt.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    adapt.add_argument("--max-pixels", type=_positive_int, default=_DEFAULT_MAX_PIXELS, metavar="N",
                       help=f"refuse images with more pixels than this (default: {_DEFAULT_MAX_PIXELS})")
    adapt.set_defaults(handler=_run_adapt)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(handler=_run_version)
    return parser


def readable_formats() -> str:
    """The file types ``infer`` reads, from :mod:`assurexray.core.filetypes` (INFER_SUFFIXES is these two lists)."""
    raster, dicom = ", ".join(RASTER_SUFFIXES), ", ".join(DICOM_SUFFIXES)
    return (f"Reads image files ending in (any letter case):\n  {raster} (TIFF incl. 16-bit)\n"
            f"  {dicom} (single-frame DICOM; a folder walk also finds DICOM files without a suffix)")


def app_path() -> Path:
    """``app/app.py`` of the repository holding this package; ``FileNotFoundError`` when it is absent."""
    path = _REPO_ROOT / "app" / "app.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: Streamlit app not found. `assurexray app` runs from a source checkout "
            "(pip install -e .) that contains app/app.py."
        )
    return path


def app_command(*, port: int, script: str | os.PathLike) -> list[str]:
    """The ``streamlit run`` command line, bound to localhost and headless (no browser, no telemetry prompt)."""
    return [
        sys.executable, "-m", "streamlit", "run", os.fspath(script),
        "--server.address", "127.0.0.1",
        "--server.headless", "true",
        "--server.port", str(int(port)),
    ]


def launch_app(*, port: int = 8501) -> int:
    """Run the Streamlit demo in the foreground until it exits; return its exit code."""
    command = app_command(port=port, script=app_path())
    logger.info("running %s", " ".join(command))
    return subprocess.run(command, check=False).returncode


def infer_command(
    inputs: Sequence[str],
    *,
    model_path: str | os.PathLike | Sequence[str | os.PathLike] = DEFAULT_MODEL,
    operating_point_path: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    gradcam_dir: str | os.PathLike | None = None,
    gradcam_layer: str | None = None,
    lesion_dir: str | os.PathLike | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    max_pixels: int | None = _DEFAULT_MAX_PIXELS,
    json_output: bool = False,
    runtime: str = "torch",
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run inference, print the table (``json_output``: the JSON document) and a failure summary, write ``output``;
    return the exit code.

    0 = every input scored, 1 = some inputs failed (named on stderr; the others are still written).
    Usage problems (no input matched, bad model or operating point) raise ``ValueError``/``FileNotFoundError``.
    With ``json_output`` stdout holds the JSON alone; the other messages go to stderr.
    """
    from assurexray.serving.infer import run_inference  # torch-heavy: loaded only when the command runs
    from assurexray.serving.infer_output import (
        OUTPUT_SUFFIXES,
        describe_result,
        format_json,
        format_table,
        write_predictions,
    )

    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if output is not None and Path(output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"--output {os.fspath(output)!r}: unsupported suffix; use a .jsonl or .csv file name.")
    result = run_inference(
        inputs, model_path=model_path, operating_point_path=operating_point_path, batch_size=batch_size,
        device=device, max_pixels=max_pixels, gradcam_dir=gradcam_dir, gradcam_layer=gradcam_layer,
        lesion_dir=lesion_dir, runtime=runtime,
    )
    if json_output:
        print(format_json(result), file=stdout)
    else:
        print(DISCLAIMER, file=stdout)
        print(describe_result(result), file=stdout)
        print(format_table(result), file=stdout)
    notes = stderr if json_output else stdout  # with --json, stdout is the JSON document alone
    if output is not None:
        write_predictions(result, output)
        print(f"wrote {len(result.predictions)} row(s) to {output}", file=notes)
    if gradcam_dir is not None:
        print(f"wrote {len(result.gradcam_paths)} Grad-CAM overlays to {gradcam_dir}", file=notes)
    if lesion_dir is not None:
        print(f"wrote {len(result.lesion_paths)} lesion-map overlays to {lesion_dir}", file=notes)
    failures = result.failures
    n_ok = len(result.predictions) - len(failures)
    if failures:
        print(f"{len(failures)} of {len(result.predictions)} inputs failed (skipped):", file=stderr)
        for p in failures:
            print(f"  {p.error}", file=stderr)
    print(f"{n_ok} image(s) classified, {len(failures)} failed.", file=stderr)
    return 1 if failures else 0


def _run_infer(args: argparse.Namespace) -> int:
    models = [resolve_model_path(None)] if not args.model else [resolve_model_path(m) for m in args.model]
    return infer_command(
        args.inputs,
        model_path=models,
        operating_point_path=args.operating_point,
        output=args.output,
        gradcam_dir=args.gradcam,
        gradcam_layer=args.gradcam_layer,
        lesion_dir=args.lesion_map,
        batch_size=args.batch_size,
        device=args.device,
        max_pixels=args.max_pixels,
        json_output=args.json_output,
        runtime=args.runtime,
    )


def export_command(model_path: str | os.PathLike, output: str | os.PathLike, *, fmt: str = "onnx",
                   stdout: TextIO | None = None) -> int:
    """Export ``model_path`` to ``output`` in ``fmt`` and say what was written; return the exit code."""
    from assurexray.serving.export import EXPORT_FORMATS, LOGIT_ATOL, export_onnx  # torch-heavy

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {list(EXPORT_FORMATS)}.")
    stdout = stdout or sys.stdout
    record = export_onnx(model_path, output)
    print(DISCLAIMER, file=stdout)
    print(f"wrote {record.path}: ONNX (opset {record.opset}) of {record.source} (sha256 {record.source_sha256[:12]}), "
          f"outputs {', '.join(record.outputs)}, dynamic batch; ONNX Runtime matches PyTorch on a probe batch to "
          f"{record.max_abs_logit_diff:.2g} (tolerance {LOGIT_ATOL:g}). Score it with: assurexray infer --runtime onnx "
          f"--model {record.path} IMAGES", file=stdout)
    return EXIT_OK


def _run_export(args: argparse.Namespace) -> int:
    return export_command(resolve_model_path(args.model), args.output, fmt=args.format)


def _run_adapt(args: argparse.Namespace) -> int:
    from assurexray.serving.adapt import adapt_checkpoint  # torch-heavy: loaded only when the command runs

    from assurexray.serving.adapt import inherit_operating_point

    record = adapt_checkpoint(args.model, args.images, args.output, min_images=args.min_images,
                              batch_size=args.batch_size, device=args.device, max_pixels=args.max_pixels)
    inherited = inherit_operating_point(args.model, args.output, operating_point=args.operating_point)
    print(DISCLAIMER)
    print(f"wrote {args.output}: BatchNorm statistics of {args.model} re-estimated on {record['n_images']} image(s) "
          f"(fingerprint {record['images_sha256'][:12]}, {record['date']}); no label was read.")
    if inherited is None:
        print("The source model has no operating point: infer gives uncalibrated probabilities and no Malignant "
              "decision for the adapted model until one is given (--operating-point).")
    else:
        print(f"wrote {inherited}: the source's operating point (temperature, Malignant threshold, lesion fusion), "
              "fitted on its validation without adaptation, bound to the adapted model; infer and the app use it.")
    return EXIT_OK


def _run_app(args: argparse.Namespace) -> int:
    return launch_app(port=args.port)


def _run_version(_args: argparse.Namespace) -> int:
    print(f"assurexray {__version__}")
    print(DISCLAIMER)
    return EXIT_OK


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1-65535, got {text!r}")
    return value
