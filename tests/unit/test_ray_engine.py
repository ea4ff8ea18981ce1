"""The Ray Serve engine without Ray running: the ingress's routes, token check, body cap and
rows; the replica/thread plan; the command-line values; what a launch refuses up front."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("starlette")

from starlette.requests import Request  # noqa: E402

from twinnet.contract.encode import encode_multipart  # noqa: E402
from twinnet.contract.options import ServeOptions, usable_cpus  # noqa: E402
from twinnet.contract.protocol import MAX_REQUEST_BYTES  # noqa: E402
from twinnet.contract.service import Reply, Row  # noqa: E402
from twinnet.engines.ray.engine import parse_autoscale, plan  # noqa: E402
from twinnet.engines.ray.ingress import (  # noqa: E402
    BATCH_HEADER,
    Gate,
    answer,
    key_digest,
    row_from,
)
from twinnet.engines.ray.server import launch, parse_address  # noqa: E402
from twinnet.engines.registry import engine_of  # noqa: E402
from twinnet.engines.state import ServerInfo, load_info  # noqa: E402
from twinnet.errors import TwinnetError  # noqa: E402

pytestmark = pytest.mark.unit

KEY = "secret-key"
GATE = Gate("twin", key_digest(KEY))


class Wire:
    """An ASGI receive channel that counts the body bytes the application pulled."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.read = 0

    async def __call__(self) -> dict:
        chunk = self.chunks.pop(0) if self.chunks else b""
        self.read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}


def _request(
    path: str = "/predictions/twin",
    method: str = "POST",
    headers: dict[str, str] | None = None,
    chunks: list[bytes] | None = None,
    query: str = "",
) -> tuple[Request, Wire]:
    wire = Wire(chunks or [])
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
    }
    return Request(scope, wire), wire


class Batcher:
    """Stands in for the model's batch: records the rows that got through the ingress."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    async def __call__(self, row: Row) -> tuple[Reply, int]:
        self.rows.append(row)
        return Reply(200, '{"same":true}'), 3


def _answer(request: Request, gate: Gate = GATE) -> tuple[int, dict, dict, Batcher]:
    batch = Batcher()
    resp = asyncio.run(answer(request, gate, batch))
    return resp.status_code, json.loads(resp.body), dict(resp.headers), batch


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


# ------------------------------------------------------------------------ routes and auth
def test_routes():
    assert GATE.route("/ping") == "ping"
    assert GATE.route("/invocations") == "predict"
    assert GATE.route("/predictions/twin") == "predict"
    assert GATE.route("/predictions/twin/1.0") == "predict"
    assert GATE.route("/predictions/other") == "unknown_model"
    assert GATE.route("/predictions") == "unknown"
    assert GATE.route("/models") == "unknown"


def test_token_check():
    assert GATE.authorized({"authorization": f"Bearer {KEY}"})
    assert GATE.authorized({"authorization": f"bearer  {KEY} "})
    assert not GATE.authorized({})
    assert not GATE.authorized({"authorization": "Bearer wrong"})
    assert not GATE.authorized({"authorization": f"Basic {KEY}"})
    assert not GATE.authorized({"authorization": "Bearer "})
    assert Gate("twin").authorized({})  # authorization off


def test_ping_needs_no_token_and_never_reaches_the_model():
    status, body, _, batch = _answer(_request("/ping", "GET")[0])
    assert (status, body, batch.rows) == (200, {"status": "Healthy"}, [])


@pytest.mark.parametrize(
    ("path", "method", "headers", "status", "code"),
    [
        ("/nowhere", "POST", {}, 404, "not_found"),
        ("/predictions/twin", "POST", {}, 401, "unauthorized"),
        ("/predictions/twin", "POST", {"Authorization": "Bearer nope"}, 401, "unauthorized"),
        ("/invocations", "POST", {}, 401, "unauthorized"),
        ("/predictions/other", "POST", {"Authorization": f"Bearer {KEY}"}, 404, "not_found"),
        ("/predictions/twin", "GET", {"Authorization": f"Bearer {KEY}"}, 405, "method_not_allowed"),
    ],
)
def test_refusals_carry_the_contract_error_object(path, method, headers, status, code):
    request, wire = _request(path, method, headers, [b"x" * 100])
    got, body, _, batch = _answer(request)
    assert got == status
    assert body["error"]["code"] == code and len(body["error"]["message"]) > 10
    assert batch.rows == [] and wire.read == 0  # refused before reading the body


def test_a_declared_length_over_the_cap_is_refused_unread():
    headers = {**_auth(), "Content-Length": str(MAX_REQUEST_BYTES + 1)}
    request, wire = _request(headers=headers, chunks=[b"x" * 65536])
    status, body, _, batch = _answer(request)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    assert wire.read == 0 and batch.rows == []


def test_a_chunked_body_is_read_only_until_it_passes_the_cap():
    chunk = b"x" * (1 << 20)
    n = MAX_REQUEST_BYTES // len(chunk) + 4  # 10 MiB offered
    request, wire = _request(headers=_auth(), chunks=[chunk] * n)
    status, body, _, batch = _answer(request)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    assert MAX_REQUEST_BYTES < wire.read <= MAX_REQUEST_BYTES + len(chunk)
    assert batch.rows == []


def test_a_broken_multipart_body_fails_alone_before_the_model():
    headers = {**_auth(), "Content-Type": "multipart/form-data"}  # no boundary
    status, body, _, batch = _answer(_request(headers=headers, chunks=[b"--x\r\n"])[0])
    assert status == 400 and body["error"]["code"] == "bad_request"
    assert batch.rows == []


# ------------------------------------------------------------------------ rows
def test_a_multipart_request_becomes_the_row_torchserve_would_give():
    payload, ctype = encode_multipart(b"L", b"R", cam=True, format=None)
    headers = {**_auth(), "Content-Type": ctype}
    request, _ = _request(headers=headers, chunks=[payload], query="format=list&top_k=3")
    status, _, resp_headers, batch = _answer(request)
    assert status == 200 and resp_headers[BATCH_HEADER.lower()] == "3"
    assert resp_headers["content-type"].startswith("application/json")
    (row,) = batch.rows
    assert row.fields["left"] == b"L" and row.fields["right"] == b"R"
    assert row.fields["cam"] == b"true"
    assert row.fields["format"] == "list" and row.fields["top_k"] == "3"  # from the query
    assert row.headers["authorization"] == f"Bearer {KEY}"


def test_a_form_field_wins_over_the_query_and_other_bodies_arrive_whole():
    payload, ctype = encode_multipart(b"L", b"R", format="object")
    row = row_from(payload, {"content-type": ctype}, "format=list")
    assert row.fields["format"] == b"object"
    row = row_from(b'{"left": "x"}', {"content-type": "application/json"}, "cam=true")
    assert row.fields == {"cam": "true", "body": b'{"left": "x"}'}


# ------------------------------------------------------------------------ the plan
def test_threads_never_outnumber_cores_on_this_machine():
    for replicas, autoscale in ((None, None), (1, None), (2, None), (3, None), (None, (1, 4))):
        p = plan(ServeOptions(), replicas, autoscale, local_cpus=2)
        assert p.threads * p.most <= 2 or p.threads == 1, (replicas, autoscale, p)
        assert p.num_cpus * p.most <= 2 + 1e-6  # every replica fits, the top of a range too
    assert plan(ServeOptions(), None, None, 2).replicas == 2  # one per CPU by default
    assert plan(ServeOptions(workers=1), None, None, 2).threads == 2  # --workers counts
    assert plan(ServeOptions(), 1, None, 2).threads == 2
    assert plan(ServeOptions(plan="torchserve"), 1, None, 2).threads is None


def test_on_a_cluster_each_replica_reserves_its_threads():
    p = plan(ServeOptions(), None, None, local_cpus=None)
    assert (p.replicas, p.threads, p.num_cpus) == (1, 1, 1.0)
    p = plan(ServeOptions(threads=3), 4, None, local_cpus=None)
    assert (p.threads, p.num_cpus) == (3, 3.0)


def test_deployment_options():
    opts = plan(ServeOptions(batch_size=4), None, (0, 3), local_cpus=2).deployment_options()
    assert opts["autoscaling_config"] == {
        "min_replicas": 0,
        "initial_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 4,
    }
    assert "num_replicas" not in opts
    assert opts["max_ongoing_requests"] >= 4  # a replica can take a whole batch
    opts = plan(ServeOptions(), 2, None, local_cpus=2).deployment_options()
    assert opts["num_replicas"] == 2 and "autoscaling_config" not in opts
    with pytest.raises(TwinnetError, match="not both"):
        plan(ServeOptions(), 2, (1, 2), 2)
    with pytest.raises(TwinnetError, match="at least 1"):
        plan(ServeOptions(), 0, None, 2)


@pytest.mark.parametrize("text", ["4", "2:1", "a:b", "1:0", ":3", "1:2:3"])
def test_bad_autoscale(text):
    with pytest.raises(TwinnetError, match="autoscale"):
        parse_autoscale(text)


def test_addresses():
    assert parse_autoscale("0:4") == (0, 4)
    assert parse_address(None) is None
    for good in ("auto", "ray://10.0.0.5:10001", "head.example:6379"):
        assert parse_address(good) == good
    for bad in ("", "ray://", "10.0.0.5", "http://x:1/y", "host:port"):
        with pytest.raises(TwinnetError, match="--address"):
            parse_address(bad)


# ------------------------------------------------------------------------ refused up front
def test_launch_refuses_what_ray_cannot_serve(tmp_path: Path, random_model_dir):
    root = tmp_path / "state"
    store = tmp_path / "store"
    store.mkdir()
    (store / "twin.mar").write_bytes(b"PK")
    with pytest.raises(TwinnetError, match="serves a model directory"):
        launch(store, port=1, root=root)
    with pytest.raises(TwinnetError, match="does not exist"):
        launch(tmp_path / "missing", port=1, root=root)
    with pytest.raises(TwinnetError, match="at least 1"):
        launch(random_model_dir, port=1, root=root, replicas=0)
    with pytest.raises(TwinnetError, match="autoscale"):
        launch(random_model_dir, port=1, root=root, autoscale="3:1")
    with pytest.raises(TwinnetError, match="--address"):
        launch(random_model_dir, port=1, root=root, address="nowhere")
    assert not root.exists()  # nothing written, nothing started


def test_a_record_says_its_engine(tmp_path: Path):
    fields = dict(pid=1, host="127.0.0.1", port=9300, management_port=0, metrics_port=0,
                  auth=True, models=["twin"], store="s", instance=str(tmp_path))  # fmt: skip
    ServerInfo(**fields, engine="ray", config="ray.json").save()
    info = load_info(tmp_path)
    assert info is not None and info.engine == "ray"
    assert info.config_file == tmp_path / "ray.json"
    assert type(engine_of(info)).__name__ == "RayServe" and engine_of(info).unit == "replicas"
    # A record written before engines existed is TorchServe's.
    data = json.loads((tmp_path / "server.json").read_text())
    del data["engine"], data["config"]
    (tmp_path / "server.json").write_text(json.dumps(data))
    info = load_info(tmp_path)
    assert info is not None and info.engine == "torchserve"
    assert info.config_file == tmp_path / "config.properties"
    assert engine_of(info).title == "TorchServe"


def test_usable_cpus_is_what_the_plan_shares():
    p = plan(ServeOptions(), None, None, local_cpus=usable_cpus())
    assert p.replicas == usable_cpus() and p.threads == 1


# ------------------------------------------------------------------------ what a dead server left
def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _record(tmp_path: Path, pid: int) -> ServerInfo:
    instance = tmp_path / "9400"
    instance.mkdir(exist_ok=True)
    return ServerInfo(pid=pid, host="127.0.0.1", port=9400, management_port=0, metrics_port=0,
                      auth=True, models=["twin"], store="", instance=str(instance),
                      engine="ray")  # fmt: skip


def _session_with_a_child() -> tuple[subprocess.Popen, int]:
    """A session leader (a program of its own) and the pid of its child."""
    code = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
        "print(p.pid, flush=True); time.sleep(300)"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    return leader, int(leader.stdout.readline())


def test_reap_kills_what_a_dead_server_left_in_its_session(tmp_path: Path):
    from twinnet.engines.ray.server import reap

    leader, orphan = _session_with_a_child()
    leader.kill()
    leader.wait()
    assert _alive(orphan)
    reap(_record(tmp_path, leader.pid))
    assert not _alive(orphan)


def test_reap_spares_a_reused_pid_and_kills_by_the_ray_directory(tmp_path: Path):
    from twinnet.engines.ray.server import reap

    other, its_child = _session_with_a_child()  # the recorded pid runs again: another program
    info = _record(tmp_path, other.pid)
    ray_dir = tmp_path / "ray-session"
    ray_dir.mkdir()
    (Path(info.instance) / "tmp").symlink_to(ray_dir)
    left = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", str(ray_dir / "sockets")],
        start_new_session=True,
    )
    try:
        reap(info)
        left.wait(timeout=10)
        assert other.poll() is None and _alive(its_child)
        assert not ray_dir.exists()
    finally:
        os.kill(its_child, 9)
        other.kill()
        other.wait()
