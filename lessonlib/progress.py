"""One progress bar for all long work: ``tqdm.auto``, silenced by ``TQDM_DISABLE=1`` (as CI sets)."""
from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_bar(iterable, *, desc: str, enabled: bool = True, **kwargs):
    """``tqdm.auto`` over ``iterable`` unless ``enabled`` is False or ``$TQDM_DISABLE`` is set."""
    disabled = not enabled or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
    return tqdm(iterable, desc=desc, disable=disabled, leave=False, **kwargs)
