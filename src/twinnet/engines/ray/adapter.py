"""Ray Serve as an :class:`~twinnet.engines.base.Engine`: a model directory served by replicas."""

from __future__ import annotations

from twinnet.engines.base import ModuleEngine
from twinnet.engines.ray import server
from twinnet.engines.state import ServerInfo

__all__ = ["RayServe"]


class RayServe(ModuleEngine):
    """Ray Serve, on this machine or a Ray cluster (``address``); needs ``twinnet[ray]``."""

    name = "ray"
    title = "Ray Serve"
    server = server
    unit = "replicas"
    own_options = ("replicas", "autoscale", "address")
    options_hint = (
        "--replicas, --autoscale and --address go with --engine ray (TorchServe's processes "
        "are --workers)"
    )

    def check(self) -> None:
        server.check_ray()

    def models(self, info: ServerInfo) -> dict[str, list[str]]:
        return server.replica_states(info)

    def reap(self, info: ServerInfo) -> None:
        server.reap(info)

    def describe(self, info: ServerInfo) -> list[tuple[str, str]]:
        replicas = ", ".join(self.models(info)[info.models[0]])
        return [("replicas", f"{replicas} ({self.title})"), ("ingress", server.ingress_of(info))]
