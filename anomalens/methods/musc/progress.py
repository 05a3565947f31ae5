"""musc's progress bars: one per pass over the batch, gone when the pass ends."""

from __future__ import annotations


def progress_bar(total: int | None, desc: str, enabled: bool):
    """A tqdm bar over `total` images (None: unknown), shown when `enabled` and stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=None if enabled else True)
