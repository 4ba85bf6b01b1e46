import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import ipywidgets as W  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from lessonlib.plotting import image_grid, scatter_classes, to_png  # noqa: E402
from lessonlib.widgets import SliderPanel, log_scale_slider, scale_slider  # noqa: E402


def images(scale, cls=0):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(4, 1, 8, 8, generator=g) * 2 - 1) * min(1.0, scale / 4) + cls * 0.01


def test_panel_renders_caches_and_changes_with_the_slider():
    calls = []
    def render(scale, cls):
        calls.append((scale, cls))
        return images(scale, cls)
    panel = SliderPanel(render, {"scale": scale_slider(1.0), "cls": W.Dropdown(options=[0, 1], value=0)})
    first = panel.png
    assert first.startswith(b"\x89PNG") and calls == [(1.0, 0)]
    panel.set(scale=3.0, cls=1)  # two controls, one render
    assert calls == [(1.0, 0), (3.0, 1)] and panel.png != first
    panel.set(scale=1.0, cls=0)
    assert panel.png == first and panel.last["cached"] and len(calls) == 2
    panel.controls["scale"].value = 2.0  # as a student moving the slider
    assert calls[-1] == (2.0, 0)


def test_slider_renders_on_release():
    assert scale_slider().continuous_update is False


def test_errors_are_shown_in_the_panel_and_the_last_image_stays():
    def render(scale):
        if scale > 5:
            raise ValueError("scale too large for this demo")
        return images(scale)
    panel = SliderPanel(render, {"scale": scale_slider(1.0)})
    good = panel.png
    panel.set(scale=6.0)
    assert "scale too large" in panel.status.value and panel.last["error"] and panel.png == good
    panel.set(scale=2.0)
    assert panel.status.value == "" and panel.last["error"] is None


def test_unknown_control_and_empty_panel():
    panel = SliderPanel(images, {"scale": scale_slider()})
    with pytest.raises(ValueError, match="unknown control"):
        panel.set(steps=10)
    with pytest.raises(ValueError, match="at least one control"):
        SliderPanel(images, {})


def test_figures_become_png_and_are_closed():
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    png = to_png(fig)
    assert png.startswith(b"\x89PNG") and not plt.fignum_exists(fig.number)
    with pytest.raises(TypeError, match="Figure or an image tensor"):
        to_png("not an image")


def test_image_grid_layout_and_range():
    grid = image_grid(torch.ones(5, 1, 4, 4) * -1, nrow=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 1) and grid.min() == 0 and grid.max() == 1  # pad is white
    with pytest.raises(ValueError, match="N, 1 or 3, H, W"):
        image_grid(torch.zeros(2, 2, 4, 4))


def test_device_is_a_torch_device():
    import lessonlib
    assert isinstance(lessonlib.device(), torch.device)


def test_the_log_slider_spans_decades_and_refuses_zero():
    slider = log_scale_slider(100.0, min=1.0, max=1000.0)
    assert slider.value == pytest.approx(100.0) and slider.continuous_update is False
    slider.value = 1000.0
    assert slider.value == pytest.approx(1000.0)
    slider.value = 5000.0  # beyond the range: clipped, as ipywidgets does
    assert slider.value == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="scale 0"):
        log_scale_slider(0.0, min=0.0)


def test_scatter_classes_legend_names_the_classes_present_and_needs_labels():
    fig, ax = plt.subplots()
    scatter_classes(ax, torch.randn(30, 2), torch.tensor([0, 2] * 15), legend=True)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["class 0", "class 2"]
    with pytest.raises(ValueError, match="needs labels"):
        scatter_classes(ax, torch.randn(3, 2), legend=True)
    plt.close(fig)


def test_a_panel_lays_its_images_out_in_the_rows_asked_for():
    from io import BytesIO

    from PIL import Image

    twenty = lambda scale: torch.zeros(20, 1, 8, 8)  # noqa: E731
    wide = SliderPanel(twenty, {"scale": scale_slider(1.0)}, nrow=10, upscale=1)
    square = SliderPanel(twenty, {"scale": scale_slider(1.0)}, upscale=1)
    w_wide, h_wide = Image.open(BytesIO(wide.png)).size
    w_square, h_square = Image.open(BytesIO(square.png)).size
    assert w_wide > 4 * h_wide and w_square < 2 * h_square  # 2 rows of 10, against a square-ish grid
