"""The SageMaker lifecycle against a real moto server on loopback.

The server runs as a subprocess and is reached through ``AWS_ENDPOINT_URL``, so the code
under test is exactly what runs against AWS: the same boto3 calls over HTTP, with no moto
decorators and nothing replaced. After every scenario the test lists each resource type
through boto3 and checks what is left.
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from motoserver import (
    BUCKET,
    EMPTY,
    ENDPOINT,
    IMAGE,
    REGION,
    ROLE,
    UpdatingSession,
    aws_env,
    complete_update,
    inventory,
    queue_results,
    start_moto,
    stop,
    utf8_images,
)
from PIL import Image

from twinnet.aws.endpoints import missing_endpoint
from twinnet.aws.sagemaker import Autoscale, deploy, list_endpoints, teardown
from twinnet.cli import main
from twinnet.errors import TwinnetError
from twinnet.index import GalleryIndex

pytestmark = pytest.mark.integration


def _deploy_args(model_dir: Path, *extra: str) -> list[str]:
    return [
        "deploy", str(model_dir), "--endpoint", ENDPOINT, "--bucket", BUCKET, "--role", ROLE,
        "--image", IMAGE, *extra,
    ]  # fmt: skip


# ------------------------------------------------------------------------- 1. lifecycle


def test_full_lifecycle(aws, moto_url, random_model_dir, tmp_path, capsys):
    # package: one .mar at the root, holding the model directory and the handler.
    tarball = tmp_path / "out" / "model.tar.gz"
    assert main(["package", str(random_model_dir), "--out", str(tarball)]) == 0
    with tarfile.open(tarball) as tar:
        assert tar.getnames() == ["twin.mar"]
        tar.extractall(tmp_path / "unpacked", filter="data")
    with zipfile.ZipFile(tmp_path / "unpacked" / "twin.mar") as mar:
        names = set(mar.namelist())
    assert {"twinnet.json", "encoder.safetensors", "head.safetensors", "handler.py"} <= names
    capsys.readouterr()

    # A foreign endpoint in the same account: never listed, never touched.
    sm = aws.client("sagemaker")
    sm.create_model(ModelName="foreign", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    sm.create_endpoint_config(
        EndpointConfigName="foreign",
        ProductionVariants=[{"VariantName": "v", "ModelName": "foreign", "InitialInstanceCount": 1,
                             "InstanceType": "ml.t2.medium"}],
    )  # fmt: skip
    sm.create_endpoint(EndpointName="foreign", EndpointConfigName="foreign")

    # deploy with autoscaling (which waits for InService).
    assert main(_deploy_args(random_model_dir, "--autoscale", "1:3:50", "--region", REGION)) == 0
    out = capsys.readouterr()
    assert f"endpoint {ENDPOINT} (realtime): created, InService" in out.out
    assert "autoscaling 1-3 instances at 50 invocations/instance/minute" in out.out
    assert "created model" in out.err and "uploading" in out.err

    desc = sm.describe_endpoint(EndpointName=ENDPOINT)
    config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    assert variant["InstanceType"] == "ml.m5.xlarge" and variant["InitialInstanceCount"] == 1
    model = sm.describe_model(ModelName=variant["ModelName"])
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["ExecutionRoleArn"] == ROLE
    url = model["PrimaryContainer"]["ModelDataUrl"]
    assert url.startswith(f"s3://{BUCKET}/twinnet/{ENDPOINT}/") and url.endswith("/model.tar.gz")
    uploaded = tmp_path / "uploaded.tar.gz"
    aws.client("s3").download_file(BUCKET, url.split("/", 3)[3], str(uploaded))
    with tarfile.open(uploaded) as tar:
        assert tar.getnames() == ["twin.mar"]

    aas = aws.client("application-autoscaling")
    rid = f"endpoint/{ENDPOINT}/variant/AllTraffic"
    (target,) = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])[
        "ScalableTargets"
    ]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    (policy,) = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)[
        "ScalingPolicies"
    ]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert tracking["TargetValue"] == 50.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == (
        "SageMakerVariantInvocationsPerInstance"
    )
    before = inventory(aws)

    # Re-running the same deploy changes nothing and creates no duplicates.
    assert main(_deploy_args(random_model_dir, "--autoscale", "1:3:50")) == 0
    assert f"endpoint {ENDPOINT} (realtime): unchanged, InService" in capsys.readouterr().out
    assert inventory(aws) == before

    # endpoints: ours, not the foreign one.
    assert main(["endpoints"]) == 0
    listing = capsys.readouterr().out
    assert ENDPOINT in listing and "InService" in listing and "foreign" not in listing
    assert main(["endpoints", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (
        row["name"] == ENDPOINT and row["instances"] == 1 and row["instance_type"] == "ml.m5.xlarge"
    )

    # invoke: the client's request/response handling against moto's canned answers.
    a, b = utf8_images(tmp_path)
    plain = {
        "same": False,
        "probability": 0.25,
        "logits": [0.3, -0.8],
        "threshold": 0.5,
        "model": "twin",
    }
    cam_map = [[0.0, 1.0], [2.0, 3.0]]
    with_cam = {**plain, "same": True, "probability": 0.75, "logits": [-0.5, 0.6],
                "cam": {"left": cam_map, "right": cam_map[::-1]}}  # fmt: skip
    queue_results(moto_url, plain, with_cam)
    assert main(["invoke", ENDPOINT, str(a), str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == plain
    picture = tmp_path / "cam.png"
    # moto caches answers by request body: the swapped pair gets the next queued answer.
    assert main(["invoke", ENDPOINT, str(b), str(a), "--cam", str(picture)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Same  probability 0.7500  (threshold 0.50)")
    with Image.open(picture) as img:
        assert img.width > img.height > 0  # four panels side by side

    # The foreign endpoint can be neither torn down nor replaced by twinnet.
    assert main(["teardown", "foreign"]) == 2
    assert "was not created by twinnet" in capsys.readouterr().err
    foreign = _deploy_args(random_model_dir)
    foreign[foreign.index(ENDPOINT)] = "foreign"
    assert main(foreign) == 2
    assert "exists but was not created by twinnet" in capsys.readouterr().err

    # teardown: says what it deleted, and nothing of ours remains.
    assert main(["teardown", ENDPOINT, "--delete-artifacts"]) == 0
    said = capsys.readouterr().out
    for what in ("scaling policy", "scalable target", f"endpoint {ENDPOINT}", "endpoint config",
                 "model ", "S3 object s3://"):  # fmt: skip
        assert what in said
    assert inventory(aws) == {
        **EMPTY,
        "endpoints": ["foreign"],
        "configs": ["foreign"],
        "models": ["foreign"],
    }
    # A second teardown has nothing to delete: a one-line error.
    assert main(["teardown", ENDPOINT]) == 2
    assert capsys.readouterr().err == f"error: {missing_endpoint(ENDPOINT, REGION)}\n"


def test_deploy_with_an_index_then_identify_on_the_endpoint(
    aws, moto_url, random_cosine_dir, tmp_path, capsys
):
    """``deploy --index`` ships the gallery index in the artifact, and ``identify --endpoint``
    sends the identification request and reads the contract's answer (moto's canned one)."""
    pytest.importorskip("faiss")
    from twinnet.data.datasets import make_shapes_dataset
    from twinnet.infer.twin import Twin

    gallery = make_shapes_dataset(tmp_path / "gallery", classes=2, per_class=2, size=64)
    GalleryIndex.build(
        Twin.load(random_cosine_dir, device="cpu", precision="fp32"), gallery, tmp_path / "idx"
    )
    argv = _deploy_args(random_cosine_dir, "--index", str(tmp_path / "idx"), "--wait")
    assert main([*argv, "--region", REGION]) == 0
    capsys.readouterr()
    (key,) = inventory(aws)["objects"]
    aws.client("s3").download_file(BUCKET, key, str(tmp_path / "model.tar.gz"))
    with tarfile.open(tmp_path / "model.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    with zipfile.ZipFile(tmp_path / "unpacked" / "twin.mar") as mar:
        assert {"index/index.json", "index/faiss.index", "twinnet.json"} <= set(mar.namelist())

    query, _ = utf8_images(tmp_path)
    answer = {
        "known": False,
        "matches": [{"label": "circle_0", "probability": 0.25, "path": "/g/circle_0/0.png"}],
        "threshold": 0.5,
        "model": "twin",
    }
    queue_results(moto_url, answer)
    assert main(["identify", str(query), "--endpoint", ENDPOINT, "--top-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"query": str(query), **answer}


def test_teardown_keeps_artifacts_unless_asked(aws, random_model_dir, capsys):
    assert main(_deploy_args(random_model_dir)) == 0
    out = capsys.readouterr().out
    assert f"endpoint {ENDPOINT} (realtime): created, Creating" in out  # no --wait: returns at once
    assert main(["teardown", ENDPOINT]) == 0
    assert "model.tar.gz kept in S3" in capsys.readouterr().out
    left = inventory(aws)
    assert len(left["objects"]) == 1 and {k: v for k, v in left.items() if k != "objects"} == {
        k: [] for k in EMPTY if k != "objects"
    }


# ------------------------------------------------------------------------- 2. failures


def test_missing_bucket_is_one_line_and_creates_nothing(aws, random_model_dir, capsys):
    args = _deploy_args(random_model_dir)
    args[args.index(BUCKET)] = "no-such-bucket"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: S3 bucket 'no-such-bucket' does not exist")
    assert inventory(aws) == EMPTY


@pytest.mark.parametrize("command", ["invoke", "compare"])
def test_invoke_missing_endpoint_is_one_line(aws, tmp_path, capsys, command):
    a, b = utf8_images(tmp_path)
    args = [str(a), str(b), "--endpoint", "no-such-endpoint"]
    if command == "invoke":
        args = ["no-such-endpoint", str(a), str(b)]
    assert main([command, *args]) == 2
    assert capsys.readouterr().err == (
        f"error: endpoint 'no-such-endpoint' not found in region {REGION}; check the name and "
        "the region (`twinnet endpoints` lists the twinnet endpoints there)\n"
    )


class _Interrupt:
    """A progress reporter that presses Ctrl-C when a given message appears."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seen: list[str] = []

    def __call__(self, event: str, message: str) -> None:
        self.seen.append(f"{event}: {message}")
        if event != "rollback" and message.startswith(self.prefix):
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    "point",
    ["created model", "created endpoint config", "creating endpoint",
     f"endpoint {ENDPOINT}: InService", "autoscaling"],
)  # fmt: skip
def test_failure_half_way_leaves_nothing(aws, random_model_dir, point):
    interrupt = _Interrupt(point)
    with pytest.raises(TwinnetError) as exc:
        deploy(
            random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE,
            autoscale=Autoscale(1, 2), report=interrupt, poll_s=0.1,
        )  # fmt: skip
    message = str(exc.value)
    assert "interrupted" in message and "nothing left behind" in message, message
    assert "\n" not in message
    assert any(s.startswith("rollback:") for s in interrupt.seen)
    assert inventory(aws) == EMPTY


def test_failed_update_keeps_the_running_endpoint(aws, random_model_dir):
    """Changing the deployment updates in place; whatever the outcome, nothing is duplicated.

    moto 5 does not implement UpdateEndpoint (it answers 500), which makes a real refusal of
    the update half way through: the new model and config must be rolled back and the old
    scaling restored. Should moto implement it, the success path is checked instead.
    """
    first = deploy(
        random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE, autoscale=Autoscale(1, 2), poll_s=0.1
    )
    before = inventory(aws)
    try:
        second = deploy(
            random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE, count=2, autoscale=Autoscale(2, 4),
            poll_s=0.1,
        )  # fmt: skip
    except TwinnetError as exc:
        assert "update endpoint" in str(exc) and "nothing left behind" in str(exc), str(exc)
        assert inventory(aws) == before
        sm = aws.client("sagemaker")
        assert (
            sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"]
            == first.endpoint_config
        )
    else:
        after = inventory(aws)
        assert second.action == "updated"
        assert after["models"] == [second.model] and after["configs"] == [second.endpoint_config]
        assert after["policies"] == before["policies"]


def test_deploy_is_declarative_about_scaling(aws, random_model_dir):
    """Re-deploying without --autoscale removes the scaling an earlier deploy set up."""
    first = deploy(
        random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE, autoscale=Autoscale(1, 2), poll_s=0.1
    )
    assert inventory(aws)["targets"] == [f"endpoint/{ENDPOINT}/variant/AllTraffic"]
    again = deploy(random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE, poll_s=0.1)
    assert again.action == "unchanged" and again.endpoint_config == first.endpoint_config
    left = inventory(aws)
    assert left["targets"] == [] and left["policies"] == []
    assert left["models"] == [first.model] and left["endpoints"] == [ENDPOINT]


def test_deploy_after_a_crash_removes_what_the_crash_left(aws, random_model_dir):
    """A run killed without rollback (power loss) leaves tagged resources; the next run removes them."""
    sm = aws.client("sagemaker")
    tags = [
        {"Key": "twinnet:managed-by", "Value": "twinnet 0.1.0"},
        {"Key": "twinnet:endpoint", "Value": ENDPOINT},
    ]
    sm.create_model(
        ModelName=f"{ENDPOINT}-20200101-000000-000",
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": IMAGE},
        Tags=tags,
    )
    # Same prefix, another endpoint's (not ours to delete):
    sm.create_model(
        ModelName=f"{ENDPOINT}-2-20200101-000000-000",
        ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": IMAGE},
        Tags=[tags[0], {"Key": "twinnet:endpoint", "Value": f"{ENDPOINT}-2"}],
    )
    result = deploy(random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE, wait=True, poll_s=0.1)
    assert result.status == "InService"
    assert sorted(inventory(aws)["models"]) == sorted(
        [result.model, f"{ENDPOINT}-2-20200101-000000-000"]
    )


def test_unreachable_service_reports_what_is_left(tmp_path, monkeypatch, random_model_dir):
    """If AWS becomes unreachable half way, rollback cannot run: the error names every leftover."""
    proc, url = start_moto(tmp_path / "moto.log")
    try:
        import boto3

        aws_env(monkeypatch, tmp_path, url)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        boto3.Session(region_name=REGION).client("s3").create_bucket(Bucket=BUCKET)

        def cut_network(event: str, message: str) -> None:
            if message.startswith("creating endpoint"):
                stop(proc)
                raise KeyboardInterrupt

        with pytest.raises(TwinnetError) as exc:
            deploy(random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE, report=cut_network)
    finally:
        if proc.poll() is None:
            stop(proc)
    message = str(exc.value)
    assert "\n" not in message
    assert "rolled back 0 resource(s); LEFT BEHIND:" in message
    for what in (f"endpoint {ENDPOINT} (", "endpoint config twin-test-", "model twin-test-",
                 f"S3 object s3://{BUCKET}/twinnet/{ENDPOINT}/"):  # fmt: skip
        assert what in message
    assert message.endswith(f"remove with `twinnet teardown {ENDPOINT} --delete-artifacts`")


# ------------------------------------------------------------------------- 3. what stays


@pytest.mark.parametrize(
    "point", ["updating endpoint", f"endpoint {ENDPOINT}: InService", "autoscaling"]
)
def test_rollback_after_the_update_keeps_what_the_endpoint_runs(aws, random_model_dir, point):
    """A failure after UpdateEndpoint took effect deletes nothing the endpoint now runs on.

    The new config, model and artifact (a new one: other packaging options) are kept and
    named; running the same deploy again finishes it.
    """
    first = deploy(
        random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE, autoscale=Autoscale(1, 2), poll_s=0.1
    )
    second = dict(count=2, autoscale=Autoscale(2, 4), package_options={"batch_size": 2}, poll_s=0.1)
    with pytest.raises(TwinnetError) as exc:
        deploy(
            random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE, session=UpdatingSession(aws),
            report=_Interrupt(point), **second,
        )  # fmt: skip
    sm = aws.client("sagemaker")
    config = sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"]
    assert config != first.endpoint_config
    (variant,) = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
    model = variant["ModelName"]
    url = sm.describe_model(ModelName=model)["PrimaryContainer"]["ModelDataUrl"]
    assert url != first.artifact
    assert str(exc.value) == (
        f"deploy of {ENDPOINT} in {REGION} failed: interrupted; rolled back "
        f"{2 if point == 'autoscaling' else 1} resource(s); KEPT, as endpoint {ENDPOINT} runs "
        f"on them: endpoint config {config}, model {model}, S3 object {url}; "
        f"{ENDPOINT} now runs {config}: run deploy again to finish; nothing else left behind"
    )
    left = inventory(aws)
    assert sorted(left["configs"]) == sorted([first.endpoint_config, config])
    assert sorted(left["models"]) == sorted([first.model, model])
    assert sorted(f"s3://{BUCKET}/{k}" for k in left["objects"]) == sorted([first.artifact, url])
    assert left["targets"] == [f"endpoint/{ENDPOINT}/variant/AllTraffic"]  # the old scaling

    again = deploy(random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE, **second)
    assert (again.action, again.endpoint_config, again.model) == ("unchanged", config, model)
    left = inventory(aws)
    assert left["configs"] == [config] and left["models"] == [model]


def _foreign_config(sm, s3, tags: list[dict]) -> None:
    """Another team's artifact, model and config, in the same bucket (e.g. tagged by them)."""
    s3.put_object(Bucket=BUCKET, Key="team-x/prod/model.tar.gz", Body=b"their artifact")
    extra = {"Tags": tags} if tags else {}
    sm.create_model(
        ModelName="team-x-model",
        ExecutionRoleArn=ROLE,
        PrimaryContainer={
            "Image": IMAGE,
            "ModelDataUrl": f"s3://{BUCKET}/team-x/prod/model.tar.gz",
        },
        **extra,
    )
    sm.create_endpoint_config(
        EndpointConfigName="team-x-config",
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "team-x-model",
                             "InstanceType": "ml.m5.xlarge", "InitialInstanceCount": 1}],
        **extra,
    )  # fmt: skip


@pytest.mark.parametrize(
    "tags",
    [[], [{"Key": "twinnet:managed-by", "Value": "twinnet 0.1.0"},
          {"Key": "twinnet:endpoint", "Value": f"{ENDPOINT}-2"}]],
    ids=["untagged", "another-endpoint"],
)  # fmt: skip
def test_teardown_leaves_what_twinnet_did_not_create_for_the_endpoint(
    aws, random_model_dir, capsys, tags
):
    """The endpoint was switched by hand to another config: that config, its model and its
    artifact are named and left; only what deploy made for this endpoint is deleted."""
    ours = deploy(random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE, wait=True, poll_s=0.1)
    sm, s3 = aws.client("sagemaker"), aws.client("s3")
    _foreign_config(sm, s3, tags)
    complete_update(sm, EndpointName=ENDPOINT, EndpointConfigName="team-x-config")

    assert main(["teardown", ENDPOINT, "--delete-artifacts"]) == 0
    out = capsys.readouterr().out
    assert out == (
        f"deleted 4 resource(s) of {ENDPOINT}:\n"
        f"  endpoint {ENDPOINT}\n"
        f"  endpoint config {ours.endpoint_config}\n"
        f"  model {ours.model}\n"
        f"  S3 object {ours.artifact}\n"
        "left 2 resource(s) in place:\n"
        f"  endpoint config team-x-config (not created by twinnet for {ENDPOINT})\n"
        "  model team-x-model (used by endpoint config team-x-config, which stays)\n"
    )
    assert inventory(aws) == {
        **EMPTY,
        "configs": ["team-x-config"],
        "models": ["team-x-model"],
        "objects": ["team-x/prod/model.tar.gz"],
    }


def test_teardown_artifacts_stop_at_the_endpoints_own_layout(aws, random_model_dir, capsys):
    """Endpoint B's artifacts live under ``x/B/``; another endpoint deployed with prefix
    ``x/B`` keeps its own under ``x/B/<name>/``, which B's teardown must not delete."""
    nested = f"{ENDPOINT}-c"
    outer = deploy(random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE, prefix="x")
    inner = deploy(random_model_dir, nested, BUCKET, ROLE, IMAGE, prefix=f"x/{ENDPOINT}")
    assert inner.artifact.startswith(f"s3://{BUCKET}/x/{ENDPOINT}/{nested}/")

    assert main(["teardown", ENDPOINT, "--delete-artifacts"]) == 0
    assert f"S3 object {outer.artifact}\n" in capsys.readouterr().out
    assert inventory(aws) == {
        **EMPTY,
        "endpoints": [nested],
        "configs": [inner.endpoint_config],
        "models": [inner.model],
        "objects": [inner.artifact.split("/", 3)[3]],
    }
    assert main(["teardown", nested, "--delete-artifacts"]) == 0
    assert inventory(aws) == EMPTY


# ------------------------------------------------------------------------- 4. what it costs


class _Calls:
    """Counts the AWS operations a boto3 session makes, per service and operation name."""

    def __init__(self, session) -> None:
        self.seen: list[str] = []
        session.events.register("before-call", self._count)

    def _count(self, model, **kwargs) -> None:
        self.seen.append(f"{model.service_model.service_name}:{model.name}")

    def count(self, operation: str) -> int:
        return sum(1 for call in self.seen if call.endswith(f":{operation}"))


def test_listing_asks_nothing_per_foreign_endpoint(aws, random_model_dir):
    """One tagging query finds twinnet's endpoints; other endpoints cost no call at all."""
    import boto3

    ours = deploy(random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE, wait=True, poll_s=0.1)
    sm = aws.client("sagemaker")
    sm.create_model(ModelName="foreign", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE})
    sm.create_endpoint_config(
        EndpointConfigName="foreign",
        ProductionVariants=[{"VariantName": "v", "ModelName": "foreign",
                             "InitialInstanceCount": 1, "InstanceType": "ml.t2.medium"}],
    )  # fmt: skip
    for i in range(5):
        sm.create_endpoint(EndpointName=f"foreign-{i}", EndpointConfigName="foreign")

    session = boto3.Session(region_name=REGION)
    calls = _Calls(session)
    (row,) = list_endpoints(session)
    assert (row.name, row.status, row.model, row.instance_type, row.instances) == (
        ENDPOINT, "InService", ours.model, "ml.m5.xlarge", 1,
    )  # fmt: skip
    assert sorted(calls.seen) == [
        "resourcegroupstaggingapi:GetResources",
        "sagemaker:DescribeEndpoint",
        "sagemaker:DescribeEndpointConfig",
    ]


def test_teardown_deletes_artifacts_a_thousand_at_a_time(aws, random_model_dir, capsys):
    """S3 objects go in DeleteObjects batches of 1,000, each key still reported."""
    import boto3

    ours = deploy(random_model_dir, ENDPOINT, BUCKET, ROLE, IMAGE)
    s3 = aws.client("s3")
    extra = [f"twinnet/{ENDPOINT}/{i:016x}/model.tar.gz" for i in range(1000)]
    for key in extra:  # earlier versions of the endpoint's artifact
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"old")
    session = boto3.Session(region_name=REGION)
    calls = _Calls(session)
    deleted = teardown(ENDPOINT, delete_artifacts=True, session=session)
    assert calls.count("DeleteObjects") == 2 and calls.count("DeleteObject") == 0
    objects = {f"S3 object s3://{BUCKET}/{key}" for key in extra} | {f"S3 object {ours.artifact}"}
    assert {d for d in deleted if d.startswith("S3 object")} == objects
    assert inventory(aws) == EMPTY
