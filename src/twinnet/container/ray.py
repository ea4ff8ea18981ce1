"""``twinnet container serve --engine ray``: the SageMaker container on Ray Serve.

Outside, nothing changes with the engine. SageMaker's port still belongs to the container's
:class:`~twinnet.container.gateway.Gateway`, which forwards ``/invocations`` to Ray Serve's
HTTP proxy on a loopback port instead of TorchServe's. The gateway keeps doing for Ray what
it does for TorchServe (strict framing, the 6 MiB cap, read deadlines, 504 past the
invocation timeout) and the replicas answer through the same
:class:`~twinnet.contract.service.TwinService` as TorchServe's handler, so bodies and status
codes cannot differ between engines. Only readiness is asked differently
(:class:`RayGateway`).

Ray runs as ``twinnet serve --engine ray`` runs it, through :func:`twinnet.engines.ray.server.start`
and stopped by :func:`twinnet.engines.server.stop`: a Ray instance of its own on loopback, with
token authorization off (IAM gates who may invoke), whose processes all go when the
container stops.

The model comes from the same ``model.tar.gz`` as for TorchServe: the ``.mar`` in it is a zip
of the model files, ``model-config.yaml`` and, with ``--index``, the gallery index, unpacked
here into the run's directory (:func:`unpack`). A model directory works too (``--model-dir``
naming a directory with ``twinnet.json``). The archive's options with the environment's
settings replacing theirs (as for TorchServe) become the replicas' options; ``TWINNET_WORKERS``
is the replica count.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twinnet.container.gateway import Gateway
from twinnet.container.package import find_mar
from twinnet.container.settings import read_options
from twinnet.contract.gallery import INDEX_DIR
from twinnet.contract.options import CONFIG_FILE, ServeOptions
from twinnet.core.spec import SPEC_FILE
from twinnet.engines.ray import server as ray_server
from twinnet.engines.ray.launch import read_status
from twinnet.engines.state import instance_dir

if TYPE_CHECKING:
    from twinnet.container.settings import ContainerSettings
    from twinnet.contract.options import ServeOptions
    from twinnet.engines.state import ServerInfo

__all__ = ["RayGateway", "find_source", "log_file", "options_for", "start", "unpack"]

#: What a ``.mar`` holds for TorchServe alone: its manifest and the handler module.
_TORCHSERVE_ONLY = ("MAR-INF/", "handler.py")
#: A status report older than this means the Ray server process has stopped reporting.
STALE_STATUS_S = 30.0


def find_source(model_dir: str | Path) -> Path:
    """A model directory as it is, else the one ``.mar`` of an unpacked ``model.tar.gz``."""
    root = Path(model_dir)
    return root if (root / SPEC_FILE).is_file() else find_mar(root)


def unpack(mar: Path, dest: Path) -> Path:
    """The model files of ``mar`` (a zip) in ``dest``, which becomes a model directory.

    ``zipfile`` keeps every member inside ``dest`` (absolute paths and ``..`` are dropped).
    """
    with zipfile.ZipFile(mar) as zin:
        names = [n for n in zin.namelist() if not n.startswith(_TORCHSERVE_ONLY)]
        zin.extractall(dest, names)
    return dest


def options_for(source: Path, model_dir: Path, overrides: dict[str, Any]) -> ServeOptions:
    """The archive's (or model directory's) options with the environment's settings in place."""
    if source.is_file():
        options = read_options(source)
    elif (model_dir / CONFIG_FILE).is_file():
        options = ServeOptions.from_yaml((model_dir / CONFIG_FILE).read_bytes())
    else:
        options = ServeOptions()
    return dataclasses.replace(options, **overrides)


def log_file(port: int, root: Path) -> Path:
    """The Ray server process's output, which the container copies to its stdout."""
    return instance_dir(port, root) / "logs" / "ray.out"


def start(
    source: Path, settings: ContainerSettings, root: Path, port: int, scratch: Path
) -> ServerInfo:
    """Serve ``source`` with Ray Serve on ``127.0.0.1:port``; returns once it answers.

    A ``.mar`` is unpacked into ``scratch`` first, and removed once Ray has its own copy.
    """
    model_dir = unpack(source, scratch / "model") if source.is_file() else source
    try:
        options = options_for(source, model_dir, settings.overrides)
        index = model_dir / INDEX_DIR
        return ray_server.start(
            model_dir, timeout=settings.startup_timeout, host="127.0.0.1", port=port,
            auth=False, root=root, name=source.stem if source.is_file() else None,
            options=options, index=index if index.is_dir() else None,
        )  # fmt: skip
    finally:
        if model_dir != source:
            shutil.rmtree(model_dir, ignore_errors=True)


class RayGateway(Gateway):
    """The container's gateway in front of Ray Serve: ready while a replica runs.

    Ray routes requests only to replicas that have loaded the model and replaces one that
    dies, so "ready" is what the Ray server process last reported: the application is up
    and at least one replica is RUNNING (the TorchServe rule of one READY worker). The
    report is a file, rewritten every few seconds; a stale one, or a server process that
    is gone, turns ``/ping`` red.
    """

    def healthy(self) -> bool:
        info = self.upstream
        if info is None or not info.alive():
            return False
        status = read_status(info.instance)
        fresh = time.time() - float(status.get("time", 0)) < STALE_STATUS_S
        running = int((status.get("replicas") or {}).get("RUNNING", 0))
        return status.get("state") == "ready" and fresh and running > 0
