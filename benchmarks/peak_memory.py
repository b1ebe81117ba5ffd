"""Peak memory (max RSS) of prepare and of training at the full release size: 3,746 synthetic images.

Images are small (96x72 JPEGs, cached at 64 px; a tiny timm model for one training epoch) so this stays a few
minutes on 2 cores: what is measured is how memory grows with the number of images (the cache is memory-
mapped; nothing should hold every decoded original). Each run is a fresh subprocess reporting its own max RSS
(``resource.getrusage(RUSAGE_SELF)``). Skipped by ``--quick``.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from benchmarks import Figure

N_IMAGES = 3746
GOAL_MB = {"prepare": 1024, "train": 2048}

_MAKE_RELEASE = """
import io, sys
from pathlib import Path
import numpy as np, pandas as pd
from PIL import Image
from assurexray.core.schema import RELEASE_COLUMNS
root = Path(sys.argv[1]); n = int(sys.argv[2])
(root / "images").mkdir(parents=True)
rng = np.random.default_rng(0)
rows = []
for i in range(n):
    name = f"IMG{i + 1:06d}.jpeg"
    Image.fromarray(rng.integers(0, 256, (72, 96), dtype=np.uint8)).save(root / "images" / name, quality=80)
    row = {c: 0 for c in RELEASE_COLUMNS}
    k = i % 3
    row.update(image_id=name, center=1 + i % 3, age=40, gender="F", frontal=1, tumor=int(k > 0),
               benign=int(k == 1), malignant=int(k == 2))
    rows.append(row)
pd.DataFrame(rows).to_csv(root / "dataset.csv", index=False)
"""

_PREPARE = """
import sys
from assurexray.data.btxrd import load_release
from assurexray.data.cache import PrepareConfig, build_cache
build_cache(load_release(sys.argv[1]), sys.argv[2],
            PrepareConfig(image_px=64, near_duplicate_distance=4, workers=1))
"""

_TRAIN = """
import sys
from assurexray.data.cache import load_cache
from benchmarks import run_training
cache = load_cache(sys.argv[1])
index = cache.index
train, val = index.iloc[: int(0.85 * len(index))], index.iloc[int(0.85 * len(index)):]
run_training(cache.images, train, val, masks=cache.masks, backbone="test_efficientnet", batch_size=64,
             weight_decay=0.0, grad_clip=None, channels_last=False)
"""


def _max_rss_mb(code: str, *args: str) -> float:
    """Peak RSS (MB) of a fresh ``python -c code args``, as the child itself reports it at exit.

    Linux's ``VmHWM`` (``/proc/self/status``) restarts at exec; ``getrusage().ru_maxrss`` does not: it keeps the
    high-water mark of the forked parent (the benchmark process, gigabytes after the torch figures), so every
    child would report the parent's peak. ``ru_maxrss`` is the fallback where /proc is absent.
    """
    report = ("\nimport resource, pathlib\n"
              "status = pathlib.Path('/proc/self/status')\n"
              "hwm = [l.split()[1] for l in status.read_text().splitlines() if l.startswith('VmHWM:')] "
              "if status.exists() else []\n"
              "print('MAXRSS', hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + report, *args], check=True,
                          capture_output=True, text=True, timeout=1800,
                          cwd=Path(__file__).resolve().parents[1])  # the repository root: `benchmarks` imports
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("MAXRSS "))
    return int(line.split()[1]) / 1024  # ru_maxrss is KiB on Linux


def figures(quick: bool = False, *, tiny: bool = False) -> list[Figure]:
    n = 60 if tiny else N_IMAGES  # tiny: plumbing only
    with tempfile.TemporaryDirectory() as tmp:
        raw, prepared = Path(tmp) / "raw", Path(tmp) / "prepared"
        subprocess.run([sys.executable, "-c", _MAKE_RELEASE, str(raw), str(n)], check=True, timeout=1800)
        prepare_mb = _max_rss_mb(_PREPARE, str(raw), str(prepared))
        train_mb = _max_rss_mb(_TRAIN, str(prepared))
    return [
        Figure(f"peak memory: prepare, {n:,} images", prepare_mb, "MB", f"< {GOAL_MB['prepare']} MB",
               prepare_mb < GOAL_MB["prepare"], "96x72 JPEGs -> 64 px cache, 1 worker"),
        Figure(f"peak memory: train 1 epoch, {n:,} images", train_mb, "MB", f"< {GOAL_MB['train']} MB",
               train_mb < GOAL_MB["train"], "test_efficientnet @64 px, batch 64, memory-mapped cache"),
    ]


if __name__ == "__main__":
    for figure in figures():
        print(figure)
