"""Ray Serve as an :class:`~twinnet.engines.base.Engine`: a model directory served by replicas."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twinnet.engines.base import Engine
from twinnet.engines.ray import server
from twinnet.engines.state import ServerInfo

__all__ = ["RayServe"]


class RayServe(Engine):
    """Ray Serve, on this machine or a Ray cluster (``address``); needs ``twinnet[ray]``."""

    name = "ray"
    title = "Ray Serve"
    unit = "replicas"
    own_options = ("replicas", "autoscale", "address")
    options_hint = (
        "--replicas, --autoscale and --address go with --engine ray (TorchServe's processes "
        "are --workers)"
    )

    def check(self) -> None:
        server.check_ray()

    def start(self, source: str | os.PathLike, **options: Any) -> ServerInfo:
        return server.start(source, **options)

    def run_foreground(
        self, source: str | os.PathLike, on_ready: Callable[[ServerInfo], None] | None = None,
        **options: Any,
    ) -> int:  # fmt: skip
        return server.run_foreground(source, on_ready=on_ready, **options)

    def models(self, info: ServerInfo) -> dict[str, list[str]]:
        return server.replica_states(info)

    def stop(self, info: ServerInfo, timeout: float = 30.0) -> None:
        server.stop_info(info, timeout)

    def reap(self, info: ServerInfo) -> None:
        server.reap(info)

    def describe(self, info: ServerInfo) -> list[tuple[str, str]]:
        replicas = ", ".join(self.models(info)[info.models[0]])
        return [("replicas", f"{replicas} ({self.title})")]
