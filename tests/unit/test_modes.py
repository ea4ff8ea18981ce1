"""The three hosting modes: their settings, checks, and what the container is told."""

from __future__ import annotations

import subprocess
import sys

import pytest

from twinnet.aws.modes import (
    SERVERLESS_REQUEST_BYTES,
    AsyncOutput,
    Serverless,
    endpoint_mode,
    mode_environment,
    parse_s3_uri,
)
from twinnet.container.settings import settings_from_env
from twinnet.contract.protocol import MAX_REQUEST_BYTES
from twinnet.errors import TwinnetError

pytestmark = pytest.mark.unit


def test_the_mode_is_read_from_the_endpoint_config():
    assert endpoint_mode({"ProductionVariants": [{"InstanceType": "ml.m5.xlarge"}]}) == "realtime"
    assert (
        endpoint_mode({"ProductionVariants": [{"ServerlessConfig": {"MemorySizeInMB": 2048}}]})
        == "serverless"
    )
    assert (
        endpoint_mode({"ProductionVariants": [{}], "AsyncInferenceConfig": {"OutputConfig": {}}})
        == "async"
    )
    assert endpoint_mode(None) == "realtime"


def test_serverless_and_async_settings_become_sagemakers_fields():
    assert Serverless().variant() == {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    assert Serverless(6144, 20, 3).variant()["ProvisionedConcurrency"] == 3
    out = AsyncOutput(
        "s3://bkt/answers", "s3://bkt/failed", "arn:aws:sns:us-east-1:123456789012:t", 4
    )
    assert out.config() == {
        "OutputConfig": {
            "S3OutputPath": "s3://bkt/answers",
            "S3FailurePath": "s3://bkt/failed",
            "NotificationConfig": {
                "SuccessTopic": "arn:aws:sns:us-east-1:123456789012:t",
                "ErrorTopic": "arn:aws:sns:us-east-1:123456789012:t",
            },
        },
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
    }
    assert out.requests == "s3://bkt/answers/requests/"
    assert parse_s3_uri("s3://bkt/a/b/") == ("bkt", "a/b/")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: Serverless(memory_mb=1000), "one of 1024"),
        (lambda: Serverless(max_concurrency=0), "1-200"),
        (lambda: Serverless(max_concurrency=2, provisioned=3), "at most --max-concurrency"),
        (lambda: AsyncOutput("https://bkt/answers"), "not an S3 URI"),
        (lambda: AsyncOutput("s3://bkt/a", failure="bkt/f"), "--failure-output"),
        (lambda: AsyncOutput("s3://bkt/a", max_concurrent=0), "1-1000"),
    ],
)
def test_bad_mode_settings_are_refused(make, fragment):
    with pytest.raises(TwinnetError, match=fragment):
        make()


def test_serverless_tells_the_container_its_limits_and_the_user_wins():
    assert mode_environment("realtime", {"A": "1"}) == {"A": "1"}
    assert mode_environment("async", {}) == {}
    env = mode_environment("serverless", {"TWINNET_WORKERS": "2"})
    assert env == {
        "TWINNET_MAX_REQUEST_BYTES": str(SERVERLESS_REQUEST_BYTES),
        "TWINNET_WORKERS": "2",
    }
    assert "TWINNET_WORKERS" not in mode_environment(
        "serverless", {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}
    )


def test_the_container_takes_a_smaller_request_limit_only():
    assert settings_from_env({}).max_request_bytes == MAX_REQUEST_BYTES
    assert settings_from_env({"TWINNET_MAX_REQUEST_BYTES": "4194304"}).max_request_bytes == 4194304
    with pytest.raises(TwinnetError, match="at most"):
        settings_from_env({"TWINNET_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES + 1)})
    with pytest.raises(TwinnetError, match="whole number"):
        settings_from_env({"TWINNET_MAX_REQUEST_BYTES": "4MB"})


def test_the_containers_own_process_does_not_load_torch():
    """The gateway process holds no model: without torch it stays ~30 MB, not ~500 MB,
    which a 1-2 GB serverless endpoint needs for its worker."""
    code = (
        "import sys\n"
        "from twinnet.cli import build_parser\n"
        "args = build_parser('container').parse_args(['container', 'serve', '--model-dir', '/m'])\n"
        "import twinnet.container.main\n"
        "assert args.func.__name__ == 'run_container_serve'\n"
        "print(sorted(m for m in ('torch', 'numpy', 'onnxruntime', 'ray') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_workers_memory_is_its_own_not_its_parents(random_model_dir):
    """The measurement serverless deploy relies on: a fresh process's own peak, which a big
    parent (here 2 GB more than the model needs) must not inflate."""
    import numpy as np

    from twinnet.infer.footprint import measure

    ballast = np.ones(2 * 2**30 // 8)  # touched pages: resident in this process
    footprint = measure(random_model_dir, precision="fp32")
    assert ballast.sum() > 0
    assert 100 < footprint.peak_mb < 2048 and footprint.precision == "fp32"
