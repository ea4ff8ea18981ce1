"""The HTTP contract shared by the TorchServe handler, the SageMaker container and the clients.

One module owns the wire format so that the bytes a client sends are exactly what the server
parses: :func:`encode_multipart` and :func:`encode_identify_multipart` build the request
bodies both clients send, and :func:`parse_fields` / :func:`parse_body` turn a request back
into a :class:`CompareRequest` or an :class:`IdentifyRequest`. Request data is only ever
decoded (multipart, base64, JSON); it is never evaluated.

Request forms accepted (see docs/http-contract.md):

* comparison, ``multipart/form-data`` with file fields ``left`` and ``right`` and an optional
  text field ``cam``, the original sample's shape (``curl -F left=@c1.jpg -F right=@c2.jpg
  -F cam=False``), or ``application/json``: ``{"left": "<base64>", "right": "<base64>",
  "cam": false}``;
* either one with ``format=list`` (query string or field) for the sample's flat list answer,
  or ``format=object`` for the JSON object; a request without ``format`` gets the server's
  default (``object`` unless the archive was built with ``--response-format list``);
* identification, when the model was served with a gallery index: a file field ``query`` and
  an optional text field ``top_k`` (1 to :data:`MAX_REQUEST_TOP_K`, default
  :data:`DEFAULT_TOP_K`), or ``{"query": "<base64>", "top_k": 5}``; ``top_k`` may also come
  in the query string or SageMaker's ``CustomAttributes``. Its answer is always the JSON
  object ``{"known", "matches", "threshold", "model"}``, so ``format=list`` and ``cam=true``
  are refused (the server's default format does not apply). A request with both ``query``
  and ``left``/``right`` is refused.

Errors are :class:`~twinnet.contract.errors.ProtocolError`, rendered as ``{"error": {"code", "field", "message"}}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from twinnet.contract.errors import ProtocolError, error_body, error_from_exception
from twinnet.contract.multipart import MAX_PARTS, parse_multipart

__all__ = [
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "MAX_PARTS",
    "CAM_TRUE",
    "CAM_FALSE",
    "FORMATS",
    "IMAGE_FIELDS",
    "QUERY_FIELD",
    "DEFAULT_TOP_K",
    "MAX_REQUEST_TOP_K",
    "CompareRequest",
    "IdentifyRequest",
    "Request",
    "ProtocolError",
    "parse_cam",
    "parse_format",
    "parse_top_k",
    "check_size",
    "parse_fields",
    "parse_body",
    "parse_multipart",
    "CUSTOM_ATTRIBUTES_HEADER",
    "BATCH_HEADER",
    "options_from_attributes",
    "error_body",
    "error_from_exception",
]

#: SageMaker real-time endpoints refuse payloads over 6 MB; TorchServe is set to the same cap.
MAX_REQUEST_BYTES = 6 * 1024 * 1024
#: Large enough for the contract's JSON with CAM maps of any supported image size.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
CAM_TRUE = frozenset({"true", "1", "yes"})
CAM_FALSE = frozenset({"false", "0", "no", ""})
#: ``object`` is the contract's JSON object; ``list`` is the original sample's flat list.
FORMATS = ("object", "list")
#: Words a request may give for ``object`` (``json`` and ``dict`` are older spellings).
_OBJECT_WORDS = frozenset({"object", "json", "dict"})
IMAGE_FIELDS = ("left", "right")
#: The image field of an identification request.
QUERY_FIELD = "query"
#: Classes an identification answers when the request names no ``top_k``.
DEFAULT_TOP_K = 5
#: Most classes one identification request may ask for: it bounds the answer's size and the
#: search a single request can cost.
MAX_REQUEST_TOP_K = 100
#: SageMaker forwards InvokeEndpoint's ``CustomAttributes`` to the container in this header;
#: ``format=list``, ``cam=true`` and ``top_k=3`` may travel there (SageMaker passes no query
#: string).
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
#: Response header with the size of the batch a request was answered in (both engines).
BATCH_HEADER = "X-Twinnet-Batch-Size"
_OPTIONS = ("cam", "format", "top_k")


@dataclass(frozen=True)
class CompareRequest:
    """One parsed request: the two encoded images and the options.

    Attributes:
        left: encoded bytes of the left image (not yet decoded: the library decodes safely).
        right: encoded bytes of the right image.
        cam: whether Grad-CAM maps were asked for.
        format: ``object`` (contract JSON object) or ``list`` (the sample's flat list).
    """

    left: bytes
    right: bytes
    cam: bool = False
    format: str = "object"


@dataclass(frozen=True)
class IdentifyRequest:
    """One parsed identification request: which gallery class does ``query`` show?

    Attributes:
        query: encoded bytes of the query image (not yet decoded).
        top_k: how many classes to answer, best first.
    """

    query: bytes
    top_k: int = DEFAULT_TOP_K


#: What :func:`parse_fields` returns: a comparison or an identification.
Request = CompareRequest | IdentifyRequest


def _text(value: Any, field: str) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("invalid_field", f"{field}: not UTF-8 text", field) from None
    if isinstance(value, str):
        return value
    raise ProtocolError("invalid_field", f"{field}: expected text", field)


def parse_cam(value: Any) -> bool:
    """Strict ``cam`` flag: true/false/1/0/yes/no in any case, a JSON bool, or absent.

    Anything else is a 400 (``invalid_field``). The value is compared against fixed words,
    never evaluated.
    """
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        word = _text(value, "cam").strip().lower()
        if word in CAM_TRUE:
            return True
        if word in CAM_FALSE:
            return False
        shown = word if len(word) <= 20 else word[:20] + "..."
        raise ProtocolError(
            "invalid_field", f"cam must be true/false/1/0/yes/no, got {shown!r}", "cam"
        )
    raise ProtocolError("invalid_field", "cam must be true/false/1/0/yes/no", "cam")


def parse_format(value: Any, default: str = "object") -> str:
    """``format``: ``object`` (or ``json``, ``dict``) or ``list``; absent or empty → ``default``.

    ``default`` is the server's own choice, so a request that names a format always wins.
    """
    if value is None:
        return default
    word = _text(value, "format").strip().lower()
    if not word:
        return default
    if word in _OBJECT_WORDS:
        return "object"
    if word == "list":
        return "list"
    raise ProtocolError(
        "invalid_field", f"format must be 'object' or 'list', got {word[:20]!r}", "format"
    )


_WHOLE_NUMBER = re.compile(r"[0-9]{1,9}")


def parse_top_k(value: Any) -> int:
    """``top_k``: a whole number from 1 to :data:`MAX_REQUEST_TOP_K` (a JSON number or text).

    Absent or empty means :data:`DEFAULT_TOP_K`; anything else is a 400 (``invalid_field``).
    """
    if value is None:
        return DEFAULT_TOP_K
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, (str, bytes, bytearray, memoryview)):
        word = _text(value, "top_k").strip()
        if not word:
            return DEFAULT_TOP_K
        if not _WHOLE_NUMBER.fullmatch(word):
            shown = word if len(word) <= 20 else word[:20] + "..."
            raise ProtocolError(
                "invalid_field",
                f"top_k must be a whole number from 1 to {MAX_REQUEST_TOP_K}, got {shown!r}",
                "top_k",
            )
        n = int(word)
    else:
        raise ProtocolError(
            "invalid_field", f"top_k must be a whole number from 1 to {MAX_REQUEST_TOP_K}", "top_k"
        )
    if not 1 <= n <= MAX_REQUEST_TOP_K:
        raise ProtocolError(
            "invalid_field", f"top_k must be between 1 and {MAX_REQUEST_TOP_K}, got {n}", "top_k"
        )
    return n


def check_size(n_bytes: int, limit: int = MAX_REQUEST_BYTES) -> None:
    """Raise a 413 when a payload exceeds ``limit`` bytes."""
    if n_bytes > limit:
        raise ProtocolError(
            "payload_too_large",
            f"request of {n_bytes / 2**20:.1f} MiB is over the {limit / 2**20:.0f} MiB limit "
            "(SageMaker's real-time limit); send smaller images (e.g. JPEG at 1024 px)",
        )


def _image_field(value: Any, field: str, b64: bool) -> bytes:
    if value is None:
        raise ProtocolError("missing_field", f"missing image field {field!r}", field)
    if b64:
        if not isinstance(value, str):
            raise ProtocolError("invalid_field", f"{field}: expected a base64 string", field)
        text = value.strip()
        if text.startswith("data:") and "," in text:  # data URL: data:image/jpeg;base64,...
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("invalid_field", f"{field}: not valid base64", field) from None
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        # A text part: only possible when a client sent the image without a filename.
        data = value.encode("utf-8")
    else:
        raise ProtocolError("invalid_field", f"{field}: expected an image file", field)
    if not data:
        raise ProtocolError(
            "invalid_image", f"{field}: empty input (0 bytes), expected an image", field
        )
    return data


def _identify_request(
    query: Any, options: Mapping[str, Any], extra: Mapping[str, Any], b64: bool
) -> IdentifyRequest:
    """An identification from its ``query`` and options (``options`` win over ``extra``)."""

    def option(name: str) -> Any:
        return options[name] if name in options else extra.get(name)

    if any(name in options for name in IMAGE_FIELDS):
        raise ProtocolError(
            "bad_request",
            "send either 'query' (identification) or 'left' and 'right' (comparison), not both",
        )
    image = _image_field(query, QUERY_FIELD, b64=b64)
    top_k = parse_top_k(option("top_k"))
    if parse_format(option("format")) == "list":
        raise ProtocolError(
            "invalid_field",
            "format=list applies to comparisons only; identification answers the JSON object",
            "format",
        )
    if parse_cam(option("cam")):
        raise ProtocolError(
            "invalid_field", "cam applies to comparisons only, not to identification", "cam"
        )
    return IdentifyRequest(image, top_k)


def _from_json_object(obj: Any, extra: Mapping[str, Any], default_format: str) -> Request:
    if not isinstance(obj, dict):
        raise ProtocolError(
            "bad_request",
            'JSON body must be an object {"left": ..., "right": ...} or {"query": ...}',
        )
    if QUERY_FIELD in obj:
        return _identify_request(obj[QUERY_FIELD], obj, extra, b64=True)
    left = _image_field(obj.get("left"), "left", b64=True)
    right = _image_field(obj.get("right"), "right", b64=True)
    cam = parse_cam(obj["cam"] if "cam" in obj else extra.get("cam"))
    fmt = parse_format(obj["format"] if "format" in obj else extra.get("format"), default_format)
    return CompareRequest(left, right, cam, fmt)


def _json_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return value  # already parsed (TorchServe decodes application/json bodies)
    try:
        return json.loads(_text(value, "body"))
    except (json.JSONDecodeError, ProtocolError):
        raise ProtocolError("bad_request", "request body is not valid JSON") from None
    except RecursionError:  # the parser's own depth guard, hit by bodies like [[[[...]]]]
        raise ProtocolError(
            "bad_request",
            'request body is JSON nested too deeply; send a flat object {"left": ..., "right": ...}',
        ) from None


def parse_fields(
    fields: Mapping[str, Any], content_type: str | None = None, default_format: str = "object"
) -> Request:
    """Parse one request as TorchServe hands it to a handler: a mapping of named parameters.

    Multipart fields arrive by name (``left``, ``right``, ``cam``, ``query``, ``top_k``),
    query-string parameters (``format``, ``cam``, ``top_k``) too, and any other body arrives
    as ``body`` (already a dict when it was JSON and TorchServe decoded it). A ``query``
    makes it an :class:`IdentifyRequest`, else it is a :class:`CompareRequest`.
    ``default_format`` is a comparison's form when the request names none.
    """
    if QUERY_FIELD in fields:
        return _identify_request(fields[QUERY_FIELD], fields, {}, b64=False)
    if "left" in fields or "right" in fields:
        left = _image_field(fields.get("left"), "left", b64=False)
        right = _image_field(fields.get("right"), "right", b64=False)
        cam = parse_cam(fields.get("cam"))
        return CompareRequest(left, right, cam, parse_format(fields.get("format"), default_format))
    if "body" in fields:
        body = fields["body"]
        if isinstance(body, (dict, list)):
            return _from_json_object(body, fields, default_format)
        ctype = (content_type or "").split(";", 1)[0].strip().lower()
        raw = body if isinstance(body, (bytes, bytearray)) else _text(body, "body").encode("utf-8")
        if not raw:
            raise ProtocolError(
                "missing_field",
                "empty request: send fields 'left' and 'right' to compare, or 'query' to identify",
                "left",
            )
        if ctype in ("", "application/json", "text/json") or raw.lstrip()[:1] == b"{":
            return _from_json_object(_json_value(bytes(raw)), fields, default_format)
        raise ProtocolError(
            "unsupported_media_type",
            f"unsupported content type {ctype!r}: send multipart/form-data with files 'left' "
            "and 'right', or a JSON object with base64 'left' and 'right'",
        )
    raise ProtocolError(
        "missing_field",
        "missing image fields: send 'left' and 'right' to compare, or 'query' to identify",
        "left",
    )


def options_from_attributes(value: str | None) -> dict[str, str]:
    """``cam``/``format``/``top_k`` from a ``k=v`` list separated by ``,`` or ``;``; others ignored."""
    out: dict[str, str] = {}
    for item in (value or "").replace(";", ",").split(","):
        key, sep, val = item.partition("=")
        if sep and key.strip().lower() in _OPTIONS:
            out[key.strip().lower()] = val.strip()
    return out


#: What may follow ``--boundary`` on a delimiter line: ``--`` when it closes the body,
#: transport padding, then the line break (RFC 2046, section 5.1.1).
def parse_body(
    body: bytes, content_type: str | None, query: str = "", default_format: str = "object"
) -> Request:
    """Parse a raw HTTP request body (for servers that are not TorchServe, and for tests).

    Args:
        body: the request body.
        content_type: the ``Content-Type`` header.
        query: the URL's query string, e.g. ``format=list``.
        default_format: the answer's form when the request names none.
    """
    check_size(len(body))
    extra = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if ctype == "multipart/form-data":
        fields = {**extra, **parse_multipart(body, content_type or "")}
        return parse_fields(fields, default_format=default_format)
    return parse_fields({**extra, "body": body}, content_type, default_format)
