"""Keep-best and stop: the best validation score so far, its epoch, and the epochs since it.

Rank 0 owns the decision and broadcasts :meth:`EarlyStopping.state`; a resumed run rebuilds it from that
plain dict, so the decision continues exactly where a killed run left it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["EarlyStopping"]


@dataclass
class EarlyStopping:
    """Best score so far, its epoch, and epochs since: the keep-best and stop decision."""

    larger_is_better: bool
    patience: int | None
    best_score: float | None = None
    best_epoch: int | None = None
    stale: int = 0

    def update(self, epoch: int, score: float) -> bool:
        """Record ``score`` for ``epoch``; True when it is the best so far (ties keep the earlier epoch)."""
        better = self.best_score is None or (
            score > self.best_score if self.larger_is_better else score < self.best_score)
        if better:
            self.best_score, self.best_epoch, self.stale = float(score), int(epoch), 0
        else:
            self.stale += 1
        return better

    @property
    def stopped(self) -> bool:
        return self.patience is not None and self.stale >= self.patience

    def state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
