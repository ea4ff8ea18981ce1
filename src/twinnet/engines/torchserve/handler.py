"""TorchServe handler: a thin adapter from TorchServe's batches to :mod:`twinnet.contract.service`.

The contract itself (decode, batch, predict, encode; a bad row fails alone) lives in
:class:`twinnet.contract.service.TwinService`, shared with the Ray Serve engine. This adapter only:

1. builds the service from the archive's model directory and ``model-config.yaml`` options
   (:class:`twinnet.contract.options.ServeOptions`), sizing torch's threads;
2. turns each row of TorchServe's batch and its headers into a :class:`~twinnet.contract.service.Row`;
3. gives each row its own HTTP status through TorchServe's per-request status
   (``context.set_response_status(code, phrase, idx=i)``) and a batch-size header.

The handler keeps no per-request state: the context is passed down, never stored.

This file is copied into the ``.mar`` and imported by TorchServe as a top-level module, so it
uses absolute imports only and defines exactly one class.
"""

from __future__ import annotations

import logging
import time
from http import HTTPStatus
from typing import Any

from ts.torch_handler.base_handler import BaseHandler

from twinnet.contract.options import ServeOptions, resolve_threads
from twinnet.contract.protocol import BATCH_HEADER
from twinnet.contract.service import Reply, Row, TwinService

__all__ = ["TwinHandler", "BATCH_HEADER"]

logger = logging.getLogger(__name__)

_JSON = "application/json"


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:  # pragma: no cover - all codes used are standard
        return "Error"


class TwinHandler(BaseHandler):
    """Serves ``/predictions/<name>`` and ``/invocations`` with a twinnet model directory."""

    def __init__(self) -> None:
        super().__init__()
        self.service: TwinService | None = None
        self.threads: int | None = None

    @property
    def twin(self) -> Any:
        """The loaded :class:`~twinnet.infer.twin.Twin` (None before ``initialize``)."""
        return self.service.twin if self.service is not None else None

    def initialize(self, context: Any) -> None:
        """Load the model directory shipped in the archive, with the archive's options."""
        import torch

        props = context.system_properties
        options = ServeOptions.from_config(getattr(context, "model_yaml_config", None))
        self.threads = resolve_threads(options.threads, options.workers or 1)
        if self.threads is not None:
            try:  # one inter-op thread: batches already keep the intra-op threads busy
                torch.set_num_interop_threads(1)
            except RuntimeError:  # already set in this process
                pass
        gpu = props.get("gpu_id")
        device = f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu"
        self.service = TwinService.load(props["model_dir"], options, device, self.threads)
        self.initialized = True
        twin = self.service.twin
        logger.info(
            "twinnet: loaded %r (%s) with %s torch thread(s), precision %s, plan %s, "
            "default response format %s",
            twin.name,
            twin.spec.arch,
            torch.get_num_threads(),
            twin.precision,
            options.plan,
            options.response_format,
        )

    def handle(self, data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
        """TorchServe's entry point: exactly one response per row of ``data``."""
        if data is None:  # TorchServe's function-style init probe; nothing to answer
            return None
        assert self.service is not None, "initialize() was not called"
        start = time.perf_counter()
        rows = [
            Row(row, _headers(context, i)) if isinstance(row, dict) else None
            for i, row in enumerate(data)
        ]
        replies = self.service.handle(rows)
        for i, reply in enumerate(replies):
            _respond(context, i, reply, len(replies))
        logger.info(
            "twinnet: batch_size=%d failed=%d ms=%.1f",
            len(data),
            sum(r.status != 200 for r in replies),
            (time.perf_counter() - start) * 1000,
        )
        return [r.body for r in replies]


def _headers(context: Any, idx: int) -> dict[str, str]:
    try:
        return dict(context.get_all_request_header(idx) or {})
    except (AttributeError, IndexError, TypeError):
        return {}


def _respond(context: Any, idx: int, reply: Reply, batch: int) -> None:
    try:
        context.set_response_status(reply.status, _phrase(reply.status), idx=idx)
        context.set_response_content_type(idx, _JSON)
        context.set_response_header(idx, BATCH_HEADER, str(batch))
    except (AttributeError, IndexError, TypeError):  # a context without per-request state
        pass
