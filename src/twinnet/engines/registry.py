"""The serving engines by name: the one place that knows which engines exist.

A new engine is a module with an :class:`~twinnet.engines.base.Engine` subclass, plus a line
in :data:`ENGINES`. Engines are imported on first use, so an engine whose extra is not
installed (Ray Serve) costs nothing until it is asked for.
"""

from __future__ import annotations

import importlib

from twinnet.engines.base import Engine
from twinnet.engines.state import ServerInfo
from twinnet.errors import TwinnetError

__all__ = ["DEFAULT_ENGINE", "ENGINES", "engine_names", "get_engine", "engine_of"]

#: name -> "module:class" of its :class:`~twinnet.engines.base.Engine`; the default first.
ENGINES: dict[str, str] = {
    "torchserve": "twinnet.engines.torchserve.adapter:TorchServe",
    "ray": "twinnet.engines.ray.adapter:RayServe",
}
DEFAULT_ENGINE = next(iter(ENGINES))
_LOADED: dict[str, Engine] = {}


def engine_names() -> tuple[str, ...]:
    """The registered engine names, the default first (``--engine`` choices)."""
    return tuple(ENGINES)


def get_engine(name: str) -> Engine:
    """The engine called ``name``; a TwinnetError listing the choices for any other name."""
    if name not in ENGINES:
        raise TwinnetError(f"unknown serving engine {name!r}: choose {' or '.join(ENGINES)}")
    if name not in _LOADED:
        module, _, cls = ENGINES[name].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module), cls)()
    return _LOADED[name]


def engine_of(info: ServerInfo) -> Engine:
    """The engine that runs the server ``info`` records."""
    return get_engine(info.engine)
