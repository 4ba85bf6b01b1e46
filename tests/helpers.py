"""Helpers shared by the tests (imported as ``from helpers import ...``; tests/ is on sys.path under pytest)."""
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
