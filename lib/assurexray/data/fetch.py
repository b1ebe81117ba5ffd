"""Get the raw data into ``data/raw`` in the BTXRD release layout: the synthetic sample or the real release.

The real release is ``BTXRD.zip`` on figshare (article 27865398). It is downloaded with resume (a ``.part`` file
and an HTTP Range request), checked for size and MD5 *before* anything is extracted (a bad archive is moved
aside to ``.bad``, never extracted), then unpacked without the release's quirks: a stray nested
``Annotations/Annotations/`` copy and an Excel lock file ``~$dataset.xlsx``. A local zip or an extracted (possibly
resized) folder can be given instead of downloading. Every output directory is written atomically.
Over 400 lines on purpose: download (resume, redirects, checksum), archive extraction (zip-slip, layout) and
folder import share the release-layout checks.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from zlib import error as zlib_error
from pathlib import Path, PurePosixPath
from dataclasses import dataclass
from typing import Any, Mapping

from tqdm import tqdm

from assurexray import __version__
from assurexray.core.atomic import atomic_dir
from assurexray.core.filetypes import DATASET_SUFFIXES
from assurexray.core.params import check_keys

__all__ = ["DataConfig", "SOURCES", "IMAGE_SUFFIXES", "SHEET_NAMES", "fetch_data", "download", "verify_archive",
           "extract_release", "import_release"]

logger = logging.getLogger(__name__)

#: Values of ``data.source``.
SOURCES: tuple[str, ...] = ("sample", "btxrd")
#: Image files accepted in ``images/`` (the release has .jpeg; resized copies may be .jpg, .png, .tif...):
#: exactly the suffixes ``prepare`` reads (assurexray.core.filetypes.DATASET_SUFFIXES), so no file fetch keeps is refused later, and
#: none it drops would have been used.
IMAGE_SUFFIXES: tuple[str, ...] = tuple(sorted(DATASET_SUFFIXES))
#: Metadata sheet names, in order of preference.
SHEET_NAMES: tuple[str, ...] = ("dataset.xlsx", "dataset.csv")
SAMPLE_KEYS: tuple[str, ...] = ("n_cases", "image_size", "duplicate_fraction")
BTXRD_KEYS: tuple[str, ...] = ("path", "url", "md5", "size_bytes", "download_dir", "case_sheets")
#: Written beside dataset.xlsx when ``data.btxrd.case_sheets`` is set: one row per image, its case (cases.py).
CASES_NAME = "cases.csv"
ARCHIVE_NAME = "BTXRD.zip"
_RELEASE_DIR = "BTXRD"
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` section of params.yaml, passed whole to :func:`fetch_data`. ``sample`` and ``btxrd`` are
    plain mappings that :func:`fetch_data` checks against ``SAMPLE_KEYS`` / ``BTXRD_KEYS`` (only the one
    ``source`` uses matters; None = empty).
    """

    source: str  # sample | btxrd
    sample: Mapping[str, Any] | None = None
    btxrd: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"data.source: unknown source {self.source!r}; valid sources are {list(SOURCES)}.")
        for name in ("sample", "btxrd"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise TypeError(f"data.{name}: expected a block of keys, got {value!r}.")


def fetch_data(out_dir: str | os.PathLike, config: DataConfig, *, seed: int) -> Path:
    """Write the raw dataset of ``config.source`` to ``out_dir`` (replaced whole, atomically); return ``out_dir``.

    ``seed`` (params ``base.seed``) draws the synthetic sample.
    """
    out_dir = Path(out_dir)
    sample, btxrd = dict(config.sample or {}), dict(config.btxrd or {})
    if config.source == "sample":
        check_keys(sample, SAMPLE_KEYS, where="data.sample")
        missing = [key for key in SAMPLE_KEYS if key not in sample]
        if missing:
            raise ValueError(f"data.sample: missing key(s) {missing}; the sample needs {list(SAMPLE_KEYS)}.")
        # Imported here so that the real-data path works without the synthetic generator (and vice versa).
        from assurexray.data.sample import generate_sample

        with atomic_dir(out_dir) as tmp:
            generate_sample(tmp, **{key: sample[key] for key in SAMPLE_KEYS}, seed=seed)
        logger.info("synthetic sample written to %s", out_dir)
        return out_dir

    check_keys(btxrd, BTXRD_KEYS, where="data.btxrd")
    cases = _case_table(btxrd.get("case_sheets"))
    if btxrd.get("path") is not None:
        return import_release(
            btxrd["path"], out_dir, expected_size=btxrd.get("size_bytes"), expected_md5=btxrd.get("md5"),
            cases=cases,
        )
    if not btxrd.get("url"):
        raise ValueError("data.btxrd: `path` is null and `url` is empty; set one of them in params.yaml.")
    download_dir = Path(btxrd.get("download_dir") or "data/downloads")
    archive = download(
        btxrd["url"],
        download_dir / ARCHIVE_NAME,
        expected_size=btxrd.get("size_bytes"),
        expected_md5=btxrd.get("md5"),
    )
    return extract_release(archive, out_dir, cases=cases)


def _case_table(case_sheets: Any) -> Any:
    """The case table of ``data.btxrd.case_sheets`` (a path or a list of paths), or None when unset."""
    if case_sheets is None or case_sheets == []:
        return None
    from assurexray.data.cases import read_case_sheets

    paths = [case_sheets] if isinstance(case_sheets, (str, os.PathLike)) else list(case_sheets)
    return read_case_sheets(paths)


def _write_cases(tmp: Path, cases: Any) -> None:
    if cases is not None:
        cases.to_csv(tmp / CASES_NAME, index=False)
        logger.info("%s: case ids of %d images from %s", CASES_NAME, len(cases), sorted(set(cases["sheet"])))


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_size: int | None,
    expected_md5: str | None,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
    retries: int = 3,
) -> Path:
    """Download ``url`` to ``dest`` with resume, then verify it; return ``dest``.

    Bytes go to ``dest + '.part'``; an interrupted run (or a dropped connection, retried up to ``retries``
    times) resumes from its end with a Range request. A server that ignores Range (200) restarts from zero; a
    416 means the part is complete or stale. An existing ``dest`` that verifies is reused. A file failing the
    size/MD5 check is moved to ``dest + '.bad'`` and a ``ValueError`` says how to retry.
    """
    _check_url(url)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        logger.info("%s already downloaded; verifying it", dest)
        _verify_or_quarantine(dest, expected_size=expected_size, expected_md5=expected_md5)
        return dest
    part = dest.with_name(dest.name + ".part")
    if part.is_file() and expected_size is not None and part.stat().st_size > expected_size:
        logger.warning("%s is larger than the expected %d bytes; restarting the download", part, expected_size)
        part.unlink()
    failures = 0
    restarted = False
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        if expected_size is not None and offset == expected_size:
            break
        try:
            _fetch_once(url, part, offset=offset, expected_size=expected_size, chunk_size=chunk_size,
                        timeout=timeout)
            break
        except urllib.error.HTTPError as err:
            if err.code != 416 or restarted:
                raise ConnectionError(
                    f"downloading {url}: HTTP {err.code} {err.reason}; check data.btxrd.url, or download "
                    f"{ARCHIVE_NAME} by hand and set data.btxrd.path to it."
                ) from err
            total = _content_range_total(err.headers.get("Content-Range", ""))
            if total is not None and total == offset:
                logger.info("server reports %s is already complete (%d bytes)", part, offset)
                break
            logger.warning("server refused resuming %s at byte %d (416); restarting from zero", part, offset)
            part.unlink()
            restarted = True
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as err:
            failures += 1
            if failures > retries:
                raise ConnectionError(
                    f"downloading {url} failed after {failures} attempts ({err}); {part} keeps the "
                    f"{part.stat().st_size if part.is_file() else 0} bytes received: rerun to resume."
                ) from err
            logger.warning("download interrupted (%s); resuming (attempt %d of %d)", err, failures, retries)
    os.replace(part, dest)
    _verify_or_quarantine(dest, expected_size=expected_size, expected_md5=expected_md5)
    return dest


def verify_archive(path: str | os.PathLike, *, expected_size: int | None, expected_md5: str | None) -> None:
    """Raise ``ValueError`` if ``path`` does not have the expected size (bytes) and MD5; ``None`` skips a check."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: archive not found.")
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise ValueError(f"{path}: size is {size} bytes, expected {expected_size} (data.btxrd.size_bytes).")
    if expected_md5 is None:
        logger.warning("%s: no expected MD5 given (data.btxrd.md5 is null); content not checked", path)
        return
    md5 = _md5(path)
    if md5.lower() != str(expected_md5).lower():
        raise ValueError(f"{path}: MD5 is {md5}, expected {expected_md5!r} (data.btxrd.md5).")
    logger.info("%s: size and MD5 verified", path)


def extract_release(zip_path: str | os.PathLike, out_dir: str | os.PathLike, *, cases: Any = None) -> Path:
    """Extract the ``BTXRD/`` folder of the release zip into ``out_dir`` (replaced atomically); return it.

    Kept: ``images/*`` (jpeg/jpg/png), ``Annotations/*.json`` and the dataset sheet. Skipped and counted in the
    log: the nested ``Annotations/Annotations/`` copy, Office lock files (``~$*``), and anything else.
    """
    zip_path, out_dir = Path(zip_path), Path(out_dir)
    if not zip_path.is_file():
        raise FileNotFoundError(f"{zip_path}: zip archive not found.")
    if not zipfile.is_zipfile(zip_path):
        raise ValueError(f"{zip_path}: not a zip archive; give BTXRD.zip or the extracted BTXRD folder.")
    with zipfile.ZipFile(zip_path) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        root = _find_zip_root(zip_path, [info.filename for info in members])
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        skipped: dict[str, list[str]] = {}
        for info in members:
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts:
                raise ValueError(f"{zip_path}: unsafe member path {info.filename!r}; refusing to extract.")
            if name.parts[: len(root.parts)] != root.parts:
                skipped.setdefault("outside BTXRD/", []).append(info.filename)
                continue
            relative = PurePosixPath(*name.parts[len(root.parts):])
            reason = _skip_reason(relative)
            if reason:
                skipped.setdefault(reason, []).append(info.filename)
            else:
                plan.append((info, relative))
        plan = _one_sheet(plan, skipped)
        _check_layout({str(relative) for _, relative in plan}, where=str(zip_path))
        with atomic_dir(out_dir) as tmp:
            for info, relative in tqdm(plan, desc=f"extract {zip_path.name}", unit="file"):
                target = tmp.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with archive.open(info) as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst, _HASH_CHUNK)
                except (zipfile.BadZipFile, EOFError, NotImplementedError, zlib_error) as err:
                    raise ValueError(
                        f"{zip_path}: member {info.filename!r} is corrupt ({type(err).__name__}: {err}); nothing "
                        f"was extracted to {out_dir}. Download the archive again (delete it first) or extract "
                        "it by hand and set data.btxrd.path to the folder."
                    ) from err
            _write_cases(tmp, cases)  # after the copy: the given sheets win over a cases.csv in the source
    _log_summary(out_dir, skipped)
    return out_dir


def import_release(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    expected_size: int | None,
    expected_md5: str | None,
    cases: Any = None,
) -> Path:
    """Import a local ``BTXRD.zip`` (verified first) or an extracted release folder into ``out_dir``.

    A folder may be the one holding ``BTXRD/`` or the BTXRD folder itself, and may be a resized copy
    (.jpg/.png images). Nothing is verified for folders: their content is the user's choice.
    """
    path, out_dir = Path(path), Path(out_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"data.btxrd.path: {str(path)!r} does not exist; give the path of BTXRD.zip or of the extracted "
            "BTXRD folder, or set it to null to download the release."
        )
    if path.is_file():
        try:
            verify_archive(path, expected_size=expected_size, expected_md5=expected_md5)
        except ValueError as err:
            raise ValueError(
                f"{err} This is not the official BTXRD.zip; give the official archive, or an extracted "
                "BTXRD folder instead (data.btxrd.path may point to a folder, which is not checksummed)."
            ) from err
        return extract_release(path, out_dir, cases=cases)
    root = path / _RELEASE_DIR if (path / _RELEASE_DIR / "images").is_dir() else path
    files = sorted(p for p in root.rglob("*") if p.is_file())
    plan: list[tuple[Path, PurePosixPath]] = []
    skipped: dict[str, list[str]] = {}
    for file in files:
        relative = PurePosixPath(file.relative_to(root).as_posix())
        reason = _skip_reason(relative)
        if reason:
            skipped.setdefault(reason, []).append(str(file))
        else:
            plan.append((file, relative))
    plan = _one_sheet(plan, skipped)
    _check_layout({str(relative) for _, relative in plan}, where=str(root))
    with atomic_dir(out_dir) as tmp:
        for file, relative in tqdm(plan, desc=f"import {root.name}", unit="file"):
            target = tmp.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
        _write_cases(tmp, cases)  # after the copy: the given sheets win over a cases.csv in the source
    _log_summary(out_dir, skipped)
    return out_dir


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s): figshare redirects to S3, never legitimately to file:// or ftp://."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 (stdlib signature)
        _check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(str(url)).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"data.btxrd.url: only http(s) URLs are fetched, got {url!r}.")


def _fetch_once(
    url: str, part: Path, *, offset: int, expected_size: int | None, chunk_size: int, timeout: float
) -> None:
    """One request: append to ``part`` from ``offset`` (206) or rewrite it from zero (200)."""
    request = urllib.request.Request(url, headers={"User-Agent": f"assurexray/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    with opener.open(request, timeout=timeout) as response:
        status = response.status
        if status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != offset:
                raise ValueError(
                    f"downloading {url}: asked for bytes from {offset}, the server sent bytes from {start}; "
                    f"delete {part} and rerun to download from zero."
                )
            mode = "ab"
        else:
            if offset:
                logger.warning("server ignored the Range request (HTTP %d); restarting %s from zero", status,
                               part.name)
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None and length.isdigit() else None
        if expected_size is not None and total is not None and total != expected_size:
            raise ValueError(
                f"downloading {url}: the server reports {total} bytes, expected {expected_size} "
                "(data.btxrd.size_bytes): this is not the official BTXRD.zip. Check data.btxrd.url and "
                "data.btxrd.size_bytes, or download the archive by hand and set data.btxrd.path."
            )
        with part.open(mode) as fh, tqdm(
            total=expected_size or total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
        ) as bar:
            received = 0
            while chunk := response.read(chunk_size):
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # http.client returns b"" (no IncompleteRead) when the connection drops early: compare with the header.
    if total is not None and offset + received < total:
        raise ConnectionError(f"connection closed after {offset + received} of {total} bytes")


def _content_range_start(header: str) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", header)
    return int(match.group(1)) if match else None


def _content_range_total(header: str) -> int | None:
    match = re.match(r"\s*bytes\s+(?:\*|\d+-\d+)/(\d+)", header)
    return int(match.group(1)) if match else None


def _verify_or_quarantine(path: Path, *, expected_size: int | None, expected_md5: str | None) -> None:
    try:
        verify_archive(path, expected_size=expected_size, expected_md5=expected_md5)
    except ValueError as err:
        bad = path.with_name(path.name + ".bad")
        os.replace(path, bad)
        raise ValueError(
            f"{err} The file was moved to {bad} and nothing was extracted. To retry, rerun the fetch stage "
            f"(it downloads afresh; delete {bad.name} once done), or download {ARCHIVE_NAME} by hand and "
            "set data.btxrd.path to it."
        ) from err


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"md5 {path.name}"
    ) as bar:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _find_zip_root(zip_path: Path, names: list[str]) -> PurePosixPath:
    """The top-level ``BTXRD/`` folder of the release zip."""
    if not any(PurePosixPath(name).parts[0] == _RELEASE_DIR for name in names):
        top = sorted({PurePosixPath(name).parts[0] for name in names})
        raise ValueError(
            f"{zip_path}: no top-level {_RELEASE_DIR}/ folder in the archive (top-level entries: {top[:10]}); "
            "this is not the BTXRD release zip. Give BTXRD.zip or an extracted BTXRD folder."
        )
    return PurePosixPath(_RELEASE_DIR)


def _skip_reason(relative: PurePosixPath) -> str | None:
    """Why a release file is left out of ``data/raw`` (``None``: kept)."""
    parts = relative.parts
    name = parts[-1]
    if name.startswith("~$"):
        return "Office lock file (~$)"
    if parts[0] == "__MACOSX" or name == ".DS_Store" or name.startswith("._"):
        return "macOS metadata"
    if len(parts) == 1:
        return None if name in SHEET_NAMES + (CASES_NAME,) else "unexpected top-level file"
    if parts[0] == "Annotations":
        if len(parts) > 2 and parts[1] == "Annotations":
            return "nested Annotations/Annotations/ copy"
        return None if len(parts) == 2 and name.lower().endswith(".json") else "unexpected file in Annotations/"
    if parts[0] == "images":
        return None if len(parts) == 2 and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES else (
            "unexpected file in images/")
    return "unexpected folder"


def _one_sheet(plan: list[tuple[Any, PurePosixPath]], skipped: dict[str, list[str]]) -> list:
    """Keep one metadata sheet (the first of ``SHEET_NAMES`` present) so ``prepare`` never has to choose."""
    present = [name for name in SHEET_NAMES if PurePosixPath(name) in {rel for _, rel in plan}]
    spare = {PurePosixPath(name) for name in present[1:]}
    if spare:
        skipped.setdefault(f"spare sheet ({present[0]} is used)", []).extend(sorted(map(str, spare)))
    return [(src, rel) for src, rel in plan if rel not in spare]


def _check_layout(relatives: set[str], *, where: str) -> None:
    """Fail unless the kept files include at least one image and a dataset sheet."""
    if not any(name.startswith("images/") for name in relatives):
        raise ValueError(
            f"{where}: no images/ folder with {'/'.join(IMAGE_SUFFIXES)} files; expected the BTXRD release layout "
            "(images/, Annotations/, dataset.xlsx). Point data.btxrd.path at the folder holding BTXRD/ or at "
            "BTXRD itself."
        )
    if not any(name in SHEET_NAMES for name in relatives):
        raise ValueError(
            f"{where}: no dataset sheet ({' or '.join(SHEET_NAMES)}) beside images/; the metadata sheet is "
            "needed for the labels. Copy it from the release."
        )


def _log_summary(out_dir: Path, skipped: dict[str, list[str]]) -> None:
    n_images = sum(1 for _ in (out_dir / "images").iterdir())
    annotations = out_dir / "Annotations"
    n_json = sum(1 for _ in annotations.iterdir()) if annotations.is_dir() else 0
    logger.info("%s: %d images, %d annotation files", out_dir, n_images, n_json)
    for reason, names in sorted(skipped.items()):
        # Known release quirks are routine (INFO); anything unexpected could be data the user meant to keep.
        level = logging.WARNING if reason.startswith("unexpected") else logging.INFO
        logger.log(level, "skipped %d file(s): %s (e.g. %s)", len(names), reason, names[:3])
