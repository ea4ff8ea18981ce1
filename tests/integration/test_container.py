"""The serving container's contract, tested without Docker.

``twinnet container serve`` runs as a subprocess exactly as the image's ENTRYPOINT would,
on a directory laid out like ``/opt/ml/model`` (the unpacked ``model.tar.gz``), with
``SAGEMAKER_BIND_TO_PORT`` set. The test then behaves like SageMaker: polls ``/ping``,
sends ``/invocations`` the bytes ``twinnet invoke`` sends, and stops it with SIGTERM.
The contract tests run once per model head; one more container serves a model packaged
with ``response_format="list"`` to the original sample's client. The same package served
with ``--engine ray`` (Ray Serve behind the same gateway) must keep the same contract.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from containers import png, run_container, unpacked
from motoserver import free_port

from twinnet.container.main import apply_settings
from twinnet.contract.encode import encode_multipart
from twinnet.index import GalleryIndex

pytestmark = pytest.mark.integration


def _descendants(root: int) -> set[int]:
    """Every live process below ``root`` (by parent pid), zombies excluded."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module", params=["random_model_dir", "random_cosine_dir", "timm_model_dir", "quantized_model_dir"], ids=["concat", "cosine", "timm", "int8"])  # fmt: skip
def served_model_dir(request) -> Path:
    """The model of each head, one on a timm backbone, and that one with an int8 encoder:
    the container serves them alike."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def served_precision(served_model_dir) -> str:
    """What the container is told to run: the int8 encoder when the model has one."""
    from twinnet.core.spec import ModelSpec

    return "int8" if ModelSpec.load(served_model_dir).quantization else "fp32"


@pytest.fixture(scope="module")
def sagemaker_model_dir(served_model_dir, tmp_path_factory) -> Path:
    """The model under test, packaged and unpacked."""
    return unpacked(served_model_dir, tmp_path_factory.mktemp("container"))


@pytest.fixture(scope="module")
def container(sagemaker_model_dir, served_precision, tmp_path_factory):
    """The container of each model in turn, with settings from the environment."""
    log = tmp_path_factory.mktemp("container-log") / "container.log"
    yield from run_container(
        sagemaker_model_dir, log,
        TWINNET_BATCH_SIZE="2", TWINNET_THREADS="1", TWINNET_PRECISION=served_precision,
    )  # fmt: skip


def test_ping_is_200_only_once_the_model_is_ready(container):
    history = container["history"]
    statuses = [s for _, s in history]
    assert statuses[-1] == 200
    assert 503 in statuses[:-1], history  # answered "not ready" while the model loaded
    assert all(s in ("refused", 503) for s in statuses[:-1]), history
    assert container["ready_logged_at_200"], "the launcher had not reported a READY worker"
    # Ready means ready: the first invocation is answered at once, not after a model load.
    body, ctype = encode_multipart(png(1, (40, 30)), png(2, (30, 40)))
    t0 = time.monotonic()
    r = requests.post(
        f"{container['url']}/invocations", data=body, headers={"Content-Type": ctype}, timeout=60
    )
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("cam", [False, True])
def test_invocations_answers_what_invoke_sends(container, served_model_dir, served_precision, cam):
    from twinnet.infer.twin import Twin

    left, right = png(3, (64, 48)), png(4, (50, 50))
    body, ctype = encode_multipart(left, right, cam=cam)  # the bytes `twinnet invoke` sends
    r = requests.post(
        f"{container['url']}/invocations",
        data=body,
        headers={"Content-Type": ctype, "Accept": "application/json"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    answer = r.json()
    assert set(answer) == {"same", "probability", "logits", "threshold", "model"} | (
        {"cam"} if cam else set()
    )
    # The container's answer is the model's answer, at the precision it was told.
    expected = Twin.load(served_model_dir, precision=served_precision).compare(left, right)
    assert answer["logits"] == pytest.approx(list(expected.logits), abs=1e-3)
    assert answer["same"] == (answer["probability"] >= answer["threshold"])
    if cam:
        grid = np.asarray(answer["cam"]["left"])
        assert grid.shape == (2, 2) and np.asarray(answer["cam"]["right"]).shape == (2, 2)


def _bad_image():
    return encode_multipart(png(5, (20, 20)), b"not an image at all")


def _bad_cam():
    body, ctype = encode_multipart(png(5, (20, 20)), png(6, (20, 20)))
    bad = body.replace(b'name="cam"\r\n\r\nfalse', b'name="cam"\r\n\r\nmaybe')
    assert bad != body
    return bad, ctype


def _missing_right():
    return b'{"left": "aGVsbG8="}', "application/json"


def _over_limit():
    return encode_multipart(png(7, (20, 20)), b"\xff\xd8\xff" + bytes(7 * 2**20))


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (_bad_image, 400, "invalid_image"),
        (_bad_cam, 400, "invalid_field"),
        (_missing_right, 400, "missing_field"),
        (_over_limit, 413, "payload_too_large"),
    ],
    ids=["bad-image", "bad-cam", "missing-right", "over-6MB"],
)
def test_bad_requests_get_4xx(container, make, status, code):
    body, ctype = make()
    r = requests.post(
        f"{container['url']}/invocations", data=body, headers={"Content-Type": ctype}, timeout=60
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_other_routes(container):
    url = container["url"]
    assert requests.get(f"{url}/invocations", timeout=10).status_code == 405
    assert requests.get(f"{url}/predictions/twin", timeout=10).status_code == 404
    assert requests.post(f"{url}/models", data=b"x", timeout=10).status_code == 404


def test_environment_settings_reach_torchserve(
    container, sagemaker_model_dir, served_precision, tmp_path
):
    said = f"settings from the environment: batch_size=2, threads=1, precision={served_precision}"
    assert said in container["log"].read_text()
    # What the container does with them: the archive's config, rewritten.
    (mar,) = sagemaker_model_dir.glob("*.mar")
    out = apply_settings(mar, {"batch_size": 3, "workers": 2, "response_timeout": 30}, tmp_path)
    with zipfile.ZipFile(out) as z, zipfile.ZipFile(mar) as original:
        config = yaml.safe_load(z.read("model-config.yaml"))
        assert sorted(z.namelist()) == sorted(original.namelist())
        assert z.read("head.safetensors") == original.read("head.safetensors")
        if served_precision == "int8":  # the archive carries the int8 encoder
            assert z.read("encoder.int8.onnx") == original.read("encoder.int8.onnx")
    assert (config["batchSize"], config["maxBatchDelay"], config["responseTimeout"]) == (3, 20, 30)
    assert config["minWorkers"] == config["maxWorkers"] == config["twinnet"]["workers"] == 2


def test_sigterm_stops_cleanly_and_promptly(container):
    """Last in the module: it ends the shared container."""
    proc = container["proc"]
    family = _descendants(proc.pid)
    assert len(family) >= 2, "expected TorchServe's JVM and a worker below the entrypoint"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    took = time.monotonic() - t0
    assert code == 0
    assert took < 15, f"SIGTERM took {took:.1f} s"
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in family if _alive(p)], "processes outlived the container"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{container['url']}/ping", timeout=2)


def test_sigterm_while_the_model_loads(random_model_dir, tmp_path):
    """SageMaker may stop a container that never became healthy: that must be clean too."""
    sagemaker_model_dir = unpacked(random_model_dir, tmp_path / "package")
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), "TWINNET_HOST": "127.0.0.1"}
    cmd = [
        sys.executable,
        "-m",
        "twinnet",
        "container",
        "serve",
        "serve",
        "--model-dir",
        str(sagemaker_model_dir),
    ]
    with (tmp_path / "log").open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            family: set[int] = set()
            log = tmp_path / "log"
            while time.monotonic() < deadline and proc.poll() is None:
                family |= _descendants(proc.pid)
                if "Model server started" in log.read_text(errors="replace"):
                    break  # TorchServe is up and its worker is loading the model: stop it now
                time.sleep(0.05)
            assert family, "TorchServe never started"
            assert requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 503
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert time.monotonic() - t0 < 15
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    family |= _descendants(proc.pid)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in family) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in family if _alive(p)], (tmp_path / "log").read_text()[-2000:]


# ------------------------------------------------------------------------ the original sample's client
@pytest.fixture(scope="module")
def list_container(random_model_dir, tmp_path_factory):
    """``twinnet package --response-format list``, with environment settings that rewrite
    the archive's config (the recorded format must survive that)."""
    work = tmp_path_factory.mktemp("list-container")
    model_dir = unpacked(random_model_dir, work, response_format="list")
    yield from run_container(
        model_dir, work / "container.log",
        TWINNET_WORKERS="1", TWINNET_THREADS="1", TWINNET_PRECISION="fp32",
    )  # fmt: skip


@pytest.mark.parametrize("cam", [False, True])
def test_the_sample_client_gets_its_list_from_invocations(list_container, random_model_dir, cam):
    """The request built exactly as the sample's app and notebook build it, its body sent as
    is (as ``invoke_endpoint(ContentType=..., Body=req.body)`` sends it), and the answer read
    as a Python literal, as the sample reads it (``ast.literal_eval``, never ``eval``)."""
    from twinnet.infer.twin import Twin

    left, right = png(8, (64, 48)), png(9, (50, 50))
    url = f"{list_container['url']}/invocations"
    files = {"left": io.BytesIO(left), "right": io.BytesIO(right)}
    req = requests.Request("POST", url, data={"cam": str(cam)}, files=files).prepare()
    r = requests.post(
        url, data=req.body, headers={"Content-Type": req.headers["Content-Type"]}, timeout=60
    )
    assert r.status_code == 200, r.text
    flat = ast.literal_eval(r.text)
    expected = Twin.load(random_model_dir, precision="fp32").compare(left, right, cam=cam)
    assert isinstance(flat, list) and len(flat) == (2 + 2 * 2 if cam else 2)
    assert flat[:2] == pytest.approx(list(expected.logits), abs=1e-3)
    if cam:
        maps = np.concatenate([expected.cam_left, expected.cam_right])
        assert np.allclose(np.asarray(flat[2:]), maps, atol=1e-3)
    # A caller that names the format (a field, or SageMaker's CustomAttributes) gets that.
    named = requests.post(
        url, data=req.body, timeout=60,
        headers={"Content-Type": req.headers["Content-Type"],
                 "X-Amzn-SageMaker-Custom-Attributes": "format=object"},
    )  # fmt: skip
    assert named.json()["logits"] == flat[:2]
    body, ctype = encode_multipart(left, right, cam=cam)  # what twinnet's own clients send
    ours = requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=60)
    assert ours.json()["logits"] == flat[:2]


# ------------------------------------------------------------------------ identification
@pytest.fixture(scope="module")
def index_container(random_cosine_dir, tmp_path_factory):
    """``twinnet package --index``: the cosine model with a gallery index, in the container."""
    yield from _serve_with_index(
        random_cosine_dir, tmp_path_factory.mktemp("index-container"),
        TWINNET_WORKERS="1", TWINNET_THREADS="1", TWINNET_PRECISION="fp32",
    )  # fmt: skip


def _serve_with_index(model: Path, work: Path, **env_settings: str):
    """Package ``model`` with an index of a generated gallery and run it in the container;
    yields the running container with the gallery and the library's index."""
    pytest.importorskip("faiss")
    from twinnet.data.datasets import make_shapes_dataset
    from twinnet.infer.twin import Twin

    gallery = make_shapes_dataset(work / "gallery", classes=3, per_class=3, size=64)
    twin = Twin.load(model, device="cpu", precision="fp32")
    library = GalleryIndex.build(twin, gallery, work / "idx")
    model_dir = unpacked(model, work, index=work / "idx")
    for running in run_container(model_dir, work / "container.log", **env_settings):
        yield {**running, "gallery": gallery, "library": library}


def test_invocations_answers_identification(index_container):
    from twinnet.contract.encode import encode_identify_json, encode_identify_multipart

    url, library = f"{index_container['url']}/invocations", index_container["library"]
    query = (index_container["gallery"] / "circle_0" / "1.png").read_bytes()
    body, ctype = encode_identify_multipart(
        query, 2
    )  # the bytes `twinnet identify --endpoint` sends
    r = requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 200, r.text
    answer, expected = r.json(), library.identify(query, top_k=2)[0].to_dict()
    assert set(answer) == {"known", "matches", "threshold", "model"}
    assert [m["label"] for m in answer["matches"]] == [m["label"] for m in expected["matches"]]
    assert [m["path"] for m in answer["matches"]] == [m["path"] for m in expected["matches"]]
    assert [m["probability"] for m in answer["matches"]] == pytest.approx(
        [m["probability"] for m in expected["matches"]], abs=1e-3
    )
    assert (answer["known"], answer["threshold"]) == (expected["known"], expected["threshold"])

    # JSON, with top_k in SageMaker's CustomAttributes
    body, ctype = encode_identify_json(query)
    no_k = json.dumps({"query": json.loads(body)["query"]})
    r = requests.post(
        url, data=no_k, timeout=60,
        headers={"Content-Type": ctype, "X-Amzn-SageMaker-Custom-Attributes": "top_k=1"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert [m["label"] for m in r.json()["matches"]] == [expected["matches"][0]["label"]]

    r = requests.post(url, files={"query": query}, data={"top_k": "0"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["field"] == "top_k"
    body, ctype = encode_identify_multipart(b"not an image")
    r = requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["field"] == "query"
    # A comparison on the same endpoint is answered as before.
    body, ctype = encode_multipart(query, query)
    r = requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 200 and r.json()["same"] is True


# ------------------------------------------------------------------------ Ray Serve
def _ray_family(pid: int) -> dict[int, str]:
    """``{pid: name}`` of the container's descendants (psutil), and of every process in the
    sessions they started: the Ray server's session holds Ray's GCS, raylet, agents and
    workers wherever they were reparented."""
    import psutil

    kids = psutil.Process(pid).children(recursive=True)
    family = {}
    for p in kids:
        with contextlib.suppress(psutil.Error, OSError):  # short-lived ones come and go
            family[p.pid] = p.name()
    sessions = set()
    for p in kids:
        try:
            sessions.add(os.getsid(p.pid))
        except OSError:
            pass
    sessions -= {os.getsid(pid)}
    for p in psutil.process_iter(["name"]):
        try:
            if os.getsid(p.pid) in sessions:
                family[p.pid] = p.info["name"]
        except OSError:
            pass
    return family


def _left_alive(family: dict[int, str]) -> list[str]:
    """Those of ``family`` still running (zombies waiting for their parent do not count)."""
    import psutil

    deadline = time.monotonic() + 10
    while True:
        left = []
        for pid, name in family.items():
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid} {name}")
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _ray_processes_ok(family: dict[int, str]) -> None:
    names = set(family.values())
    assert {"gcs_server", "raylet", "ray::ServeReplica:twin:TwinDeployment"} <= names, names


@pytest.fixture(scope="module")
def ray_container(random_model_dir, tmp_path_factory):
    """``twinnet container serve --engine ray`` on the same model.tar.gz as TorchServe's."""
    pytest.importorskip("ray")
    work = tmp_path_factory.mktemp("ray-container")
    model_dir = unpacked(random_model_dir, work)
    yield from run_container(
        model_dir, work / "container.log", "--engine", "ray",
        TWINNET_WORKERS="1", TWINNET_THREADS="1", TWINNET_PRECISION="fp32",
    )  # fmt: skip


def test_ray_ping_is_503_until_the_model_is_ready(ray_container):
    history = ray_container["history"]
    statuses = [s for _, s in history]
    assert statuses[-1] == 200
    assert 503 in statuses[:-1], history  # answered "not ready" while Ray started the replica
    assert all(s in ("refused", 503) for s in statuses[:-1]), history
    assert ray_container["ready_logged_at_200"], "the launcher had not reported a ready replica"
    _ray_processes_ok(_ray_family(ray_container["proc"].pid))  # it is Ray that serves
    assert requests.get(f"{ray_container['url']}/ping", timeout=10).status_code == 200


@pytest.mark.parametrize("cam", [False, True])
def test_ray_invocations_answers_as_twin_compare(ray_container, random_model_dir, cam):
    from twinnet.infer.twin import Twin

    left, right = png(11, (64, 48)), png(12, (50, 50))
    body, ctype = encode_multipart(left, right, cam=cam)
    r = requests.post(
        f"{ray_container['url']}/invocations", data=body, headers={"Content-Type": ctype},
        timeout=60,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    answer = r.json()
    expected = Twin.load(random_model_dir, precision="fp32").compare(left, right, cam=cam)
    assert set(answer) == {"same", "probability", "logits", "threshold", "model"} | (
        {"cam"} if cam else set()
    )
    assert answer["logits"] == pytest.approx(list(expected.logits), abs=1e-3)
    assert answer["probability"] == pytest.approx(expected.probability, abs=1e-3)
    assert answer["same"] == expected.same
    if cam:
        assert np.allclose(answer["cam"]["left"], expected.cam_left, atol=1e-3)
        assert np.allclose(answer["cam"]["right"], expected.cam_right, atol=1e-3)


def test_ray_bad_requests_get_4xx_and_the_next_one_is_answered(ray_container):
    url = f"{ray_container['url']}/invocations"
    good, good_type = encode_multipart(png(13, (40, 30)), png(14, (30, 40)))
    cases = [
        (_bad_image, 400, "invalid_image"),
        (_bad_cam, 400, "invalid_field"),
        (_missing_right, 400, "missing_field"),
        (_over_limit, 413, "payload_too_large"),
    ]
    for make, status, code in cases:
        body, ctype = make()
        r = requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=60)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
        r = requests.post(url, data=good, headers={"Content-Type": good_type}, timeout=60)
        assert r.status_code == 200 and set(r.json()) >= {"same", "logits"}, r.text
    assert requests.get(url, timeout=10).status_code == 405


def test_ray_sigterm_exits_0_and_leaves_no_process(ray_container):
    """Last of the Ray container's tests: it ends the container."""
    proc = ray_container["proc"]
    family = _ray_family(proc.pid)
    _ray_processes_ok(family)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    assert not _left_alive(family), "processes outlived the container"
    assert "SIGTERM: stopping Ray Serve" in ray_container["log"].read_text()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{ray_container['url']}/ping", timeout=2)


def test_ray_sigterm_while_the_replica_loads(random_model_dir, tmp_path):
    """A model directory served as it is (no .mar), stopped before it is ready."""
    pytest.importorskip("ray")
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), "TWINNET_HOST": "127.0.0.1",
           "TWINNET_ENGINE": "ray", "TWINNET_WORKERS": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "twinnet", "container", "serve", "--model-dir",
           str(random_model_dir)]  # fmt: skip
    log = tmp_path / "log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            family: dict[int, str] = {}
            pings: list[int] = []  # /ping while Ray starts: red until a replica has the model
            while time.monotonic() < deadline and proc.poll() is None:
                family.update(_ray_family(proc.pid))
                if "raylet" in family.values():
                    with contextlib.suppress(requests.ConnectionError):
                        pings.append(
                            requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code
                        )
                if "ray::ServeReplica:twin:TwinDeployment" in family.values():
                    break  # Ray is up and the replica is loading the model: stop it now
                time.sleep(0.1)
            assert "raylet" in family.values(), log.read_text()[-2000:]
            assert pings and pings[0] == 503, pings
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, log.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
                for pid in family:  # a failed test leaves no Ray instance behind
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
    assert not _left_alive(family), log.read_text()[-2000:]


@pytest.fixture(scope="module")
def ray_index_container(random_cosine_dir, tmp_path_factory):
    """``twinnet package --index`` served by Ray Serve, chosen by ``TWINNET_ENGINE``."""
    pytest.importorskip("ray")
    yield from _serve_with_index(
        random_cosine_dir, tmp_path_factory.mktemp("ray-index-container"),
        TWINNET_ENGINE="ray", TWINNET_WORKERS="1", TWINNET_THREADS="1",
    )  # fmt: skip


def test_ray_invocations_answers_identification(ray_index_container):
    from twinnet.contract.encode import encode_identify_multipart

    url, library = f"{ray_index_container['url']}/invocations", ray_index_container["library"]
    _ray_processes_ok(_ray_family(ray_index_container["proc"].pid))
    query = (ray_index_container["gallery"] / "circle_0" / "1.png").read_bytes()
    body, ctype = encode_identify_multipart(query, 2)
    r = requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=60)
    assert r.status_code == 200, r.text
    answer, expected = r.json(), library.identify(query, top_k=2)[0].to_dict()
    assert [m["label"] for m in answer["matches"]] == [m["label"] for m in expected["matches"]]
    assert [m["probability"] for m in answer["matches"]] == pytest.approx(
        [m["probability"] for m in expected["matches"]], abs=1e-3
    )
    assert (answer["known"], answer["threshold"]) == (expected["known"], expected["threshold"])
    r = requests.post(url, files={"query": query}, data={"top_k": "0"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["field"] == "top_k"
