"""The interface every serving engine implements, so the rest of twinnet never asks which it is.

An engine serves one model directory (or archive) behind the HTTP contract of
:mod:`twinnet.contract` on a loopback port by default. It starts in the background or the
foreground, reports its models' workers, and stops leaving nothing behind. What it records
about a running server is a :class:`~twinnet.engines.state.ServerInfo` whose ``engine`` field
names it, so :func:`twinnet.engines.registry.engine_of` finds the engine again later, from
another process.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from twinnet.engines.state import ServerInfo

__all__ = ["Engine", "ModuleEngine"]


class Engine(ABC):
    """A serving engine. Subclasses set the class attributes and implement the methods.

    Attributes:
        name: the registry key, recorded in ``server.json`` (``torchserve``, ``ray``).
        title: the engine's name in messages (``TorchServe``).
        unit: what its model copies are called (``workers``, ``replicas``).
        own_options: start keywords only this engine takes; given to another, they are an error.
        options_hint: says which engine ``own_options`` go with, for that error.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    unit: ClassVar[str] = "workers"
    own_options: ClassVar[tuple[str, ...]] = ()
    options_hint: ClassVar[str] = ""

    @abstractmethod
    def check(self) -> None:
        """Raise a TwinnetError naming what to install when the engine cannot run here."""

    @abstractmethod
    def start(self, source: str | os.PathLike, **options: Any) -> ServerInfo:
        """Serve ``source`` in the background; return once every model is ready."""

    @abstractmethod
    def run_foreground(
        self, source: str | os.PathLike, on_ready: Callable[[ServerInfo], None] | None = None,
        **options: Any,
    ) -> int:  # fmt: skip
        """Serve ``source`` until SIGTERM/SIGINT or its exit; returns the exit status."""

    @abstractmethod
    def models(self, info: ServerInfo) -> dict[str, list[str]]:
        """``{model: [state of each worker or replica]}`` of a running server."""

    @abstractmethod
    def stop(self, info: ServerInfo, timeout: float = 30.0) -> None:
        """Stop a server this process started, or one whose identity was just checked."""

    def reap(self, info: ServerInfo) -> None:  # noqa: B027 - nothing to do for most engines
        """Clean up after a server that died on its own (its record is removed afterwards)."""

    def describe(self, info: ServerInfo) -> list[tuple[str, str]]:
        """Extra ``(label, text)`` lines that ``twinnet serve`` prints once a server is ready."""
        return []


class ModuleEngine(Engine):
    """An engine whose module has ``start``, ``run_foreground`` and ``stop_info`` functions
    (``server`` below): the adapter adds what differs, the checks and the reports."""

    server: ClassVar[Any]

    def start(self, source: str | os.PathLike, **options: Any) -> ServerInfo:
        return self.server.start(source, **options)

    def run_foreground(
        self, source: str | os.PathLike, on_ready: Callable[[ServerInfo], None] | None = None,
        **options: Any,
    ) -> int:  # fmt: skip
        return self.server.run_foreground(source, on_ready=on_ready, **options)

    def stop(self, info: ServerInfo, timeout: float = 30.0) -> None:
        self.server.stop_info(info, timeout)
