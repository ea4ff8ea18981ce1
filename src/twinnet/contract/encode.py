"""What travels: the request bodies clients send, and the answer servers render.

Both clients build their bodies here, and the server parses them with
:mod:`twinnet.contract.protocol`, so the two cannot drift apart.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twinnet.contract.multipart import encode_form
from twinnet.contract.protocol import DEFAULT_TOP_K, QUERY_FIELD, parse_top_k

__all__ = [
    "encode_multipart",
    "encode_json",
    "encode_identify_multipart",
    "encode_identify_json",
    "render_result",
]


def encode_multipart(
    left: bytes, right: bytes, cam: bool = False, format: str | None = "object"
) -> tuple[bytes, str]:
    """The comparison body both clients send: ``(body, content_type)``.

    Image parts always carry a filename, so servers treat them as files (bytes kept as is).
    The body names ``format`` (``object`` unless told otherwise; ``None`` leaves it out):
    the clients parse the JSON object, whatever default response format the server has.
    """
    options = [("cam", "true" if cam else "false")] + ([("format", format)] if format else [])
    return encode_form([("left", left), ("right", right)], options)


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
    return encode_form([(QUERY_FIELD, query)], [("top_k", str(parse_top_k(top_k)))])


def encode_identify_json(query: bytes, top_k: int = DEFAULT_TOP_K) -> tuple[bytes, str]:
    """The JSON-body variant: ``{"query": "<base64>", "top_k": 5}``."""
    obj = {QUERY_FIELD: base64.b64encode(query).decode("ascii"), "top_k": parse_top_k(top_k)}
    return json.dumps(obj).encode("utf-8"), "application/json"


def render_result(result: Any, fmt: str = "object") -> str:
    """A :class:`~twinnet.core.result.CompareResult` (or, as ``object``, an
    :class:`~twinnet.index.Identification`) as the contract's JSON text."""
    payload = result.to_list() if fmt == "list" else result.to_dict()
    return json.dumps(payload, separators=(",", ":"))
