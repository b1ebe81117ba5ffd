"""`dvc plots show` and `dvc plots diff` render offline: the real dvc CLI writes the page, headless Chromium opens it
with the network cut.

A tiny temp repo holds the project's dvc.yaml, .dvc/config and .dvc/plots templates plus plot data built in code.
The same page with DVC's own template (Vega from a CDN) is the control: offline its charts have no size, which
is the failure this guards against. Screenshots go to test-artifacts/ (git-ignored). Skips without Chromium,
Playwright or git, except under CI=true, where that is a failure (conftest.skip_or_fail).
Waits are for events (every chart drawn, or Vega absent so nothing can draw), never for a length of time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import import_or_skip, skip_or_fail
from test_app_browser import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS, HANG_GUARD_MS

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["Normal", "Benign", "Malignant"]
VARIANTS = ("stratified", "center")
VEGA_CHARTS = 4  # training loss, ROC, precision-recall, confusion (dvc.yaml top-level plots)
GALLERY = [f"{c}_{o}.png" for c in CLASSES for o in ("tp", "fp", "fn")]  # the explain stage's per-category PNGs
#: A page with four charts and four small figures fits in this many CSS pixels at a 1400 px wide window; the whole
#: gallery folders (18 more figures) or the charts stacked one per row with blank blocks beside them do not.
PAGE_HEIGHT_LIMIT = 2200


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=1500, check=False)  # hang guard only
    assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def _plot_data(repo: Path) -> dict[tuple[str, str], float]:
    """Files in the formats evaluate and DVCLive write, for both variants; the area under each ROC curve written
    ((variant, class) -> trapezoidal AUC over the points in file order, as sklearn.metrics.auc computes it)."""
    rng = np.random.default_rng(0)
    aucs = {}
    for variant in VARIANTS:
        ev = repo / "metrics" / variant / "eval"
        ev.mkdir(parents=True)
        roc, pr = [], []
        for c in CLASSES:
            fpr = np.r_[0.0, np.sort(rng.uniform(size=6)), 1.0]
            roc += [{"class": c, "fpr": float(f), "tpr": float(min(1.0, f ** 0.5))} for f in fpr]
            aucs[variant, c] = float(np.trapezoid(np.minimum(1.0, fpr ** 0.5), fpr))
            pr += [{"class": c, "recall": float(r), "precision": float(0.5 + 0.5 * (1 - r))} for r in fpr[::-1]]
        (ev / "roc.json").write_text(json.dumps({"roc": roc}))
        (ev / "pr.json").write_text(json.dumps({"pr": pr}))
        pairs = [{"actual": CLASSES[a], "predicted": CLASSES[p]} for a, p in rng.integers(0, 3, size=(30, 2))]
        (ev / "confusion.json").write_text(json.dumps(pairs))
        for part in ("train", "val"):
            tsv = repo / "metrics" / variant / "train" / "plots" / "metrics" / part / "loss.tsv"
            tsv.parent.mkdir(parents=True)
            tsv.write_text("step\tloss\n" + "".join(f"{s}\t{1.0 / (s + 1) + 0.1 * (part == 'val')}\n" for s in range(4)))
        for sub, name in (("eval", "reliability.png"), ("gradcam", "overview.png"),
                          *(("gradcam", category) for category in GALLERY)):
            (repo / "plots" / variant / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(repo / "plots" / variant / sub / name)
    return aucs


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory) -> Path:
    if CHROMIUM is None:
        skip_or_fail("chromium not installed (apt-get install chromium)")
    import_or_skip("playwright.sync_api", "playwright not installed (pip install playwright)")
    if shutil.which("git") is None:
        skip_or_fail("git is not installed")
    repo = tmp_path_factory.mktemp("plots") / "repo"
    repo.mkdir()
    shutil.copy2(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy2(REPO_ROOT / "params.yaml", repo / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    shutil.copytree(REPO_ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    shutil.copy2(REPO_ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # plots.html_template
    repo_aucs = _plot_data(repo)
    (repo / "aucs.json").write_text(json.dumps({f"{v}/{c}": auc for (v, c), auc in repo_aucs.items()}))
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-qm", "plot data"],
                   cwd=repo, check=True)  # a revision for `dvc plots diff`
    return repo


def _chart_sizes(page_path: Path, screenshot: Path) -> list[dict]:
    """Open ``page_path`` offline (every non-file request aborted); the size of each Vega chart's drawing, where
    it sits on the page (``top``, ``bottom``, in CSS px), its text (SVG charts only) and the page's height."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    ids = re.findall(r"vegaEmbed\('#([^']+)'", page_path.read_text(encoding="utf-8"))
    requested: list[str] = []
    measure = """ids => ids.map(id => {
        const div = document.getElementById(id);
        const box = div.getBoundingClientRect();
        const drawn = div.querySelector('canvas, svg');
        const d = drawn ? drawn.getBoundingClientRect() : {width: 0, height: 0};
        return {id, width: box.width, height: box.height, drawn_width: d.width, drawn_height: d.height,
                top: box.top + window.scrollY, bottom: box.bottom + window.scrollY,
                text: Array.from(div.querySelectorAll('svg text')).map(t => t.textContent).join('\\n'),
                page_height: document.documentElement.scrollHeight};
    })"""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(offline=True, viewport={"width": 1400, "height": 1000})

            def block(route):
                if route.request.url.startswith("file:"):
                    return route.continue_()
                requested.append(route.request.url)
                return route.abort()

            context.route("**/*", block)
            page = context.new_page()
            page.set_default_timeout(HANG_GUARD_MS)
            page.goto(page_path.as_uri())  # returns after the load event: every script has run or failed to load
            try:  # vega-embed draws asynchronously after load; without vegaEmbed (CDN blocked) nothing ever will
                page.wait_for_function(
                    f"ids => typeof vegaEmbed === 'undefined' || ({measure})(ids).every(c => c.drawn_height > 0)",
                    arg=ids)
            except PlaywrightError:
                pass  # only a hung page gets here; measured below, so the assertion shows what was (not) drawn
            sizes = page.evaluate(measure, ids)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return [dict(s, blocked=requested) for s in sizes]


def test_dvc_plots_show_renders_every_chart_offline_with_the_project_template(plots_repo):
    out = plots_repo / "dvc_plots"
    _dvc(plots_repo, "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in html and "NOT FOR CLINICAL USE" in html
    ARTIFACTS.mkdir(exist_ok=True)
    sizes = _chart_sizes(out / "index.html", ARTIFACTS / "dvc_plots_offline.png")
    assert len(sizes) == VEGA_CHARTS, sizes
    for chart in sizes:
        assert chart["drawn_width"] > 100 and chart["drawn_height"] > 100, chart
    assert sizes[0]["blocked"] == []  # nothing was even requested from the network
    assert html.count('<img src="static/') == 4  # reliability + Grad-CAM overview per variant, each once
    assert "gradcam_Benign_fp" not in html  # the per-category galleries (and their "no cases" panels) stay off


def test_dvc_plots_show_is_short_with_tops_aligned_and_each_roc_curve_s_auc_in_its_legend(plots_repo):
    out = plots_repo / "dvc_plots_layout"
    _dvc(plots_repo, "plots", "show", "-o", str(out))
    ARTIFACTS.mkdir(exist_ok=True)
    sizes = _chart_sizes(out / "index.html", ARTIFACTS / "dvc_plots_layout.png")
    assert sizes[0]["page_height"] < PAGE_HEIGHT_LIMIT, sizes[0]["page_height"]
    for a in sizes:  # charts side by side share their top: no blank block above the shorter one
        for b in sizes:
            if a["top"] < b["bottom"] and b["top"] < a["bottom"]:
                assert abs(a["top"] - b["top"]) <= 1, (a["id"], a["top"], b["id"], b["top"])
    roc = next(chart for chart in sizes if chart["id"].startswith("ROC"))
    aucs = json.loads((plots_repo / "aucs.json").read_text())
    legend = roc["text"].splitlines()
    for variant_class, auc in aucs.items():
        assert f"{variant_class.split('/')[1]} AUC {auc:.3f}" in legend, (variant_class, auc, legend)
    assert "Stratified split" in legend and "Centre hold-out" in legend  # variant headers, in words
    assert any("chance" in line for line in legend)  # the diagonal is explained


def test_control_dvc_default_template_charts_collapse_offline(plots_repo, tmp_path):
    from dvc_render.html import PAGE_HTML  # DVC's own page: Vega from the CDN

    default = tmp_path / "default.html"
    default.write_text(PAGE_HTML, encoding="utf-8")
    out = plots_repo / "dvc_plots_default"
    _dvc(plots_repo, "plots", "show", "-o", str(out), "--html-template", str(default))
    sizes = _chart_sizes(out / "index.html", ARTIFACTS / "dvc_plots_default_offline.png")
    assert len(sizes) == VEGA_CHARTS
    assert all(chart["height"] == 0 and chart["drawn_height"] == 0 for chart in sizes), sizes
    assert any("cdn.jsdelivr.net" in url for url in sizes[0]["blocked"])


def test_dvc_plots_diff_renders_every_chart_offline(plots_repo):
    out = plots_repo / "plots_diff"
    _dvc(plots_repo, "plots", "diff", "HEAD", "-o", str(out))  # as the README runs it, against a revision
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr.net" not in html and "NOT FOR CLINICAL USE" in html
    ARTIFACTS.mkdir(exist_ok=True)
    sizes = _chart_sizes(out / "index.html", ARTIFACTS / "dvc_plots_diff_offline.png")
    assert len(sizes) == VEGA_CHARTS, sizes
    for chart in sizes:
        assert chart["drawn_width"] > 100 and chart["drawn_height"] > 100, chart
    assert sizes[0]["blocked"] == []


def test_a_variant_s_full_gallery_opens_on_its_own_page_as_the_readme_says(plots_repo):
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "`dvc plots show plots/center/gradcam` shows a variant's full gallery on its own page" in readme
    out = plots_repo / "dvc_plots_gallery"
    _dvc(plots_repo, "plots", "show", "plots/center/gradcam", "-o", str(out))
    html = (out / "index.html").read_text(encoding="utf-8")
    shown = set(re.findall(r'<img src="static/workspace_plots_center_gradcam_(\w+)\.png"', html))
    assert shown == {name.removesuffix(".png") for name in GALLERY} | {"overview"}  # every category and overview
    assert "NOT FOR CLINICAL USE" in html and "plots/stratified" not in html
