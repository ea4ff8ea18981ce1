"""The HTTP contract over one model, for any serving engine: rows in, one reply per row out.

Written once and shared by every engine, so none of them can drift from the contract:

* the TorchServe handler (:mod:`twinnet.engines.torchserve.handler`) hands it TorchServe's batch rows;
* the Ray Serve deployment hands it the requests one batch of its batcher gathered.

A row is what TorchServe gives a handler, a mapping of named parameters (multipart fields and
query-string parameters by name, any other body as ``body``), plus the request's headers.
:meth:`TwinService.handle` decodes every row (a bad row gets its own error, never raises),
runs the valid comparisons through :meth:`twinnet.infer.twin.Twin.compare_batch` in at most
two calls (rows without and with CAM) and renders one :class:`Reply` per row.

When the model directory carries a gallery index (``index/``, see
:mod:`twinnet.contract.gallery`), identification rows are answered too: their queries are
embedded in one :meth:`~twinnet.infer.twin.Twin.embed` call and searched with
:meth:`~twinnet.index.GalleryIndex.identify_embeddings`, once per distinct ``top_k``, so
each answer equals :meth:`~twinnet.index.GalleryIndex.identify` in process. Without an
index, an identification row gets a 400 that says how to build an archive with one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from twinnet.contract.encode import render_result
from twinnet.contract.gallery import open_gallery
from twinnet.contract.protocol import (
    CUSTOM_ATTRIBUTES_HEADER,
    QUERY_FIELD,
    CompareRequest,
    IdentifyRequest,
    ProtocolError,
    Request,
    check_size,
    error_body,
    error_from_exception,
    options_from_attributes,
    parse_fields,
)
from twinnet.errors import ImageError, detached
from twinnet.infer.twin import Twin

__all__ = ["Reply", "Row", "TwinService", "header", "NO_INDEX"]

logger = logging.getLogger(__name__)

#: The answer to an identification request when the model was served without an index.
NO_INDEX = (
    "this model was served without a gallery index; rebuild the archive with --index "
    "INDEX_DIR (twinnet archive / package MODEL_DIR --index INDEX_DIR)"
)


@dataclass(frozen=True)
class Row:
    """One request as an engine received it: named parameters and headers."""

    fields: Mapping[str, Any]
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Reply:
    """One response: its status and JSON text (the content type is always JSON)."""

    status: int
    body: str


def header(headers: Mapping[Any, Any] | None, name: str) -> str | None:
    """The value of header ``name`` (case-insensitive), or None; non-text values are ignored."""
    for key, value in (headers or {}).items():
        if isinstance(key, str) and key.lower() == name.lower() and isinstance(value, str):
            return value
    return None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class TwinService:
    """Answers the contract's requests with one loaded :class:`~twinnet.infer.twin.Twin`."""

    def __init__(self, twin: Any, response_format: str = "object", gallery: Any = None) -> None:
        self.twin = twin
        #: A comparison's form when a request names no ``format`` (the server's choice).
        self.response_format = response_format
        #: The :class:`~twinnet.index.GalleryIndex` identifications search, or None.
        self.gallery = gallery

    @classmethod
    def load(
        cls, model_dir: str, options: Any, device: str = "cpu", threads: int | None = None
    ) -> TwinService:
        """Load a model directory (and its gallery index, if it has one) with a
        :class:`~twinnet.contract.options.ServeOptions`, warmed up."""
        twin = Twin.load(
            model_dir,
            device=device,
            precision=options.precision,
            cache_mb=options.cache_mb,
            threads=threads,
        )
        service = cls(twin, options.response_format, open_gallery(model_dir, twin))
        service.warm_up()
        return service

    def warm_up(self) -> None:
        """One forward before the engine reports ready, so no client pays for kernel set-up."""
        from PIL import Image

        size = self.twin.spec.image_size
        blank = Image.new("RGB", (size, size), (127, 127, 127))
        try:
            self.twin.compare_batch([(blank, blank)])
        except Exception:  # a warm-up failure must not hide the real error of a real request
            logger.warning("twinnet: warm-up forward failed", exc_info=True)

    # ------------------------------------------------------------------ stages
    def parse(self, row: Row | None) -> Request | ProtocolError:
        """Decode one row's request, or the error it deserves (never raises)."""
        try:
            if row is None or not isinstance(row.fields, Mapping):
                raise ProtocolError("bad_request", "empty or malformed request")
            length = header(row.headers, "Content-Length")
            if length and length.isdigit():
                check_size(int(length))
            # Options from SageMaker's CustomAttributes yield to the request's own fields.
            fields = {
                **options_from_attributes(header(row.headers, CUSTOM_ATTRIBUTES_HEADER)),
                **row.fields,
            }
            ctype = header(row.headers, "Content-Type")
            request = parse_fields(fields, ctype, default_format=self.response_format)
            if isinstance(request, IdentifyRequest) and self.gallery is None:
                raise ProtocolError("bad_request", NO_INDEX, QUERY_FIELD)
            return request
        except ProtocolError as exc:
            return detached(exc)
        except Exception as exc:  # a parser bug must not fail the other rows
            logger.exception("twinnet: cannot parse a request")
            return detached(error_from_exception(exc))

    def predict(self, requests: Sequence[Request | ProtocolError]) -> list[Any]:
        """Results for valid rows (CompareResult, Identification or ProtocolError), errors
        passed through."""
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
                results = [detached(exc)] * len(idx)
            for i, res in zip(idx, results, strict=True):
                out[i] = (
                    detached(error_from_exception(res)) if isinstance(res, BaseException) else res
                )
        idx = [i for i, r in enumerate(requests) if isinstance(r, IdentifyRequest)]
        if idx:
            try:
                self._identify(requests, idx, out)
            except Exception as exc:
                logger.exception("twinnet: identification of %d queries failed", len(idx))
                for i in idx:
                    out[i] = detached(error_from_exception(exc))
        return out

    def _identify(self, requests: Sequence[Any], idx: list[int], out: list[Any]) -> None:
        """Answer the identification rows ``idx`` into ``out``: one embed, one search per top_k."""
        embedded = self._embed_queries([requests[i].query for i in idx])
        by_top_k: dict[int, list[int]] = {}
        vectors: dict[int, Any] = {}
        for i, emb in zip(idx, embedded, strict=True):
            if isinstance(emb, ProtocolError):
                out[i] = emb
            else:
                vectors[i] = emb
                by_top_k.setdefault(requests[i].top_k, []).append(i)
        for top_k, rows in by_top_k.items():
            found = self.gallery.identify_embeddings(np.stack([vectors[i] for i in rows]), top_k)
            for i, result in zip(rows, found, strict=True):
                out[i] = result

    def _embed_queries(self, queries: list[bytes]) -> list[Any]:
        """Each query's embedding, or the error its image deserves (field ``query``).

        All queries go through one ``embed`` call; only when one of them is not an image
        are they decoded one by one, to find which.
        """
        try:
            return list(self.twin.embed(queries).numpy())
        except ImageError:
            pass
        out: list[Any] = [None] * len(queries)
        good: list[int] = []
        for n, query in enumerate(queries):
            try:
                self.twin.decode(query, QUERY_FIELD)
            except ImageError as exc:
                out[n] = detached(error_from_exception(exc))
            else:
                good.append(n)
        if good:
            for n, emb in zip(
                good, self.twin.embed([queries[n] for n in good]).numpy(), strict=True
            ):
                out[n] = emb
        return out

    @staticmethod
    def encode(requests: Sequence[Request | ProtocolError], results: Sequence[Any]) -> list[Reply]:
        """One reply per row: the error object with its status, or the rendered result
        (an identification is always the JSON object)."""
        out: list[Reply] = []
        for req, res in zip(requests, results, strict=True):
            if isinstance(res, ProtocolError):
                out.append(Reply(res.status, _dumps(error_body(res.code, res.message, res.field))))
            else:
                fmt = req.format if isinstance(req, CompareRequest) else "object"
                out.append(Reply(200, render_result(res, fmt)))
        return out

    def handle(self, rows: Sequence[Row | None]) -> list[Reply]:
        """Exactly one reply per row, in order; a bad row fails alone."""
        requests = [self.parse(row) for row in rows]
        return self.encode(requests, self.predict(requests))
