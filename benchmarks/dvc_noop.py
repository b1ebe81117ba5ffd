"""``dvc repro`` when nothing changed: wall time (goal <= 3 s). Never rebuilds anything.

``dvc status`` is timed always (it hashes the same dependencies a no-op repro checks); ``dvc repro`` itself
only when that status is clean, so the benchmark cannot start a pipeline run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

from benchmarks import Figure


def _timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    return time.perf_counter() - started, proc


def figures(quick: bool = False, *, tiny: bool = False) -> list[Figure]:
    """Times the DVC project in the current folder (``quick`` and ``tiny`` change nothing: one call each)."""
    if shutil.which("dvc") is None:
        return [Figure("dvc repro no-op", None, "s", "<= 3 s", None, "skipped: dvc not on PATH")]
    seconds, proc = _timed(["dvc", "status", "--json"])
    if proc.returncode != 0:
        return [Figure("dvc status", None, "s", "<= 3 s", None, f"skipped: dvc status failed: {proc.stderr[-200:]}")]
    changed = json.loads(proc.stdout or "{}")
    # With changed stages dvc compares more than a no-op would: the time is shown, the goal not judged.
    status = Figure("dvc status (what a no-op repro checks)", seconds, "s", "<= 3 s",
                    seconds <= 3 if not changed else None,
                    "pipeline up to date" if not changed else f"{len(changed)} stage(s) changed here: not a no-op")
    if changed:
        return [status, Figure("dvc repro no-op", None, "s", "<= 3 s", None,
                               "skipped: the pipeline is not up to date here (dvc pull / dvc repro first)")]
    seconds, proc = _timed(["dvc", "repro"])
    return [status, Figure("dvc repro no-op", seconds, "s", "<= 3 s", proc.returncode == 0 and seconds <= 3,
                           "nothing to reproduce")]


if __name__ == "__main__":
    for figure in figures():
        print(figure)
