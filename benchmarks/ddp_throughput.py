"""DDP scaling: training images/s of 2 gloo processes vs 1 on the same global batch (CPU, tiny model).

Both runs go through ``torchrun`` and the real loop (``assurexray.learning.training.train_model``: DistributedSampler,
DDP gradient all-reduce, loss all-reduce, sharded validation), one torch thread per process, so the 1-process
run uses one core and the 2-process run two: ratio = img/s(2) / img/s(1). 2.0 is perfect scaling; what is
missing is the cost of the all-reduces and of the smaller per-process batch. On a machine whose cores are busy
with other jobs the ratio says little (no goal is judged); on 2 free cores expect well above 1.

    python -m benchmarks --only ddp_throughput
    python -m benchmarks.ddp_throughput --quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import Figure

REPO_ROOT = Path(__file__).resolve().parents[1]
BACKBONE, SIZE, BATCH = "test_efficientnet", 64, 32  # timm's ~100k-parameter test model; BATCH is global
CLASSES = ["Normal", "Benign", "Malignant"]
HANG_GUARD_S = 1800  # a stuck rendezvous must not hang `python -m benchmarks`; nothing is judged on time


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun() -> str:
    beside = Path(sys.executable).parent / "torchrun"
    found = str(beside) if beside.exists() else shutil.which("torchrun")
    if found is None:
        raise FileNotFoundError("torchrun (installed with torch) is not beside this python nor on PATH")
    return found


def _images_per_second(nproc: int, steps: int) -> float:
    """Run the worker below under torchrun with ``nproc`` processes; rank 0's loop throughput (all ranks)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        path = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "lib"), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}  # 1 core per process, 1 and 2 alike
        proc = subprocess.run(
            [_torchrun(), "--nnodes=1", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
             f"--master_port={_free_port()}", "-m", "benchmarks.ddp_throughput", "--worker", str(out),
             "--steps", str(steps)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun with {nproc} process(es) failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return float(json.loads(out.read_text())["images_per_second"])


def _worker(out: Path, steps: int) -> int:
    """One torchrun process: ``steps`` global batches per epoch, 2 epochs; rank 0 writes the loop's img/s."""
    import numpy as np
    import pandas as pd

    from assurexray.learning import distributed
    from assurexray.core.atomic import write_json
    from benchmarks import run_training

    n_train, n_val = steps * BATCH, 12
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_train + n_val, SIZE, SIZE), dtype=np.uint8)  # (N, S, S)
    labels = np.arange(n_train + n_val) % 3
    index = pd.DataFrame({"row": np.arange(n_train + n_val), "label_idx": labels})
    result = run_training(images, index.iloc[:n_train], index.iloc[n_train:], backbone=BACKBONE, epochs=2,
                          batch_size=BATCH)
    if distributed.context_from_env().is_main:
        write_json(out, {"images_per_second": result.images_per_second})
    return 0


def figures(quick: bool = False, *, tiny: bool = False) -> list[Figure]:
    steps = 1 if tiny else 4 if quick else 16  # tiny: plumbing only (tests/test_benchmarks.py)
    one = _images_per_second(1, steps)
    two = _images_per_second(2, steps)
    return [Figure("DDP: 2 gloo processes / 1, same global batch", two / one, "x", "about 2 on 2 free cores", None,
                   f"{two:.1f} vs {one:.1f} img/s, {BACKBONE} @{SIZE} px, global batch {BATCH}, "
                   f"{steps} steps x 2 epochs, 1 thread per process")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 global batches per epoch instead of 16")
    parser.add_argument("--worker", metavar="OUT", default=None, help=argparse.SUPPRESS)  # set by _images_per_second
    parser.add_argument("--steps", type=int, default=4, help=argparse.SUPPRESS)  # the worker's batches per epoch
    args = parser.parse_args(argv)
    if args.worker is not None:
        return _worker(Path(args.worker), args.steps)
    for figure in figures(quick=args.quick):
        print(figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
