"""TorchServe handler: the HTTP contract in front of :class:`twinnet.inference.Twin`.

A thin layer, spelled out as decode → batch → predict → unbatch → encode:

1. every row of TorchServe's batch is parsed by :mod:`twinnet.protocol` (multipart or JSON,
   strict ``cam``, ``format``, the 6 MB limit); a bad row gets its own error now. A row that
   names no ``format`` gets the archive's ``response_format`` (``model-config.yaml``);
2. the valid rows go to ``Twin.compare_batch`` in at most two calls (rows without and with
   CAM), which decodes safely, encodes every distinct image once (embedding cache) and runs
   the head once over the batch; a row whose image does not decode fails alone;
3. each row gets exactly one response, and its own HTTP status through TorchServe's
   per-request status (``context.set_response_status(code, phrase, idx=i)``).

The handler keeps no per-request state: the context is passed down, never stored. The model
is rebuilt from ``twinnet.json`` by the library, and the archive's options are read by
:class:`twinnet.serve.options.ServeOptions`, so nothing here restates the architecture or the
config's defaults.

This file is copied into the ``.mar`` and imported by TorchServe as a top-level module, so it
uses absolute imports only and defines exactly one class.
"""

from __future__ import annotations

import json
import logging
import time
from http import HTTPStatus
from typing import Any

from ts.torch_handler.base_handler import BaseHandler

from twinnet.protocol import (
    CUSTOM_ATTRIBUTES_HEADER,
    CompareRequest,
    ProtocolError,
    check_size,
    error_body,
    error_from_exception,
    options_from_attributes,
    parse_fields,
    render_result,
)

__all__ = ["TwinHandler", "BATCH_HEADER"]

logger = logging.getLogger(__name__)

#: Response header telling each client how many requests shared its forward pass.
BATCH_HEADER = "X-Twinnet-Batch-Size"
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
        self.twin: Any = None
        self.threads: int | None = None
        #: The answer's form when a request names no ``format`` (the archive's choice).
        self.response_format = "object"

    def initialize(self, context: Any) -> None:
        """Load the model directory shipped in the archive, with the archive's options."""
        import torch

        from twinnet.inference import Twin
        from twinnet.serve.options import ServeOptions, resolve_threads

        props = context.system_properties
        options = ServeOptions.from_config(getattr(context, "model_yaml_config", None))
        self.response_format = options.response_format
        self.threads = resolve_threads(options.threads, options.workers or 1)
        if self.threads is not None:
            try:  # one inter-op thread: batches already keep the intra-op threads busy
                torch.set_num_interop_threads(1)
            except RuntimeError:  # already set in this process
                pass
        gpu = props.get("gpu_id")
        device = f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else "cpu"
        self.twin = Twin.load(
            props["model_dir"],
            device=device,
            precision=options.precision,
            cache_mb=options.cache_mb,
            threads=self.threads,
        )
        self._warm_up()
        self.initialized = True
        logger.info(
            "twinnet: loaded %r (%s) with %s torch thread(s), precision %s, plan %s, "
            "default response format %s",
            self.twin.name,
            self.twin.spec.arch,
            torch.get_num_threads(),
            self.twin.precision,
            options.plan,
            options.response_format,
        )

    def _warm_up(self) -> None:
        """One forward before READY, so the first client does not pay for kernel set-up."""
        from PIL import Image

        size = self.twin.spec.image_size
        blank = Image.new("RGB", (size, size), (127, 127, 127))
        try:
            self.twin.compare_batch([(blank, blank)])
        except Exception:  # a warm-up failure must not hide the real error of a real request
            logger.warning("twinnet: warm-up forward failed", exc_info=True)

    # ------------------------------------------------------------------ stages
    def parse_rows(
        self, data: list[dict[str, Any]], context: Any
    ) -> list[CompareRequest | ProtocolError]:
        """Decode each row's request, or the error it deserves (never raises).

        A row that names no ``format`` gets the archive's default response format.
        """
        out: list[CompareRequest | ProtocolError] = []
        for i, row in enumerate(data):
            try:
                if not isinstance(row, dict):
                    raise ProtocolError("bad_request", "empty or malformed request")
                length = _header(context, i, "Content-Length")
                if length and length.isdigit():
                    check_size(int(length))
                # Options from SageMaker's CustomAttributes yield to the request's own fields.
                fields = {
                    **options_from_attributes(_header(context, i, CUSTOM_ATTRIBUTES_HEADER)),
                    **row,
                }
                ctype = _header(context, i, "Content-Type")
                out.append(parse_fields(fields, ctype, default_format=self.response_format))
            except ProtocolError as exc:
                out.append(exc)
            except Exception as exc:  # a parser bug must not fail the other rows
                logger.exception("twinnet: cannot parse request %d", i)
                out.append(error_from_exception(exc))
        return out

    def predict(self, requests: list[CompareRequest | ProtocolError]) -> list[Any]:
        """Results for valid rows (CompareResult or ProtocolError), errors passed through."""
        out: list[Any] = list(requests)
        for cam in (False, True):
            idx = [
                i for i, r in enumerate(requests) if isinstance(r, CompareRequest) and r.cam == cam
            ]
            if not idx:
                continue
            pairs = [(requests[i].left, requests[i].right) for i in idx]  # type: ignore[union-attr]
            try:
                results = self.twin.compare_batch(pairs, cam=cam, return_exceptions=True)
            except Exception as exc:
                logger.exception("twinnet: batch of %d failed", len(idx))
                results = [exc] * len(idx)
            for i, res in zip(idx, results, strict=True):
                out[i] = error_from_exception(res) if isinstance(res, BaseException) else res
        return out

    @staticmethod
    def encode_rows(
        requests: list[CompareRequest | ProtocolError], results: list[Any], context: Any
    ) -> list[str]:
        """One JSON text per row, with its status, content type and batch-size header."""
        n = len(results)
        out: list[str] = []
        for i, (req, res) in enumerate(zip(requests, results, strict=True)):
            if isinstance(res, ProtocolError):
                body = error_body(res.code, res.message, res.field)
                _respond(context, i, res.status, n)
                out.append(_dumps(body))
            else:
                fmt = req.format if isinstance(req, CompareRequest) else "object"
                _respond(context, i, 200, n)
                out.append(render_result(res, fmt))
        return out

    def handle(self, data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
        """TorchServe's entry point: exactly one response per row of ``data``."""
        if data is None:  # TorchServe's function-style init probe; nothing to answer
            return None
        start = time.perf_counter()
        requests = self.parse_rows(data, context)
        results = self.predict(requests)
        out = self.encode_rows(requests, results, context)
        failed = sum(isinstance(r, ProtocolError) for r in results)
        logger.info(
            "twinnet: batch_size=%d failed=%d ms=%.1f",
            len(data),
            failed,
            (time.perf_counter() - start) * 1000,
        )
        return out


def _header(context: Any, idx: int, name: str) -> str | None:
    try:
        headers = context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, TypeError):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name.lower() and isinstance(value, str):
            return value
    return None


def _respond(context: Any, idx: int, code: int, batch: int) -> None:
    try:
        context.set_response_status(code, _phrase(code), idx=idx)
        context.set_response_content_type(idx, _JSON)
        context.set_response_header(idx, BATCH_HEADER, str(batch))
    except (AttributeError, IndexError, TypeError):  # a context without per-request state
        pass


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
