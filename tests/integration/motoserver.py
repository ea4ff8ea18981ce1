"""A moto server on loopback for the SageMaker tests, and what they share about it.

The server runs as a subprocess and is reached through ``AWS_ENDPOINT_URL``, so the code
under test is exactly what runs against AWS: the same boto3 calls over HTTP.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/twinnet-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/twinnet:0.1.0"
BUCKET = "twinnet-artifacts"
ENDPOINT = "twin-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    out = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited: {log.read_text()[-2000:]}")
        try:
            requests.get(f"{url}/moto-api/data.json", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto server did not start within 60 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def aws_env(monkeypatch, tmp_path: Path, url: str) -> None:
    """Fake credentials and region, and no trace of the user's own AWS configuration."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def inventory(session, bucket: str = BUCKET) -> dict[str, list]:
    """Every resource type deploy can create, listed through boto3."""
    sm = session.client("sagemaker")
    aas = session.client("application-autoscaling")
    s3 = session.client("s3")
    cw = session.client("cloudwatch")
    return {
        "endpoints": [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]],
        "configs": [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]],
        "models": [m["ModelName"] for m in sm.list_models()["Models"]],
        "targets": [
            t["ResourceId"]
            for t in aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
        ],
        "policies": [
            p["PolicyName"]
            for p in aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
        ],
        "objects": [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])],
        "alarms": [a["AlarmName"] for a in cw.describe_alarms()["MetricAlarms"]],
    }


EMPTY = {
    k: [] for k in ("endpoints", "configs", "models", "targets", "policies", "objects", "alarms")
}


def complete_update(sm, EndpointName: str, EndpointConfigName: str) -> dict:  # noqa: N803 - boto3's names
    """UpdateEndpoint as AWS leaves it once the update is in service; moto 5 lacks the call.

    It is applied to the moto server over HTTP with the calls moto has: the endpoint, same
    name and tags, now runs the new config.
    """
    arn = sm.describe_endpoint(EndpointName=EndpointName)["EndpointArn"]
    tags = sm.list_tags(ResourceArn=arn)["Tags"]
    sm.delete_endpoint(EndpointName=EndpointName)
    sm.create_endpoint(EndpointName=EndpointName, EndpointConfigName=EndpointConfigName, Tags=tags)
    return {"EndpointArn": arn}


class UpdatingSession:
    """The boto3 session, with a SageMaker client whose UpdateEndpoint completes (see above)."""

    def __init__(self, session) -> None:
        self.session = session
        self.region_name = session.region_name

    def client(self, name: str, **kwargs):
        client = self.session.client(name, **kwargs)
        if name == "sagemaker":
            client.update_endpoint = lambda **kw: complete_update(client, **kw)
        return client


def utf8_images(tmp_path: Path) -> tuple[Path, Path]:
    """Two real images (binary PPM) whose bytes are also valid UTF-8.

    moto's server decodes every request body as UTF-8 (and werkzeug hands it the last file
    of a multipart body), so PNG or JPEG bytes make it answer 500. Pixel values below 128
    keep the files decodable by both moto and Pillow; the bytes sent are still exactly
    ``encode_multipart``'s.
    """
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a.ppm", tmp_path / "b.ppm"
    Image.fromarray(rng.integers(0, 128, (48, 64, 3), dtype=np.uint8)).save(a)
    Image.fromarray(rng.integers(0, 128, (40, 40, 3), dtype=np.uint8)).save(b)
    for path in (a, b):
        path.read_bytes().decode("utf-8")
    return a, b


def queue_results(moto_url: str, *bodies: dict) -> None:
    """moto's sagemaker-runtime answers InvokeEndpoint from this queue, in order."""
    results = [
        {
            "Body": json.dumps(b),
            "ContentType": "application/json",
            "InvokedProductionVariant": "AllTraffic",
        }
        for b in bodies
    ]
    r = requests.post(
        f"{moto_url}/moto-api/static/sagemaker/endpoint-results",
        json={"region": REGION, "results": results},
        timeout=10,
    )
    assert r.status_code == 201
