"""Cost of a Grad-CAM heatmap relative to a plain forward pass (target: about <= 3x per image).

Grad-CAM needs one forward with hooks plus one backward to the target layer; this measures what that
costs per image against an inference forward for the production backbone at the production input size.
Run: .venv/bin/python benchmarks/gradcam_cost.py [--backbone tf_efficientnet_lite0 --size 128 --batch 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import timm
import torch

from assurexray.explain import compute_heatmaps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm model name (random weights)")
    parser.add_argument("--size", type=int, default=128, help="square input side, px")
    parser.add_argument("--batch", type=int, default=16, help="images per batch")
    parser.add_argument("--batches", type=int, default=4, help="timed batches (after one warm-up)")
    parser.add_argument("--method", default="gradcam", help="CAM method name")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds; the fastest counts")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = timm.create_model(args.backbone, num_classes=3, pretrained=False).eval()
    images = np.random.default_rng(0).integers(0, 256, (args.batch * args.batches, args.size, args.size),
                                               dtype=np.uint8)
    targets = np.arange(len(images)) % 3

    def to_tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.repeat(image[None].astype(np.float32) / 255.0, 3, axis=0))

    def forward_all() -> None:
        with torch.inference_mode():
            for start in range(0, len(images), args.batch):
                model(torch.stack([to_tensor(im) for im in images[start:start + args.batch]]))

    def cam_all() -> None:
        compute_heatmaps(model, images, targets, transform=to_tensor, method=args.method,
                         batch_size=args.batch, progress=False)

    forward_all()  # warm-up (allocator, hooks, lazy init)
    cam_all()
    # Interleaved rounds, best of each: on a shared machine the minimum is the least-disturbed run.
    timings = {"forward": float("inf"), "gradcam": float("inf")}
    for _ in range(args.repeats):
        for name, fn in (("forward", forward_all), ("gradcam", cam_all)):
            t0 = time.perf_counter()
            fn()
            timings[name] = min(timings[name], (time.perf_counter() - t0) / len(images))
    ratio = timings["gradcam"] / timings["forward"]
    print(f"{args.backbone} @ {args.size}px, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{len(images)} images")
    print(f"forward: {1000 * timings['forward']:.2f} ms/image; {args.method}: {1000 * timings['gradcam']:.2f} ms/image")
    print(f"ratio {args.method}/forward: {ratio:.2f}x (target <= 3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
