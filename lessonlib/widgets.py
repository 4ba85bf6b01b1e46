"""One slider panel for every guidance lesson: controls over a render function, a cache, errors shown.

The panel works the same in JupyterLab, Colab and headless under nbval: a cell can call
``panel.set(scale=4.0)`` and read ``panel.png`` / ``panel.last`` to check what a student would see.
``panel.record()`` renders a row of settings of its main slider and displays them as one output of type
:data:`FRAMES_MIME`, which the course website (``python -m lessonlib.site build``) turns into a slider that
needs no kernel.
"""
from __future__ import annotations

import base64
import html
import math
import time
from collections import OrderedDict
from typing import Any, Callable

import ipywidgets as W
import torch
from IPython.display import display

from .metrics import judge_predictions
from .plotting import to_png

__all__ = ["SliderPanel", "scale_slider", "log_scale_slider", "FRAMES_MIME", "slider_positions", "frame_caption"]

FRAMES_MIME = "application/vnd.lessonlib.frames+json"  # a panel's recorded frames (SliderPanel.record, lessonlib.site)


def slider_positions(widget: W.ValueWidget, count: int = 7) -> list:
    """``count`` settings spread evenly over a slider's range (its own steps, both ends and its value included)."""
    if count < 2:
        raise ValueError(f"count must be at least 2 (the two ends of the slider), got {count}.")
    if isinstance(widget, W.FloatLogSlider):
        lo, hi, step = widget.min, widget.max, widget.step
        to_value = lambda p: round(widget.base ** p, 10)  # noqa: E731
        here = math.log(widget.value, widget.base)
    elif hasattr(widget, "min") and hasattr(widget, "step"):
        lo, hi, step, to_value, here = widget.min, widget.max, widget.step, (lambda p: p), widget.value
    elif hasattr(widget, "options"):  # a dropdown or toggle: every option
        return [value for _, value in widget.options] if widget.options and isinstance(widget.options[0], tuple) \
            else list(widget.options)
    else:
        raise ValueError(f"cannot spread settings over a {type(widget).__name__}; pass the values to record().")
    n = int(round((hi - lo) / step))
    picks = sorted({round(i * n / (count - 1)) for i in range(count)} | {int(round((here - lo) / step))})
    values = [to_value(lo + i * step) for i in picks]
    return [int(v) if isinstance(widget, W.IntSlider) else round(float(v), 10) for v in values]


def scale_slider(value: float = 1.0, *, min: float = 0.0, max: float = 10.0, step: float = 0.5,  # noqa: A002
                 description: str = "scale") -> W.FloatSlider:
    """A guidance-scale slider that renders on release (continuous_update=False)."""
    return W.FloatSlider(value=value, min=min, max=max, step=step, description=description,
                         continuous_update=False, readout_format=".2f")


def log_scale_slider(value: float = 100.0, *, min: float = 1.0, max: float = 1000.0,  # noqa: A002
                     steps_per_decade: int = 10, description: str = "scale") -> W.FloatLogSlider:
    """A logarithmic guidance-scale slider (e.g. CLIP guidance, lesson 06, whose useful scales span decades)."""
    if not 0 < min <= value <= max:
        raise ValueError(f"a log slider needs 0 < min <= value <= max, got min={min}, value={value}, max={max}; "
                         "scale 0 (no guidance) has no place on a log axis: compare with a separate run.")
    if steps_per_decade < 1:
        raise ValueError(f"steps_per_decade must be >= 1, got {steps_per_decade}.")
    return W.FloatLogSlider(value=value, base=10, min=math.log10(min), max=math.log10(max),
                            step=1 / steps_per_decade, description=description, continuous_update=False,
                            readout_format=".3g")


def frame_caption(judge, images, label, *, where: str = "", **numbers) -> str:
    """The line under a recorded frame (:meth:`SliderPanel.record`): how many of its images the judge reads as
    ``label`` (one class, or one per image), then ``where`` and the measured ``numbers`` for that setting (floats to 3 decimals; intervals, such
    as an FidInterval, as they format themselves)."""
    wanted = torch.as_tensor(label).reshape(-1)
    hits = int((judge_predictions(judge, images) == wanted).sum())
    asked = f"{int(wanted)}s" if len(wanted) == 1 else "the class asked for"
    text = f"judge: {hits}/{len(images)} of these are {asked}"
    if numbers:
        shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v:.2f}" for k, v in numbers.items())
        text += f" | {where + ': ' if where else ''}{shown}"
    return text


class SliderPanel:
    """Controls -> ``render(**values)`` -> one image; results cached per setting (lessons 01-09).

    ``render`` returns a matplotlib Figure or (N, C, H, W) images in [-1, 1]. Errors raised by
    ``render`` are shown in the panel in red, and the last good image stays on screen.
    """

    def __init__(self, render: Callable[..., Any], controls: dict[str, W.ValueWidget], *, title: str = "",
                 upscale: int = 4, nrow: int | None = None, cache_size: int = 64):
        """``nrow``: images per row when ``render`` returns images (default: a square-ish grid)."""
        if not controls:
            raise ValueError("a SliderPanel needs at least one control, e.g. {'scale': scale_slider()}.")
        self.render, self.controls, self.upscale, self.nrow = render, dict(controls), upscale, nrow
        self.title = title
        self.cache: OrderedDict[tuple, bytes] = OrderedDict()
        self.cache_size = cache_size
        self.image = W.Image(format="png")
        self.status = W.HTML()
        self.last: dict[str, Any] = {}
        self._holding = False
        for widget in self.controls.values():
            widget.observe(lambda change: self.update(), names="value")
        header = [W.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        for widget in self.controls.values():  # long descriptions ("beta (APG)") are shown whole
            if hasattr(widget, "style") and hasattr(widget.style, "description_width"):
                widget.style.description_width = "initial"
        row = W.HBox(list(self.controls.values()), layout=W.Layout(flex_flow="row wrap"))  # many controls wrap
        self.widget = W.VBox(header + [row, self.image, self.status])
        self.update()

    @property
    def values(self) -> dict[str, Any]:
        return {name: widget.value for name, widget in self.controls.items()}

    @property
    def png(self) -> bytes:
        """The PNG the panel is showing now."""
        return bytes(self.image.value)

    def set(self, **values) -> "SliderPanel":
        """Set several controls at once (as a student would by hand) and render once."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise ValueError(f"unknown control(s) {sorted(unknown)}; this panel has {sorted(self.controls)}.")
        self._holding = True
        try:
            for name, value in values.items():
                self.controls[name].value = value
        finally:
            self._holding = False
        self.update()
        return self

    def update(self) -> None:
        """Render the current setting (or take it from the cache) and show it."""
        if self._holding:
            return
        values = self.values
        key = tuple(values.items())
        start = time.perf_counter()
        cached = key in self.cache
        try:
            if not cached:
                self.cache[key] = to_png(self.render(**values), upscale=self.upscale, nrow=self.nrow)
                if len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
            self.cache.move_to_end(key)
            self.image.value = self.cache[key]
            self.status.value = ""
            error = None
        except Exception as exc:  # shown to the student instead of a traceback in the panel
            error = f"{type(exc).__name__}: {exc}"
            self.status.value = f"<span style='color:#b00'>{html.escape(error)}</span>"
        self.last = {"values": values, "cached": cached, "seconds": time.perf_counter() - start, "error": error}

    def record(self, control: str | None = None, values=None, *, describe: Callable[..., str] | None = None,
               count: int = 7) -> dict:
        """Render the panel at each of ``values`` of ``control`` (default: the first control, at ``count`` settings
        spread over its range, :func:`slider_positions`), the other controls as they are, and display the frames as
        one output that the course website shows as a slider without a kernel (in a notebook: one line of text).

        ``describe(output, **values)`` gets what ``render`` returned for the setting and gives the line of measured
        numbers shown under its frame. The controls are not moved; returns the record.
        """
        control = control or next(iter(self.controls))
        if control not in self.controls:
            raise ValueError(f"unknown control {control!r}; this panel has {sorted(self.controls)}.")
        widget = self.controls[control]
        values = list(values) if values is not None else slider_positions(widget, count)
        if not values:
            raise ValueError("values is empty: give the settings to record, or leave it out for the slider's range.")
        frames = []
        for value in values:
            setting = {**self.values, control: value}
            try:
                output = self.render(**setting)
            except Exception as exc:
                raise ValueError(f"the panel failed at {control}={value!r}: {type(exc).__name__}: {exc}") from exc
            png = to_png(output, upscale=self.upscale, nrow=self.nrow)
            self.cache[tuple(setting.items())] = png  # moving the slider there later is instant
            frames.append({"value": value, "png": base64.b64encode(png).decode("ascii"),
                           "caption": describe(output, **setting) if describe else ""})
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        record = {"title": self.title, "control": control, "label": getattr(widget, "description", control),
                  "current": widget.value, "others": {k: v for k, v in self.values.items() if k != control},
                  "frames": frames}
        kb = sum(len(f["png"]) for f in frames) * 3 / 4 / 1e3
        display({FRAMES_MIME: record, "text/plain": f"(recorded {len(frames)} settings of {control} for the course "
                                                      f"website, {kb:.0f} kB)"}, raw=True)
        return record

    def _ipython_display_(self):
        display(self.widget)
