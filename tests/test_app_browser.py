"""End to end in a real headless Chromium: `streamlit run app/app.py` on loopback, driven with Playwright.

Skips cleanly where Chromium or Playwright is absent. Screenshots go to test-artifacts/ (git-ignored).
Every wait is for an event (the health endpoint answering, an element appearing, Streamlit's script run ending), so
a loaded machine only makes it slower; the timeouts below are hang guards, never a measure of speed.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import skip_or_fail
from test_app import APP, CLASSES, REPO_ROOT, build_project, jpeg_bytes, write_results
from test_infer import CAVEAT, UNRELIABLE

from assurexray.serving.webapp import LESION_CAPTION

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # --headless comes from headless=True, the fresh --user-data-dir from launch_persistent_context
ARTIFACTS = REPO_ROOT / "test-artifacts"
SERVER_HANG_GUARD_S = 600  # /_stcore/health is polled until it answers; this only stops a hung server
HANG_GUARD_MS = 600_000  # each page state is awaited as an event; this only stops a hung page (ms)
#: The app's root element while no script run is in progress (Streamlit sets the attribute for its own e2e tests).
RUN_FINISHED = '[data-testid="stApp"][data-test-script-state="notRunning"]'
#: What the stratified model of build_project was trained on, as every page says before any number.
NOTICE = "Stratified split model: Trained on the built-in SYNTHETIC sample"


@pytest.fixture()
def server(tmp_path):
    """A Streamlit server on a free loopback port, its root a tiny project (its stratified model, the one an
    upload goes to, with a lesion head and a threshold marked unreliable); always stopped afterwards."""
    if CHROMIUM is None:
        skip_or_fail("chromium not installed (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_or_fail("playwright not installed (pip install playwright)")
    root = write_results(build_project(tmp_path / "project", lesion_head=True, threshold_record=UNRELIABLE),
                         threshold_records={"stratified": UNRELIABLE})
    port = _free_port()
    env = {**os.environ, "ASSUREXRAY_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "streamlit.log").open("w")
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", "127.0.0.1",
        "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", process, tmp_path / "streamlit.log")
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_upload_prediction_and_results_in_a_real_browser(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=HANG_GUARD_MS)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG")
    good = tmp_path / "ramp.jpg"
    good.write_bytes(jpeg_bytes())
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 2200},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(HANG_GUARD_MS)
            page.goto(server)
            expect(page.get_by_text("NOT FOR CLINICAL USE").first).to_be_visible()
            _run_finished(page)
            _notice_before_any_number(page)
            sidebar = page.get_by_test_id("stSidebar").inner_text()
            assert "Privacy:" in sidebar and str(tmp_path) not in sidebar and "project" not in sidebar, sidebar

            page.locator('input[type="file"]').set_input_files(str(broken))
            expect(page.get_by_text("Could not classify this file.")).to_be_visible()
            expect(page.get_by_text("'broken.png': not a readable image")).to_be_visible()
            _run_finished(page)

            page.locator('input[type="file"]').set_input_files(str(good))
            expect(page.get_by_text("Most probable class (argmax):")).to_be_visible()
            expect(page.get_by_text("Malignant flag at the operating point:")).to_be_visible()
            # the prediction's own notice (the page-top one starts with the model's name)
            expect(page.get_by_text(re.compile(r"^Trained on the built-in SYNTHETIC sample"))).to_be_visible()
            expect(page.get_by_text("No input check for this model")).to_be_visible()  # no familiarity.npz here
            # the threshold is marked unreliable: its caveat leads the threshold text, drawn as a warning box
            expect(page.get_by_test_id("stAlertContentWarning").filter(has_text=f"{CAVEAT} Malignant flag when")
                   ).to_be_visible()
            expect(page.locator('[data-testid="stTable"] tbody tr')).to_have_count(len(CLASSES))
            rows = page.eval_on_selector_all(
                '[data-testid="stTable"] tbody tr',
                "rows => rows.map(r => Array.from(r.querySelectorAll('th, td')).map(c => c.innerText.trim()))",
            )
            assert [r[0] for r in rows] == CLASSES
            assert math.isclose(sum(float(r[1]) for r in rows), 1.0, abs_tol=2e-4)
            expect(page.get_by_test_id("stVegaLiteChart")).to_have_count(1)  # the probability bar chart
            expect(page.get_by_text("Grad-CAM of the most probable class")).to_be_visible()
            expect(page.get_by_text(LESION_CAPTION)).to_be_visible()
            _run_finished(page)  # the run that drew the prediction is over: no stale element is left
            expect(page.locator('[data-testid="stImage"] img')).to_have_count(3)
            page.wait_for_function(  # original, Grad-CAM and lesion map all decoded by the browser
                "() => Array.from(document.querySelectorAll('[data-testid=\"stImage\"] img'))"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
            sizes = page.eval_on_selector_all(  # original and Grad-CAM overlay drawn at the same size
                '[data-testid="stImage"] img', "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
            assert len(sizes) == 3 and sizes[0] == sizes[1]
            captions = page.eval_on_selector_all(  # each picture with its own caption (none may lack one)
                '[data-testid="stImage"]',
                "els => els.map(e => (e.querySelector('[data-testid=\"stImageCaption\"]') || {}).innerText || '')")
            assert len(captions) == 3 and captions[2].startswith(LESION_CAPTION), captions
            assert "Lesion score (the map's maximum)" in captions[2] and "lesion box" in captions[2]
            expect(page.get_by_text("Could not classify this file.")).to_have_count(0)
            page.screenshot(path=str(ARTIFACTS / "app_try.png"), full_page=True)

            page.get_by_test_id("stSidebar").get_by_text("Results", exact=True).click()
            expect(page.get_by_text("Headline metrics")).to_be_visible()
            _run_finished(page)
            expect(page.get_by_text("0.200 (0.050–0.350)")).to_be_visible()  # the gap from compare.json
            _notice_before_any_number(page)
            expect(page.get_by_test_id("stAlertContentWarning").filter(has_text=f"Stratified split: {CAVEAT}")
                   ).to_be_visible()
            expect(page.get_by_text("NOT FOR CLINICAL USE").first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "app_results.png"), full_page=True)
        finally:
            browser.close()


def _notice_before_any_number(page) -> None:
    """The training-data notice is drawn, and no digit stands above it in the page body (banner and title hold
    none; the notice's own image counts are the first)."""
    from playwright.sync_api import expect

    expect(page.get_by_text(NOTICE)).to_be_visible()
    text = page.get_by_test_id("stMain").inner_text()
    first_digit = re.search(r"\d", text)
    assert first_digit is not None and text.index(NOTICE) <= first_digit.start(), text[:600]


def _run_finished(page) -> None:
    """Wait until Streamlit's current script run has ended (call it after the run's own output has appeared)."""
    page.locator(RUN_FINISHED).wait_for(state="attached")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_HANG_GUARD_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                if response.read().strip() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet; poll again until the deadline
        time.sleep(0.25)
    pytest.fail(f"streamlit not healthy at {url} within {SERVER_HANG_GUARD_S} s (hung?):\n{log.read_text()[-2000:]}")
