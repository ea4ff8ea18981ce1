"""Real TorchServe and real Ray Serve on free loopback ports: archive → serve → requests,
batching, bad inputs, worker and replica restarts, token auth, the original sample's client,
and `twinnet serve --stop` leaving no process behind.

The contract tests run once per server of :data:`SERVERS`: TorchServe with the model of each
head (resnet18 at 64 px, fp32 so answers can be compared with the in-process library to
1e-4) and with a timm backbone, and Ray Serve (`twinnet serve --engine ray`, one Ray instance
for the module) with the concat head. One more TorchServe serves an archive built with ``response_format="list"`` for
the sample's client. Each is stopped in teardown; the Ray server with `twinnet serve --stop`,
which must leave none of its Ray processes behind.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "samples"
TIMEOUT = 60


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A distinct photo-like JPEG per seed (noise plus a coloured block)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    arr[size[1] // 4 : size[1] // 2, size[0] // 4 : size[0] // 2] = rng.integers(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    """The four real cat photos when present beside the project, else generated JPEGs."""
    if SAMPLES.is_dir():
        return [(SAMPLES / f"c{i}.jpg").read_bytes() for i in range(1, 5)]
    return [_jpeg(i, (1024, 768)) for i in range(4)]


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """A private TWINNET_HOME, so clients find this module's token and nobody else's."""
    home = tmp_path_factory.mktemp("twhome")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TWINNET_HOME", str(home))
        yield home


def _serve(model_dir: Path, state: Path, store: Path, precision: str = "fp32", **options):
    """Archive ``model_dir`` into ``store``, start TorchServe on it; yield it, then stop it."""
    from twinnet.engines.server import start, stop
    from twinnet.engines.torchserve.archive import build_archive

    mar = build_archive(model_dir, store, workers=1, precision=precision, **options)
    assert mar == store / "twin.mar"
    port, mport, metport = _free_ports(3)
    info = start(
        store,
        port=port,
        management_port=mport,
        metrics_port=metport,
        root=state / "serve",
        timeout=240,
    )
    try:
        yield info
    finally:
        stop(port=info.port, root=state / "serve")
        assert not info.alive()


def _cli(home: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``twinnet ARGS`` in a subprocess with ``TWINNET_HOME=home``."""
    env = {**os.environ, "TWINNET_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "twinnet", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _session(info) -> list[tuple[int, str]]:
    """``(pid, command)`` of every live process of the Ray server's session (its own, GCS,
    raylet, agents, Serve's controller and proxy, the replicas) or naming its Ray directory."""
    import psutil

    ray_dir = str(Path(info.instance, "tmp").resolve())
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                continue
            cmd = " ".join(proc.cmdline())
            if os.getsid(proc.pid) == info.pid or ray_dir in cmd:
                found.append((proc.pid, cmd))
        except (psutil.Error, OSError):
            continue
    return found


def _serve_ray(model_dir: Path, state: Path, precision: str = "fp32"):
    """`twinnet serve --engine ray` on ``model_dir``; yield it, then `twinnet serve --stop` it
    and check that no Ray process, file or directory of it is left."""
    from twinnet.engines.state import instance_dir, load_info

    (port,) = _free_ports(1)
    started = _cli(
        state, "serve", str(model_dir), "--engine", "ray", "--port", str(port),
        "--replicas", "1", "--batch-size", "4", "--max-batch-delay", "300",
        "--precision", precision, "--timeout", "400", timeout=600,
    )  # fmt: skip
    instance = instance_dir(port, state / "serve")
    info = load_info(instance)
    assert started.returncode == 0 and info is not None, started.stdout + started.stderr
    ray_dir = Path(info.instance, "tmp").resolve()
    try:  # from here on the server is stopped whatever fails
        assert f"http://127.0.0.1:{port}/predictions/twin" in started.stdout
        assert "RUNNING (Ray Serve)" in started.stdout
        names = {cmd.split()[0].rsplit("/", 1)[-1] for _, cmd in _session(info)}
        assert {"gcs_server", "raylet", "ray::ServeController", "ray::ProxyActor"} <= names, names
        yield info
    finally:
        stopped = _cli(state, "serve", "--stop", "--port", str(port), timeout=180)
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped the server on port {port}" in stopped.stdout
        assert _session(info) == []  # launcher, GCS, raylet, agents, controller, proxy, replicas
        assert not ray_dir.exists()
        assert not (instance / "key_file.json").exists() and not (instance / "model").exists()
        assert (instance / "logs" / "ray.out").is_file()  # the logs stay


#: The servers every contract test runs against: (engine, model directory fixture, precision).
#: The int8 ones serve the encoder that ``twinnet quantize`` added to the model directory.
SERVERS = [
    ("torchserve", "random_model_dir", "fp32"),
    ("torchserve", "random_cosine_dir", "fp32"),
    ("torchserve", "timm_model_dir", "fp32"),
    ("torchserve", "quantized_model_dir", "int8"),
    ("ray", "random_model_dir", "fp32"),
    ("ray", "quantized_model_dir", "int8"),
]


@pytest.fixture(scope="module", params=SERVERS, ids=["torchserve-concat", "torchserve-cosine", "torchserve-timm", "torchserve-int8", "ray-concat", "ray-int8"])  # fmt: skip
def served(request) -> tuple[str, Path, str]:
    """The engine, the model directory and the precision of the server under test."""
    engine, model_fixture, precision = request.param
    return engine, request.getfixturevalue(model_fixture), precision


@pytest.fixture(scope="module")
def server(served, state, tmp_path_factory):
    """The server of :data:`SERVERS` in turn: batches of 4 within 300 ms, one worker or replica,
    the JSON object as default answer."""
    engine, model_dir, precision = served
    if engine == "ray":
        yield from _serve_ray(model_dir, state, precision)
        return
    store = tmp_path_factory.mktemp("store")
    yield from _serve(model_dir, state, store, precision, batch_size=4, max_batch_delay=300)


@pytest.fixture(scope="module")
def twin(served):
    """The same model in process, at the server's precision: its answers are the server's."""
    from twinnet.infer.twin import Twin

    return Twin.load(served[1], precision=served[2])


def _only(server, engine: str) -> None:
    if server.engine != engine:
        pytest.skip(f"{engine} only")


def _token(info) -> str:
    from twinnet.engines.server import read_keys

    return read_keys(info.key_file)["inference"]


def _post(info, route="/predictions/twin", token=True, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {_token(info)}"
    return requests.post(info.inference_url + route, headers=headers, timeout=TIMEOUT, **kwargs)


def _check(result: dict, expected, cam: bool = False) -> None:
    assert result["logits"] == pytest.approx(list(expected.logits), abs=1e-4)
    assert result["same"] == expected.same
    assert result["model"] == "twin"
    assert ("cam" in result) is cam


# ------------------------------------------------------------------------ 1. routes and forms
@pytest.mark.parametrize("route", ["/predictions/twin", "/invocations"])
def test_multipart_with_and_without_cam(server, twin, images, route):
    c1, c2 = images[0], images[1]
    # The original sample's request: left@c1.jpg right@c2.jpg cam=False.
    resp = _post(
        server,
        route,
        files={"left": ("c1.jpg", c1), "right": ("c2.jpg", c2)},
        data={"cam": "False"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    _check(resp.json(), twin.compare(c1, c2))

    resp = _post(server, route, files={"left": c1, "right": c2}, data={"cam": "TRUE"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    expected = twin.compare(c1, c2, cam=True)
    _check(body, expected, cam=True)
    side = twin.spec.feature_size
    assert len(body["cam"]["left"]) == side and len(body["cam"]["right"][0]) == side
    assert np.allclose(body["cam"]["left"], expected.cam_left, atol=1e-4)


@pytest.mark.parametrize("route", ["/predictions/twin", "/invocations"])
def test_json_body_and_format_list(server, twin, images, route):
    c3, c4 = images[2], images[3]
    payload = {
        "left": base64.b64encode(c3).decode(),
        "right": base64.b64encode(c4).decode(),
        "cam": False,
    }
    resp = _post(server, route, json=payload)
    assert resp.status_code == 200, resp.text
    _check(resp.json(), twin.compare(c3, c4))

    # TorchServe passes the query string to the handler on /invocations only; the JSON key
    # and the multipart field work on both routes.
    if route == "/invocations":
        resp = _post(server, route + "?format=list", json={**payload, "cam": True})
    else:
        resp = _post(server, route, json={**payload, "cam": True, "format": "list"})
    flat = resp.json()
    expected = twin.compare(c3, c4, cam=True)
    side = twin.spec.feature_size
    assert isinstance(flat, list) and len(flat) == 2 + 2 * side
    assert flat[:2] == pytest.approx(list(expected.logits), abs=1e-4)
    # With multipart, TorchServe drops the query string on both routes: use a form field.
    resp = _post(server, route, files={"left": c3, "right": c4}, data={"format": "list"})
    assert resp.json() == pytest.approx(list(expected.logits), abs=1e-4)


def test_client_and_ping(server, twin, images):
    from twinnet.clients.remote import HttpClient

    with HttpClient(server.inference_url) as client:  # token found through TWINNET_HOME
        result = client.compare(images[0], images[2], cam=True)
    expected = twin.compare(images[0], images[2], cam=True)
    assert result.logits == pytest.approx(expected.logits, abs=1e-4)
    assert result.cam_left.shape == expected.cam_left.shape
    ping = requests.get(
        server.inference_url + "/ping",
        headers={"Authorization": f"Bearer {_token(server)}"},
        timeout=TIMEOUT,
    )
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy"


# ------------------------------------------------------------------------ 2. batching
def test_concurrent_requests_form_batches_and_get_their_own_answers(server, twin):
    n = 8
    pairs = [(_jpeg(100 + 2 * i), _jpeg(101 + 2 * i)) for i in range(n)]
    expected = [twin.compare(a, b) for a, b in pairs]
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def worker(i: int) -> None:
        barrier.wait()
        a, b = pairs[i]
        results[i] = _post(server, files={"left": a, "right": b})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    sizes = []
    for resp, exp in zip(results, expected, strict=True):
        assert resp is not None and resp.status_code == 200, getattr(resp, "text", None)
        _check(resp.json(), exp)
        sizes.append(int(resp.headers["X-Twinnet-Batch-Size"]))
    # batch size 4, 300 ms delay, 8 simultaneous clients: requests must have shared passes
    assert max(sizes) > 1, sizes
    assert all(1 <= s <= 4 for s in sizes), sizes
    log = _worker_log(server)
    assert any(f"batch_size={k} " in log for k in (2, 3, 4))


# ------------------------------------------------------------------------ 3. bad inputs
def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG")  # 144 Mpx that compress to a few KB
    assert len(buf.getvalue()) < 100_000
    return buf.getvalue()


def test_bad_inputs_get_4xx_and_the_server_keeps_answering(server, twin, images):
    good = images[0]
    truncated = good[: len(good) // 3]
    cases = {
        "non-image": ({"files": {"left": b"hello, not an image", "right": good}}, 400, "invalid_image", "left"),
        "truncated JPEG": ({"files": {"left": good, "right": truncated}}, 400, "invalid_image", "right"),
        "zero bytes": ({"files": {"left": ("e.jpg", b""), "right": good}}, 400, "invalid_image", "left"),
        "missing field": ({"files": {"left": good}}, 400, "missing_field", "right"),
        "bad cam": ({"files": {"left": good, "right": good}, "data": {"cam": "eval(1)"}}, 400, "invalid_field", "cam"),
        "bomb": ({"files": {"left": _bomb(), "right": good}}, 400, "invalid_image", "left"),
        "oversized": ({"files": {"left": os.urandom(7 * 2**20), "right": good}}, 413, "payload_too_large", None),
        "bad JSON": ({"data": b"{nope", "headers": {"Content-Type": "application/json"}}, 400, "bad_request", None),
        "nested JSON": ({"data": b"[" * 5000 + b"]" * 5000, "headers": {"Content-Type": "application/json"}}, 400, "bad_request", None),
    }  # fmt: skip
    for name, (kwargs, status, code, field) in cases.items():
        resp = _post(server, **kwargs)
        assert resp.status_code == status, (name, resp.status_code, resp.text)
        error = resp.json()["error"]
        assert (error["code"], error["field"]) == (code, field), name
        assert len(error["message"]) > 10, name
        ok = _post(server, files={"left": good, "right": images[1]})
        assert ok.status_code == 200, (name, ok.text)
        _check(ok.json(), twin.compare(good, images[1]))


def test_body_over_the_frontend_cap_is_413(server, images):
    """The server answers 413 from the declared length, before the body: read that answer.

    The body is not sent in full (TorchServe closes the connection once it has answered,
    and a client still sending would see only a reset), so the status is always checked.
    """
    from twinnet.engines.server import FRONTEND_MAX_REQUEST_BYTES

    head = (
        f"POST /predictions/twin HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {_token(server)}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {FRONTEND_MAX_REQUEST_BYTES + 2**20}\r\n\r\n"
    )
    reply = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(head.encode() + b"--x\r\n" + os.urandom(64 * 1024))
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert _post(server, files={"left": images[0], "right": images[1]}).status_code == 200


# ------------------------------------------------------------------------ 5. token auth
def test_token_auth(server, images, twin):
    from twinnet.clients.remote import HttpClient
    from twinnet.engines.server import read_keys
    from twinnet.errors import TwinnetError

    files = {"left": images[0], "right": images[1]}
    for route in ("/predictions/twin", "/invocations"):
        for headers in ({}, {"Authorization": "Bearer wrong-key"}):
            resp = _post(server, route, token=False, files=files, headers=headers)
            if server.engine == "ray":  # the contract's own 401 and error object
                assert resp.status_code == 401, resp.text
                assert resp.json()["error"]["code"] == "unauthorized"
            else:  # TorchServe 0.12 answers 400 InvalidKeyException for a missing or wrong key.
                assert resp.status_code in (400, 401), resp.text
                assert resp.json()["type"] == "InvalidKeyException"
    with pytest.raises(TwinnetError, match="refused the inference token"):
        HttpClient(server.inference_url, token="wrong-key").compare(images[0], images[1])
    assert _post(server, files=files).status_code == 200
    if server.engine == "ray":
        return  # keys are rotated through TorchServe's token API

    # A client holding a key that was rotated away re-reads the key file and carries on.
    client = HttpClient(server.inference_url)
    before = client._token
    keys = read_keys(server.key_file)
    rotated = requests.post(
        f"{server.management_url}/token?type=inference",
        headers={"Authorization": f"Bearer {keys['API']}"},
        timeout=TIMEOUT,
    )
    assert rotated.status_code == 200, rotated.text
    assert read_keys(server.key_file)["inference"] != before
    result = client.compare(images[0], images[1])
    assert result.logits == pytest.approx(twin.compare(images[0], images[1]).logits, abs=1e-4)


# ------------------------------------------------------------------------ 4. worker restart
def _worker_log(server) -> str:
    """What the workers (TorchServe) or the replicas (Ray Serve) have logged so far."""
    if server.engine == "ray":  # the replicas' own log files, in the Ray session's logs
        logs = Path(server.instance, "tmp", "session_latest", "logs", "serve")
        return "".join(p.read_text() for p in logs.glob("replica_twin_TwinDeployment_*.log"))
    return (server.log_dir / "model_log.log").read_text()


def test_workers_load_the_model_at_the_servers_precision(server, served, images):
    assert _post(server, files={"left": images[0], "right": images[1]}).status_code == 200
    loaded = [line for line in _worker_log(server).splitlines() if "twinnet: loaded" in line]
    assert loaded and all(f"precision {served[2]}" in line for line in loaded), loaded[:3]


def test_killed_worker_is_restarted(server, images):
    from twinnet.engines.server import describe_model

    _only(server, "torchserve")

    def ready_pids() -> set[int]:
        desc = describe_model(server, "twin")
        return {int(w["pid"]) for v in desc for w in v["workers"] if w["status"] == "READY"}

    before = ready_pids()
    assert len(before) == 1
    (old,) = before
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 120
    after: set[int] = set()
    while time.monotonic() < deadline:
        after = ready_pids()
        if after and old not in after:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no new worker became READY within 120 s (READY pids: {after})")
    resp = _post(server, files={"left": images[0], "right": images[1]})
    assert resp.status_code == 200, resp.text
    assert _post(server, files={"left": images[2], "right": images[3]}).status_code == 200


def _replicas(info) -> list[int]:
    return [pid for pid, cmd in _session(info) if cmd.startswith("ray::ServeReplica:twin:")]


def test_killed_replica_is_replaced_mid_load(server, twin, images):
    """SIGKILL the replica's process while clients are sending: Serve starts another one, and
    requests succeed again (some in flight at the kill may fail; none may hang)."""
    import psutil

    from twinnet.engines.ray.server import replica_states

    _only(server, "ray")
    (old,) = _replicas(server)
    stop, codes = threading.Event(), []
    pair = {"left": images[0], "right": images[1]}

    def client() -> None:
        while not stop.is_set():
            try:
                resp = requests.post(
                    server.inference_url + "/predictions/twin", files=pair, timeout=240,
                    headers={"Authorization": f"Bearer {_token(server)}"},
                )  # fmt: skip
                codes.append(resp.status_code)
            except requests.RequestException as exc:
                codes.append(exc.__class__.__name__)

    clients = [threading.Thread(target=client) for _ in range(3)]
    for t in clients:
        t.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while 200 not in codes and time.monotonic() < deadline:
            time.sleep(0.1)
        assert 200 in codes, codes
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 240
        new: list[int] = []
        while time.monotonic() < deadline:
            new = [p for p in _replicas(server) if p != old]
            if new and not psutil.pid_exists(old):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no new replica within 240 s (replicas: {_replicas(server)})")
        answered = len(codes)
        deadline = time.monotonic() + 240
        while 200 not in codes[answered:] and time.monotonic() < deadline:
            time.sleep(0.2)  # the clients' next answers come from the new replica
    finally:
        stop.set()
        for t in clients:
            t.join(300)
    assert 200 in codes[answered:], codes
    assert not psutil.pid_exists(old) and _replicas(server) == new
    resp = _post(server, files=pair)
    assert resp.status_code == 200, resp.text
    _check(resp.json(), twin.compare(images[0], images[1]))
    deadline = time.monotonic() + 30  # the server's report catches up within seconds
    while replica_states(server)["twin"] != ["RUNNING"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert replica_states(server)["twin"] == ["RUNNING"]


def test_ray_cli_status_compare_and_busy_port(server, served, state, images):
    """`twinnet serve --status` reports the Ray server, `twinnet compare --url` finds its key,
    and a second server on its port is refused."""
    _only(server, "ray")
    status = _cli(state, "serve", "--status")
    line = next(x for x in status.stdout.splitlines() if x.startswith(f"port {server.port}:"))
    assert status.returncode == 0 and "running" in line and "engine ray" in line, status.stdout
    assert "auth on" in line and "replicas [twin: RUNNING]" in line
    a, b = SAMPLES / "c1.jpg", SAMPLES / "c2.jpg"
    if not SAMPLES.is_dir():
        a, b = state / "a.jpg", state / "b.jpg"
        a.write_bytes(images[0])
        b.write_bytes(images[1])
    url = f"http://127.0.0.1:{server.port}"
    compared = _cli(state, "compare", str(a), str(b), "--url", url)
    assert compared.returncode == 0, compared.stderr
    assert "probability" in compared.stdout
    busy = _cli(
        state, "serve", str(served[1]), "--engine", "ray", "--port", str(server.port),
        "--host", "0.0.0.0", "--no-auth", timeout=120,
    )  # fmt: skip
    assert busy.returncode == 2
    assert "warning: token authorization is off" in busy.stderr
    assert "already" in busy.stderr and str(server.port) in busy.stderr
    assert _post(server, files={"left": images[0], "right": images[1]}).status_code == 200


def test_ray_instance_listens_on_loopback_and_needs_its_own_token(server):
    """The Ray instance of `twinnet serve --engine ray` binds loopback; the one port Ray binds
    on all interfaces (each replica's inter-deployment gRPC server) takes only callers with
    the instance's cluster token, a file of the instance directory that only its owner reads."""
    import psutil

    from twinnet.engines.ray.haproxy import find_binary
    from twinnet.engines.ray.launch import RayConfig

    _only(server, "ray")
    token = Path(server.instance, "ray_token")
    assert token.is_file() and token.stat().st_mode & 0o077 == 0
    assert Path(server.instance, "key_file.json").stat().st_mode & 0o077 == 0
    replicas = set(_replicas(server))
    open_ports, checked = [], set()
    for pid, cmd in _session(server):
        proc = psutil.Process(pid)
        env = proc.environ()  # empty for the processes whose title Ray rewrites
        if env:
            assert env.get("RAY_AUTH_MODE") == "token", cmd
            assert env.get("RAY_AUTH_TOKEN_PATH") == str(token), cmd
            checked.add(proc.name())
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                ip = conn.laddr.ip.removeprefix("::ffff:")
                if ip not in ("127.0.0.1", "::1"):
                    open_ports.append((pid, ip))
    assert {"gcs_server", "raylet"} <= checked, checked
    assert all(pid in replicas for pid, _ in open_ports), open_ports
    if find_binary() is not None:  # HAProxy serves the port; its stats and metrics: loopback
        names = {psutil.Process(pid).name() for pid, _ in _session(server)}
        assert "haproxy" in names, names
        assert RayConfig.load(Path(server.instance, "ray.json")).ingress == "haproxy"


# ------------------------------------------------------------------------ 6. the CLI, start to stop
def _group_members(pgid: int) -> list[int]:
    members = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if fields[2] == str(pgid) and fields[0] != "Z":
                members.append(int(proc.name))
    return members


def _cmdlines_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_cli_serve_status_busy_port_and_stop_leaves_nothing(random_model_dir, tmp_path, images):
    home = tmp_path / "home"
    env = {**os.environ, "TWINNET_HOME": str(home)}
    port, mport, metport = _free_ports(3)
    ports = ["--port", str(port), "--management-port", str(mport), "--metrics-port", str(metport)]
    cli = [sys.executable, "-m", "twinnet"]

    def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*cli, *args], env=env, capture_output=True, text=True, timeout=timeout
        )

    started = run("serve", str(random_model_dir), *ports, "--precision", "fp32")
    try:
        assert started.returncode == 0, started.stderr
        assert f"http://127.0.0.1:{port}/predictions/twin" in started.stdout
        assert f"http://127.0.0.1:{mport}/models" in started.stdout
        assert f"http://127.0.0.1:{metport}/metrics" in started.stdout
        info = json.loads((home / "serve" / str(port) / "server.json").read_text())
        assert _group_members(info["pid"])

        status = run("serve", "--status")
        assert status.returncode == 0 and f"port {port}: running" in status.stdout
        assert "READY" in status.stdout

        # `twinnet compare --url` path: the client finds the token through TWINNET_HOME.
        token = json.loads((home / "serve" / str(port) / "key_file.json").read_text())
        assert token["inference"]["key"]

        busy = run(
            "serve", str(random_model_dir), *ports, "--host", "0.0.0.0", "--no-auth", timeout=60
        )
        assert busy.returncode == 2
        assert "warning: token authorization is off" in busy.stderr
        assert "already" in busy.stderr and str(port) in busy.stderr
    finally:
        stopped = run("serve", "--stop", timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped the server on port {port}" in stopped.stdout
    assert _group_members(info["pid"]) == []
    assert _cmdlines_mentioning(str(home)) == []
    assert not (home / "serve" / str(port) / "key_file.json").exists()
    assert run("serve", "--status").returncode == 1


# ------------------------------------------------------------------------ 7. the original sample's client
@pytest.fixture(scope="module")
def list_server(random_model_dir, state, tmp_path_factory):
    """An archive built with ``response_format="list"``, as a team moving from the sample builds it."""
    store = tmp_path_factory.mktemp("list-store")
    yield from _serve(random_model_dir, state, store, response_format="list")


def sample_request(url: str, left: bytes, right: bytes, cam: bool) -> tuple[bytes, str]:
    """The body and content type exactly as the original sample's app and notebook build them."""
    files = {"left": io.BytesIO(left), "right": io.BytesIO(right)}
    req = requests.Request("POST", url, data={"cam": str(cam)}, files=files).prepare()
    return req.body, req.headers["Content-Type"]


def check_sample_answer(text: str, expected, side: int) -> None:
    """The sample reads the answer as a Python literal: the flat ``[neg, pos, *maps]``."""
    flat = ast.literal_eval(text)
    assert isinstance(flat, list)
    assert flat[:2] == pytest.approx(list(expected.logits), abs=1e-4)
    if expected.has_cam:
        assert len(flat) == 2 + 2 * side and all(len(row) == side for row in flat[2:])
        maps = np.concatenate([expected.cam_left, expected.cam_right])
        assert np.allclose(np.asarray(flat[2:]), maps, atol=1e-4)
    else:
        assert len(flat) == 2


@pytest.mark.parametrize("cam", [False, True])
def test_the_sample_client_gets_its_list_from_a_list_archive(
    list_server, random_model_dir, images, cam
):
    from twinnet.infer.twin import Twin

    url = list_server.inference_url + "/predictions/twin"
    body, ctype = sample_request(url, images[0], images[1], cam)
    headers = {"Content-Type": ctype, "Authorization": f"Bearer {_token(list_server)}"}
    resp = requests.post(url, data=body, headers=headers, timeout=TIMEOUT)  # the body as is
    assert resp.status_code == 200, resp.text
    twin = Twin.load(random_model_dir, precision="fp32")
    check_sample_answer(
        resp.text, twin.compare(images[0], images[1], cam=cam), twin.spec.feature_size
    )
    # A request that names its format still gets it, and twinnet's own client its object.
    named = _post(
        list_server, files={"left": images[0], "right": images[1]}, data={"format": "object"}
    )
    assert named.json()["logits"] == pytest.approx(
        list(twin.compare(images[0], images[1]).logits), abs=1e-4
    )
    from twinnet.clients.remote import HttpClient

    with HttpClient(list_server.inference_url) as client:
        result = client.compare(images[0], images[1])
    assert result.logits == pytest.approx(twin.compare(images[0], images[1]).logits, abs=1e-4)


def test_an_object_archive_answers_the_sample_request_with_the_object(server, twin, images):
    """Without ``--response-format list`` the default stays the contract's JSON object."""
    url = server.inference_url + "/predictions/twin"
    body, ctype = sample_request(url, images[0], images[1], False)
    headers = {"Content-Type": ctype, "Authorization": f"Bearer {_token(server)}"}
    resp = requests.post(url, data=body, headers=headers, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    _check(resp.json(), twin.compare(images[0], images[1]))


# ------------------------------------------------------------------------ 8. identification
@pytest.fixture(scope="module")
def identify_gallery(random_cosine_dir, tmp_path_factory):
    """A labelled gallery of shapes and its index, built in process with the cosine model."""
    pytest.importorskip("faiss")
    from twinnet.data.datasets import make_shapes_dataset
    from twinnet.infer.twin import Twin

    base = tmp_path_factory.mktemp("identify")
    gallery = make_shapes_dataset(base / "gallery", classes=4, per_class=3, size=64)
    twin = Twin.load(random_cosine_dir, device="cpu", precision="fp32")
    from twinnet.index import GalleryIndex

    return gallery, GalleryIndex.build(twin, gallery, base / "idx", model_dir=random_cosine_dir)


@pytest.fixture(scope="module")
def index_server(random_cosine_dir, identify_gallery, state, tmp_path_factory):
    """TorchServe with an archive that carries the gallery index."""
    store = tmp_path_factory.mktemp("index-store")
    index = identify_gallery[1].path
    yield from _serve(random_cosine_dir, state, store, index=index, batch_size=4)


def _same_identification(answer: dict, expected) -> None:
    want = expected.to_dict()
    assert set(answer) == set(want) == {"known", "matches", "threshold", "model"}
    assert (answer["known"], answer["threshold"], answer["model"]) == (
        want["known"], want["threshold"], want["model"]
    )  # fmt: skip
    assert [(m["label"], m["path"]) for m in answer["matches"]] == [
        (m["label"], m["path"]) for m in want["matches"]
    ]
    assert [m["probability"] for m in answer["matches"]] == pytest.approx(
        [m["probability"] for m in want["matches"]], abs=1e-4
    )


@pytest.mark.parametrize("route", ["/predictions/twin", "/invocations"])
def test_identification_multipart_and_json_equal_the_library(
    index_server, identify_gallery, random_cosine_dir, route
):
    from twinnet.infer.twin import Twin

    images, library = identify_gallery
    query = (images / "square_1" / "1.png").read_bytes()
    other = _jpeg(7, (80, 60))

    resp = _post(index_server, route, files={"query": ("q.png", query)}, data={"top_k": "3"})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    _same_identification(answer, library.identify(query, top_k=3)[0])
    assert answer["matches"][0]["path"] == str((images / "square_1" / "1.png").resolve())

    payload = {"query": base64.b64encode(other).decode(), "top_k": 2}
    resp = _post(index_server, route, json=payload)
    assert resp.status_code == 200, resp.text
    _same_identification(resp.json(), library.identify(other, top_k=2)[0])
    # SageMaker callers can name top_k in CustomAttributes; without one it is 5 (4 classes here).
    custom = {"X-Amzn-SageMaker-Custom-Attributes": "top_k=1"}
    resp = _post(index_server, route, json={"query": payload["query"]}, headers=custom)
    assert len(resp.json()["matches"]) == 1
    resp = _post(index_server, route, json={"query": payload["query"]})
    _same_identification(resp.json(), library.identify(other)[0])
    # Comparisons are answered as before by the same archive.
    resp = _post(index_server, route, files={"left": query, "right": other})
    assert resp.status_code == 200, resp.text
    _check(resp.json(), Twin.load(random_cosine_dir, precision="fp32").compare(query, other))


def test_bad_identification_requests_get_4xx_and_the_server_keeps_answering(
    index_server, identify_gallery
):
    images, library = identify_gallery
    good = (images / "circle_0" / "2.png").read_bytes()
    cases = {
        "non-image": ({"files": {"query": b"hello, not an image"}}, "invalid_image", "query"),
        "zero bytes": ({"files": {"query": ("q.png", b"")}}, "invalid_image", "query"),
        "truncated": ({"files": {"query": good[: len(good) // 2]}}, "invalid_image", "query"),
        "top_k 0": ({"files": {"query": good}, "data": {"top_k": "0"}}, "invalid_field", "top_k"),
        "top_k text": ({"files": {"query": good}, "data": {"top_k": "all"}}, "invalid_field", "top_k"),
        "top_k 101": ({"json": {"query": base64.b64encode(good).decode(), "top_k": 101}}, "invalid_field", "top_k"),
        "bad base64": ({"json": {"query": "%%%"}}, "invalid_field", "query"),
        "format list": ({"files": {"query": good}, "data": {"format": "list"}}, "invalid_field", "format"),
        "with left": ({"files": {"query": good, "left": good, "right": good}}, "bad_request", None),
    }  # fmt: skip
    for name, (kwargs, code, field) in cases.items():
        resp = _post(index_server, **kwargs)
        assert resp.status_code == 400, (name, resp.status_code, resp.text)
        error = resp.json()["error"]
        assert (error["code"], error["field"]) == (code, field), name
        ok = _post(index_server, files={"query": good}, data={"top_k": "2"})
        assert ok.status_code == 200, (name, ok.text)
        _same_identification(ok.json(), library.identify(good, top_k=2)[0])


def test_identify_cli_and_client_over_the_url(index_server, identify_gallery, capsys):
    from twinnet.cli import main
    from twinnet.clients.remote import HttpClient

    images, library = identify_gallery
    query = images / "cross_3" / "0.png"
    code = main(["identify", str(query), "--url", index_server.inference_url, "--top-k", "2", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    answer = json.loads(out)
    assert answer.pop("query") == str(query)
    _same_identification(answer, library.identify(query, top_k=2)[0])
    # the CLI in process gives the same object, query and all
    code = main(["identify", str(query), "--index", str(library.path), "--top-k", "2", "--json"])
    local = json.loads(capsys.readouterr()[0])
    assert local.pop("query") == str(query) and set(local) == set(answer)
    assert [m["label"] for m in local["matches"]] == [m["label"] for m in answer["matches"]]

    with HttpClient(index_server.inference_url) as client:  # token found through TWINNET_HOME
        result = client.identify(query, top_k=3)
    assert [m.label for m in result.matches] == [
        m.label for m in library.identify(query, top_k=3)[0].matches
    ]
    code = main(["identify", str(query), "--url", index_server.inference_url, "--top-k", "500"])
    assert code == 2 and "top_k must be between 1 and 100" in capsys.readouterr()[1]
