"""ONNX Runtime vs PyTorch on this CPU: images/s of the forward pass infer runs, and their ratio (informational).

tf_efficientnet_lite0 with the lesion decoder (params.yaml's model) at the default 160 px, exported with
``assurexray export`` (its parity check included), a preprocessed batch of 16 (``infer --batch-size``'s
default) through each runtime's model as ``infer`` calls it (:class:`assurexray.serving.onnx_runtime.OrtModel`
vs the PyTorch module under inference mode), both warm and on the same number of threads
(``torch.get_num_threads()``, set on the ONNX Runtime session too), best of 5.
Preprocessing and decoding are the same code for both runtimes and are left out. Random weights: speed does
not depend on their values.

    nice -n 19 python -m benchmarks.onnx_speed
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from assurexray.learning.model import checkpoint_format, create_model, load_checkpoint, save_checkpoint
from assurexray.serving.export import export_onnx, import_optional
from assurexray.serving.onnx_runtime import OrtModel
from benchmarks import Figure, best_of

BACKBONE, SIZE, BATCH = "tf_efficientnet_lite0", 160, 16
TINY = ("test_efficientnet", 32, 4)  # tiny=True: backbone, px, batch (plumbing only)


def _checkpoint(folder: Path, backbone: str, size: int) -> Path:
    torch.manual_seed(0)
    model = create_model(backbone, num_classes=3, dropout=0.0, pretrained="none", lesion_head=True)
    meta = {"backbone": backbone, "num_classes": 3, "class_names": ["Normal", "Benign", "Malignant"],
            "dropout": 0.0, "input_size": size, "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "clahe": False,
            "letterbox_fill": 0, "params": {}, "best_epoch": 0, "monitor": "loss", "best_score": 0.0, "seed": 0,
            "format_version": checkpoint_format(lesion_head=True), "lesion_head": True}
    return save_checkpoint(folder / "model.pt", model.eval(), meta)


def figures(quick: bool = False, *, tiny: bool = False) -> list[Figure]:
    backbone, size, batch = TINY if tiny else (BACKBONE, SIZE, BATCH)
    repeats = 2 if tiny else 3 if quick else 5
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _checkpoint(Path(tmp), backbone, size)
        export = export_onnx(checkpoint, Path(tmp) / "model.onnx")
        torch_model, _ = load_checkpoint(checkpoint)  # as infer loads it
        ort_model = OrtModel(_session(export.path, threads), has_lesion=True)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))  # (B, 3, S, S)

    def torch_forward() -> None:
        with torch.inference_mode():
            torch_model(x)

    def ort_forward() -> None:
        ort_model(x)

    torch_forward(), ort_forward()  # warm-up: first calls allocate and plan
    torch_s, ort_s = best_of(torch_forward, repeats), best_of(ort_forward, repeats)
    torch_ips, ort_ips = batch / torch_s, batch / ort_s
    detail = f"{backbone} + lesion decoder @{size} px, batch {batch}, {threads} thread(s), best of {repeats}"
    return [
        Figure("infer forward, PyTorch", torch_ips, "img/s", "", None, detail),
        Figure("infer forward, ONNX Runtime (CPU)", ort_ips, "img/s", "", None, detail),
        Figure("ONNX Runtime / PyTorch throughput", ort_ips / torch_ips, "x", "", None,
               f"{ort_ips:.1f} vs {torch_ips:.1f} img/s; export parity {export.max_abs_logit_diff:.1g}"),
    ]


def _session(path: Path, threads: int):
    """The CPU session load_onnx_predictor opens, limited to ``threads`` like PyTorch (fair comparison)."""
    ort = import_optional("onnxruntime", "benchmarks.onnx_speed")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    for figure in figures():
        print(figure)
