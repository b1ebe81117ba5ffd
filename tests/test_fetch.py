"""Fetch: download with resume and checksums against a loopback HTTP server, release import and its quirks."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
import threading
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from assurexray.data.fetch import (DataConfig, download, extract_release, fetch_data, import_release,
                                   verify_archive)

IMAGES = ("IMG000001.jpeg", "IMG000002.jpeg", "IMG000003.jpeg")


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 24), value, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _sheet_xlsx() -> bytes:
    buf = io.BytesIO()
    pd.DataFrame({"image_id": list(IMAGES), "center": [1, 1, 2], "tumor": [0, 1, 1]}).to_excel(buf, index=False)
    return buf.getvalue()


def _release_files() -> dict[str, bytes]:
    """The release layout with its two quirks (nested Annotations/Annotations, Excel lock file)."""
    files = {f"BTXRD/images/{name}": _jpeg(40 * i) for i, name in enumerate(IMAGES, start=1)}
    files["BTXRD/Annotations/IMG000002.json"] = b'{"shapes": [], "imageData": null}'
    files["BTXRD/Annotations/IMG000003.json"] = b'{"shapes": [], "imageData": null}'
    files["BTXRD/Annotations/Annotations/IMG000002.json"] = b'{"shapes": [], "imageData": null}'
    files["BTXRD/dataset.xlsx"] = _sheet_xlsx()
    files["BTXRD/~$dataset.xlsx"] = b"lock"
    return files


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder in sorted({name.rsplit("/", 1)[0] + "/" for name in files}):
            archive.writestr(folder, b"")
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def release_zip() -> bytes:
    return _zip_bytes(_release_files())


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class _ReleaseHandler(BaseHTTPRequestHandler):
    """Serves ``server.payload``; honours ``Range: bytes=N-`` unless ``server.ignore_range``; records requests."""

    def do_GET(self):  # noqa: N802 (stdlib name)
        server = self.server
        rng = self.headers.get("Range")
        server.ranges.append(rng)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", server.redirect_to)
            self.end_headers()
            return
        if self.path != "/BTXRD.zip":
            self.send_error(404)
            return
        data = server.payload
        start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng and not server.ignore_range else None
        if start is not None and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data if start is None else data[start:]
        self.send_response(200 if start is None else 206)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.drop_after is not None:
            cut, server.drop_after = server.drop_after, None
            self.wfile.write(body[:cut])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        """Keep test output quiet."""


@pytest.fixture()
def server(release_zip):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ReleaseHandler)
    httpd.payload = release_zip
    httpd.ranges = []
    httpd.ignore_range = False
    httpd.drop_after = None
    httpd.redirect_to = ""
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/BTXRD.zip"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _btxrd_params(server, tmp_path: Path, **overrides) -> dict:
    params = {"path": None, "url": server.url, "md5": _md5(server.payload), "size_bytes": len(server.payload),
              "download_dir": str(tmp_path / "downloads")}
    return params | overrides


def _assert_release_layout(raw: Path, *, images=IMAGES, sheet="dataset.xlsx") -> None:
    assert sorted(p.name for p in (raw / "images").iterdir()) == sorted(images)
    assert sorted(p.name for p in (raw / "Annotations").iterdir()) == ["IMG000002.json", "IMG000003.json"]
    assert sorted(p.name for p in raw.iterdir()) == sorted(["images", "Annotations", sheet])


# --- download ---------------------------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_extracts_the_release_without_its_quirks(server, tmp_path):
    raw = fetch_data(tmp_path / "raw", DataConfig(source="btxrd", btxrd=_btxrd_params(server, tmp_path)), seed=0)
    _assert_release_layout(raw)
    assert (raw / "images" / "IMG000002.jpeg").read_bytes() == _release_files()["BTXRD/images/IMG000002.jpeg"]
    assert server.ranges == [None]
    assert sorted(p.name for p in (tmp_path / "downloads").iterdir()) == ["BTXRD.zip"]


def test_a_partial_download_is_resumed_with_one_range_request_from_its_end(server, tmp_path):
    dest = tmp_path / "BTXRD.zip"
    offset = len(server.payload) // 3
    (tmp_path / "BTXRD.zip.part").write_bytes(server.payload[:offset])
    download(server.url, dest, expected_size=len(server.payload), expected_md5=_md5(server.payload))
    assert server.ranges == [f"bytes={offset}-"]
    assert _md5(dest.read_bytes()) == _md5(server.payload)
    assert not (tmp_path / "BTXRD.zip.part").exists()


def test_a_dropped_connection_is_resumed_from_the_bytes_received(server, tmp_path):
    server.drop_after = 1000
    dest = download(server.url, tmp_path / "BTXRD.zip", expected_size=len(server.payload),
                    expected_md5=_md5(server.payload), chunk_size=256)
    assert server.ranges == [None, "bytes=1000-"]
    assert dest.read_bytes() == server.payload


def test_a_server_ignoring_range_restarts_the_download_from_zero(server, tmp_path):
    server.ignore_range = True
    (tmp_path / "BTXRD.zip.part").write_bytes(b"stale bytes that must not survive")
    dest = download(server.url, tmp_path / "BTXRD.zip", expected_size=len(server.payload),
                    expected_md5=_md5(server.payload))
    assert server.ranges == ["bytes=33-"]
    assert dest.read_bytes() == server.payload


@pytest.mark.parametrize(("part_extra", "expected_ranges"), [(0, 1), (7, 2)], ids=["complete", "too-long"])
def test_a_416_reply_finishes_a_complete_part_or_restarts_a_stale_one(server, tmp_path, part_extra,
                                                                       expected_ranges):
    part = tmp_path / "BTXRD.zip.part"
    part.write_bytes(server.payload + b"x" * part_extra)
    dest = download(server.url, tmp_path / "BTXRD.zip", expected_size=None, expected_md5=_md5(server.payload))
    assert len(server.ranges) == expected_ranges
    assert server.ranges[0] == f"bytes={len(server.payload) + part_extra}-"
    assert dest.read_bytes() == server.payload


def test_a_wrong_md5_moves_the_archive_to_bad_and_extracts_nothing(server, tmp_path):
    btxrd = _btxrd_params(server, tmp_path, md5="0" * 32)
    with pytest.raises(ValueError, match=r"MD5 is [0-9a-f]{32}, expected '0{32}'.*moved to .*BTXRD\.zip\.bad"
                                         r".*rerun the fetch stage"):
        fetch_data(tmp_path / "raw", DataConfig(source="btxrd", btxrd=btxrd), seed=0)
    assert not (tmp_path / "raw").exists()
    assert (tmp_path / "downloads" / "BTXRD.zip.bad").read_bytes() == server.payload
    assert not (tmp_path / "downloads" / "BTXRD.zip").exists()


def test_a_size_mismatch_reported_by_the_server_stops_before_downloading(server, tmp_path):
    btxrd = _btxrd_params(server, tmp_path, size_bytes=len(server.payload) + 1)
    with pytest.raises(ValueError, match=r"server reports \d+ bytes, expected \d+.*not the official BTXRD\.zip"):
        fetch_data(tmp_path / "raw", DataConfig(source="btxrd", btxrd=btxrd), seed=0)
    assert not (tmp_path / "raw").exists()
    assert list((tmp_path / "downloads").iterdir()) == []


def test_an_existing_verified_archive_is_reused_without_any_request(server, tmp_path):
    (tmp_path / "BTXRD.zip").write_bytes(server.payload)
    download(server.url, tmp_path / "BTXRD.zip", expected_size=len(server.payload),
             expected_md5=_md5(server.payload))
    assert server.ranges == []


def test_an_http_error_names_the_status_and_the_manual_alternative(server, tmp_path):
    with pytest.raises(ConnectionError, match=r"HTTP 404.*data\.btxrd\.path"):
        download(server.url.replace("BTXRD.zip", "missing"), tmp_path / "BTXRD.zip", expected_size=None,
                 expected_md5=None)


def test_only_http_urls_are_fetched_even_through_a_redirect(server, tmp_path):
    with pytest.raises(ValueError, match=r"only http\(s\) URLs are fetched, got 'ftp://"):
        download("ftp://127.0.0.1/BTXRD.zip", tmp_path / "BTXRD.zip", expected_size=None, expected_md5=None)
    server.redirect_to = "ftp://127.0.0.1/BTXRD.zip"  # the stdlib would follow this one (it refuses file://)
    with pytest.raises(ValueError, match=r"only http\(s\) URLs are fetched, got 'ftp://127"):
        download(server.url.replace("BTXRD.zip", "redirect"), tmp_path / "BTXRD.zip", expected_size=None,
                 expected_md5=None)
    assert not (tmp_path / "BTXRD.zip").exists()


# --- local archive and folders ----------------------------------------------------------------------------


def test_a_local_zip_is_verified_then_extracted(release_zip, tmp_path):
    archive = tmp_path / "BTXRD.zip"
    archive.write_bytes(release_zip)
    raw = import_release(archive, tmp_path / "raw", expected_size=len(release_zip), expected_md5=_md5(release_zip))
    _assert_release_layout(raw)
    assert archive.read_bytes() == release_zip


@pytest.mark.parametrize("field", ["size", "md5"])
def test_a_local_zip_failing_its_check_is_not_official_and_a_folder_is_suggested(release_zip, tmp_path, field):
    archive = tmp_path / "BTXRD.zip"
    archive.write_bytes(release_zip)
    size = len(release_zip) + (field == "size")
    md5 = _md5(release_zip) if field == "size" else "f" * 32
    with pytest.raises(ValueError, match=rf"(?i){field} is .*not the official BTXRD\.zip.*extracted BTXRD folder"):
        import_release(archive, tmp_path / "raw", expected_size=size, expected_md5=md5)
    assert not (tmp_path / "raw").exists()


def test_verify_archive_accepts_the_right_size_and_md5(release_zip, tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(release_zip)
    verify_archive(archive, expected_size=len(release_zip), expected_md5=_md5(release_zip).upper())
    with pytest.raises(ValueError, match=r"size is \d+ bytes, expected 1 "):
        verify_archive(archive, expected_size=1, expected_md5=None)


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


@pytest.mark.parametrize("given", ["parent-of-BTXRD", "BTXRD-itself"])
def test_an_extracted_release_folder_is_imported_in_the_release_layout(tmp_path, given):
    _write_tree(tmp_path / "src", _release_files())
    path = tmp_path / "src" if given == "parent-of-BTXRD" else tmp_path / "src" / "BTXRD"
    raw = import_release(path, tmp_path / "raw", expected_size=1, expected_md5="0" * 32)
    _assert_release_layout(raw)


def test_a_resized_copy_with_png_images_and_a_csv_sheet_is_imported(tmp_path):
    files = {k.replace(".jpeg", ".png"): v for k, v in _release_files().items() if not k.endswith("xlsx")}
    files["BTXRD/dataset.csv"] = b"image_id,center\nIMG000001.jpeg,1\n"
    files["BTXRD/images/Thumbs.db"] = b"windows"
    _write_tree(tmp_path / "src", files)
    raw = import_release(tmp_path / "src", tmp_path / "raw", expected_size=None, expected_md5=None)
    _assert_release_layout(raw, images=[n.replace(".jpeg", ".png") for n in IMAGES], sheet="dataset.csv")


def test_import_keeps_one_sheet_when_both_xlsx_and_csv_are_present(tmp_path):
    files = _release_files() | {"BTXRD/dataset.csv": b"image_id\n"}
    _write_tree(tmp_path / "src", files)
    raw = import_release(tmp_path / "src", tmp_path / "raw", expected_size=None, expected_md5=None)
    _assert_release_layout(raw, sheet="dataset.xlsx")


def test_a_second_import_replaces_the_previous_output_whole(tmp_path):
    _write_tree(tmp_path / "src", _release_files())
    (tmp_path / "raw" / "images").mkdir(parents=True)
    (tmp_path / "raw" / "images" / "old.jpeg").write_bytes(b"old")
    raw = import_release(tmp_path / "src", tmp_path / "raw", expected_size=None, expected_md5=None)
    _assert_release_layout(raw)


def test_the_real_btxrd_excerpt_imports_unchanged(btxrd_mini, tmp_path):
    raw = import_release(btxrd_mini, tmp_path / "raw", expected_size=None, expected_md5=None)
    images = sorted(p.name for p in (raw / "images").iterdir())
    assert images == sorted(p.name for p in (btxrd_mini / "images").iterdir())
    assert len(list((raw / "Annotations").iterdir())) == len(list((btxrd_mini / "Annotations").iterdir()))
    assert (raw / "dataset.xlsx").read_bytes() == (btxrd_mini / "dataset.xlsx").read_bytes()


# --- errors -----------------------------------------------------------------------------------------------


def _drop(prefix: str) -> dict[str, bytes]:
    return {k: v for k, v in _release_files().items() if not k.startswith(prefix)}


@pytest.mark.parametrize(
    ("files", "match"),
    [
        (_drop("BTXRD/images/"), r"no images/ folder"),
        (_drop("BTXRD/dataset.xlsx"), r"no dataset sheet \(dataset\.xlsx or dataset\.csv\)"),
    ],
    ids=["no-images", "no-sheet"],
)
def test_an_incomplete_release_folder_or_zip_is_refused(tmp_path, files, match):
    _write_tree(tmp_path / "src", files)
    with pytest.raises(ValueError, match=match):
        import_release(tmp_path / "src", tmp_path / "raw", expected_size=None, expected_md5=None)
    (tmp_path / "r.zip").write_bytes(_zip_bytes(files))
    with pytest.raises(ValueError, match=match):
        extract_release(tmp_path / "r.zip", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_zip_without_a_btxrd_folder_is_refused(tmp_path):
    (tmp_path / "other.zip").write_bytes(_zip_bytes({"data/images/a.jpeg": _jpeg(1)}))
    with pytest.raises(ValueError, match=r"no top-level BTXRD/ folder.*\['data'\]"):
        extract_release(tmp_path / "other.zip", tmp_path / "raw")


def test_a_zip_with_an_escaping_member_path_is_refused(tmp_path):
    (tmp_path / "evil.zip").write_bytes(_zip_bytes(_release_files() | {"BTXRD/../../evil.txt": b"x"}))
    with pytest.raises(ValueError, match=r"unsafe member path 'BTXRD/\.\./\.\./evil\.txt'"):
        extract_release(tmp_path / "evil.zip", tmp_path / "raw")


def test_a_missing_path_is_named_with_the_alternatives(tmp_path):
    btxrd = {"path": str(tmp_path / "nowhere"), "url": "", "md5": None, "size_bytes": None, "download_dir": None}
    with pytest.raises(FileNotFoundError, match=r"data\.btxrd\.path: '.*nowhere' does not exist.*set it to null"):
        fetch_data(tmp_path / "raw", DataConfig(source="btxrd", btxrd=btxrd), seed=0)


@pytest.mark.parametrize(
    ("source", "btxrd", "match"),
    [
        ("kaggle", {}, r"unknown source 'kaggle'; valid sources are \['sample', 'btxrd'\]"),
        ("btxrd", {"path": None, "mirror": "x"}, r"data\.btxrd: unknown key\(s\) \['mirror'\]"),
        ("btxrd", {"path": None, "url": ""}, r"`path` is null and `url` is empty"),
    ],
    ids=["unknown-source", "unknown-key", "nothing-to-fetch"],
)
def test_bad_data_params_are_refused_with_the_valid_choices(tmp_path, source, btxrd, match):
    with pytest.raises(ValueError, match=match):
        fetch_data(tmp_path / "raw", DataConfig(source=source, btxrd=btxrd), seed=0)


# --- sample source and the stage --------------------------------------------------------------------------


def _fake_sample_module(calls: list) -> types.ModuleType:
    module = types.ModuleType("assurexray.data.sample")

    def generate_sample(out_dir, *, n_cases, image_size, duplicate_fraction, seed):
        calls.append({"n_cases": n_cases, "image_size": image_size, "duplicate_fraction": duplicate_fraction,
                      "seed": seed})
        if n_cases < 0:
            raise ValueError("n_cases must be >= 0")
        (Path(out_dir) / "dataset.csv").write_text(f"cases,{n_cases}\n")
        return Path(out_dir)

    module.generate_sample = generate_sample
    return module


def test_the_sample_source_generates_into_out_atomically_with_the_seed(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "assurexray.data.sample", _fake_sample_module(calls))
    sample = {"n_cases": 5, "image_size": 64, "duplicate_fraction": 0.1}
    fetch_data(tmp_path / "raw", DataConfig(source="sample", sample=sample), seed=7)
    assert calls == [sample | {"seed": 7}]
    assert (tmp_path / "raw" / "dataset.csv").read_text() == "cases,5\n"
    with pytest.raises(ValueError, match="n_cases must be"):
        fetch_data(tmp_path / "raw", DataConfig(source="sample", sample=sample | {"n_cases": -1}), seed=7)
    assert (tmp_path / "raw" / "dataset.csv").read_text() == "cases,5\n"
    with pytest.raises(ValueError, match=r"data\.sample: missing key\(s\) \['image_size'\]"):
        fetch_data(tmp_path / "raw", DataConfig(source="sample", sample={"n_cases": 1, "duplicate_fraction": 0.0}),
                   seed=7)


def test_the_fetch_stage_imports_a_local_folder_named_in_params(repo_root, tmp_path):
    _write_tree(tmp_path / "src", _release_files())
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["data"]["source"] = "btxrd"
    params["data"]["btxrd"]["path"] = str(tmp_path / "src")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, "stages/fetch.py", "--out", str(tmp_path / "raw"), "--params", str(tmp_path / "params.yaml")],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    _assert_release_layout(tmp_path / "raw")
    assert "skipped 1 file(s): nested Annotations/Annotations/ copy" in proc.stderr
    assert "skipped 1 file(s): Office lock file" in proc.stderr
