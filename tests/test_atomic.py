"""Atomic writes: all-or-nothing, and files people share get the modes their umask asks for."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from assurexray.core.atomic import atomic_dir, atomic_path, current_umask, write_json, write_text


@pytest.fixture()
def umask():
    """Set the process umask for one test; restored afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                             (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_outputs_follow_the_umask_like_an_ordinary_open_and_mkdir(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert current_umask() == mask
    text = write_text(tmp_path / "reports" / "a.md", "hello\n")
    data = write_json(tmp_path / "metrics" / "m.json", {"x": 1})
    with atomic_path(tmp_path / "model.pt") as tmp:
        tmp.write_bytes(b"\x00")
    with atomic_dir(tmp_path / "figures") as folder:
        (folder / "roc.png").write_bytes(b"png")
    plain = tmp_path / "plain.txt"
    plain.write_text("reference")
    assert _mode(plain) == file_mode  # what open() gives: the behaviour being matched
    for path in (text, data, tmp_path / "model.pt", tmp_path / "figures" / "roc.png"):
        assert _mode(path) == file_mode, (path, oct(_mode(path)))
    assert _mode(tmp_path / "figures") == dir_mode
    assert _mode(tmp_path / "reports") == dir_mode  # parents made on the way


def test_replacing_a_folder_keeps_the_umask_mode_and_the_new_content_only(tmp_path, umask):
    umask(0o027)
    with atomic_dir(tmp_path / "out") as folder:
        (folder / "old.txt").write_text("old")
    with atomic_dir(tmp_path / "out") as folder:
        (folder / "new.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new.txt"]
    assert _mode(tmp_path / "out") == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or .old folder left behind


def test_a_failed_block_leaves_the_previous_file_and_no_temp_file(tmp_path):
    target = write_text(tmp_path / "a.txt", "before")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "before"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_json_with_nan_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        write_json(tmp_path / "m.json", {"x": float("nan")})
    assert not (tmp_path / "m.json").exists()
