"""A real browser: JupyterLab headless on localhost, lesson 01 run in it, the guidance slider moved by keyboard.

Needs Playwright for Python (a dev dependency) and a Chromium executable (Debian's ``chromium``, which
``.ci/run`` installs). Skipped, with the reason, only where no Chromium can be found.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSON = "01_scores_and_noise.ipynb"  # the fastest lesson with a guidance-scale slider panel
CHROMIUM = os.environ.get("LESSONLIB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium executable (install Debian's 'chromium' package, as .ci/run does, "
                             "or set LESSONLIB_CHROMIUM to a Chromium binary)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab serving a copy of the lesson (so autosave never touches the committed notebook)."""
    nb = nbformat.read(ROOT / "notebooks" / LESSON, as_version=4)
    for cell in nb.cells:  # start from a clean notebook, as a student who clears outputs would
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, tmp_path / LESSON)
    port, token, log = _free_port(), "lessonlib-browser-test", tmp_path / "jupyterlab.log"
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel's inline backend draws the figures
    env.update(TQDM_DISABLE="1", JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"JupyterLab did not start: {log.read_text()[-2000:]}")
            time.sleep(0.5)
    yield f"{base}/lab/tree/{LESSON}?token={token}"
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def _run_all_cells(page, *, attempts: int = 3) -> None:
    """Run -> Run All Cells once the kernel is idle; retry if no cell starts (a click before the kernel connects is lost)."""
    started = page.locator(".jp-InputArea-prompt", has_text=re.compile(r"\[(\*|\d+)\]"))
    for _ in range(attempts):
        page.get_by_text(re.compile(r"\|\s*Idle")).first.wait_for(timeout=120_000)  # the status bar's kernel state
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            started.first.wait_for(timeout=30_000)
            return
        except playwright_api.TimeoutError:
            page.keyboard.press("Escape")
    pytest.fail(f"no cell started after {attempts} tries of Run All Cells")


def _wait_for_lesson(page, folder: Path, *, timeout_s: float) -> None:
    """Wait for the lesson's closing "all checks passed"; on an error output or a timeout, fail with what the page shows."""
    done = page.locator(".jp-OutputArea-output", has_text="all checks passed")
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']", has_text="Error")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done.count():
            return
        if errors.count():
            break
        page.wait_for_timeout(2000)
    prompts = page.locator(".jp-InputArea-prompt").all_inner_texts()
    page.screenshot(path=str(folder / "browser_failure.png"), full_page=True)
    detail = errors.first.inner_text()[-1500:] if errors.count() else "no error output"
    pytest.fail(f"the lesson did not finish in the browser within {timeout_s:.0f} s; prompts {prompts}; {detail}; "
                f"screenshot {folder / 'browser_failure.png'}")


def test_guidance_slider_moved_by_keyboard_changes_the_image(jupyterlab, tmp_path):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(jupyterlab)
            page.locator(".jp-Notebook").first.wait_for(timeout=90_000)
            _run_all_cells(page)
            _wait_for_lesson(page, tmp_path, timeout_s=420)
            if os.environ.get("LESSONLIB_SCREENSHOT_DIR"):
                Path(os.environ["LESSONLIB_SCREENSHOT_DIR"], "browser_test.html").write_text(page.content())
            panel = page.locator(".widget-vbox", has=page.locator(".widget-slider")).filter(
                has=page.locator(".widget-image")).first
            image, handle = panel.locator(".widget-image").first, panel.locator(".noUi-handle").first
            handle.scroll_into_view_if_needed()
            before = image.get_attribute("src")
            readout_box = panel.locator(".widget-readout").first
            readout = readout_box.text_content()  # the DOM text: inner_text is empty while a view re-renders
            handle.focus()
            for _ in range(2):
                page.keyboard.press("ArrowRight")
            page.wait_for_function("([img, old]) => img.getAttribute('src') !== old",
                                   arg=[image.element_handle(), before], timeout=120_000)
            after = image.get_attribute("src")
            page.wait_for_function("([box, old]) => box.textContent.trim() !== '' && box.textContent !== old",
                                   arg=[readout_box.element_handle(), readout], timeout=30_000)
            new_readout = readout_box.text_content()
            if os.environ.get("LESSONLIB_SCREENSHOT_DIR"):  # to look at what the test saw
                page.screenshot(path=str(Path(os.environ["LESSONLIB_SCREENSHOT_DIR"]) / "browser_test.png"))
        finally:
            browser.close()
    assert before and after and after != before, "moving the slider must change the image"
    assert float(new_readout) > float(readout), f"the slider should have moved up: {readout} -> {new_readout}"
