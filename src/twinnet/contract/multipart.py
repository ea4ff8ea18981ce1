"""``multipart/form-data``: the contract's parser, linear-time and capped, and its encoder.

The parser accepts what clients send (CRLF or LF line ends, quoted boundaries, a preamble,
a missing closing delimiter, base64 or quoted-printable parts) and refuses a body with more
than :data:`MAX_PARTS` parts before parsing it. It is twinnet's own: python-multipart 0.0.34
refuses LF line ends and preambles and drops the last part of an unclosed body, which
clients send and this contract has accepted. The encoder is urllib3's.
"""

from __future__ import annotations

import binascii
import quopri
import re
import uuid
from email.parser import BytesHeaderParser, BytesParser
from email.policy import HTTP
from typing import Any

from urllib3 import encode_multipart_formdata

from twinnet.contract.errors import ProtocolError

__all__ = ["MAX_PARTS", "parse_multipart", "encode_form"]

#: Most parts a ``multipart/form-data`` body may hold: the contract names a handful of fields,
#: and every extra part only costs parsing time.
MAX_PARTS = 16

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


def _sniff_type(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def encode_form(files: list[tuple[str, bytes]], texts: list[tuple[str, str]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of file parts, then text parts: ``(body, content_type)``.

    urllib3 encodes it. File parts always carry a filename and their sniffed type, so servers
    treat them as files (bytes kept as is).
    """
    fields: list[tuple[str, Any]] = []
    for name, data in files:
        ctype = _sniff_type(data)
        ext = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}.get(ctype, "bin")
        fields.append((name, (f"{name}.{ext}", bytes(data), ctype)))
    fields += texts
    return encode_multipart_formdata(fields, boundary=f"twinnet-{uuid.uuid4().hex}")
