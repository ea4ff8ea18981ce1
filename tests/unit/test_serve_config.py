"""Serving set-up without a server: the archive's worker/thread plan, config.properties,
token discovery, busy ports and the Java hint."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import zipfile

import pytest
import yaml

from twinnet.contract.options import ServeOptions, resolve_threads
from twinnet.engines.server import (
    FRONTEND_MAX_REQUEST_BYTES,
    ServerInfo,
    check_java,
    find_token,
    port_free,
    write_config,
)
from twinnet.engines.torchserve.archive import build_archive
from twinnet.errors import TwinnetError

pytestmark = pytest.mark.unit


def test_threads_never_outnumber_cores():
    assert resolve_threads("auto", workers=1, cpus=2) == 2
    assert resolve_threads("auto", workers=2, cpus=2) == 1
    assert resolve_threads("auto", workers=4, cpus=2) == 1
    assert resolve_threads("auto", workers=4, cpus=16) == 4
    assert resolve_threads(3, workers=1) == 3
    assert resolve_threads(None, workers=2) is None  # TorchServe's defaults
    with pytest.raises(TwinnetError):
        resolve_threads(0, workers=1)


@contextlib.contextmanager
def _cpus(n: int):
    """Run the block on the first ``n`` CPUs this process may use (its real affinity)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < n:
        pytest.skip(f"needs {n} CPUs, this process has {len(allowed)}")
    os.sched_setaffinity(0, allowed[:n])
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


@pytest.mark.parametrize("cpus", [1, 2])
def test_tuned_plan_starts_one_single_thread_worker_per_cpu(cpus):
    with _cpus(cpus):
        cfg = ServeOptions(batch_size=8, max_batch_delay=10).to_config()
        threads = resolve_threads(cfg["twinnet"]["threads"], cfg["minWorkers"])
    assert (cfg["minWorkers"], cfg["maxWorkers"], cfg["twinnet"]["workers"]) == (cpus,) * 3
    assert threads == 1 and cfg["twinnet"]["threads"] == "auto"
    assert (cfg["batchSize"], cfg["maxBatchDelay"], cfg["responseTimeout"]) == (8, 10, 120)
    assert f"{cpus} worker(s) x threads=auto" in cfg["twinnet"]["why"]
    naive = ServeOptions(batch_size=1, precision="fp32", plan="torchserve").to_config()
    assert "minWorkers" not in naive and naive["twinnet"]["threads"] is None
    for bad in ({"batch_size": 0}, {"workers": 0}, {"max_batch_delay": -1}, {"plan": "fast"}):
        with pytest.raises(TwinnetError):
            ServeOptions(**bad)


def test_archive_holds_handler_model_files_and_config(random_model_dir, tmp_path):
    mar = build_archive(random_model_dir, tmp_path / "store", batch_size=4, workers=2)
    assert mar == tmp_path / "store" / "twin.mar"
    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        assert {"handler.py", "twinnet.json", "encoder.safetensors", "head.safetensors"} <= names
        assert "MAR-INF/MANIFEST.json" in names
        cfg = yaml.safe_load(z.read("model-config.yaml"))
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
    assert cfg["batchSize"] == 4 and cfg["minWorkers"] == 2 and cfg["twinnet"]["workers"] == 2
    assert manifest["model"]["handler"] == "handler.py"
    with pytest.raises(TwinnetError, match="not a twinnet model directory"):
        build_archive(tmp_path, tmp_path / "store")


def test_config_properties_set_limits_and_auth(tmp_path):
    path = write_config(
        tmp_path / "config.properties", tmp_path, ["twin"], port=9100, management_port=9101,
        metrics_port=9102, auth=True, grpc_ports=(9103, 9104),
    )  # fmt: skip
    props = dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert props["inference_address"] == "http://127.0.0.1:9100"
    assert props["management_address"] == "http://127.0.0.1:9101"
    assert props["max_request_size"] == str(FRONTEND_MAX_REQUEST_BYTES)
    assert int(props["max_response_size"]) >= 8 * 2**20
    assert props["disable_token_authorization"] == "false"
    assert props["enable_model_api"] == "false"
    assert props["load_models"] == "twin.mar"
    assert (props["grpc_inference_port"], props["grpc_management_port"]) == ("9103", "9104")


def test_find_token_reads_the_key_file_of_a_local_server(tmp_path):
    instance = tmp_path / "serve" / "9200"
    instance.mkdir(parents=True)
    info = ServerInfo(pid=1, host="127.0.0.1", port=9200, management_port=9201, metrics_port=9202,
                      auth=True, models=["twin"], store=str(tmp_path), instance=str(instance))  # fmt: skip
    (instance / "server.json").write_text(json.dumps(info.__dict__))
    keys = {"inference": {"key": "inf-key"}, "management": {"key": "mgmt"}, "API": {"key": "api"}}
    (instance / "key_file.json").write_text(json.dumps(keys))
    root = tmp_path / "serve"
    assert find_token("http://127.0.0.1:9200", root) == "inf-key"
    assert find_token("localhost:9200", root) == "inf-key"
    assert find_token("http://127.0.0.1:9200", root, kind="API") == "api"
    assert find_token("http://127.0.0.1:9999", root) is None
    assert (
        find_token("http://10.1.2.3:9200", root) is None
    )  # never hand a local key to a remote host


def test_busy_port_is_detected():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not port_free("127.0.0.1", port)


def _executable(path, mode: int = 0o755):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 'openjdk 17'\n")
    path.chmod(mode)
    return path


def test_java_is_found_or_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(TwinnetError) as info:
        check_java()
    assert "apt-get install openjdk-17-jre-headless" in str(info.value)
    assert "JAVA_HOME" in str(info.value)
    # On PATH, or under JAVA_HOME: that java is the one TorchServe gets.
    on_path = _executable(tmp_path / "path" / "java")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert check_java() == str(on_path)
    home = tmp_path / "jdk"
    monkeypatch.setenv("JAVA_HOME", str(home))
    with pytest.raises(TwinnetError, match="openjdk-17"):
        check_java()  # JAVA_HOME wins over PATH, and it holds no java
    _executable(home / "bin" / "java", mode=0o644)
    with pytest.raises(TwinnetError, match="openjdk-17"):
        check_java()  # not executable
    (home / "bin" / "java").chmod(0o755)
    assert check_java() == str(home / "bin" / "java")
