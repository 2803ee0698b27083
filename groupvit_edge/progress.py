"""The one progress bar of per-image loops (calibration, drift, per-block divergence, evaluation)."""
from __future__ import annotations

from tqdm import tqdm


def progress_bar(items, enabled: bool, description: str):
    """`items`, with a tqdm bar when `enabled` and stderr is a terminal; the bar disappears when the loop ends."""
    if not enabled:
        return items
    return tqdm(items, desc=description, unit="image", leave=False, disable=None)   # None: only on a terminal
