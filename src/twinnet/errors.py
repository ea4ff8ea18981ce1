"""Exceptions that carry a message meant for the user.

Every layer (CLI, handler, container, app) turns a :class:`TwinnetError` into a
one-line message or a 4xx response instead of a traceback.
"""

from __future__ import annotations

__all__ = ["TwinnetError", "ImageError", "SpecError", "DataError"]


class TwinnetError(Exception):
    """An error whose message tells the user what went wrong and what to do next."""


class ImageError(TwinnetError, ValueError):
    """An input could not be decoded as an image (corrupt, truncated, empty, too large)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SpecError(TwinnetError, ValueError):
    """A model directory or its ``twinnet.json`` is missing or inconsistent."""


class DataError(TwinnetError, ValueError):
    """A dataset cannot be used for training or evaluation."""
