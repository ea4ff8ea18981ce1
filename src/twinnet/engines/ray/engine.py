"""The Ray Serve engine: one deployment that answers the HTTP contract with a twin model.

Each replica of :class:`TwinDeployment` loads a :class:`~twinnet.contract.service.TwinService`
from the model directory with the same :class:`~twinnet.contract.options.ServeOptions` as a
TorchServe archive, answers HTTP through :mod:`.ray_ingress`, and gathers the rows of
concurrent requests with :class:`~twinnet.engines.ray.batcher.Batcher` (``batch_size`` rows,
the oldest waiting at most ``max_batch_delay`` ms) into one :meth:`TwinService.handle` call,
run off the event loop: the next batch fills while this one computes, and starts when the
model is free.

The model directory travels to the replicas as the job's ``working_dir`` (:data:`MODEL_DIR`):
Ray uploads it once to the cluster, so replicas on other machines need no shared filesystem.

Replicas and threads (:func:`plan`). On a Ray instance of this machine the usable CPUs are
shared evenly between the most replicas that may run (``threads: auto``), and each replica
reserves that share of Ray's CPUs: compute threads never outnumber cores, even at the top of
an autoscaling range, so concurrency cannot collapse throughput. On a cluster a replica runs
one torch thread (or ``threads``) and reserves as many CPUs, so Ray's scheduler never puts
more compute threads on a node than it has cores.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from twinnet.contract.options import ServeOptions, resolve_threads
from twinnet.contract.service import Reply, Row, TwinService
from twinnet.engines.ray.batcher import Batcher
from twinnet.engines.ray.ingress import Gate, answer
from twinnet.errors import TwinnetError

__all__ = [
    "DEPLOYMENT",
    "MODEL_DIR",
    "Plan",
    "TwinDeployment",
    "build_app",
    "parse_autoscale",
    "plan",
]

#: Serve's own logger: what it logs lands in the replica's log file, beside Serve's lines.
logger = logging.getLogger("ray.serve")

#: The model directory as a replica sees it: its working directory, unpacked by Ray.
MODEL_DIR = "."
#: The deployment's name; its replicas show as ``ray::ServeReplica:<model>:TwinDeployment``.
DEPLOYMENT = "TwinDeployment"
#: Seconds a stopping replica may finish its requests.
GRACEFUL_SHUTDOWN_S = 10.0


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"MIN:MAX"`` as two whole numbers, 0 <= MIN <= MAX, MAX >= 1."""
    lo, sep, hi = str(text).partition(":")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise TwinnetError(f"autoscale must be MIN:MAX replicas, e.g. 1:4, got {text!r}")
    low, high = int(lo), int(hi)
    if high < 1 or low > high:
        raise TwinnetError(f"autoscale needs 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return low, high


@dataclass(frozen=True)
class Plan:
    """How many replicas run, their torch threads and the CPUs each reserves in Ray."""

    replicas: int | None
    autoscale: tuple[int, int] | None
    threads: int | None
    num_cpus: float
    batch_size: int

    @property
    def most(self) -> int:
        """The most replicas that may run at once."""
        return self.autoscale[1] if self.autoscale else int(self.replicas or 1)

    def deployment_options(self) -> dict[str, Any]:
        """Ray Serve's deployment options for this plan."""
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus},
            # One batch computing and the next one filling.
            "max_ongoing_requests": 2 * self.batch_size,
            "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
            "max_constructor_retry_count": 3,
        }
        if self.autoscale:
            low, high = self.autoscale
            opts["autoscaling_config"] = {
                "min_replicas": low,
                "initial_replicas": max(low, 1),
                "max_replicas": high,
                # A replica with more than one batch waiting asks for another.
                "target_ongoing_requests": self.batch_size,
            }
        else:
            opts["num_replicas"] = int(self.replicas or 1)
        return opts


def plan(
    options: ServeOptions,
    replicas: int | None = None,
    autoscale: tuple[int, int] | None = None,
    local_cpus: int | None = None,
) -> Plan:
    """Replicas, threads and CPUs for ``options`` (see the module's docstring).

    Args:
        replicas: a fixed count; default ``options.workers``, else one per usable CPU on a
            local instance and one on a cluster.
        autoscale: ``(MIN, MAX)`` for Ray Serve's autoscaler instead of a fixed count.
        local_cpus: the CPUs of a Ray instance on this machine; None on a cluster.
    """
    if replicas is not None and autoscale is not None:
        raise TwinnetError("give either a replica count or an autoscaling range, not both")
    if replicas is not None and int(replicas) < 1:
        raise TwinnetError(f"replicas must be at least 1, got {replicas}")
    if autoscale is None and replicas is None:
        replicas = options.workers or (local_cpus or 1)
    most = autoscale[1] if autoscale else int(replicas or 1)
    if local_cpus:
        threads = resolve_threads(options.threads, most, local_cpus)
        # Rounded down (Ray counts CPUs in 1/10000ths), so that all of them fit.
        num_cpus = math.floor(local_cpus / most * 10_000) / 10_000
    else:
        threads = options.threads if isinstance(options.threads, int) else None
        if options.threads == "auto":
            threads = 1
        num_cpus = float(threads or 1)
    return Plan(replicas, autoscale, threads, num_cpus, options.batch_size)


@serve.deployment(name=DEPLOYMENT)
class TwinDeployment:
    """One replica: the loaded model, its ingress and its batcher."""

    def __init__(
        self, model: str, options: dict[str, Any], threads: int | None, key_sha256: str | None
    ) -> None:
        import torch

        opts = ServeOptions(**options)
        if threads is not None:
            try:  # one inter-op thread: batches already keep the intra-op threads busy
                torch.set_num_interop_threads(1)
            except RuntimeError:  # already set in this process
                pass
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.service = TwinService.load(MODEL_DIR, opts, device, threads)
        self.gate = Gate(model, key_sha256)
        # One forward pass at a time, off the event loop: requests keep arriving meanwhile.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="twinnet-model")
        self.batch: Batcher[Row, Reply] = Batcher(
            self._handle, self._pool, opts.batch_size, opts.max_batch_delay / 1000.0
        )
        logger.info(
            "twinnet: loaded %r (%s) with %d torch thread(s), precision %s, batch %d / %d ms",
            model,
            self.service.twin.spec.arch,
            torch.get_num_threads(),
            self.service.twin.precision,
            opts.batch_size,
            opts.max_batch_delay,
        )

    async def __call__(self, request: Request) -> Response:
        return await answer(request, self.gate, self.batch)

    def _handle(self, rows: list[Row]) -> list[Reply]:
        """The rows of concurrent requests, answered with one :meth:`TwinService.handle` call."""
        replies = self.service.handle(rows)
        logger.info(
            "twinnet: batch_size=%d failed=%d", len(rows), sum(r.status != 200 for r in replies)
        )
        return replies


def build_app(model: str, options: ServeOptions, the_plan: Plan, key_sha256: str | None) -> Any:
    """The application to give ``serve.run``: the deployment bound to its model and plan.

    The replicas load :data:`MODEL_DIR`: the driver's job must carry the model directory as
    its ``working_dir`` (``ray.init(runtime_env={"working_dir": ...})``), which Serve passes on.
    """
    return TwinDeployment.options(**the_plan.deployment_options()).bind(
        model, options.to_dict(), the_plan.threads, key_sha256
    )
