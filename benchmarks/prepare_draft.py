"""prepare's decode path on full-resolution originals: JPEG draft (DCT-domain) downscaling vs a full decode.

Both decode and letterbox each of ../shared/btxrd-mini's 30 originals (~3000 px) to ``prepare.image_px`` (160);
the ratio of images/s is the speed-up draft mode gives (goal >= 4x).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from assurexray.data.imaging import decode_for_letterbox, decode_gray, letterbox
from benchmarks import Figure, best_of, synthetic_originals

MINI = Path(os.environ.get("BTXRD_MINI", Path(__file__).resolve().parents[1].parent / "shared" / "btxrd-mini"))
SIZE = 160


def figures(quick: bool = False, *, tiny: bool = False) -> list[Figure]:
    if tiny:  # plumbing only: two small synthetic JPEGs
        with tempfile.TemporaryDirectory() as tmp:
            return _figures(synthetic_originals(Path(tmp), 2), repeats=1, source="synthetic")
    paths = sorted((MINI / "images").glob("*.jp*g"))
    if not paths:
        return [Figure("prepare: draft vs full JPEG decode", None, "x", ">= 4x", None, f"skipped: {MINI} absent")]
    return _figures(paths[:10] if quick else paths, repeats=1 if quick else 5, source="btxrd-mini")  # 2 cores: best of 5 steadies the ratio


def _figures(paths: list[Path], *, repeats: int, source: str) -> list[Figure]:

    def draft() -> None:
        for path in paths:
            gray, _, original = decode_for_letterbox(path, SIZE)
            letterbox(gray, SIZE, original_size=original)

    def full() -> None:
        for path in paths:
            letterbox(decode_gray(path), SIZE)

    t_draft, t_full = best_of(draft, repeats), best_of(full, repeats)
    ratio = t_full / t_draft
    return [Figure("prepare: draft vs full JPEG decode", ratio, "x", ">= 4x", ratio >= 4,
                   f"{len(paths) / t_draft:.1f} vs {len(paths) / t_full:.1f} img/s, {len(paths)} {source} "
                   f"originals -> {SIZE} px")]


if __name__ == "__main__":
    for figure in figures():
        print(figure)
