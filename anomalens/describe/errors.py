"""The one error type of the describe package: a problem the user can fix, said in one line."""

from __future__ import annotations

from ..errors import AnomalensError


class DescribeError(AnomalensError, RuntimeError):
    """Describing failed for a reason the user can act on (missing extra, endpoint down, bad file)."""


class UnusableAnswer(DescribeError):
    """The model answered, but not in a usable form (no JSON, no list); another attempt may do."""
