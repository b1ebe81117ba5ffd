"""Speed checks that print ratios (never timed tests): ``python -m benchmarks [--quick]`` runs them all.

Each module exposes ``figures(quick: bool) -> list[Figure]``; ``__main__`` prints the table with the goals
and writes ``metrics/bench.json`` (not a DVC metric: timings depend on the machine).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

__all__ = ["Figure", "best_of"]


@dataclass(frozen=True)
class Figure:
    """One measured figure and its goal; ``ok`` None = informational (no goal)."""

    name: str
    value: float | None
    unit: str
    goal: str
    ok: bool | None
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls, s: on a shared machine the minimum is the least-disturbed run."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best
