"""The course as a website: ``python -m lessonlib.site build`` writes ``site/`` from the executed notebooks.

Sphinx with MyST-NB and sphinx-book-theme (the ``site`` extra) render the committed notebooks as they are, never
executing them: a home page with the course map, one page per lesson with its math, code, outputs and figures,
and each lesson's Colab, download and JupyterLab links. Everything a page loads is in ``site/``: MathJax comes
from the django-static-mathjax wheel, the theme's fonts and scripts from its own package, and no page fetches a
script, style, font or image from the internet.

A static page cannot run an ipywidgets callback. The panels that matter record their frames when the lesson
executes (:meth:`lessonlib.widgets.SliderPanel.record`, an output of type :data:`~lessonlib.widgets.FRAMES_MIME`);
here each record becomes an ``<input type="range">`` that swaps those pictures and the numbers measured for them
(``_static/lessonlib-sliders.js``). The live ipywidgets of a lesson are replaced by a line saying where they run.
"""
from __future__ import annotations

import argparse
import base64
import html
import importlib.util
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import nbformat
import numpy as np
from PIL import Image

from .home import home
from .publish import NOTEBOOK_DIR, _notebooks
from .widgets import FRAMES_MIME

__all__ = ["build", "prepare_notebook", "slider_html", "page_weights", "main"]

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_REMOTE_IMAGE = re.compile(r"!\[([^\]]*)\]\((https?://[^)\s]+)\)")  # a markdown image fetched from the internet
_JS = """// lessonlib's kernel-free sliders: each .lessonlib-slider holds the frames its panel recorded
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".lessonlib-slider").forEach(function (box) {
    var frames = JSON.parse(box.querySelector("script[type='application/json']").textContent);
    var input = box.querySelector("input"), img = box.querySelector("img");
    var out = box.querySelector("output"), caption = box.querySelector(".lessonlib-caption");
    function show(i) {
      var frame = frames[i];
      img.src = "data:image/png;base64," + frame.png;
      img.alt = frame.alt;
      out.textContent = frame.label;
      caption.textContent = frame.caption;
    }
    input.addEventListener("input", function () { show(Number(input.value)); });
    show(Number(input.value));
  });
});
"""
_CSS = """.lessonlib-slider { border: 1px solid #ccc; border-radius: 4px; padding: 0.6em; margin: 0.6em 0; }
.lessonlib-slider label { font-weight: 600; margin-right: 0.5em; }
.lessonlib-slider input[type=range] { width: min(28em, 90%); vertical-align: middle; }
.lessonlib-slider output { font-family: monospace; margin-left: 0.5em; }
.lessonlib-slider img { display: block; max-width: 100%; image-rendering: pixelated; margin-top: 0.4em; }
.lessonlib-caption { font-family: monospace; font-size: 0.9em; white-space: pre-wrap; }
.lessonlib-note { color: #555; font-style: italic; }
"""
_CONF = """# written by python -m lessonlib.site build; edit lessonlib/site.py instead
project = {project!r}
html_title = {project!r}
extensions = ["myst_nb"]
nb_execution_mode = "off"  # the committed, executed notebooks as they are
nb_output_stderr = "remove"  # progress bars and warnings
nb_ipywidgets_js = {{}}  # no widget manager from a CDN: the sliders are lessonlib's own
myst_enable_extensions = ["dollarmath", "amsmath"]
mathjax_path = "mathjax/tex-mml-chtml.js"  # bundled from django-static-mathjax, not a CDN
html_theme = "sphinx_book_theme"
html_theme_options = {{"home_page_in_toc": True, "show_toc_level": 2, "use_download_button": False,
                      "use_fullscreen_button": False}}
html_static_path = ["_static"]
html_js_files = ["lessonlib-sliders.js"]
html_css_files = ["lessonlib-sliders.css"]
html_extra_path = ["extra"]
exclude_patterns = ["_build", "extra"]
html_show_sourcelink = False
"""


def _label(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def slider_html(record: dict) -> str:
    """The kernel-free slider for one recorded panel: a range input over its frames, the picture, the numbers."""
    frames = record.get("frames") or []
    if not frames:
        raise ValueError("a recorded panel has no frames; record it again with SliderPanel.record().")
    control, label = record["control"], record.get("label") or record["control"]
    data = [{"png": f["png"], "label": f"{control} = {_label(f['value'])}", "caption": f.get("caption", ""),
             "alt": f"{record.get('title') or 'panel'} at {control} = {_label(f['value'])}"} for f in frames]
    values = [f["value"] for f in frames]
    current = record.get("current")
    numeric = isinstance(current, (int, float)) and all(isinstance(v, (int, float)) for v in values)
    start = (min(range(len(values)), key=lambda i: abs(values[i] - current)) if numeric
             else values.index(current) if current in values else 0)  # the frame nearest the panel's setting
    others = ", ".join(f"{k} = {_label(v)}" for k, v in record.get("others", {}).items())
    title = html.escape(record.get("title") or "")
    payload = json.dumps(data).replace("</", "<\\/")  # nothing in the data can close the script element
    return (f'<div class="lessonlib-slider" data-control="{html.escape(control)}">'
            + (f"<p><b>{title}</b></p>" if title else "")
            + f'<label>{html.escape(label)}</label><input type="range" min="0" max="{len(frames) - 1}" step="1" '
              f'value="{start}" aria-label="{html.escape(label)}"><output></output>'
            + (f'<span class="lessonlib-note"> ({html.escape(others)})</span>' if others else "")
            + '<img alt=""><div class="lessonlib-caption"></div>'
            + f'<p class="lessonlib-note">{len(frames)} settings recorded when the lesson ran; in JupyterLab or '
              f"Colab the slider renders any setting.</p>"
            + f'<script type="application/json">{payload}</script></div>')


def web_png(b64: str) -> str:
    """A figure's PNG (base64) re-encoded for the page without changing a pixel: opaque RGBA as RGB, at most 256
    colours as an exact palette, zlib at its best; the original when that is not smaller. Matplotlib writes opaque
    RGBA at its default compression, so a lesson's figures shrink by about a fifth."""
    raw = base64.b64decode(b64)
    with Image.open(io.BytesIO(raw)) as im:
        im.load()
        pixels = np.asarray(im.convert("RGBA"))
    if (pixels[..., 3] == 255).all():
        pixels = pixels[..., :3]
    colours, index = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0, return_inverse=True)
    if len(colours) <= 256:  # every colour gets its own palette entry: exact
        image = Image.fromarray(index.reshape(pixels.shape[:2]).astype(np.uint8), mode="P")
        palette = colours[:, :3]
        image.putpalette(palette.astype(np.uint8).tobytes())
        if colours.shape[1] == 4:
            image.info["transparency"] = bytes(colours[:, 3].astype(np.uint8))
    else:
        image = Image.fromarray(pixels)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    smaller = buf.getvalue()
    return base64.b64encode(smaller).decode("ascii") if len(smaller) < len(raw) else b64


def prepare_notebook(nb: nbformat.NotebookNode, name: str, links: str) -> tuple[nbformat.NotebookNode, int]:
    """The page version of a lesson: recorded panels become sliders, live widgets a note, remote badges links.

    ``links`` replaces the title cell's Colab badge line. Returns the notebook and the number of sliders.
    """
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))  # a deep copy
    nb.metadata.pop("widgets", None)
    sliders = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            if i == 0:
                cell.source = re.sub(r"^\[!\[Open In Colab\]\(.*$", links, cell.source, count=1, flags=re.M)
            cell.source = _REMOTE_IMAGE.sub(lambda m: f"[{m.group(1) or m.group(2)}]({m.group(2)})", cell.source)
            continue
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if FRAMES_MIME in data:
                record = dict(data[FRAMES_MIME], frames=[dict(f, png=web_png(f["png"]))
                                                         for f in data[FRAMES_MIME].get("frames") or []])
                outputs.append(nbformat.v4.new_output("display_data", data={"text/html": slider_html(record)}))
                sliders += 1
            elif WIDGET_MIME in data:
                outputs.append(nbformat.v4.new_output("display_data", data={"text/html": (
                    '<p class="lessonlib-note">(an interactive panel: it runs in JupyterLab or Colab; '
                    "open the notebook with the links at the top of the page)</p>")}))
            else:
                if "image/png" in data:
                    data["image/png"] = web_png(data["image/png"])
                outputs.append(out)
        cell.outputs = outputs
    return nb, sliders


def _title_and_summary(nb: nbformat.NotebookNode) -> tuple[str, str]:
    source = nb.cells[0].source if nb.cells and nb.cells[0].cell_type == "markdown" else ""
    title = next((line[2:].strip() for line in source.splitlines() if line.startswith("# ")), "untitled")
    paragraphs = [p.strip() for p in source.split("\n\n")[1:] if p.strip() and not p.lstrip().startswith("[![")]
    first = " ".join(paragraphs[0].split()) if paragraphs else ""
    summary = ""
    for sentence in re.split(r"(?<=[.!?])\s", first):  # whole sentences, up to about two lines of the map
        summary = f"{summary} {sentence}".strip()
        if len(summary) >= 120:
            break
    return title, summary


def _index(lessons: list[tuple[str, str, str]], project: str) -> str:
    rows = "\n".join(f"| [{title}](lessons/{stem}) | {summary.replace('|', '/')} |" for stem, title, summary in lessons)
    toc = "\n".join(f"lessons/{stem}" for stem, _, _ in lessons)
    return f"""# {project}

A course in Jupyter notebooks, backed by the tested package `lessonlib`: from the score-noise identity through
classifier guidance and CLIP guidance to classifier-free guidance, its modern variants and flow matching, on MNIST
and CIFAR-10. Every number on these pages was computed by the lesson that prints it, on a CPU, in minutes.

These pages show each lesson as it last ran. The sliders move between settings recorded when the lesson ran; open
a lesson in Colab or JupyterLab to run it, change it and move the sliders to any setting.

## The course map

| lesson | what it shows |
| --- | --- |
{rows}

## Run it yourself

```bash
pip install -e ".[dev]"    # in a clone of the repository
jupyter lab notebooks/
pytest                     # the tests, the lessons under nbval included
```

```{{toctree}}
:hidden:
:maxdepth: 1

{toc}
```
"""


def _copy_mathjax(static: Path) -> None:
    es5 = Path(str(resources.files("mathjax") / "static" / "mathjax" / "es5"))  # django-static-mathjax
    target = static / "mathjax"
    target.mkdir(parents=True)
    shutil.copy2(es5 / "tex-mml-chtml.js", target)
    for sub in ("output/chtml", "input/tex/extensions", "a11y", "ui"):  # fonts, and what tex-mml-chtml loads later
        shutil.copytree(es5 / sub, target / sub)


def page_weights(site: Path) -> dict[str, int]:
    """Bytes each lesson page loads when opened: its HTML, its scripts and images (src=) and its stylesheets
    (<link href=...css>), each counted once; links to other pages and downloads are not loaded, and fonts that
    stylesheets load later are not counted."""
    weights = {}
    for page in sorted((site / "lessons").glob("*.html")):
        text = page.read_text(encoding="utf-8")
        refs = re.findall(r'src="([^"]+)"', text) + re.findall(r'<link[^>]*href="([^"]+\.css[^"]*)"', text)
        files = {(page.parent / ref.split("?")[0].split("#")[0]).resolve()
                 for ref in refs if not re.match(r"[a-z]+:", ref)}
        assets = [f for f in files if f.is_file()]
        weights[page.stem] = len(text.encode()) + sum(f.stat().st_size for f in assets)
    return weights


def build(out: str | Path = "site", notebooks: str | Path = NOTEBOOK_DIR, *, quiet: bool = False) -> dict:
    """Write the website to ``out`` from the executed notebooks in ``notebooks``; returns a summary."""
    missing = [m for m in ("sphinx", "myst_nb", "sphinx_book_theme", "mathjax") if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"the site needs the 'site' extra ({', '.join(missing)} missing): pip install -e \".[site]\" "
                           "(Sphinx, MyST-NB, sphinx-book-theme and django-static-mathjax, MathJax 3 as files).")
    start = time.perf_counter()
    out, notebooks = Path(out).resolve(), Path(notebooks)
    paths = _notebooks(notebooks)
    if not paths:
        raise ValueError(f"no lesson notebooks (NN_name.ipynb) in {notebooks}.")
    where = home()
    project = "Conditional image generation with diffusion models"
    with tempfile.TemporaryDirectory(prefix="lessonlib-site-") as tmp:
        src = Path(tmp)
        (src / "lessons").mkdir()
        (src / "extra" / "notebooks").mkdir(parents=True)
        lessons, sliders = [], {}
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            if not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
                raise ValueError(f"{path.name} has no outputs: the site shows executed lessons; run "
                                 "python -m lessonlib.run_all first.")
            title, summary = _title_and_summary(nb)
            links = (f"[Open in Colab]({where.colab_url(path.name)}) · "
                     f'<a href="../notebooks/{path.name}" download>Download the notebook</a> · in a clone: '
                     f"`jupyter lab notebooks/{path.name}`")
            page, sliders[path.stem] = prepare_notebook(nb, path.stem, links)
            nbformat.write(page, src / "lessons" / path.name)
            shutil.copy2(path, src / "extra" / "notebooks" / path.name)
            lessons.append((path.stem, title, summary))
        (src / "index.md").write_text(_index(lessons, project), encoding="utf-8")
        (src / "conf.py").write_text(_CONF.format(project=project), encoding="utf-8")
        static = src / "_static"
        static.mkdir()
        (static / "lessonlib-sliders.js").write_text(_JS, encoding="utf-8")
        (static / "lessonlib-sliders.css").write_text(_CSS, encoding="utf-8")
        _copy_mathjax(static)
        if out.exists():
            shutil.rmtree(out)
        run = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", "auto",
                              "-d", str(src / "_doctrees"), str(src), str(out)], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"sphinx failed ({run.returncode}):\n{run.stderr[-4000:]}")
    weights = page_weights(out)
    summary = {"site": str(out), "pages": len(weights), "sliders": sliders, "bytes": weights,
               "seconds": time.perf_counter() - start, "warnings": run.stderr.strip()}
    if not quiet:
        print(f"wrote {out}: home page and {len(weights)} lesson pages in {summary['seconds']:.0f} s; open "
              f"{out / 'index.html'}")
        for stem, size in weights.items():
            print(f"  {stem:<40} {size / 1e6:5.2f} MB, {sliders[stem]} kernel-free slider(s)")
        if summary["warnings"]:
            print(f"sphinx said:\n{summary['warnings'][-3000:]}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lessonlib.site", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the website from the executed notebooks (never runs them)")
    b.add_argument("--out", default="site", help="the folder to write (default: site)")
    b.add_argument("--notebooks", default=str(NOTEBOOK_DIR), help="where the executed lessons are")
    args = parser.parse_args(argv)
    build(args.out, args.notebooks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
