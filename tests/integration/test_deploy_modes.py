"""Serverless and asynchronous endpoints against a real moto server, and async round trips
through the real container.

moto in server mode stores ``ServerlessConfig`` and ``AsyncInferenceConfig`` as given and
answers ``InvokeEndpointAsync`` with canned objects in a bucket of its own, so the
round trip does not use moto's runtime: a small relay plays SageMaker's part instead
(``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` points boto3's runtime client at it). It takes the
InvokeEndpointAsync call as botocore sends it, reads the request object from moto's S3,
posts it to the container's ``/invocations`` and writes the answer (or the failure) where
the endpoint config says, under the names SageMaker uses (``<id>.out``, ``<id>-error.out``).
Everything else (S3, SageMaker, Application Auto Scaling, CloudWatch) is moto over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
from containers import run_container
from motoserver import (
    BUCKET,
    EMPTY,
    ENDPOINT,
    IMAGE,
    REGION,
    ROLE,
    UpdatingSession,
    inventory,
    queue_results,
    utf8_images,
)
from PIL import Image

from twinnet.aws.modes import Serverless
from twinnet.aws.rollout import deploy
from twinnet.aws.scaling import alarm_name
from twinnet.cli import main

pytestmark = pytest.mark.integration

OUTPUT = f"s3://{BUCKET}/answers"
WAIT = ("--async-timeout", "60")


def _deploy(model_dir: Path, *extra: str) -> list[str]:
    return [
        "deploy", str(model_dir), "--endpoint", ENDPOINT, "--bucket", BUCKET, "--role", ROLE,
        "--image", IMAGE, "--region", REGION, *extra,
    ]  # fmt: skip


# ---------------------------------------------------------------------------- serverless


def test_serverless_deploys_answers_redeploys_and_tears_down(
    aws, moto_url, random_model_dir, tmp_path, capsys
):
    sm = aws.client("sagemaker")
    assert main(_deploy(random_model_dir, "--mode", "serverless", "--wait")) == 0
    out = capsys.readouterr()
    assert f"endpoint {ENDPOINT} (serverless): created, InService" in out.out
    assert (
        "serverless fit: the model needs about" in out.err and "the endpoint has 2048 MB" in out.err
    )
    assert "image size not checked" in out.err  # no such image in moto's ECR: said, not fatal

    config = sm.describe_endpoint_config(
        EndpointConfigName=sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"]
    )
    (variant,) = config["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    assert "InstanceType" not in variant and "AsyncInferenceConfig" not in config
    model = sm.describe_model(ModelName=variant["ModelName"])
    assert model["PrimaryContainer"]["Environment"] == {
        "TWINNET_MAX_REQUEST_BYTES": str(4 * 2**20),
        "TWINNET_WORKERS": "1",
    }
    assert main(["endpoints", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["mode"], row["instance_type"], row["backlog"]) == (
        "serverless",
        "serverless 2048 MB",
        None,
    )

    # A serverless endpoint is called directly (InvokeEndpoint): moto's canned answer here;
    # the container's side is tests/integration/test_container_serverless.py.
    answer = {"same": True, "probability": 0.8, "logits": [-0.7, 0.7], "threshold": 0.5,
              "model": "twin"}  # fmt: skip
    queue_results(moto_url, answer)
    a, b = utf8_images(tmp_path)
    assert main(["compare", "--endpoint", ENDPOINT, str(a), str(b), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == answer and "async endpoint" not in out.err

    before = inventory(aws)
    assert main(_deploy(random_model_dir, "--mode", "serverless", "--wait")) == 0
    assert "(serverless): unchanged" in capsys.readouterr().out
    assert inventory(aws) == before

    # New settings: a new config, the endpoint updated in place, the old config removed
    # (moto lacks UpdateEndpoint: the session completes it with the calls moto has).
    result = deploy(
        random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE, wait=True, poll_s=0.1,
        session=UpdatingSession(aws), mode="serverless",
        serverless=Serverless(memory_mb=3072, max_concurrency=10, provisioned=2),
    )  # fmt: skip
    assert (result.action, result.status, result.mode) == ("updated", "InService", "serverless")
    config = sm.describe_endpoint_config(
        EndpointConfigName=sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"]
    )
    assert config["ProductionVariants"][0]["ServerlessConfig"] == {
        "MemorySizeInMB": 3072, "MaxConcurrency": 10, "ProvisionedConcurrency": 2,
    }  # fmt: skip
    assert len(inventory(aws)["configs"]) == 1

    # A serverless endpoint cannot become a real-time one in place: refused, nothing changed.
    kept = inventory(aws)
    assert main(_deploy(random_model_dir)) == 2
    assert "runs in serverless mode" in capsys.readouterr().err
    assert inventory(aws) == kept

    assert main(["teardown", ENDPOINT, "--delete-artifacts"]) == 0
    capsys.readouterr()
    assert inventory(aws) == EMPTY


def test_serverless_refuses_a_model_over_its_memory(aws, random_model_dir, capsys):
    assert main(_deploy(random_model_dir, "--mode", "serverless", "--memory-mb", "1024")) == 2
    err = capsys.readouterr().err
    assert "\nerror: the model does not fit a serverless endpoint: it needs about " in err
    needed = int(re.search(r"needs about (\d+) MB", err).group(1))
    assert 1024 < needed <= 2048
    assert "the endpoint has 1024 MB; deploy with --memory-mb 2048" in err
    assert inventory(aws) == EMPTY  # refused before anything was uploaded or created


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--mode", "serverless", "--autoscale", "1:2"], "no instances to count or scale"),
        (["--mode", "serverless", "--memory-mb", "1500"], "serverless memory is one of"),
        (["--mode", "serverless", "--instance-type", "ml.m5.large"], "has no instances"),
        (["--mode", "serverless", "--max-concurrency", "3", "--provisioned-concurrency", "4"],
         "at most --max-concurrency"),
        (["--memory-mb", "2048"], "--memory-mb: only with --mode serverless"),
        (["--mode", "async"], "needs --output"),
        (["--mode", "async", "--output", "bucket/answers"], "is not an S3 URI"),
        (["--output", OUTPUT], "--output: only with --mode async"),
        (["--autoscale", "0:2"], "only an asynchronous endpoint (--mode async) scales to 0"),
        (["--mode", "async", "--output", OUTPUT, "--sns-topic", "topic"], "not an SNS topic ARN"),
        (["--mode", "serverless", "--env", "TWINNET_WORKERS=two"],
         "--env: TWINNET_WORKERS='two': expected a whole number >= 1"),
    ],
)  # fmt: skip
def test_mode_arguments_are_checked_before_anything(aws, random_model_dir, capsys, extra, fragment):
    assert main(_deploy(random_model_dir, *extra)) == 2
    assert fragment in capsys.readouterr().err
    assert inventory(aws) == EMPTY


# --------------------------------------------------------------------------------- async


class _Relay(ThreadingHTTPServer):
    """SageMaker's part of an async invocation: S3 in, the container, S3 out."""

    daemon_threads = True

    def __init__(self, container: str, session) -> None:
        super().__init__(("127.0.0.1", 0), _RelayHandler)
        self.container, self.session = container, session
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.done: list[threading.Thread] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def locations(self, endpoint: str, inference_id: str) -> tuple[str, str]:
        with self.lock:
            sm = self.session.client("sagemaker")
        config = sm.describe_endpoint_config(
            EndpointConfigName=sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
        )["AsyncInferenceConfig"]["OutputConfig"]
        failure = config.get("S3FailurePath", config["S3OutputPath"])
        return (
            f"{config['S3OutputPath'].rstrip('/')}/{inference_id}.out",
            f"{failure.rstrip('/')}/{inference_id}-error.out",
        )

    def work(self, source: str, content_type: str, output: str, failure: str) -> None:
        try:
            self._work(source, content_type, output, failure)
        except Exception as exc:  # the test names it, instead of waiting for an answer
            self.errors.append(repr(exc))
            raise

    def _work(self, source: str, content_type: str, output: str, failure: str) -> None:
        with self.lock:  # boto3 sessions make clients one thread at a time
            s3 = self.session.client("s3")
        bucket, key = source[5:].split("/", 1)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        time.sleep(0.3)  # queued: the client polls before the answer exists
        r = requests.post(
            f"{self.container}/invocations", data=body, headers={"Content-Type": content_type},
            timeout=60,
        )  # fmt: skip
        target = output if r.status_code == 200 else failure
        bucket, key = target[5:].split("/", 1)
        s3.put_object(Bucket=bucket, Key=key, Body=r.content)


class _RelayHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        server: _Relay = self.server  # type: ignore[assignment]
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = re.fullmatch(r"/endpoints/([^/]+)/async-invocations", self.path.split("?")[0])
        source = self.headers.get("X-Amzn-SageMaker-InputLocation")
        if not match or not source:
            self.send_error(400)
            return
        inference_id = self.headers.get("X-Amzn-SageMaker-Inference-Id") or str(uuid.uuid4())
        output, failure = server.locations(match.group(1), inference_id)
        ctype = self.headers["X-Amzn-SageMaker-Content-Type"]
        worker = threading.Thread(target=server.work, args=(source, ctype, output, failure))
        worker.start()
        server.done.append(worker)
        answer = json.dumps({"InferenceId": inference_id}).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("X-Amzn-SageMaker-OutputLocation", output)
        self.send_header("X-Amzn-SageMaker-FailureLocation", failure)
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _relay(container: str, session, monkeypatch):
    relay = _Relay(container, session)
    thread = threading.Thread(target=relay.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", relay.url)
    try:
        yield relay
    finally:
        relay.shutdown()
        for worker in relay.done:
            worker.join(30)
    assert not relay.errors


def _png(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 56, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _objects(aws, prefix: str) -> list[str]:
    listing = aws.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_async_round_trip_through_the_container(
    aws, random_cosine_dir, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("faiss")
    from twinnet.data.datasets import make_shapes_dataset
    from twinnet.index import GalleryIndex
    from twinnet.infer.twin import Twin

    gallery = make_shapes_dataset(tmp_path / "gallery", classes=2, per_class=2, size=64)
    twin = Twin.load(random_cosine_dir, device="cpu", precision="fp32")
    library = GalleryIndex.build(twin, gallery, tmp_path / "idx")

    # deploy: async, answers under OUTPUT, scaled between 0 and 2 instances on the backlog.
    argv = _deploy(random_cosine_dir, "--mode", "async", "--output", OUTPUT, "--autoscale", "0:2",
                   "--index", str(tmp_path / "idx"))  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"endpoint {ENDPOINT} (async): created, InService" in out
    assert "autoscaling 0-2 instances at 5 queued requests/instance" in out
    sm, aas, cw = (aws.client(n) for n in ("sagemaker", "application-autoscaling", "cloudwatch"))
    config = sm.describe_endpoint_config(
        EndpointConfigName=sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"]
    )
    assert config["AsyncInferenceConfig"] == {"OutputConfig": {"S3OutputPath": OUTPUT}}
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 1
    rid = f"endpoint/{ENDPOINT}/variant/AllTraffic"
    (target,) = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])[
        "ScalableTargets"
    ]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 2)
    policies = {
        p["PolicyType"]: p
        for p in aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)[
            "ScalingPolicies"
        ]
    }
    before = inventory(aws)
    tracking = policies["TargetTrackingScaling"]["TargetTrackingScalingPolicyConfiguration"]
    metric = tracking["CustomizedMetricSpecification"]
    assert (metric["MetricName"], tracking["TargetValue"]) == (
        "ApproximateBacklogSizePerInstance",
        5.0,
    )
    assert metric["Dimensions"] == [{"Name": "EndpointName", "Value": ENDPOINT}]
    (alarm,) = cw.describe_alarms(AlarmNames=[alarm_name(ENDPOINT)])["MetricAlarms"]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["AlarmActions"] == [policies["StepScaling"]["PolicyARN"]]

    # A minimum above 0 needs no wake-up: redeploying 1:2 removes the alarm and step policy.
    assert main([*argv[:-4], "--autoscale", "1:2", *argv[-2:]]) == 0
    assert "(async): unchanged" in capsys.readouterr().out
    assert not cw.describe_alarms(AlarmNames=[alarm_name(ENDPOINT)])["MetricAlarms"]
    left = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)
    assert [p["PolicyType"] for p in left["ScalingPolicies"]] == ["TargetTrackingScaling"]

    # The same deploy again (0:2) changes nothing but the scaling it asks for.
    assert main(argv) == 0
    assert "(async): unchanged" in capsys.readouterr().out
    assert inventory(aws) == before

    # endpoints: the mode, and the backlog CloudWatch reports.
    cw.put_metric_data(
        Namespace="AWS/SageMaker",
        MetricData=[{"MetricName": "ApproximateBacklogSize", "Value": 3.0,
                     "Dimensions": [{"Name": "EndpointName", "Value": ENDPOINT}]}],
    )  # fmt: skip
    assert main(["endpoints", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["mode"], row["backlog"], row["instance_type"]) == ("async", 3.0, "ml.m5.xlarge")
    assert main(["endpoints"]) == 0
    listing = capsys.readouterr().out
    assert "BACKLOG" in listing and " async " in listing

    # The real container serves the packaged artifact; the relay plays SageMaker.
    (key,) = [k for k in _objects(aws, "twinnet/") if k.endswith("model.tar.gz")]
    aws.client("s3").download_file(BUCKET, key, str(tmp_path / "model.tar.gz"))
    opt = tmp_path / "opt-ml-model"
    import tarfile

    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        tar.extractall(opt, filter="data")
    log = tmp_path / "container.log"
    running = run_container(opt, log, TWINNET_PRECISION="fp32", TWINNET_WORKERS="1",
                            TWINNET_THREADS="1")  # fmt: skip
    with contextlib.closing(running), _relay(next(running)["url"], aws, monkeypatch):
        a, b = _png(tmp_path / "a.png", 1), _png(tmp_path / "b.png", 2)
        assert main(["compare", "--endpoint", ENDPOINT, str(a), str(b), "--json", *WAIT]) == 0
        out = capsys.readouterr()
        answer = json.loads(out.out)
        expected = twin.compare(a, b)
        assert answer["logits"] == pytest.approx(list(expected.logits), abs=1e-4)
        assert answer["same"] == expected.same and answer["model"] == expected.model
        assert "async endpoint: 1/1 answered" in out.err

        # A folder of queries: all queued, then one JSON line each, in the folder's order.
        queries = sorted(p for p in gallery.rglob("*.png"))
        assert (
            main(["identify", str(gallery), "--endpoint", ENDPOINT, "--top-k", "2", "--json"]) == 0
        )
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [line["query"] for line in lines] == [str(q) for q in queries]
        for line, result in zip(lines, library.identify(queries, top_k=2), strict=True):
            expected_id = result.to_dict()
            assert [m["label"] for m in line["matches"]] == [
                m["label"] for m in expected_id["matches"]
            ]
            assert line["known"] == expected_id["known"]

        # search: every gallery image compared on the endpoint, ranked as in process.
        assert (
            main(["search", str(a), str(gallery), "--endpoint", ENDPOINT, "--json", "--top-k", "3"])
            == 0
        )
        hits = json.loads(capsys.readouterr().out)["hits"]
        local = twin.search(a, gallery, top_k=3)
        assert [h["path"] for h in hits] == [str(h.item) for h in local]
        assert [h["probability"] for h in hits] == pytest.approx(
            [h.probability for h in local], abs=1e-4
        )

        # A bad image fails alone: the failure object carries the contract's error.
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image at all")
        assert main(["compare", "--endpoint", ENDPOINT, str(bad), str(b)]) == 2
        assert "left" in capsys.readouterr().err
        assert any(k.endswith("-error.out") for k in _objects(aws, "answers/"))

        # --no-wait: the output location now, the answer there later.
        assert main(["compare", "--endpoint", ENDPOINT, str(a), str(b), "--no-wait", "--json"]) == 0
        queued = json.loads(capsys.readouterr().out)
        assert queued["output"].startswith(f"{OUTPUT}/") and queued["output"].endswith(".out")
        out_key = queued["output"][len(f"s3://{BUCKET}/") :]
        deadline = time.monotonic() + 60
        while out_key not in _objects(aws, "answers/") and time.monotonic() < deadline:
            time.sleep(0.2)
        later = json.loads(aws.client("s3").get_object(Bucket=BUCKET, Key=out_key)["Body"].read())
        assert later["logits"] == pytest.approx(answer["logits"], abs=1e-6)

    # Request objects are deleted once answered; the one queued without waiting stays.
    assert _objects(aws, "answers/requests/") == [queued["request"][len(f"s3://{BUCKET}/") :]]

    # teardown: endpoint, configs, models, scaling, the alarm and the artifact; answers stay.
    assert main(["teardown", ENDPOINT, "--delete-artifacts"]) == 0
    said = capsys.readouterr().out
    assert f"CloudWatch alarm {alarm_name(ENDPOINT)}" in said and "scaling policy" in said
    left = inventory(aws)
    assert all(k.startswith("answers/") for k in left.pop("objects"))
    assert left == {k: v for k, v in EMPTY.items() if k != "objects"}
