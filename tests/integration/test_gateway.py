"""The SageMaker container's HTTP gateway, in front of a stub model server on loopback.

The gateway is the unit under test: a real :class:`~twinnet.container.gateway.Gateway` on a
loopback port, in front of a tiny HTTP server that answers like TorchServe's inference
API (``POST /invocations``) and management API (``GET /models/<name>``). Bad framing is
sent byte for byte over raw sockets, as an attacker or a broken client would send it.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from twinnet.container.gateway import Gateway
from twinnet.contract.protocol import MAX_REQUEST_BYTES
from twinnet.engines.server import ServerInfo

pytestmark = pytest.mark.integration

STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ", re.MULTILINE)


class _Backend:
    """A model server stub: records each request that reaches it and answers 201 with its size.

    ``workers`` is what its management API reports; with ``drop_idle`` set it closes each
    connection right after answering, without saying so (a keep-alive connection gone stale).
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.workers = ["READY"]
        self.drop_idle = False
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                return

            def _reply(self, status: int, payload: object, headers=()) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # the management API
                self._reply(200, [{"workers": [{"status": s} for s in backend.workers]}])

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = {"path": self.path, "body": body, "headers": dict(self.headers.items())}
                backend.requests.append(seen)
                time.sleep(float(self.headers.get("X-Delay", "0")))
                self._reply(
                    201,
                    {"bytes": len(body), "path": self.path},
                    [("Connection", "keep-alive, X-Backend-Hop"), ("X-Backend-Hop", "1"),
                     ("X-Backend-Id", "stub")],
                )  # fmt: skip
                if backend.drop_idle:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        port = self.server.server_address[1]
        self.info = ServerInfo(
            pid=0, host="127.0.0.1", port=port, management_port=port, metrics_port=port,
            auth=False, models=["twin"], store="", instance="",
        )  # fmt: skip
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backend() -> Iterator[_Backend]:
    stub = _Backend()
    yield stub
    stub.close()


def _gateway(backend: _Backend, **options) -> Gateway:
    gateway = Gateway("127.0.0.1", 0, **options)
    gateway.upstream = backend.info
    gateway.start()
    return gateway


@pytest.fixture
def gateway(backend) -> Iterator[Gateway]:
    """A gateway as the container starts it, with a 4 KiB body cap to keep tests small."""
    gw = _gateway(backend, invocation_timeout=5, max_request_bytes=4096)
    yield gw
    gw.close()


def _exchange(port: int, data: bytes, wait: float = 3.0, then: bytes = b"") -> tuple[bytes, bool]:
    """Send ``data`` (then ``then``, best effort) and read until the server closes or ``wait``
    seconds pass; returns what came back and whether the server closed the connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)
        if then:
            try:
                sock.sendall(then)
            except OSError:  # the server answered and closed before reading it all
                pass
        sock.settimeout(0.2)
        out, deadline = b"", time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
        return out, False


def _statuses(raw: bytes) -> list[int]:
    return [int(code) for code in STATUS_LINE.findall(raw)]


def _error(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]


def _post_head(*headers: str, version: str = "HTTP/1.1") -> bytes:
    lines = [f"POST /invocations {version}", "Host: x", "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("length", ["-1", "-0", "+5", "1_0"])
def test_content_length_must_be_plain_decimal(gateway, backend, length):
    """A negative length used to pass the cap and read the stream to its end."""
    raw, closed = _exchange(
        gateway.port, _post_head(f"Content-Length: {length}") + b"0123456789", wait=3.0,
        then=b"A" * 65536,
    )  # fmt: skip
    assert _statuses(raw) == [400], raw
    assert _error(raw)["code"] == "bad_request"
    assert closed
    assert backend.requests == []


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
AMBIGUOUS = {
    "te-and-cl": _post_head("Transfer-Encoding: chunked", "Content-Length: 3")
    + b"5\r\nhello\r\n0\r\n\r\n",
    "te-list-and-cl": _post_head("Transfer-Encoding: gzip, chunked", "Content-Length: 3")
    + b"5\r\nhello\r\n0\r\n\r\n",
    "te-trailing-space-and-cl": _post_head("Transfer-Encoding: chunked ", "Content-Length: 0")
    + SMUGGLED,
    "te-twice": _post_head("Transfer-Encoding: identity", "Transfer-Encoding: chunked")
    + b"5\r\nhello\r\n0\r\n\r\n"
    + SMUGGLED,
    "te-chunked-twice": _post_head("Transfer-Encoding: chunked", "Transfer-Encoding: chunked")
    + b"5\r\nhello\r\n0\r\n\r\n"
    + SMUGGLED,
    "te-folded": _post_head("Transfer-Encoding:", " chunked") + b"5\r\nhello\r\n0\r\n\r\n",
    "te-on-http-1.0": _post_head("Transfer-Encoding: chunked", version="HTTP/1.0")
    + b"5\r\nhello\r\n0\r\n\r\n",
    "two-cl": _post_head("Content-Length: 0", "Content-Length: 40") + SMUGGLED,
}


@pytest.mark.parametrize("request_bytes", AMBIGUOUS.values(), ids=AMBIGUOUS.keys())
def test_ambiguous_framing_is_400_and_closes(gateway, backend, request_bytes):
    raw, closed = _exchange(gateway.port, request_bytes)
    assert _statuses(raw) == [400], raw  # one answer: nothing smuggled behind it
    assert _error(raw)["code"] == "bad_request"
    assert closed
    assert backend.requests == []


def _chunked(body: bytes, size: int) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
             for i in range(0, len(body), size)]  # fmt: skip
    return b"".join(parts) + b"0\r\n\r\n"


def test_chunked_body_within_the_cap_is_forwarded_decoded(gateway, backend):
    body = bytes(range(256)) * 16  # exactly the 4 KiB cap
    raw, _ = _exchange(
        gateway.port, _post_head("Transfer-Encoding: chunked") + _chunked(body, 1000)
    )
    assert _statuses(raw) == [201], raw
    (seen,) = backend.requests
    assert seen["body"] == body
    assert seen["headers"]["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in seen["headers"]


def test_chunked_body_over_the_cap_is_413_while_it_arrives(gateway, backend):
    """The cap holds for the decoded body, without waiting for a last chunk that never comes."""
    head = _post_head("Transfer-Encoding: chunked")
    endless = b"".join(b"200\r\n" + b"A" * 512 + b"\r\n" for _ in range(64))  # 32 KiB, no end
    raw, closed = _exchange(gateway.port, head + endless, wait=3.0)
    assert _statuses(raw) == [413], raw
    assert _error(raw)["code"] == "payload_too_large"
    assert closed
    # One byte over, properly ended, is refused too; and a declared length over the cap is
    # refused before the body is read.
    raw, _ = _exchange(gateway.port, head + _chunked(b"B" * 4097, 1000))
    assert _statuses(raw) == [413], raw
    raw, _ = _exchange(gateway.port, _post_head("Content-Length: 4097"), wait=3.0)
    assert _statuses(raw) == [413] and _error(raw)["code"] == "payload_too_large", raw
    assert backend.requests == []


def test_default_cap_is_the_contracts(backend):
    """Without ``max_request_bytes``, the gateway holds bodies to the contract's 6 MiB."""
    gateway = _gateway(backend)
    try:
        head = _post_head(f"Content-Length: {MAX_REQUEST_BYTES + 1}")
        raw, closed = _exchange(gateway.port, head, wait=3.0)
        assert _statuses(raw) == [413], raw
        assert _error(raw)["code"] == "payload_too_large" and "6 MiB" in _error(raw)["message"]
        assert closed and backend.requests == []
    finally:
        gateway.close()


def test_oversized_chunk_size_line_is_400(gateway, backend):
    head = _post_head("Transfer-Encoding: chunked")
    raw, closed = _exchange(gateway.port, head + b"5;" + b"x" * 4000, wait=3.0)
    assert _statuses(raw) == [400], raw
    assert closed and backend.requests == []


def test_connection_named_headers_stay_on_their_hop(gateway, backend):
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request(
        "POST",
        "/invocations?format=list",
        body=b'{"left": "x"}',
        headers={
            "Content-Type": "application/json",
            "Connection": "keep-alive, X-Client-Hop",
            "X-Client-Hop": "secret",
            "X-Amzn-SageMaker-Custom-Attributes": "cam=true",
        },
    )
    resp = conn.getresponse()
    assert resp.status == 201  # the model server's status and body, as they were
    assert json.loads(resp.read()) == {"bytes": 13, "path": "/invocations?format=list"}
    assert resp.getheader("X-Backend-Id") == "stub"
    assert resp.getheader("X-Backend-Hop") is None
    conn.close()
    (seen,) = backend.requests
    forwarded = {k.lower(): v for k, v in seen["headers"].items()}
    assert forwarded["x-amzn-sagemaker-custom-attributes"] == "cam=true"
    assert forwarded["content-type"] == "application/json"
    assert "x-client-hop" not in forwarded


def _stall(port: int, n: int) -> list[socket.socket]:
    """``n`` clients that stop mid-headers or mid-body and then wait."""
    socks = []
    for i in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        if i % 3 == 0:
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        elif i % 3 == 1:
            sock.sendall(_post_head("Content-Length: 100") + b"half")
        socks.append(sock)  # every third sends nothing at all
    return socks


def test_stalled_clients_hold_no_thread(backend):
    """150 stalled clients: the thread count stays put and other clients are still served."""
    gateway = _gateway(backend, invocation_timeout=1)
    socks: list[socket.socket] = []
    try:
        # Warm up: the gateway's threads and its keep-alive connection to the model server.
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        conn.request("POST", "/invocations", body=b"{}")
        assert conn.getresponse().read()
        before = threading.active_count()
        socks = _stall(gateway.port, 150)
        time.sleep(1.0)
        assert threading.active_count() <= before + 10, threading.active_count() - before
        conn.request("GET", "/ping")
        ping = conn.getresponse()
        assert (ping.status, json.loads(ping.read())) == (200, {"status": "Healthy"})
        conn.request("POST", "/invocations", body=b'{"left": "abc"}')
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())["bytes"]) == (201, 15)
        conn.request("POST", "/invocations", body=b"{}", headers={"X-Delay": "3"})
        slow = conn.getresponse()
        assert slow.status == 504  # the invocation timeout still holds
        assert json.loads(slow.read())["error"]["code"] == "unavailable"
        assert threading.active_count() <= before + 10
        conn.close()
    finally:
        for sock in socks:
            sock.close()
        gateway.close()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_stalled_connections_are_closed_after_the_read_deadlines(backend):
    gateway = _gateway(backend, header_timeout=1, body_timeout=2)
    try:
        idle = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        idle.request("GET", "/ping")
        assert idle.getresponse().read()
        mid_headers, mid_body, silent = _stall(gateway.port, 3)
        t0 = time.monotonic()
        assert _closed_within(silent, 4) and _closed_within(mid_headers, 4)
        assert _closed_within(mid_body, 5)
        took = time.monotonic() - t0
        assert 1.5 <= took <= 5.5, took  # the body had its own, longer deadline
        # A keep-alive connection between requests is idle, not stalled: it stays open.
        idle.request("GET", "/ping")
        assert idle.getresponse().status == 200
        idle.close()
        for sock in (silent, mid_headers, mid_body):
            sock.close()
    finally:
        gateway.close()


def _invoke(port: int, body: bytes = b"{}", headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/invocations", body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_connections_the_model_server_closed_are_replaced(gateway, backend):
    """A pooled keep-alive connection that the model server has closed costs no request."""
    backend.drop_idle = True
    for i in range(4):
        body = b'{"n": %d}' % i
        assert _invoke(gateway.port, body) == (201, {"bytes": len(body), "path": "/invocations"})
    assert [r["body"] for r in backend.requests] == [b'{"n": %d}' % i for i in range(4)]


def test_a_slow_model_gets_one_request_and_the_caller_a_504(backend):
    gateway = _gateway(backend, invocation_timeout=1)
    try:
        t0 = time.monotonic()
        status, answer = _invoke(gateway.port, headers={"X-Delay": "2.5"})
        took = time.monotonic() - t0
        assert (status, answer["error"]["code"]) == (504, "unavailable")
        assert took < 2.0, took  # one wait of invocation_timeout, not a second try
        time.sleep(2)
        assert len(backend.requests) == 1  # the request was not sent again
    finally:
        gateway.close()


def test_an_unreachable_model_server_is_503(backend):
    gateway = _gateway(backend)
    try:
        backend.close()
        status, answer = _invoke(gateway.port)
        assert (status, answer["error"]["code"]) == (503, "unavailable")
    finally:
        gateway.close()


def test_ready_means_a_ready_worker_for_ping_and_for_the_launcher(backend):
    """One definition: the gateway's /ping and ``twinnet serve`` both ask ``model_ready``."""
    from twinnet.engines.health import describe_model, model_ready

    gateway = _gateway(backend)
    try:
        cases = [(["READY", "STARTING"], True), (["STARTING", "UNLOADING"], False), ([], False)]
        for workers, ready in cases:
            backend.workers = workers
            assert model_ready(backend.info, "twin") is ready, workers
            gateway._ready_at = 0.0  # past the one-second cache
            conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
            conn.request("GET", "/ping")
            assert conn.getresponse().status == (200 if ready else 503), workers
            conn.close()
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            nobody = dataclasses.replace(backend.info, management_port=free.getsockname()[1])
        assert model_ready(nobody, "twin") is False
        with pytest.raises(OSError):
            describe_model(nobody, "twin", timeout=2)
    finally:
        gateway.close()
