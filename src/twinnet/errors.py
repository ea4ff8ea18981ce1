"""Exceptions that carry a message meant for the user.

Every layer (CLI, handler, container, app) turns a :class:`TwinnetError` into a
one-line message or a 4xx response instead of a traceback.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["TwinnetError", "ImageError", "SpecError", "DataError", "detached"]

E = TypeVar("E", bound=BaseException)


def detached(exc: E) -> E:
    """``exc`` without its traceback and chained exceptions, ready to be kept as a value.

    An exception kept after its ``except`` block (a bad row's answer, a bad image among
    good ones) holds its traceback; the traceback's frames hold the request's bytes and,
    through their callers, the list that holds the exception. That reference cycle is freed
    only by a full garbage collection, which a long-lived server process with millions of
    objects runs rarely: every rejected request would leave its payload behind. An error
    answered as a value needs only its message and fields.
    """
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None
    return exc


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
