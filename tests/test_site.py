"""The course website (issue 40): built offline from the committed notebooks, every lesson a page, math and
figures rendered, lesson 07's slider moved in a real Chromium without a kernel, no request leaving the machine
and no broken internal link.

The build needs the ``site`` extra (Sphinx, MyST-NB, sphinx-book-theme, django-static-mathjax: in ``dev``); the
browser part needs Playwright and a Chromium, as tests/test_browser.py does, and is skipped with the reason
without them.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from lessonlib.widgets import FRAMES_MIME, SliderPanel, scale_slider

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("LESSONLIB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _png(shade: int) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("L", (4, 4), shade).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _record(**extra):
    return {"title": "t", "control": "scale", "label": "scale", "current": 1.0, "others": {"digit": 4},
            "frames": [{"value": v, "png": _png(40 * i), "caption": f"caption {v}"} for i, v in enumerate((0.0, 1.0, 3.0))],
            **extra}


def test_a_recorded_panel_becomes_a_range_input_over_its_frames():
    from lessonlib.site import slider_html
    page = slider_html(_record())
    assert 'type="range"' in page and 'max="2"' in page and 'value="1"' in page  # starts at the panel's setting
    data = json.loads(re.search(r'<script type="application/json">(.*)</script>', page).group(1))
    assert [d["label"] for d in data] == ["scale = 0", "scale = 1", "scale = 3"]
    assert "digit = 4" in page  # the controls held fixed are named


def test_a_caption_cannot_close_the_script_that_holds_it():
    from lessonlib.site import slider_html
    record = _record()
    record["frames"][0]["caption"] = "</script><script>alert(1)</script>"
    page = slider_html(record)
    assert page.count("</script>") == 1
    with pytest.raises(ValueError, match="no frames"):
        slider_html(_record(frames=[]))


def test_the_page_version_swaps_widgets_and_remote_badges_and_keeps_every_other_output():
    from lessonlib.site import prepare_notebook
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · T\n\n[![Open In Colab](https://x/badge.svg)](https://colab/x)\n\n"
                                              "![a figure](https://example.org/f.png) and $x^2$"),
                nbformat.v4.new_code_cell("panel", outputs=[
                    nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json":
                                                                 {"model_id": "m"}, "text/plain": "VBox()"}),
                    nbformat.v4.new_output("display_data", data={FRAMES_MIME: _record(), "text/plain": "(recorded)"}),
                    nbformat.v4.new_output("stream", name="stdout", text="a number 0.93\n")])]
    page, sliders = prepare_notebook(nb, "99_t", "LINKS")
    assert sliders == 1 and "widgets" not in page.metadata and "widgets" in nb.metadata  # the input is untouched
    assert "LINKS" in page.cells[0].source and "badge.svg" not in page.cells[0].source
    assert "](https://example.org/f.png)" in page.cells[0].source and "![" not in page.cells[0].source
    outs = page.cells[1].outputs
    assert "runs in JupyterLab or Colab" in outs[0].data["text/html"]
    assert 'class="lessonlib-slider"' in outs[1].data["text/html"]
    assert outs[2].text == "a number 0.93\n"


def _pixels(b64: str):
    import numpy as np
    from PIL import Image
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        return np.asarray(im.convert("RGBA"))


@pytest.mark.parametrize("kind", ["figure", "samples", "transparent"])
def test_pages_carry_each_figure_smaller_with_the_same_pixels(kind):
    import matplotlib
    import numpy as np
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lessonlib.site import web_png
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    if kind == "samples":  # a grid of noise pictures: thousands of colours, no palette
        ax.imshow(np.random.default_rng(0).random((28, 112, 3)), interpolation="nearest")
    else:
        ax.plot(np.sin(np.linspace(0, 9, 200)), label="a line")
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", transparent=kind == "transparent")
    plt.close(fig)
    before = base64.b64encode(buf.getvalue()).decode()
    after = web_png(before)
    assert np.array_equal(_pixels(after), _pixels(before))  # alpha included
    assert len(after) < (0.9 if kind == "figure" else 0.97) * len(before), (len(after), len(before))


def test_record_renders_each_setting_without_moving_the_controls():
    import torch
    calls = []

    def render(scale):
        calls.append(scale)
        return torch.full((4, 1, 8, 8), scale / 10 - 1)
    panel = SliderPanel(render, {"scale": scale_slider(3.0)})
    record = panel.record(values=[0.0, 5.0, 10.0], describe=lambda out, scale: f"mean {float(out.mean()):.2f}")
    assert [f["caption"] for f in record["frames"]] == ["mean -1.00", "mean -0.50", "mean 0.00"]
    assert len({f["png"] for f in record["frames"]}) == 3 and panel.values == {"scale": 3.0}
    assert calls == [3.0, 0.0, 5.0, 10.0]
    panel.set(scale=5.0)
    assert panel.last["cached"]  # recorded frames are in the cache
    with pytest.raises(ValueError, match="unknown control"):
        panel.record("digit")
    with pytest.raises(ValueError, match="failed at scale=2"):
        SliderPanel(lambda scale: 1 / 0 if scale == 2 else torch.zeros(1, 1, 4, 4),
                    {"scale": scale_slider(0.0)}).record(values=[0.0, 2.0])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("myst_nb", reason="the site extra is not installed (pip install -e '.[site]')")
    from lessonlib.site import build
    out = tmp_path_factory.mktemp("site") / "site"
    return out, build(out, quiet=True)


@pytest.mark.slow
def test_every_lesson_has_a_page_and_no_internal_link_is_broken(site):
    out, summary = site
    lessons = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(summary["bytes"]) == lessons and len(lessons) >= 12
    assert summary["sliders"]["07_classifier_free_guidance"] >= 1
    broken = []
    for page in [out / "index.html", *sorted((out / "lessons").glob("*.html"))]:
        text = page.read_text(encoding="utf-8")
        for ref in re.findall(r'(?:href|src)="([^"#?]+)', text):
            ref = html.unescape(ref)
            if re.match(r"[a-z][a-z0-9+.-]*:", ref):  # an external link (Colab): a link, never loaded
                continue
            if not (page.parent / ref).exists():
                broken.append(f"{page.relative_to(out)} -> {ref}")
    assert not broken, broken[:10]
    index = (out / "index.html").read_text(encoding="utf-8")
    assert all(f"lessons/{stem}.html" in index for stem in lessons)  # the course map links every lesson


@pytest.mark.slow
def test_no_page_is_heavier_than_5_mb(site):
    _, summary = site
    heavy = {k: v for k, v in summary["bytes"].items() if v > 5e6}
    assert not heavy, heavy


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium executable (install Debian's 'chromium', as .ci/run does, "
                                             "or set LESSONLIB_CHROMIUM)")
def test_pages_render_offline_and_lesson_07s_slider_moves_without_a_kernel(site):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    out, _ = site
    remote = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:", "about:"))
                else remote.append(r.url))
        page.route(re.compile(r"^(https?|wss?)://"), lambda route: route.abort())
        for lesson in sorted((out / "lessons").glob("*.html")):
            page.goto(lesson.as_uri())
            page.wait_for_selector("mjx-container", state="attached", timeout=20_000)  # MathJax, bundled, typeset the formulas
            images = page.eval_on_selector_all("article img", "els => els.map(e => [e.complete, e.naturalWidth])")
            assert images and all(done and width > 0 for done, width in images), lesson.name
        page.goto((out / "lessons" / "07_classifier_free_guidance.html").as_uri())
        slider = page.locator(".lessonlib-slider").first
        slider.scroll_into_view_if_needed()
        img, caption, value = slider.locator("img"), slider.locator(".lessonlib-caption"), slider.locator("output")
        before = (img.get_attribute("src"), caption.inner_text(), value.inner_text())
        assert before[0].startswith("data:image/png") and before[1] and "scale" in before[2]
        slider.locator("input").focus()
        page.keyboard.press("ArrowRight")
        after = (img.get_attribute("src"), caption.inner_text(), value.inner_text())
        assert all(a != b for a, b in zip(after, before)), (before[1:], after[1:])
        browser.close()
    assert not remote, remote[:5]
