"""Helpers shared by the tests (imported as ``from helpers import ...``; tests/ is on sys.path under pytest)."""
import contextlib
import functools
import http.server
import threading
from pathlib import Path

import torch

from lessonlib.nets.unet import UNetConfig

TINY = UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4, num_classes=10)  # ~40k parameters, 28x28


def randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Random values for every parameter (so zero-initialised outputs and attention do something); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


@contextlib.contextmanager
def serve_folder(root: Path):
    """A local HTTP server over ``root`` (standing in for the course's home); yields (base URL, requested paths)."""
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def loss_before_after(model: torch.nn.Module, loss, *, repeats: int = 4, **fit_kwargs) -> tuple[float, float]:
    """The mean of ``repeats`` batches of ``loss`` before and after ``training.fit(model, loss, **fit_kwargs)``."""
    from lessonlib.training import fit

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(float(loss(model, 0)) for _ in range(repeats)) / repeats

    first = mean_loss()
    fit(model, loss, progress=False, **fit_kwargs)
    return first, mean_loss()
