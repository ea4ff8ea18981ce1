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

Errors are :class:`ProtocolError`, rendered as ``{"error": {"code", "field", "message"}}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import quopri
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesHeaderParser, BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs

from twinnet.errors import ImageError, TwinnetError

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
    "options_from_attributes",
    "encode_multipart",
    "encode_json",
    "encode_identify_multipart",
    "encode_identify_json",
    "error_body",
    "error_from_exception",
    "render_result",
]

#: SageMaker real-time endpoints refuse payloads over 6 MB; TorchServe is set to the same cap.
MAX_REQUEST_BYTES = 6 * 1024 * 1024
#: Large enough for the contract's JSON with CAM maps of any supported image size.
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
#: Most parts a ``multipart/form-data`` body may hold: the contract names a handful of fields,
#: and every extra part only costs parsing time.
MAX_PARTS = 16
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
_OPTIONS = ("cam", "format", "top_k")

_STATUS_OF = {
    "bad_request": 400,
    "missing_field": 400,
    "invalid_field": 400,
    "invalid_image": 400,
    "unauthorized": 401,
    "not_found": 404,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "internal_error": 500,
    "unavailable": 503,
}


class ProtocolError(TwinnetError):
    """A request that breaks the contract; carries its HTTP status and error object.

    Attributes:
        code: machine-readable error code (``invalid_image``, ``missing_field``, ...).
        field: the request field at fault, or ``None``.
        status: the HTTP status that goes with ``code``.
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.status = _STATUS_OF.get(code, 400)

    @property
    def message(self) -> str:
        return str(self)

    def to_dict(self) -> dict[str, Any]:
        """The contract's error object."""
        return error_body(self.code, self.message, self.field)


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


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """``{"error": {"code", "field", "message"}}``."""
    return {"error": {"code": code, "field": field, "message": message}}


def error_from_exception(exc: BaseException) -> ProtocolError:
    """Map any failure to a :class:`ProtocolError`; unknown exceptions become a bare 500."""
    if isinstance(exc, ProtocolError):
        return exc
    if isinstance(exc, ImageError):
        return ProtocolError("invalid_image", str(exc), getattr(exc, "field", None))
    if isinstance(exc, TwinnetError):
        return ProtocolError("bad_request", str(exc))
    # Internal details stay in the server log, not in the response.
    return ProtocolError("internal_error", f"internal error ({exc.__class__.__name__})")


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
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r\n|\n|\r|\Z)")


def _boundary(content_type: str) -> bytes:
    """The ``boundary`` parameter of a multipart ``Content-Type`` (quoted or not)."""
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    boundary = BytesParser(policy=HTTP).parsebytes(head, headersonly=True).get_boundary()
    if not boundary:
        raise ProtocolError("bad_request", "multipart/form-data without a boundary")
    return boundary.encode("latin-1", "replace")


def _line_start(body: bytes, pos: int) -> int:
    """Where a line break ending just before ``pos`` begins (it belongs to the delimiter)."""
    if pos >= 2 and body[pos - 2 : pos] == b"\r\n":
        return pos - 2
    return pos - 1 if pos and body[pos - 1 : pos] in (b"\r", b"\n") else pos


def _split_parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The raw parts (headers and content) between the delimiter lines of a multipart body.

    The body is refused before any parsing when it holds more than :data:`MAX_PARTS`
    delimiters, so the cost of the rest stays bounded; parts are never parsed recursively.
    """
    dash = b"--" + boundary
    if body.count(dash) > MAX_PARTS + 1:  # the closing delimiter comes on top of the parts
        raise ProtocolError(
            "bad_request",
            f"multipart/form-data body with more than {MAX_PARTS} parts; send only the "
            "contract's fields ('left' and 'right', or 'query') and its options",
        )
    parts: list[bytes] = []
    start: int | None = None
    pos = body.find(dash)
    while pos != -1:
        tail = _DELIMITER_TAIL.match(body, pos + len(dash))
        if tail is not None and (pos == 0 or body[pos - 1 : pos] in (b"\r", b"\n")):
            if start is not None:
                parts.append(body[start : _line_start(body, pos)])
            if tail.group(1):
                break
            start = tail.end()
        pos = body.find(dash, pos + len(dash))
    else:
        if start is not None:  # no closing delimiter: the last part runs to the last line end
            parts.append(body[start : _line_start(body, len(body))])
    if start is None:
        raise ProtocolError("bad_request", "malformed multipart/form-data body")
    return parts


#: The blank line that ends a part's headers.
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
#: Longest header block a part may have; real ones are two or three short lines.
_MAX_PART_HEAD = 8 * 1024


def _split_part(raw: bytes) -> tuple[bytes, bytes]:
    """A part's header block and its content, which the first blank line separates."""
    for lead in (b"\r\n", b"\n"):
        if raw.startswith(lead):
            return b"", raw[len(lead) :]
    blank = _BLANK_LINE.search(raw, 0, _MAX_PART_HEAD)
    if blank is not None:
        return raw[: blank.start()], raw[blank.end() :]
    if len(raw) > _MAX_PART_HEAD:
        raise ProtocolError(
            "bad_request", f"multipart part headers over {_MAX_PART_HEAD // 1024} KiB"
        )
    return raw, b""


def _undo_transfer_encoding(content: bytes, encoding: str, field: str) -> bytes:
    """Part content without its (deprecated, RFC 7578) ``Content-Transfer-Encoding``."""
    encoding = encoding.strip().lower()
    if encoding == "base64":
        try:
            return binascii.a2b_base64(content)
        except binascii.Error:
            raise ProtocolError("invalid_field", f"{field}: not valid base64", field) from None
    if encoding == "quoted-printable":
        return quopri.decodestring(content)
    return content


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """Split a ``multipart/form-data`` body into ``{name: bytes}`` (last one wins).

    At most :data:`MAX_PARTS` parts are accepted (400 beyond). Only each part's short
    header block is parsed; its content is sliced out as bytes, never scanned line by line
    nor descended into when it is itself multipart, so the cost stays linear in the body.
    """
    boundary = _boundary(content_type)
    out: dict[str, bytes] = {}
    for raw in _split_parts(body, boundary):
        head, content = _split_part(raw)
        headers = BytesHeaderParser(policy=HTTP).parsebytes(head + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if name:
            encoding = str(headers.get("content-transfer-encoding", ""))
            out[str(name)] = _undo_transfer_encoding(content, encoding, str(name))
    return out


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


def _sniff_type(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _multipart(files: list[tuple[str, bytes]], texts: list[tuple[str, str]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of file parts, then text parts: ``(body, content_type)``.

    File parts always carry a filename, so servers treat them as files (bytes kept as is).
    """
    boundary = f"twinnet-{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    for name, data in files:
        ctype = _sniff_type(data)
        ext = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}.get(ctype, "bin")
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.{ext}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode("ascii")
            + bytes(data)
            + b"\r\n"
        )
    for name, value in texts:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode("ascii")
        )
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def encode_multipart(
    left: bytes, right: bytes, cam: bool = False, format: str | None = "object"
) -> tuple[bytes, str]:
    """The comparison body both clients send: ``(body, content_type)``.

    Image parts always carry a filename, so servers treat them as files (bytes kept as is).
    The body names ``format`` (``object`` unless told otherwise; ``None`` leaves it out):
    the clients parse the JSON object, whatever default response format the server has.
    """
    options = [("cam", "true" if cam else "false")] + ([("format", format)] if format else [])
    return _multipart([("left", left), ("right", right)], options)


def encode_json(
    left: bytes, right: bytes, cam: bool = False, format: str | None = "object"
) -> tuple[bytes, str]:
    """The JSON-body variant: ``(body, "application/json")``; ``format`` as in multipart."""
    obj: dict[str, Any] = {
        "left": base64.b64encode(left).decode("ascii"),
        "right": base64.b64encode(right).decode("ascii"),
        "cam": bool(cam),
    }
    if format:
        obj["format"] = format
    return json.dumps(obj).encode("utf-8"), "application/json"


def encode_identify_multipart(query: bytes, top_k: int = DEFAULT_TOP_K) -> tuple[bytes, str]:
    """The identification body both clients send: file ``query`` and text ``top_k``."""
    return _multipart([(QUERY_FIELD, query)], [("top_k", str(parse_top_k(top_k)))])


def encode_identify_json(query: bytes, top_k: int = DEFAULT_TOP_K) -> tuple[bytes, str]:
    """The JSON-body variant: ``{"query": "<base64>", "top_k": 5}``."""
    obj = {QUERY_FIELD: base64.b64encode(query).decode("ascii"), "top_k": parse_top_k(top_k)}
    return json.dumps(obj).encode("utf-8"), "application/json"


def render_result(result: Any, fmt: str = "object") -> str:
    """A :class:`~twinnet.core.result.CompareResult` (or, as ``object``, an
    :class:`~twinnet.index.Identification`) as the contract's JSON text."""
    payload = result.to_list() if fmt == "list" else result.to_dict()
    return json.dumps(payload, separators=(",", ":"))
