"""torchrun worker for tests/test_distributed.py: train on the tiny cache, dump what this rank ends with.

Usage: ``torchrun --nproc_per_node=N tests/ddp_worker.py --out DIR --options JSON [--split-vote]``.
Writes ``DIR/rank<r>.pt`` (weights_only-loadable): the returned (best-epoch) weights, the history, the meta
and, per epoch, the train positions this rank's sampler yielded (what its DataLoader loaded).
``--split-vote`` makes the ranks' validation disagree: rank 0's scores worsen every epoch (it alone would
stop after ``patience`` epochs), the other ranks' improve (they alone would never stop).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_training import CLASSES, _cache  # noqa: E402  (the tiny fake cache of the training tests)

from assurexray.learning import distributed, training  # noqa: E402
from training_options import train  # noqa: E402


class _RecordingSampler:
    """Wraps the loop's sampler and records the positions it yields, epoch by epoch."""

    def __init__(self, sampler, record: list[list[int]]) -> None:
        self.sampler, self.record = sampler, record

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        positions = list(self.sampler)
        self.record.append(positions)
        return iter(positions)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--options", required=True, help="JSON: train_model keyword arguments")
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--split-vote", action="store_true")
    parser.add_argument("--masks", action="store_true", help="lesion masks on the tumour images' bright square")
    args = parser.parse_args()
    rank = distributed.context_from_env().rank

    shards: list[list[int]] = []
    make_sampler = training.train_sampler
    training.train_sampler = lambda *a, **k: _RecordingSampler(make_sampler(*a, **k), shards)
    if args.split_vote:
        def scores(shard, weight, num_classes, *, epoch, lesion):
            value = float(epoch) if rank == 0 else 1.0 / epoch  # rank 0: loss worsens; others: improves
            return {"loss": value, "macro_auc": 0.5, "balanced_accuracy": 0.5, "accuracy": 0.5}
        training.val_scores = scores

    images, index = _cache(args.n_train + 8)
    masks = None
    if args.masks:
        masks = np.zeros_like(images)
        masks[index["row"][index["label_idx"] > 0], 8:24, 8:24] = 1
    result = train(
        images=images, masks=masks, train_index=index.iloc[:args.n_train], val_index=index.iloc[args.n_train:],
        class_names=CLASSES, live_dir=None, **json.loads(args.options),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": result.model.state_dict(), "history": json.dumps(result.history),
                "meta": json.dumps(result.meta), "shards": shards}, out / f"rank{rank}.pt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
