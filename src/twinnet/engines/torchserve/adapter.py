"""TorchServe as an :class:`~twinnet.engines.base.Engine`: a ``.mar`` served by Java workers."""

from __future__ import annotations

from twinnet.engines.base import ModuleEngine
from twinnet.engines.health import describe_model
from twinnet.engines.state import ServerInfo
from twinnet.engines.torchserve import server
from twinnet.engines.torchserve.launch import check_java

__all__ = ["TorchServe"]


class TorchServe(ModuleEngine):
    """TorchServe: ``start`` archives a model directory on the fly, or serves a ``.mar``/store."""

    name = "torchserve"
    title = "TorchServe"
    server = server
    unit = "workers"
    own_options = ("management_port", "metrics_port")

    def check(self) -> None:
        check_java()

    def models(self, info: ServerInfo) -> dict[str, list[str]]:
        out = {}
        for model in info.models:
            try:
                desc = describe_model(info, model, timeout=2.0)
            except OSError:
                desc = []
            out[model] = [w.get("status", "?") for v in desc for w in v.get("workers", [])]
        return out

    def describe(self, info: ServerInfo) -> list[tuple[str, str]]:
        return [
            ("management", f"{info.management_url}/models"),
            ("metrics", f"{info.metrics_url}/metrics"),
        ]
