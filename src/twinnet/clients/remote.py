"""The client of a served twin model over HTTP (TorchServe, Ray Serve), and the wire handling
it shares with the SageMaker client (:mod:`twinnet.clients.sagemaker`).

Both send the same bytes, built by :func:`twinnet.contract.encode.encode_multipart` (and
:func:`~twinnet.contract.encode.encode_identify_multipart`), so the request a client sends is
exactly the one the handler parses. ``compare`` returns a
:class:`~twinnet.core.result.CompareResult`; ``identify`` (a model served with a gallery index)
returns an :class:`~twinnet.index.Identification`. Responses are parsed as JSON (never
evaluated).
Every failure is a :class:`~twinnet.errors.TwinnetError` with a one-line message that says
what to do next; an image the server could not decode is an :class:`~twinnet.errors.ImageError`
naming the field.
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twinnet.contract.encode import encode_identify_multipart, encode_multipart
from twinnet.contract.protocol import (
    DEFAULT_TOP_K,
    MAX_REQUEST_BYTES,
    QUERY_FIELD,
)
from twinnet.core.imaging import ImageSource, read_bytes, source_name
from twinnet.core.result import CompareResult
from twinnet.engines.server import LOOPBACK, find_token, list_servers
from twinnet.errors import ImageError, TwinnetError
from twinnet.index import Identification, Match

if TYPE_CHECKING:
    from twinnet.index import Identification

__all__ = [
    "HttpClient",
    "TOKEN_ENV",
    "prepare_body",
    "prepare_identify_body",
    "parse_result",
    "parse_identification",
    "error_from_body",
]

#: Environment variable holding a TorchServe inference token (used when none is passed).
TOKEN_ENV = "TWINNET_TOKEN"


def _payload(src: ImageSource, field: str) -> bytes:
    data = read_bytes(src, field)
    if not data:
        raise ImageError(f"{source_name(src)}: empty file", field=field)
    return data


def prepare_body(left: ImageSource, right: ImageSource, cam: bool = False) -> tuple[bytes, str]:
    """Read both inputs and build the multipart body; refuse it locally when over 6 MB.

    The whole body counts (SageMaker measures the payload, the parts' headers included),
    so it is measured exactly as it will be sent, before any connection is opened.
    """
    body, content_type = encode_multipart(_payload(left, "left"), _payload(right, "right"), cam)
    return _checked_size(body), content_type


def prepare_identify_body(query: ImageSource, top_k: int = DEFAULT_TOP_K) -> tuple[bytes, str]:
    """Read the query and build the identification body; checked as :func:`prepare_body`
    does, ``top_k`` included (1 to :data:`~twinnet.contract.protocol.MAX_REQUEST_TOP_K`)."""
    body, content_type = encode_identify_multipart(_payload(query, QUERY_FIELD), top_k)
    return _checked_size(body), content_type


def _checked_size(body: bytes) -> bytes:
    if len(body) > MAX_REQUEST_BYTES:
        raise TwinnetError(
            f"request of {len(body) / 2**20:.1f} MiB is over the {MAX_REQUEST_BYTES / 2**20:.0f} MiB "
            "limit of SageMaker and twinnet servers; nothing was sent. Resize the images "
            "(e.g. JPEG, longest side 1024 px)"
        )
    return body


def error_from_body(status: int, raw: bytes, where: str) -> TwinnetError:
    """A TwinnetError for a non-200 answer, from the contract's error object when present."""
    try:
        data: Any = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = data["error"]
        code, field, message = err.get("code"), err.get("field"), str(err.get("message", ""))
        if code == "invalid_image":
            return ImageError(message, field=field)
        return TwinnetError(f"{where} refused the request ({status} {code}): {message}")
    if isinstance(data, dict) and "message" in data:  # TorchServe's own error format
        return TwinnetError(f"{where} answered {status} {data.get('type', '')}: {data['message']}")
    if status == 413:
        return TwinnetError(
            f"{where} refused the request as too large (413): the limit is "
            f"{MAX_REQUEST_BYTES / 2**20:.0f} MiB"
        )
    text = " ".join(raw[:200].decode("utf-8", "replace").split()) if raw else "no body"
    if status >= 500:
        return TwinnetError(f"{where} failed with {status}: {text}; see the server's logs")
    return TwinnetError(f"{where} answered {status}: {text}")


def _json_object(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def parse_result(raw: bytes, where: str) -> CompareResult:
    try:
        return CompareResult.from_dict(_json_object(raw))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TwinnetError(f"{where} sent a malformed answer: {exc}") from None


def parse_identification(raw: bytes, where: str) -> Identification:
    """The contract's identification object as an Identification; a server does not send
    cosines, so each match's ``cosine`` is NaN."""
    try:
        data = _json_object(raw)
        matches = data["matches"]
        if not isinstance(matches, list) or not isinstance(data["known"], bool):
            raise ValueError("'known' must be a bool and 'matches' a list")
        return Identification(
            known=data["known"],
            matches=[
                Match(str(m["label"]), float(m["probability"]), str(m["path"]), math.nan)
                for m in matches
            ],
            threshold=float(data["threshold"]),
            model=str(data["model"]),
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise TwinnetError(f"{where} sent a malformed identification: {detail}") from None


class HttpClient:
    """Compare images (and identify them, when served with an index) with a TorchServe server
    (``twinnet serve``) over HTTP.

    Args:
        url: the server's base URL (``http://127.0.0.1:8080``), or a full route such as
            ``.../predictions/twin`` or ``.../invocations``.
        token: the inference token. Default: ``$TWINNET_TOKEN``, else the key file of a
            server that ``twinnet serve`` started on this machine on that port.
        model_name: the model served at ``/predictions/<model_name>``.
        timeout: seconds to wait for an answer.
    """

    #: A server does not send its spec, and has no embedding search (see ``backends.Backend``).
    spec = None
    search = None

    def __init__(
        self, url: str, token: str | None = None, model_name: str = "twin", timeout: float = 60.0
    ) -> None:
        if not url:
            raise TwinnetError("a server URL is required, e.g. http://127.0.0.1:8080")
        if "://" not in url:
            url = f"http://{url}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TwinnetError(f"not an http(s) URL: {url!r}")
        if timeout <= 0:
            raise TwinnetError(f"timeout must be positive, got {timeout}")
        path = parts.path.rstrip("/")
        if path.endswith("/invocations") or "/predictions/" in path:
            self.endpoint = url.rstrip("/")
        else:
            self.endpoint = f"{url.rstrip('/')}/predictions/{model_name}"
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.model_name = model_name
        self.timeout = float(timeout)
        self._explicit = token or os.environ.get(TOKEN_ENV) or None
        self._token = self._explicit or self._local_token()
        import requests

        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"HttpClient({self.endpoint!r}, token={'set' if self._token else 'none'})"

    def _local_token(self) -> str | None:
        return find_token(self.base)

    def _refresh_token(self) -> bool:
        """After an auth refusal: re-read the local key file, renewing an expired key."""
        if self._explicit:
            return False

        fresh = find_token(self.base)
        if fresh and fresh != self._token:
            self._token = fresh
            return True
        api_key = find_token(self.base, kind="API")
        mgmt = _local_management_url(self.base)
        if not (api_key and mgmt):
            return False
        try:  # TorchServe's token API rotates the (expired) inference key and rewrites the file
            self._session.post(
                f"{mgmt}/token?type=inference",
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=self.timeout,
            )
        except Exception:
            return False
        fresh = find_token(self.base)
        if fresh and fresh != self._token:
            self._token = fresh
            return True
        return False

    def _post(self, body: bytes, content_type: str) -> Any:
        import requests

        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            return self._session.post(
                self.endpoint, data=body, headers=headers, timeout=self.timeout
            )
        except requests.exceptions.ConnectionError:
            raise TwinnetError(
                f"cannot connect to {self.base}: is the server running? Start one with "
                "`twinnet serve MODEL_DIR` (check with `twinnet serve --status`)"
            ) from None
        except requests.exceptions.Timeout:
            raise TwinnetError(f"{self.base} did not answer within {self.timeout:.0f} s") from None
        except requests.exceptions.RequestException as exc:
            raise TwinnetError(
                f"request to {self.endpoint} failed: {exc.__class__.__name__}"
            ) from None

    def compare(self, left: ImageSource, right: ImageSource, cam: bool = False) -> CompareResult:
        """Send one pair; returns the server's verdict (with CAM maps when ``cam``)."""
        return parse_result(self._send(*prepare_body(left, right, cam)), self.base)

    def identify(self, query: ImageSource, top_k: int = DEFAULT_TOP_K) -> Identification:
        """Which gallery class does ``query`` show? Needs a model served with ``--index``."""
        return parse_identification(self._send(*prepare_identify_body(query, top_k)), self.base)

    def _send(self, body: bytes, content_type: str) -> bytes:
        """POST one request body; the 200 answer's bytes, or a TwinnetError that says why not."""
        resp = self._post(body, content_type)
        if _auth_refused(resp) and self._refresh_token():
            resp = self._post(body, content_type)
        if resp.status_code == 200:
            return resp.content
        if _auth_refused(resp):
            raise TwinnetError(
                f"{self.base} refused the inference token: pass --token (see key_file.json in "
                f"the server's directory) or set ${TOKEN_ENV}"
            )
        if resp.status_code == 404:
            raise TwinnetError(
                f"no model {self.model_name!r} at {self.base} (404); check the name with "
                "`twinnet serve --status` or pass --model-name"
            )
        raise error_from_body(resp.status_code, resp.content, self.base)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _auth_refused(resp: Any) -> bool:
    if resp.status_code == 401:
        return True
    if resp.status_code != 400:
        return False
    try:
        data = resp.json()
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("type") == "InvalidKeyException"


def _local_management_url(base: str) -> str | None:
    parts = urlsplit(base)
    if (parts.hostname or "") not in LOOPBACK:
        return None
    for info in list_servers():
        if info.port == parts.port:
            return info.management_url
    return None
