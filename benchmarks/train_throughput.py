"""Training throughput of the real loop vs pure forward/backward compute, CPU or GPU.

Runs ``assurexray.learning.training.train_model`` (DataLoader, augmentation, host-to-device copy, optimiser, scheduler:
everything a training epoch does) on random images and prints its images/s, then times forward + backward +
optimiser steps of the same model on one batch already on the device. ratio = loop / compute: 1.0 means the
input pipeline costs nothing; far below 1 means the GPU waits for data (raise --workers).

    python benchmarks/train_throughput.py                              # CPU, tiny test model
    python benchmarks/train_throughput.py --backbone tf_efficientnet_lite0 --size 224 --batch-size 64 \\
        --device cuda --amp --workers 8                                # GPU: bf16 autocast, pinned memory
    torchrun --standalone --nproc_per_node=2 benchmarks/train_throughput.py ...   # per-process figures
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from assurexray.learning import distributed
from assurexray.learning.model import create_model, resolve_device
from assurexray.learning.training import _amp_dtype

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository root holds benchmarks
from benchmarks import run_training  # noqa: E402

CLASSES = ["Normal", "Benign", "Malignant"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="test_efficientnet")
    parser.add_argument("--size", type=int, default=64, help="image side, px")
    parser.add_argument("--images", type=int, default=256, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch")
    parser.add_argument("--epochs", type=int, default=2, help="loop epochs (the first warms up)")
    parser.add_argument("--steps", type=int, default=20, help="timed compute-only steps")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--amp", action="store_true", help="mixed precision (bf16 where supported; CUDA only)")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (pinned memory on CUDA)")
    args = parser.parse_args(argv)
    channels_last = not args.no_channels_last

    rng = np.random.default_rng(0)
    n = args.images + 24
    images = rng.integers(0, 255, (n, args.size, args.size), dtype=np.uint8)
    labels = np.arange(n) % 3
    index = pd.DataFrame({"row": np.arange(n), "label_idx": labels})
    result = run_training(
        images, index.iloc[:args.images], index.iloc[args.images:], backbone=args.backbone, epochs=args.epochs,
        batch_size=args.batch_size, device=args.device, amp=args.amp, channels_last=channels_last,
        num_workers=args.workers,
        augment={"hflip": 0.5, "rotate_deg": 7, "scale": 0.1, "translate": 0.05, "brightness_contrast": 0.2},
    )
    loop = result.images_per_second  # all processes together

    ctx = distributed.context_from_env()
    device = resolve_device(args.device)
    amp_dtype = _amp_dtype(args.amp, device)
    local_batch = args.batch_size // ctx.world_size
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(args.backbone, num_classes=3, dropout=0.0, pretrained="none")
    model = model.to(device, memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(local_batch, 3, args.size, args.size, device=device).to(memory_format=memory_format)
    y = torch.from_numpy(labels[:local_batch]).to(device)
    seconds = 0.0
    for step in range(args.steps + 2):  # 2 warm-up steps
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            seconds += time.perf_counter() - started
    compute = args.steps * local_batch / seconds * ctx.world_size  # the same world size, no communication

    if ctx.is_main:
        print(f"{args.backbone} at {args.size} px, global batch {args.batch_size}, {ctx.world_size} process(es), "
              f"device {device}, amp {amp_dtype}, channels_last {channels_last}, workers {args.workers}, "
              f"torch threads {torch.get_num_threads()}")
        print(f"training loop:          {loop:,.1f} images/s")
        print(f"forward/backward only:  {compute:,.1f} images/s")
        print(f"ratio loop / compute:   {loop / compute:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
