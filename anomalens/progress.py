"""Progress over reference images while a detector fits and calibrates.

Methods take their references as a list and work through it in their own way; handing them a
`ReportingList` lets a front end follow that work without each method knowing about progress:
every time the method steps to the next reference, the callback learns how many it has finished.
Methods that go through the list one reference at a time (patchknn, the leave-one-out loops) are
followed image by image; methods that slice it into batches report when they are done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class FitProgress:
    """`done` of `total` references handled in `phase` ("reading", "fitting" or "calibrating")."""

    phase: str
    done: int
    total: int


FitProgressCallback = Callable[[FitProgress], None]


class ReportingList(list[T]):
    """A list that reports (phase, items passed, total) as it is iterated, and once more at its end."""

    def __init__(self, items, phase: str, callback: FitProgressCallback):
        super().__init__(items)
        self._phase = phase
        self._callback = callback

    def __iter__(self) -> Iterator[T]:
        total = len(self)
        for i, item in enumerate(super().__iter__()):
            self._callback(FitProgress(self._phase, i, total))
            yield item
        self._callback(FitProgress(self._phase, total, total))

    def finish(self) -> None:
        """Report the phase complete (for methods that never iterate the list itself)."""
        self._callback(FitProgress(self._phase, len(self), len(self)))


def reporting(items: list[T], phase: str, callback: FitProgressCallback | None) -> list[T]:
    """`items` as a ReportingList when there is a callback, else as they are."""
    return items if callback is None else ReportingList(items, phase, callback)


def finish(items: list) -> None:
    """Report a ReportingList's phase complete (no-op for a plain list)."""
    if isinstance(items, ReportingList):
        items.finish()
