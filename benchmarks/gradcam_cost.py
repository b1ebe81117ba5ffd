"""Cost of a Grad-CAM heatmap relative to a plain forward pass (target: about <= 3x per image).

Grad-CAM needs one forward with hooks plus one backward to the target layer; this measures what that
costs per image against an inference forward for the production backbone at the production input size.
The explain stage's layer search scores every candidate layer from one hooked pass, so it should cost well
under one pass per candidate (it also runs the backward down to the earliest candidate, and scores the maps).
Run: python -m benchmarks --only gradcam_cost, or .venv/bin/python -m benchmarks.gradcam_cost [--backbone tf_efficientnet_lite0 --size 128 --batch 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import timm
import torch

from assurexray.assessment.cam import compute_heatmaps
from assurexray.assessment.explain import ExplainConfig, _choose_layer
from benchmarks import Figure


def measure(backbone: str = "tf_efficientnet_lite0", size: int = 128, batch: int = 16, batches: int = 4,
            method: str = "gradcam", repeats: int = 3, layer_search: int = 4) -> dict[str, float]:
    """Seconds per image: forward, CAM; and the explain stage's layer search (``layer_search`` candidates)."""
    torch.manual_seed(0)
    model = timm.create_model(backbone, num_classes=3, pretrained=False).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch * batches, size, size), dtype=np.uint8)
    targets = np.arange(len(images)) % 3

    def to_tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.repeat(image[None].astype(np.float32) / 255.0, 3, axis=0))

    def forward_all() -> None:
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                model(torch.stack([to_tensor(im) for im in images[start:start + batch]]))

    def cam_all() -> None:
        compute_heatmaps(model, images, targets, transform=to_tensor, method=method, batch_size=batch, progress=False)

    forward_all()  # warm-up (allocator, hooks, lazy init)
    cam_all()
    timings = {"forward": float("inf"), "cam": float("inf")}
    for _ in range(repeats):  # interleaved rounds, best of each
        for name, fn in (("forward", forward_all), ("cam", cam_all)):
            t0 = time.perf_counter()
            fn()
            timings[name] = min(timings[name], (time.perf_counter() - t0) / len(images))
    masks = np.zeros_like(images)
    masks[:, size // 4:size // 2, size // 4:size // 2] = 1
    config = ExplainConfig(layer_search=layer_search, batch_size=batch)
    t0 = time.perf_counter()
    _choose_layer(model, images, targets, masks, transform=to_tensor, config=config, input_shape=(3, size, size))
    timings["layer_search"] = (time.perf_counter() - t0) / len(images)
    return timings


def figures(quick: bool = False, *, tiny: bool = False) -> list[Figure]:
    if tiny:  # plumbing only
        setup = dict(backbone="test_efficientnet", size=32, batch=4, batches=1, repeats=1, layer_search=2)
    else:
        setup = dict(backbone="tf_efficientnet_lite0", size=128, batch=16, batches=2 if quick else 4,
                     repeats=2 if quick else 3, layer_search=4)
    t = measure(**setup)
    ratio = t["cam"] / t["forward"]
    search = t["layer_search"] / t["cam"]
    return [
        Figure("Grad-CAM / forward per image", ratio, "x", "<= 3x", ratio <= 3,
               f"{1000 * t['cam']:.1f} vs {1000 * t['forward']:.1f} ms/image, {setup['backbone']} "
               f"@{setup['size']} px, batch {setup['batch']}"),
        # One CAM pass hooks every candidate (cam.compute_heatmaps_per_layer); one pass per candidate and
        # the default layer would cost about candidates + 1 passes.
        Figure("explain layer search / one Grad-CAM pass", search, "x",
               f"< candidates + 1 ({setup['layer_search'] + 1})", search < setup["layer_search"] + 1,
               f"{1000 * t['layer_search']:.1f} ms per validation image for {setup['layer_search']} candidate layers "
               "and the default, in one pass"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm model name (random weights)")
    parser.add_argument("--size", type=int, default=128, help="square input side, px")
    parser.add_argument("--batch", type=int, default=16, help="images per batch")
    parser.add_argument("--batches", type=int, default=4, help="timed batches (after one warm-up)")
    parser.add_argument("--method", default="gradcam", help="CAM method name")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds; the fastest counts")
    args = parser.parse_args(argv)
    t = measure(args.backbone, args.size, args.batch, args.batches, args.method, args.repeats)
    print(f"forward: {1000 * t['forward']:.2f} ms/image; {args.method}: {1000 * t['cam']:.2f} ms/image")
    print(f"ratio {args.method}/forward: {t['cam'] / t['forward']:.2f}x (target <= 3x)")
    print(f"layer search: {1000 * t['layer_search']:.2f} ms/image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
